"""Listing stays an index range scan with a million variables, on both stores.

Each store gets a table of 1,000,000 variables named ``app/0000/key0000`` .. ``app/0999/key0999``
(1000 "directories" of 1000 keys), filled in one INSERT ... SELECT. The tests EXPLAIN the very
statement the store runs (``storage.queries.list_variables``) and page through the table with
the store's ``list()`` and over HTTP.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import db
from app import create_app
from inputs import MAX_LIMIT
from storage import queries
from storage.dialect import MYSQL, SQLITE, Dialect
from tests.servers import scratch_database, server_connection

ROWS = 1_000_000
KEYS_PER_DIRECTORY = 1000
PAGE = 100

pytestmark = pytest.mark.slow


def name_of(n: int) -> str:
    return f"app/{n // KEYS_PER_DIRECTORY:04d}/key{n % KEYS_PER_DIRECTORY:04d}"


@dataclass
class BigTable:
    """A store over a million-row table, and EXPLAIN in the store's own dialect."""

    kind: str
    url: str
    store: db.Store
    explain: Callable[[str, list[Any]], list[dict[str, Any]]]
    dialect: Dialect

    def plan(
        self, prefix: str, after: str | None, limit: int = PAGE + 1, with_values: bool = False
    ) -> list[dict[str, Any]]:
        sql, params = queries.list_variables(self.dialect, prefix, after, limit, with_values)
        return self.explain(sql, params)


def _open_store(url: str) -> db.Store:
    """The store exactly as the service builds it, with its schema ready."""
    store = db.get_store(create_app({"TESTING": True, "DATABASE_URL": url}))
    store.ensure_ready()
    return store


def _sqlite_table(directory: Path) -> Iterator[BigTable]:
    path = directory / "big.db"
    store = _open_store(f"sqlite:///{path}")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    conn.execute(
        "WITH RECURSIVE seq(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM seq WHERE n < ?) "
        "INSERT INTO vars (name, value) "
        "SELECT printf('app/%04d/key%04d', n / ?, n % ?), 'v' || n FROM seq",
        (ROWS - 1, KEYS_PER_DIRECTORY, KEYS_PER_DIRECTORY),
    )
    conn.execute("COMMIT")
    conn.execute("ANALYZE")

    def explain(sql: str, params: list[Any]) -> list[dict[str, Any]]:
        rows = conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
        return [{"detail": row[-1]} for row in rows]

    yield BigTable("sqlite", f"sqlite:///{path}", store, explain, SQLITE)
    store.close()
    conn.close()


def _mysql_table(server_url: str) -> Iterator[BigTable]:
    with scratch_database(server_url) as url:
        yield from _fill_mysql_table(server_url, url)


def _fill_mysql_table(server_url: str, url: str) -> Iterator[BigTable]:
    store = _open_store(url)  # creates the database and the table
    conn = server_connection(server_url, database=url.rpartition("/")[2])
    try:
        cur = conn.cursor(dictionary=True)
        # Six cross-joined digit tables: a million numbers without a recursion limit to raise
        # (MySQL stops recursive CTEs at 1000 by default).
        digits = "(SELECT 0 AS d UNION ALL " + " UNION ALL ".join(
            f"SELECT {d}" for d in range(1, 10)
        )
        digits += ")"
        number = "d0.d + 10 * d1.d + 100 * d2.d + 1000 * d3.d + 10000 * d4.d + 100000 * d5.d"
        joined = " CROSS JOIN ".join(f"{digits} AS d{i}" for i in range(6))
        cur.execute(
            "INSERT INTO vars (name, value, version, created_at, updated_at) "
            "SELECT CONCAT('app/', LPAD(n DIV %s, 4, '0'), '/key', LPAD(n MOD %s, 4, '0')), "
            "CONCAT('v', n), 1, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6) "
            f"FROM (SELECT {number} AS n FROM {joined}) AS numbers",
            (KEYS_PER_DIRECTORY, KEYS_PER_DIRECTORY),
        )
        cur.execute("ANALYZE TABLE vars")
        cur.fetchall()

        def explain(sql: str, params: list[Any]) -> list[dict[str, Any]]:
            cur.execute("EXPLAIN " + sql, params)
            return [{str(k).lower(): v for k, v in row.items()} for row in cur.fetchall()]

        yield BigTable("mysql", url, store, explain, MYSQL)
    finally:
        store.close()
        conn.close()


@pytest.fixture(scope="module", params=["sqlite", "mysql"])
def big(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BigTable]:
    started = time.monotonic()
    if request.param == "sqlite":
        tables = _sqlite_table(tmp_path_factory.mktemp("scale"))
    else:
        tables = _mysql_table(request.getfixturevalue("mysql_server"))
    table = next(tables)
    print(f"{table.kind}: {ROWS} rows in {time.monotonic() - started:.1f}s")
    yield table
    next(tables, None)


