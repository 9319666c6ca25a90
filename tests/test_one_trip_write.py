"""The MySQL store's unconditional write in one round trip, and the long way it falls back to
(storage/mysql/store.py ``_put``): same results, same history, whichever way a write went."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from storage import queries
from storage.dialect import MYSQL
from storage.mysql import MySQLStore
from tests.servers import scratch_database, server_connection
from tests.test_db import mysql_store


@pytest.fixture
def store(mysql_server: str) -> Iterator[MySQLStore]:
    with scratch_database(mysql_server) as url:
        opened = mysql_store(url, pool_size=8)
        opened.ensure_ready()
        yield opened
        opened.close()


def versions_logged(store: MySQLStore, name: str) -> list[tuple[int, str]]:
    changes = store.numbered_history(name, None, 100, with_values=False)
    return sorted((change.version, change.op) for change in changes)


def test_a_new_name_then_an_update_each_log_their_version(store):
    first = store.put("a", "1")
    second = store.put("a", "2")
    assert (first.version, first.created) == (1, True)
    assert (second.version, second.created) == (2, False)
    assert store.get("a").value == "2"
    assert versions_logged(store, "a") == [(1, "set"), (2, "set")]


def test_a_recreated_name_continues_its_versions(store):
    store.put("a", "1")
    store.put("a", "2")
    assert store.delete("a")
    again = store.put("a", "3")
    assert (again.version, again.created) == (4, True)
    assert versions_logged(store, "a") == [(1, "set"), (2, "set"), (3, "delete"), (4, "set")]


def test_an_expired_row_still_in_place_is_expired_then_written_the_long_way(store):
    store.put("t", "short-lived", ttl=0.2)
    time.sleep(0.4)  # expired; no sweeper runs here, so its row is still in the table
    written = store.put("t", "new")
    assert (written.version, written.created) == (3, True)
    assert store.get("t").value == "new"
    assert versions_logged(store, "t") == [(1, "set"), (2, "expire"), (3, "set")]


def test_a_ttl_set_in_one_trip_expires(store):
    store.put("t", "v", ttl=0.3)
    assert store.get("t").value == "v"
    time.sleep(0.5)
    assert store.get("t") is None


def test_writers_racing_to_create_one_name_all_succeed_with_distinct_versions(store):
    results = []
    errors = []
    start = threading.Barrier(8)

    def writer(number: int) -> None:
        start.wait()
        try:
            results.append(store.put("race", f"w{number}"))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(r.version for r in results) == list(range(1, 9))
    assert sum(r.created for r in results) == 1
    assert versions_logged(store, "race") == [(v, "set") for v in range(1, 9)]
    final = store.get("race")
    newest = max(results, key=lambda r: r.version)
    assert final.version == newest.version


def test_a_conditional_write_still_checks_its_condition(store):
    store.put("c", "1")
    with pytest.raises(Exception, match="c"):
        store.put("c", "2", if_version=7)
    assert store.put("c", "2", if_version=1).version == 2
    assert store.put("n", "x", if_absent=True).created


def test_an_update_keeps_its_creation_time_replaces_the_value_and_clears_a_ttl(store):
    store.put("u", "first", ttl=60)
    before = store.get("u")
    written = store.put("u", "second")  # no ttl: the variable becomes permanent
    after = store.get("u")
    assert (written.version, written.created) == (2, False)
    assert (after.value, after.version, after.expires_at) == ("second", 2, None)
    assert after.created_at == before.created_at
    assert after.updated_at > before.updated_at


def test_the_log_entry_is_the_row_just_written(store):
    store.put("e", "one")
    store.put("e", "two")
    newest = store.numbered_history("e", None, 1, with_values=True)[0]
    row = store.get("e")
    assert (newest.version, newest.value, newest.op) == (row.version, "two", "set")
    assert newest.changed_at == row.updated_at


def test_an_unconditional_write_is_an_upsert_and_its_log_entry_in_one_batch(store):
    """Two statements between START TRANSACTION and COMMIT: the row's upsert and its entry."""
    sent: list[list[str]] = []
    batch = store.connections.transaction_in_one_trip

    def spy(statements):
        sent.append([" ".join(sql.split()[:3]) for sql, _ in statements])
        return batch(statements)

    store.connections.transaction_in_one_trip = spy
    assert store.put("b", "1").created
    assert not store.put("b", "2").created
    assert sent == [["INSERT INTO vars", "INSERT INTO var_changes"]] * 2


def test_a_write_racing_a_delete_that_commits_meanwhile_continues_after_its_version(
    store, mysql_server
):
    """The upsert reads the name's history before the row's lock is granted (READ COMMITTED):
    a delete holding the lock commits version 2 meanwhile, the batch's log entry meets it
    (1062), and the write goes the long way: version 3, a new variable, nothing lost."""
    store.put("r", "1")
    database = store.connections.url.database
    deleter = server_connection(mysql_server)
    cur = deleter.cursor()
    cur.execute(f"USE `{database}`")
    cur.execute("START TRANSACTION")
    cur.execute("DELETE FROM vars WHERE name = 'r'")
    cur.execute(queries.log_gone(MYSQL), (b"r", 2, "delete", None, None))
    results: list = []
    writer = threading.Thread(target=lambda: results.append(store.put("r", "after")))
    writer.start()
    time.sleep(0.5)  # the writer has read the history and waits on the row's lock
    cur.execute("COMMIT")
    writer.join(timeout=10)
    deleter.close()
    assert [(r.version, r.created) for r in results] == [(3, True)]
    assert store.get("r").value == "after"
    assert versions_logged(store, "r") == [(1, "set"), (2, "delete"), (3, "set")]
