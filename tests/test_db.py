"""The storage layer on its own: configuration, connections and schema, on real databases."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import db
from tests.conftest import scratch_database, server_connection


def mysql_store(url: str, pool_size: int = 4) -> db.MySQLStore:
    store = db.open_store(
        {
            "DATABASE_URL": url,
            "DATABASE_CONNECT_TIMEOUT": 2,
            "DATABASE_TIMEOUT": 1,
            "DATABASE_POOL_SIZE": pool_size,
        }
    )
    assert isinstance(store, db.MySQLStore)
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


def test_a_missing_database_is_created(store: db.MySQLStore):
    store.put("a", "1")
    assert store.get("a").value == "1"


def test_the_session_is_strict_utf8mb4_and_utc(store: db.MySQLStore):
    [(mode, charset, collation, zone)] = store._query(
        "SELECT @@SESSION.sql_mode, @@character_set_connection, @@collation_connection, "
        "@@SESSION.time_zone"
    )
    assert "STRICT_ALL_TABLES" in mode
    assert (charset, collation, zone) == ("utf8mb4", "utf8mb4_unicode_ci", "+00:00")


def test_concurrent_borrowers_never_share_a_connection(store: db.MySQLStore):
    ids: list[int] = []
    barrier = threading.Barrier(4)

    def borrow() -> None:
        with store._cursor() as cur:
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
            with store._cursor():
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
    store: db.MySQLStore,
):
    with store._cursor() as cur:
        cur.execute("SELECT CONNECTION_ID(), @@autocommit")
        [(first, autocommit)] = cur.fetchall()
    [(second, still_autocommit)] = store._query("SELECT CONNECTION_ID(), @@autocommit")
    assert (first, autocommit) == (second, 1)
    assert still_autocommit == 1


def test_a_connection_killed_by_the_server_is_replaced_on_the_next_call(
    store: db.MySQLStore, mysql_server: str
):
    store.put("k", "before")
    [(victim,)] = store._query("SELECT CONNECTION_ID()")
    admin = server_connection(mysql_server)
    admin.cursor().execute(f"KILL {int(victim)}")
    admin.close()
    # A write is never retried blindly, so the dead idle connection must be noticed before it.
    assert store.put("k", "after").version == 2
    assert store.get("k").value == "after"
    [(replacement,)] = store._query("SELECT CONNECTION_ID()")
    assert replacement != victim


def test_a_killed_connection_is_replaced_for_a_read_too(store: db.MySQLStore, mysql_server: str):
    store.put("k", "v")
    [(victim,)] = store._query("SELECT CONNECTION_ID()")
    admin = server_connection(mysql_server)
    admin.cursor().execute(f"KILL {int(victim)}")
    admin.close()
    assert store.get("k").value == "v"


def test_an_unreachable_server_is_store_unavailable_not_a_crash():
    store = mysql_store("mysql://root@127.0.0.1:1/vars")
    with pytest.raises(db.StoreUnavailable):
        store.ensure_ready()
    assert not store.ready


def test_the_version_comes_back_from_the_write_itself(store: db.MySQLStore):
    assert store.put("v", "1") == db.WriteResult(1, created=True)
    assert store.put("v", "2") == db.WriteResult(2, created=False)
    assert store.put("v", "3", if_version=2) == db.WriteResult(3, created=False)
    assert store.get("v").version == 3


def test_names_are_bytes_in_mysql_so_no_collation_merges_them(store: db.MySQLStore):
    [(data_type,)] = store._query(
        "SELECT DATA_TYPE FROM information_schema.COLUMNS "
        "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'vars' AND COLUMN_NAME = 'name'"
    )
    assert data_type == "varbinary"