def assert_index_range_scan(
    big: BigTable, plan: list[dict[str, Any]], bounds: str, narrow: bool = True
) -> None:
    """The plan reads a range of the primary key in order: no full scan, no sort. ``narrow``:
    MySQL estimates the range at under 10 directories (its ``rows`` ignores the LIMIT, so a
    range over the whole table, stopped by the LIMIT, is not narrow)."""
    if big.kind == "sqlite":
        details = [row["detail"] for row in plan]
        assert details == [f"SEARCH vars USING PRIMARY KEY ({bounds})"], details
    else:
        (row,) = plan
        assert (row["type"], row["key"]) == ("range", "PRIMARY"), row
        assert "filesort" not in (row["extra"] or "").lower(), row
        assert not narrow or int(row["rows"]) < 10 * KEYS_PER_DIRECTORY, row


@pytest.mark.parametrize("with_values", [False, True])
def test_listing_by_prefix_is_an_index_range_scan(big: BigTable, with_values: bool) -> None:
    plan = big.plan("app/0420/", None, with_values=with_values)

    assert_index_range_scan(big, plan, "name>? AND name<?")


def test_listing_by_prefix_after_a_name_is_an_index_range_scan(big: BigTable) -> None:
    plan = big.plan("app/0420/", "app/0420/key0500")

    assert_index_range_scan(big, plan, "name>? AND name<?")


def test_listing_after_a_name_is_an_index_range_scan(big: BigTable) -> None:
    plan = big.plan("", "app/0999/key0990")

    assert_index_range_scan(big, plan, "name>?")


def test_first_page_reads_the_index_in_order_without_sorting(big: BigTable) -> None:
    plan = big.plan("", None)

    if big.kind == "sqlite":
        assert [row["detail"] for row in plan] == ["SCAN vars"]
    else:
        (row,) = plan
        assert (row["type"], row["key"]) == ("index", "PRIMARY"), row
        assert "filesort" not in (row["extra"] or "").lower(), row


def test_pages_by_prefix_are_complete_and_in_order(big: BigTable) -> None:
    seen: list[str] = []
    after: str | None = None
    started = time.monotonic()
    while True:
        page = big.store.list("app/0777/", after, PAGE, with_values=True)
        seen += [v.name for v in page]
        assert all(v.value == "v" + str(777 * KEYS_PER_DIRECTORY + int(v.name[-4:])) for v in page)
        if len(page) < PAGE:
            break
        after = page[-1].name

    assert seen == [name_of(777 * KEYS_PER_DIRECTORY + k) for k in range(KEYS_PER_DIRECTORY)]
    assert time.monotonic() - started < 5


def test_page_after_a_name_deep_in_the_table_is_the_next_names(big: BigTable) -> None:
    page = big.store.list("", name_of(987_654), 3, with_values=False)

    assert [v.name for v in page] == [name_of(987_655), name_of(987_656), name_of(987_657)]


def test_http_listing_follows_next_links_through_a_prefix(big: BigTable) -> None:
    app = create_app({"TESTING": True, "DATABASE_URL": big.url})
    client = app.test_client()
    names: list[str] = []
    url: str | None = "/var?prefix=app/0123/&limit=300"
    while url is not None:
        response = client.get(url)
        assert response.status_code == 200
        body = response.get_json()
        names += [v["name"] for v in body["variables"]]
        assert (body["next"] is None) == ("Link" not in response.headers)
        url = body["next"]
    db.get_store(app).close()

    assert names == [name_of(123 * KEYS_PER_DIRECTORY + k) for k in range(KEYS_PER_DIRECTORY)]


# --- Folder listings (GET /var?prefix=..&delimiter=/): storage.queries.list_from ------------------


def test_a_folder_listing_scan_is_an_index_range_scan(big: BigTable) -> None:
    # The statement list_folder runs from the start of a folder, and from past a sub-prefix
    # (app/ holds the whole table: the range is wide, the LIMIT stops it).
    for lower in ("app/", "app/0042" + chr(ord("/") + 1)):
        sql, params = queries.list_from(big.dialect, "app/", lower, PAGE + 1, False)
        plan = big.explain(sql, params)
        assert_index_range_scan(big, plan, "name>? AND name<?", narrow=False)
    sql, params = queries.list_from(big.dialect, "app/0042/", "app/0042/key0500 ", PAGE + 1, True)
    assert_index_range_scan(big, big.explain(sql, params), "name>? AND name<?")


