"""The SQL store's writes, reads and retention that the API tests leave at their edges
(storage/sql.py): a restore under each condition, with a time to live and its author; a
delete's condition; a transaction's id and author; a subtree delete at its limit; the
change-log window under a prefix; a listing's previews and count; what a sweep expires and
prunes, sweep after sweep.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

import db
import watch
from app import create_app
from storage import queries

JSON = {"Accept": "application/json"}


def two_versions(client: FlaskClient, name: str = "a") -> None:
    client.put(f"/var/{name}", data={"value": "first"})
    client.put(f"/var/{name}", data={"value": "second"})


# --- Restore


def test_a_restore_if_absent_is_refused_while_the_variable_exists(client: FlaskClient):
    two_versions(client)
    response = client.put("/var/a", data={"restore": "1"}, headers={"If-None-Match": "*"})
    assert response.status_code == 412
    assert client.get("/var/a").data == b"second"


def test_a_restore_if_absent_brings_a_deleted_variable_back(client: FlaskClient):
    two_versions(client)
    client.delete("/var/a")
    response = client.put("/var/a", data={"restore": "1"}, headers={"If-None-Match": "*"})
    assert response.status_code == 201
    assert client.get("/var/a").data == b"first"


def test_a_restore_if_it_exists_is_refused_once_it_is_deleted(client: FlaskClient):
    two_versions(client)
    client.delete("/var/a")
    response = client.put("/var/a", data={"restore": "1"}, headers={"If-Match": "*"})
    assert response.status_code == 412
    assert client.get("/var/a").status_code == 404


def test_a_restore_with_a_ttl_expires(client: FlaskClient):
    two_versions(client)
    client.put("/var/a", data={"restore": "1", "ttl": "0"})
    assert client.get("/var/a").status_code == 404


def test_a_restore_records_its_author(app: Flask):
    store = db.get_store(app)
    store.ensure_ready()
    store.put("a", "first")
    store.put("a", "second")
    store.restore("a", 1, actor="ops")
    assert store.numbered_history("a", None, 1, False)[0].actor == "ops"


def test_a_restore_of_a_version_not_retained_names_it(app: Flask):
    store = db.get_store(app)
    store.ensure_ready()
    store.put("a", "first")
    with pytest.raises(db.VersionNotFound) as missing:
        store.restore("a", 7)
    assert missing.value.args == ("a", 7)


# --- Deletes and transactions


def test_a_delete_if_it_exists_of_a_missing_variable_is_412(client: FlaskClient):
    assert client.delete("/var/a", headers={"If-Match": "*"}).status_code == 412


def test_a_transaction_logs_its_id_of_16_hex_digits_and_its_author(app: Flask):
    store = db.get_store(app)
    store.ensure_ready()
    store.put("old", "v")
    txn, _ = store.transact([db.Operation("set", "new", "v"), db.Operation("delete", "old")], "ops")
    logged = [store.numbered_history(name, None, 1, False)[0] for name in ("new", "old")]
    assert [(change.op, change.actor, change.txn) for change in logged] == [
        ("set", "ops", txn),
        ("delete", "ops", txn),
    ]
    assert re.fullmatch(r"[0-9a-f]{16}", txn)


@pytest.mark.parametrize(
    ("operation", "message"),
    [
        (db.Operation("set", "a", None), "operation 0: set needs a value"),
        (db.Operation("bogus", "a"), "operation 0: unknown kind 'bogus'"),
    ],
)
def test_a_malformed_operation_is_a_programming_error(app: Flask, operation, message):
    store = db.get_store(app)
    store.ensure_ready()
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        store.transact([operation])


# --- Subtree deletes


def test_a_subtree_delete_takes_exactly_its_limit(app: Flask):
    store = db.get_store(app)
    store.ensure_ready()
    for index in range(3):
        store.put(f"p/{index}", "v")
    assert store.delete_prefix("p/", limit=3) == 3


def test_a_subtree_delete_over_its_limit_deletes_nothing_and_counts(app: Flask):
    store = db.get_store(app)
    store.ensure_ready()
    for index in range(4):
        store.put(f"p/{index}", "v")
    with pytest.raises(db.TooMany) as too_many:
        store.delete_prefix("p/", limit=3)
    assert (too_many.value.count, too_many.value.limit) == (4, 3)
    assert store.count() == 4


def test_a_subtree_delete_logs_one_transaction_id_of_16_hex_digits(app: Flask):
    store = db.get_store(app)
    store.ensure_ready()
    store.put("p/a", "v")
    store.put("p/b", "v")
    store.delete_prefix("p/", limit=10, actor="ops")
    deletes = [store.numbered_history(name, None, 1, False)[0] for name in ("p/a", "p/b")]
    assert [(change.op, change.actor) for change in deletes] == [("delete", "ops")] * 2
    assert deletes[0].txn == deletes[1].txn
    assert re.fullmatch(r"[0-9a-f]{16}", deletes[0].txn)


# --- Loading a whole history


def test_an_export_with_history_loads_whole_into_an_empty_store(tmp_path: Path):
    source = create_app({"TESTING": True, "DATABASE_URL": f"sqlite:///{tmp_path / 'a.db'}"})
    target = create_app({"TESTING": True, "DATABASE_URL": f"sqlite:///{tmp_path / 'b.db'}"})
    client = source.test_client()
    client.put("/var/a", data={"value": "first"})
    client.put("/var/a", data={"value": "second"})
    dump = tmp_path / "dump.json"
    exported = source.test_cli_runner().invoke(args=["export", "--with-history", str(dump)])
    assert exported.exit_code == 0, exported.output
    imported = target.test_cli_runner().invoke(args=["import", str(dump)])
    assert imported.exit_code == 0, imported.output
    store = db.get_store(target)
    assert [(c.version, c.value) for c in store.numbered_history("a", None, 10, True)] == [
        (2, "second"),
        (1, "first"),
    ]
    for app in (source, target):
        watch.stop_background(app)
        db.get_store(app).close()


# --- Reads


def test_the_change_log_window_keeps_to_its_prefix(app: Flask):
    store = db.get_store(app)
    store.ensure_ready()
    for name in ("app/a", "other", "app/b"):
        store.put(name, "v")
    changes = store.changes_since(0, store.numbered_last_seq(), "app/", 100)
    assert [change.name for change in changes] == ["app/a", "app/b"]


def test_a_listing_may_cut_values_to_a_preview(app: Flask):
    store = db.get_store(app)
    store.ensure_ready()
    store.put("a", "abcdefgh")
    assert [var.value for var in store.list("", None, 10, True, value_chars=3)] == ["abc"]


def test_the_store_counts_its_variables_and_knows_its_first_seq(app: Flask):
    store = db.get_store(app)
    store.ensure_ready()
    assert (store.count(), store.first_seq()) == (0, None)
    store.put("a", "v")
    store.put("b", "v")
    first = store.numbered_history("a", None, 1, False)[0].seq
    assert (store.count(), store.first_seq()) == (2, first)


# --- Folder listings


def entries(listing: list) -> list[str]:
    return [entry if isinstance(entry, str) else entry.name for entry in listing]


def test_a_name_starting_with_the_delimiter_is_in_a_folder_of_its_own(app: Flask):
    store = db.get_store(app)
    store.ensure_ready()
    store.put("/x", "v")
    store.put("a", "v")
    assert entries(store.list_folder("", "/", None, 10, False)) == ["/", "a"]


def test_a_folder_listing_may_cut_values_to_a_preview(app: Flask):
    store = db.get_store(app)
    store.ensure_ready()
    store.put("a", "abcdefgh")
    assert [e.value for e in store.list_folder("", "/", None, 10, True, value_chars=3)] == ["abc"]


@pytest.fixture
def scans(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of rows each scan of a folder listing asks for."""
    wanted: list[int] = []
    list_from = queries.list_from

    def counted(dialect, prefix, lower, rows, *rest):
        wanted.append(rows)
        return list_from(dialect, prefix, lower, rows, *rest)

    monkeypatch.setattr(queries, "list_from", counted)
    return wanted


