"""The storage layer on its own: configuration, connections and schema, on real databases."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

import db
from storage.mysql import MySQLStore, numbering
from storage.mysql.store import RECENT_CHANGES
from tests.servers import scratch_database, server_connection


def mysql_store(url: str, pool_size: int = 4) -> MySQLStore:
    store = db.open_store(
        {
            "DATABASE_URL": url,
            "DATABASE_CONNECT_TIMEOUT": 2,
            "DATABASE_TIMEOUT": 1,
            "DATABASE_POOL_SIZE": pool_size,
        }
    )
    assert isinstance(store, MySQLStore)
    return store


# --- DATABASE_URL -----------------------------------------------------------------------------


def test_mysql_url_defaults_to_the_tutorials_database():
    url = db.DatabaseURL.parse("mysql://root:123@db")
    assert (url.host, url.port, url.user, url.password, url.database) == (
        "db",
        3306,
        "root",
        "123",
        "vars",
    )


def test_the_password_never_shows_in_the_url_text():
    url = db.DatabaseURL.parse("mysql://app:p%40ss@db:3307/store")
    assert url.password == "p@ss"
    assert str(url) == "mysql://app:***@db:3307/store"
    assert "p@ss" not in repr(url)


def test_a_password_file_overrides_the_url(tmp_path: Path):
    secret = tmp_path / "db_password"
    secret.write_text("from-file\n")
    url = db.DatabaseURL.parse("mysql://root:in-url@db/vars", str(secret))
    assert url.password == "from-file"


def test_sqlite_urls_take_relative_and_absolute_paths():
    assert db.DatabaseURL.parse("sqlite:///data/v.db").path == "data/v.db"
    assert db.DatabaseURL.parse("sqlite:////var/lib/v.db").path == "/var/lib/v.db"


@pytest.mark.parametrize(
    "bad", ["postgres://x/y", "mysql://db/bad-name;", "sqlite://", "mysql://db:port/x"]
)
def test_bad_urls_are_rejected_with_a_clear_message(bad):
    with pytest.raises(ValueError, match="DATABASE_URL"):
        db.DatabaseURL.parse(bad)


def test_a_stored_time_is_written_as_rfc3339_utc_with_microseconds():
    aware = datetime(2026, 12, 1, 3, 45, 0, 120, tzinfo=UTC)
    assert db.utc_text(aware) == "2026-12-01T03:45:00.000120Z"
    assert db.utc_text(aware.replace(tzinfo=None)) == "2026-12-01T03:45:00.000120Z"
    assert db.utc_text(datetime(33, 1, 2, tzinfo=UTC)) == "0033-01-02T00:00:00.000000Z"
    assert datetime.fromisoformat(db.utc_text(aware)) == aware  # and reads back


def test_next_prefix_is_the_smallest_string_after_the_prefix_range():
    assert db.next_prefix("app/") == "app0"
    assert db.next_prefix("a\U0010ffff") == "b"
    assert db.next_prefix("\ud7ff") == "\ue000"
    assert db.next_prefix("\U0010ffff") is None


# --- MySQL connections ------------------------------------------------------------------------


@pytest.fixture
def store(mysql_server: str):
    with scratch_database(mysql_server) as url:
        store = mysql_store(url)
        store.ensure_ready()
        yield store
        store.close()


def test_a_missing_database_is_created(store: MySQLStore):
    store.put("a", "1")
    assert store.get("a").value == "1"


def test_the_session_is_strict_utf8mb4_and_utc(store: MySQLStore):
    [(mode, charset, collation, zone)] = store.connections.query(
        "SELECT @@SESSION.sql_mode, @@character_set_connection, @@collation_connection, "
        "@@SESSION.time_zone"
    )
    assert "STRICT_ALL_TABLES" in mode
    assert (charset, collation, zone) == ("utf8mb4", "utf8mb4_unicode_ci", "+00:00")


def test_concurrent_borrowers_never_share_a_connection(store: MySQLStore):
    ids: list[int] = []
    barrier = threading.Barrier(4)

    def borrow() -> None:
        with store.connections.cursor() as cur:
            cur.execute("SELECT CONNECTION_ID()")
            ids.append(cur.fetchall()[0][0])
            barrier.wait(timeout=10)  # all four hold their connection at the same time

    threads = [threading.Thread(target=borrow) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ids)) == 4
    assert store.open_connections == 4


def test_an_exhausted_pool_makes_callers_wait_then_answers_unavailable(mysql_server: str):
    with scratch_database(mysql_server) as url:
        store = mysql_store(url, pool_size=1)
        store.ensure_ready()
        released = threading.Event()

        def hold() -> None:
            with store.connections.cursor():
                released.wait(timeout=10)

        holder = threading.Thread(target=hold)
        holder.start()
        time.sleep(0.1)
        started = time.monotonic()
        with pytest.raises(db.StoreUnavailable, match="connections of this process stayed busy"):
            store.get("x")
        assert 0.9 < time.monotonic() - started < 3  # DATABASE_TIMEOUT is 1 s here
        released.set()
        holder.join()
        assert store.get("x") is None  # the connection went back to the pool
        store.close()


def test_a_connection_is_reused_and_no_transaction_leaks_to_the_next_borrower(
    store: MySQLStore,
):
    with store.connections.cursor() as cur:
        cur.execute("SELECT CONNECTION_ID(), @@autocommit")
        [(first, autocommit)] = cur.fetchall()
    [(second, still_autocommit)] = store.connections.query("SELECT CONNECTION_ID(), @@autocommit")
    assert (first, autocommit) == (second, 1)
    assert still_autocommit == 1


def test_a_connection_killed_by_the_server_is_replaced_on_the_next_call(
    store: MySQLStore, mysql_server: str
):
    store.put("k", "before")
    [(victim,)] = store.connections.query("SELECT CONNECTION_ID()")
    admin = server_connection(mysql_server)
    admin.cursor().execute(f"KILL {int(victim)}")
    admin.close()
    # A write is never retried blindly, so the dead idle connection must be noticed before it.
    assert store.put("k", "after").version == 2
    assert store.get("k").value == "after"
    [(replacement,)] = store.connections.query("SELECT CONNECTION_ID()")
    assert replacement != victim


def test_a_killed_connection_is_replaced_for_a_read_too(store: MySQLStore, mysql_server: str):
    store.put("k", "v")
    [(victim,)] = store.connections.query("SELECT CONNECTION_ID()")
    admin = server_connection(mysql_server)
    admin.cursor().execute(f"KILL {int(victim)}")
    admin.close()
    assert store.get("k").value == "v"


def test_an_unreachable_server_is_store_unavailable_not_a_crash():
    store = mysql_store("mysql://root@127.0.0.1:1/vars")
    with pytest.raises(db.StoreUnavailable):
        store.ensure_ready()
    assert not store.ready


def test_the_version_comes_back_from_the_write_itself(store: MySQLStore):
    assert store.put("v", "1") == db.WriteResult(1, created=True)
    assert store.put("v", "2") == db.WriteResult(2, created=False)
    assert store.put("v", "3", if_version=2) == db.WriteResult(3, created=False)
    assert store.get("v").version == 3


def test_names_are_bytes_in_mysql_so_no_collation_merges_them(store: MySQLStore):
    [(data_type,)] = store.connections.query(
        "SELECT DATA_TYPE FROM information_schema.COLUMNS "
        "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'vars' AND COLUMN_NAME = 'name'"
    )
    assert data_type == "varbinary"


# --- Numbering the change log (MySQL: seqs are given after the commit) ------------------------


def all_changes(store: MySQLStore) -> list[tuple[int | None, str, int]]:
    rows = store.connections.query("SELECT seq, name, version FROM var_changes ORDER BY id")
    return [(seq, bytes(name).decode(), int(version)) for seq, name, version in rows]


def test_a_write_leaves_its_change_unnumbered_until_somebody_reads_seqs(store: MySQLStore):
    before = store.numbered_last_seq()
    store.put("a", "1")
    store.delete("a")
    assert [seq for seq, _, _ in all_changes(store)] == [None, None]

    assert store.numbered_last_seq() == before + 2
    assert all_changes(store) == [(before + 1, "a", 1), (before + 2, "a", 2)]


def test_concurrent_writers_and_numberers_give_dense_seqs_in_version_order(
    mysql_server: str, monkeypatch: pytest.MonkeyPatch
):
    """Six writers and three stores numbering at once (as the pollers and sweepers of three
    processes do), in batches of 7 so that many batches are full, while a reader follows the
    log: every change gets exactly one seq, the seqs run 1..N without a hole, each name's in
    version order, and the reader, which only ever asks for seqs above the last it saw, sees
    every change once, in order."""
    monkeypatch.setattr(numbering, "SEQUENCE_BATCH", 7)
    with scratch_database(mysql_server) as url:
        stores = [mysql_store(url, pool_size=8) for _ in range(3)]
        for s in stores:
            s.ensure_ready()
        writing, following = threading.Event(), threading.Event()
        failures: list[str] = []
        seen: list[int] = []

        def guarded(job: Callable[[], None]) -> Callable[[], None]:
            def run() -> None:
                try:
                    job()
                except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                    failures.append(repr(exc))

            return run

        def write(k: int) -> None:
            for i in range(60):
                stores[k % 3].put(f"n{i % 4}", f"{k} {i}")  # contended names
                stores[k % 3].put(f"own/{k}/{i}", "x")

        def number(s: MySQLStore) -> None:
            while writing.is_set():
                s.numbered_last_seq()

        def follow() -> None:
            after = 0
            while True:
                last_round = not following.is_set()
                for change in stores[0].numbered_recent_changes(after, 50):
                    seen.append(change.seq)
                    after = change.seq
                if last_round:
                    return

        writing.set()
        following.set()
        numberers = [threading.Thread(target=guarded(lambda s=s: number(s))) for s in stores]
        follower = threading.Thread(target=guarded(follow))
        writers = [threading.Thread(target=guarded(lambda k=k: write(k))) for k in range(6)]
        for thread in [*numberers, follower, *writers]:
            thread.start()
        for thread in writers:
            thread.join()
        writing.clear()
        for thread in numberers:
            thread.join()
        for _ in range(100):  # what the rounds left (one that found the counter busy left)
            if all(seq is not None for seq, _, _ in all_changes(stores[0])):
                break
            numbering.number(stores[0].connections)
        following.clear()
        follower.join()

        assert failures == []
        changes = all_changes(stores[0])
        for s in stores:
            s.close()
    seqs = sorted(seq for seq, _, _ in changes)
    assert len(changes) == 6 * 60 * 2
    assert seqs == list(range(1, len(changes) + 1))
    for name in {name for _, name, _ in changes}:
        ordered = sorted((seq, version) for seq, n, version in changes if n == name)
        assert [v for _, v in ordered] == sorted(v for _, v in ordered)
    assert seen == seqs


def test_numbering_keeps_a_names_versions_in_order_whatever_the_ids(
    store: MySQLStore, monkeypatch: pytest.MonkeyPatch
):
    """On Galera each node draws ids from its own range, so a later version of a name can
    have a lower id; and a batch can end between two versions of a name. Neither may put a
    version before an earlier one."""
    insert = (
        "INSERT INTO var_changes (id, name, version, op, changed_at) "
        "VALUES (%s, %s, %s, 'set', UTC_TIMESTAMP(6))"
    )
    rows = [(10, b"a", 2), (11, b"b", 1), (12, b"a", 1), (13, b"b", 3), (14, b"c", 1)]
    rows += [(15, b"a", 3), (16, b"b", 2)]
    for row in rows:
        store.connections.execute(insert, row)
    monkeypatch.setattr(numbering, "SEQUENCE_BATCH", 4)  # ids 10-13, then b 2 (id 16) joins them
    start = int(store.connections.query("SELECT n FROM var_seq")[0][0])

    numbering.number(
        store.connections
    )  # as the poller and the sweeper do: batches while they are full

    numbered = sorted((seq, name, version) for seq, name, version in all_changes(store))
    assert [(name, version) for _, name, version in numbered] == [
        ("a", 1),  # a's places (ids 10 and 12) go to its versions in order
        ("b", 1),
        ("a", 2),
        ("b", 2),  # b's places: ids 11, 13 and 16, which joined the batch
        ("b", 3),
        ("c", 1),  # the next batch
        ("a", 3),
    ]
    assert [seq for seq, _, _ in numbered] == list(range(start + 1, start + 8))


def test_history_reads_number_their_entries(store: MySQLStore):
    store.put("a", "1")
    store.put("a", "2")
    assert all(c.seq is not None for c in store.numbered_history("a", None, 10, with_values=False))
    store.put("a", "3")
    assert store.numbered_change("a", 3).seq is not None


def test_mysql_retention_never_prunes_an_entry_before_it_is_numbered(store: MySQLStore):
    """Pruning walks the log in seq order: an unnumbered entry is out of its reach until it
    has a seq, so a watcher cannot miss a change that retention removed unseen."""
    for n in range(5):
        store.put("a", str(n))
    assert store.prune(keep_versions=2, keep_days=30, batch=100) == 0
    store.sweep(keep_versions=2, keep_days=30, batch=100)
    assert [version for _, _, version in all_changes(store)] == [4, 5]


def test_a_change_log_numbered_inside_the_writes_upgrades_in_place(store: MySQLStore):
    """The schema before this one: seq the primary key, given by each write. Entries keep
    their seqs; new ones follow them."""
    with store.connections.cursor() as cur:
        cur.execute("DROP TABLE var_changes")
        cur.execute(
            "CREATE TABLE var_changes (seq BIGINT UNSIGNED NOT NULL, "
            "name VARBINARY(1020) NOT NULL, version BIGINT UNSIGNED NOT NULL, "
            "op VARCHAR(6) CHARACTER SET ascii NOT NULL, value LONGTEXT NULL, "
            "changed_at DATETIME(6) NOT NULL, actor VARCHAR(16) CHARACTER SET ascii NULL, "
            "PRIMARY KEY (seq), UNIQUE KEY name_version (name, version))"
        )
        cur.execute(
            "INSERT INTO var_changes VALUES (7, 'a', 1, 'set', 'x', UTC_TIMESTAMP(6), NULL), "
            "(9, 'a', 2, 'set', 'y', UTC_TIMESTAMP(6), NULL)"
        )
        cur.execute("UPDATE var_seq SET n = 9")
        cur.execute("UPDATE var_schema SET version = 3")  # the release before step 4
        cur.execute("DELETE FROM vars")
        cur.execute("INSERT INTO vars (name, value, version) VALUES ('a', 'y', 2)")
    store.close()

    assert store.prepare_schema() == "migrated"
    store.put("a", "z")

    assert store.numbered_last_seq() == 10
    assert all_changes(store) == [(7, "a", 1), (9, "a", 2), (10, "a", 3)]
    assert store.numbered_change("a", 1).value == "x"
    store.close()
    assert store.prepare_schema() == "up to date"


def test_the_sweeper_numbers_the_log_with_nobody_watching(store: MySQLStore):
    store.put("a", "1")
    store.sweep(keep_versions=100, keep_days=30, batch=100)
    assert [seq is not None for seq, _, _ in all_changes(store)] == [True]


def test_an_idle_poll_of_the_change_log_is_one_index_range_scan(store: MySQLStore):
    """The poller's one statement finds both new changes and entries still to number by a
    range scan of the seq index, whatever the size of the log."""
    for start in range(1, 20001, 1000):
        store.connections.execute(
            "INSERT INTO var_changes (seq, name, version, op, changed_at) VALUES "
            + ", ".join(["(%s, %s, 1, 'set', UTC_TIMESTAMP(6))"] * 1000),
            [p for n in range(start, start + 1000) for p in (n, f"k{n}".encode())],
        )
    store.connections.execute("UPDATE var_seq SET n = 20000")
    store.put("new", "1")  # not numbered yet
    store.connections.query("ANALYZE TABLE var_changes")

    with store.connections.cursor() as cur:
        cur.execute("EXPLAIN " + RECENT_CHANGES, (19990, 1000))
        plan = [dict(zip(cur.column_names, row, strict=True)) for row in cur.fetchall()]

    [step] = plan
    assert (step["table"], step["type"], step["key"]) == ("var_changes", "range", "seq")
    assert int(step["rows"]) < 100
    assert "filesort" not in str(step["Extra"])
    changes = store.numbered_recent_changes(19990, 1000)
    assert [c.seq for c in changes] == list(range(19991, 20002))
    assert changes[-1].name == "new"