@dataclass
class CountingReads:
    """Counts the statements a store runs through its ``_read`` (every read of SQLStore goes
    through it) in this thread (the test client's requests run in it; a background sweep
    does not), by wrapping the store's own method: the database itself is real."""

    calls: int = 0
    rows: int = 0
    thread: int = field(default_factory=threading.get_ident)

    def wrap(self, store: db.Store) -> None:
        read = store._read  # type: ignore[attr-defined]

        def counted(*args: Any, **kwargs: Any) -> Any:
            rows = read(*args, **kwargs)
            if threading.get_ident() == self.thread:
                self.calls += 1
                self.rows += len(rows)
            return rows

        store._read = counted  # type: ignore[attr-defined]


@dataclass
class Pages:
    """What paging through a folder gave and cost: the statements each page ran, the rows they
    read, and the seconds it all took."""

    prefixes: list[str]
    names: list[str]
    statements: list[int]
    rows: list[int]
    seconds: float


def page_through(big: BigTable, url: str, pages: int = 200) -> Pages:
    """Follow ``next`` links from ``url`` on the table's store, counting what each page cost."""
    app = create_app({"TESTING": True, "DATABASE_URL": big.url})
    client = app.test_client()
    store = db.get_store(app)
    assert client.get("/var?name=app/0000/key0000").status_code == 200  # store ready
    reads = CountingReads()
    reads.wrap(store)
    prefixes: list[str] = []
    names: list[str] = []
    statements: list[int] = []
    rows: list[int] = []
    started = time.monotonic()
    next_url: str | None = url
    for _ in range(pages):  # bounded: 1000 sub-prefixes or names are 10 pages of 100
        if next_url is None:
            break
        before, rows_before = reads.calls, reads.rows
        response = client.get(next_url)
        assert response.status_code == 200, response.get_data(as_text=True)
        statements.append(reads.calls - before)
        rows.append(reads.rows - rows_before)
        body = response.get_json()
        prefixes += body.get("prefixes", [])
        names += [v["name"] for v in body["variables"]]
        next_url = body["next"]
    seconds = time.monotonic() - started
    store.close()
    assert next_url is None or pages == len(statements), f"more than {pages} pages"
    return Pages(prefixes, names, statements, rows, seconds)


def test_paging_the_top_folder_gives_every_sub_prefix_once_and_no_variable(big: BigTable) -> None:
    top = page_through(big, f"/var?prefix=app/&delimiter=/&limit={PAGE}")
    # And one page of the most a page may hold (inputs.MAX_LIMIT).
    biggest = page_through(big, f"/var?prefix=app/&delimiter=/&limit={MAX_LIMIT}", pages=1)
    print(
        f"\n{big.kind}: {len(top.prefixes)} sub-prefixes in {len(top.statements)} pages, "
        f"{top.seconds:.2f}s; statements per page {top.statements}, rows read {top.rows}; "
        f"one page of {MAX_LIMIT}: {biggest.statements[0]} statements, {biggest.rows[0]} rows, "
        f"{biggest.seconds:.2f}s"
    )

    assert top.prefixes == [f"app/{d:04d}/" for d in range(ROWS // KEYS_PER_DIRECTORY)]
    assert top.names == []
    assert len(top.statements) == ROWS // KEYS_PER_DIRECTORY // PAGE
    # Every sub-prefix holds more names than a page: one range scan for each entry read (the
    # page's and the one more that tells whether there is a next page), no more (README:
    # "each page an index range scan, plus one for each sub-prefix on it that holds more names
    # than the rest of the page"), whatever the table's size.
    assert max(top.statements) <= PAGE + 1
    assert biggest.statements[0] <= MAX_LIMIT + 1
    # Each scan after a big sub-prefix reads a few rows (8), not the rest of the page's worth
    # (which was limit * limit / 2 rows a page: 500,000 for a page of 1000); a scan or two may
    # read up to a page's worth before the first big sub-prefix shows.
    assert max(top.rows) <= 10 * (PAGE + 1)
    assert biggest.rows[0] <= 10 * (MAX_LIMIT + 1)


def test_a_page_inside_one_folder_lists_its_variables(big: BigTable) -> None:
    inside = page_through(big, f"/var?prefix=app/0042/&delimiter=/&limit={PAGE}")
    print(
        f"\n{big.kind}: {len(inside.names)} variables of app/0042/ in {len(inside.statements)} "
        f"pages, {inside.seconds:.2f}s; statements per page {inside.statements}"
    )

    assert inside.prefixes == []
    assert inside.names == [name_of(42 * KEYS_PER_DIRECTORY + k) for k in range(KEYS_PER_DIRECTORY)]
    assert inside.statements == [1] * (KEYS_PER_DIRECTORY // PAGE)  # one range scan a page