def test_a_folder_listing_reads_8_rows_after_a_scan_that_gave_one_entry(app: Flask, scans):
    store = db.get_store(app)
    store.ensure_ready()
    names = [f"a/{n:02}" for n in range(15)] + [f"b/{n}" for n in range(9)]
    for name in [*names, "c", "d", "e", "f", "g", "h/1", "h/2", "h/3", "i", "j", "k", "l", "m"]:
        store.put(name, "v")
    listed = store.list_folder("", "/", None, 12, False)
    assert entries(listed) == ["a/", "b/", "c", "d", "e", "f", "g", "h/", "i", "j", "k", "l"]
    # a/ fills the first scan, b/ the second; the last asks only for what the page lacks.
    assert scans == [12, 8, 8, 4]


def test_a_folder_listing_reads_twice_as_many_after_a_scan_that_gave_more(app: Flask, scans):
    store = db.get_store(app)
    store.ensure_ready()
    names = [f"a/{n:02}" for n in range(35)] + ["b"] + [f"c/{n}" for n in range(7)]
    for name in [*names, *(f"d/{n:02}" for n in range(20)), "e", "f"]:
        store.put(name, "v")
    assert entries(store.list_folder("", "/", None, 30, False)) == ["a/", "b", "c/", "d/", "e", "f"]
    assert scans == [30, 8, 16, 8]


# --- Expiry and retention


def versions(store: db.Store, name: str) -> list[int]:
    return [change.version for change in store.numbered_history(name, None, 100, False)]


def test_a_sweep_expires_a_due_variable_once_and_counts_it(app: Flask):
    store = db.get_store(app)
    store.ensure_ready()
    store.put("x", "v", ttl=0)
    assert store.sweep(keep_versions=100, keep_days=30, batch=100) == db.SweepResult(1, 0)
    assert store.sweep(keep_versions=100, keep_days=30, batch=100) == db.SweepResult(0, 0)
    ops = [(change.op, change.version) for change in store.numbered_history("x", None, 5, False)]
    assert ops == [("expire", 2), ("set", 1)]


def test_each_sweep_walks_the_next_batch_of_the_log(app: Flask):
    store = db.get_store(app)
    store.ensure_ready()
    for n in range(6):
        store.put("r", str(n))
    pruned = []
    for _ in range(4):
        pruned.append(
            (store.sweep(keep_versions=1, keep_days=30, batch=2).pruned, versions(store, "r"))
        )
    assert pruned == [(1, [6, 5, 4, 3, 2]), (2, [6, 5, 4]), (2, [6]), (0, [6])]


def test_a_second_sweep_right_after_the_first_prunes_nothing_more(app: Flask):
    store = db.get_store(app)
    store.ensure_ready()
    for n in range(5):
        store.put("r", str(n))
    assert store.sweep(keep_versions=2, keep_days=30, batch=100).pruned == 3
    assert store.sweep(keep_versions=2, keep_days=30, batch=100).pruned == 0
    assert versions(store, "r") == [5, 4]


def test_retention_by_age_counts_a_day_as_86400_seconds(app: Flask):
    store = db.get_store(app)
    store.ensure_ready()
    store.put("a", "v")
    time.sleep(1.5)
    # 2/86401 of a day is 1.99998 seconds: kept for 1 whole second, so the change goes.
    assert store.sweep(keep_versions=100, keep_days=2 / 86401, batch=100).pruned == 1
    assert versions(store, "a") == []


def test_a_sweep_counts_every_entry_it_prunes(app: Flask):
    store = db.get_store(app)
    store.ensure_ready()
    for n in range(4):
        store.put("r", str(n))
        store.put("s", str(n))
    assert store.sweep(keep_versions=1, keep_days=30, batch=100).pruned == 6


def test_a_sweep_counts_entries_pruned_by_age_and_by_versions_together(app: Flask):
    store = db.get_store(app)
    store.ensure_ready()
    store.put("old", "v")
    time.sleep(1.5)
    for n in range(3):
        store.put("r", str(n))
    # old's one entry is more than a second old; r keeps 1 of its 3 versions.
    assert store.sweep(keep_versions=1, keep_days=1 / 86400, batch=100).pruned == 3


def test_a_sweep_walks_on_from_the_last_entry_of_its_batch(app: Flask):
    store = db.get_store(app)
    store.ensure_ready()
    for n in range(6):
        store.put("r", str(n))
    assert store.sweep(keep_versions=1, keep_days=30, batch=3).pruned == 2  # saw versions 1-3
    assert store.sweep(keep_versions=1, keep_days=30, batch=3).pruned == 3  # saw 4-6
    assert versions(store, "r") == [6]


def test_a_sweep_leaves_a_variable_rewritten_since_it_was_found_due(app: Flask, monkeypatch):
    store = db.get_store(app)
    store.ensure_ready()
    store.put("x", "first", ttl=0)
    read = store._read

    def rewritten_after_the_due_read(sql, params=()):
        rows = read(sql, params)
        if sql == queries.due_for_expiry(store.dialect):
            store.put("x", "second", ttl=0)  # a writer between the sweep's read and its delete
        return rows

    monkeypatch.setattr(store, "_read", rewritten_after_the_due_read)
    assert store.sweep(keep_versions=100, keep_days=30, batch=100).expired == 0
    # The rewrite logged the first value's expiry itself; the sweep left the second alone.
    ops = [change.op for change in store.numbered_history("x", None, 5, False)]
    assert ops == ["set", "expire", "set"]
