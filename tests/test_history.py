"""History and expiry, once per store: the change log, restoring, retention and time to live."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

import db
from app import create_app
from tests.forms import with_csrf
from tests.servers import create_database, scratch_database

JSON = {"Accept": "application/json"}


def history(client: FlaskClient, name: str, query: str = "") -> list[dict]:
    response = client.get(f"/var/{name}?history&values=true{query}")
    assert response.status_code == 200, response.data
    return response.get_json()["changes"]


def store_of(app: Flask) -> db.Store:
    store = db.get_store(app)
    store.ensure_ready()
    return store


# --- History --------------------------------------------------------------------------------


def test_every_write_and_delete_is_in_the_history_newest_first(client):
    client.post("/var/a", data={"value": "one"})
    client.post("/var/a", data={"value": "two"})
    client.delete("/var/a")

    changes = history(client, "a")

    assert [(c["version"], c["op"], c.get("value")) for c in changes] == [
        (3, "delete", None),
        (2, "set", "two"),
        (1, "set", "one"),
    ]
    assert changes[0]["seq"] > changes[1]["seq"] > changes[2]["seq"]
    assert all(c["changed_at"].endswith("Z") and "actor" not in c for c in changes)


def test_history_without_values_leaves_them_out(client):
    client.post("/var/a", data={"value": "secret-ish"})
    changes = client.get("/var/a?history").get_json()["changes"]
    assert changes[0]["version"] == 1
    assert "value" not in changes[0]


def test_history_pages_with_a_next_link(client):
    for n in range(5):
        client.post("/var/a", data={"value": str(n)})
    first = client.get("/var/a?history&limit=2")
    body = first.get_json()
    assert [c["version"] for c in body["changes"]] == [5, 4]
    assert first.headers["Link"] == f'<{body["next"]}>; rel="next"'
    second = client.get(body["next"]).get_json()
    assert [c["version"] for c in second["changes"]] == [3, 2]
    last = client.get(second["next"]).get_json()
    assert [c["version"] for c in last["changes"]] == [1]
    assert last["next"] is None


def test_history_of_an_unknown_name_is_404(client):
    assert client.get("/var/never?history").status_code == 404


def test_a_deleted_variable_s_history_stays_readable(client):
    client.post("/var/gone", data={"value": "v1"})
    client.delete("/var/gone")
    assert client.get("/var/gone").status_code == 404
    assert [c["op"] for c in history(client, "gone")] == ["delete", "set"]
    assert client.get("/var/gone?version=1").data == b"v1"


def test_a_recreated_variable_continues_its_versions(client):
    client.post("/var/a", data={"value": "old"})
    client.delete("/var/a")  # version 2 is the delete
    response = client.put("/var/a", data={"value": "new"})
    assert (response.status_code, response.headers["ETag"]) == (201, '"3"')
    # The ETag of the first incarnation no longer matches anything.
    stale = client.put("/var/a", data={"value": "x"}, headers={"If-Match": '"1"'})
    assert stale.status_code == 412


def test_get_of_a_specific_version(client):
    client.post("/var/a", data={"value": "one"})
    client.post("/var/a", data={"value": "two"})
    assert client.get("/var/a?version=1").data == b"one"
    body = client.get("/var/a?version=2", headers=JSON).get_json()
    assert (body["version"], body["op"], body["value"]) == (2, "set", "two")
    assert client.get("/var/a?version=9").status_code == 404
    assert client.get("/var/a?version=x").status_code == 400


def test_restore_writes_an_old_value_as_a_new_version(client):
    client.post("/var/a", data={"value": "good"})
    client.post("/var/a", data={"value": "bad"})
    response = client.put("/var/a", data={"restore": "1"}, headers={"If-Match": '"2"'})
    assert (response.status_code, response.headers["ETag"]) == (200, '"3"')
    assert client.get("/var/a").data == b"good"
    assert history(client, "a")[0]["value"] == "good"


def test_restore_honours_if_match(client):
    client.post("/var/a", data={"value": "one"})
    client.post("/var/a", data={"value": "two"})
    response = client.post("/var/a", json={"restore": 1}, headers={"If-Match": '"1"'})
    assert response.status_code == 412
    assert client.get("/var/a").data == b"two"


def test_restore_of_a_deleted_variable_brings_it_back(client):
    client.post("/var/a", data={"value": "keep me"})
    client.delete("/var/a")
    assert client.post("/var/a", data={"restore": "1"}).data == b"OK"
    assert client.get("/var/a").data == b"keep me"


def test_restore_of_a_delete_or_unknown_version_is_404(client):
    client.post("/var/a", data={"value": "x"})
    client.delete("/var/a")
    assert client.post("/var/a", data={"restore": "2"}).status_code == 404
    assert client.post("/var/a", data={"restore": "7"}).status_code == 404


def test_restore_with_a_value_too_is_400(client):
    client.post("/var/a", data={"value": "x"})
    assert client.post("/var/a", data={"restore": "1", "value": "y"}).status_code == 400
    assert client.post("/var/a", json={"restore": True}).status_code == 400


def test_history_names_the_token_not_the_token_itself(store_url: str):
    app = create_app({"TESTING": True, "DATABASE_URL": store_url, "WRITE_TOKENS": ["s3cret"]})
    client = app.test_client()
    auth = {"Authorization": "Bearer s3cret"}
    client.post("/var/a", data={"value": "x"}, headers=auth)
    client.delete("/var/a", headers=auth)
    changes = client.get("/var/a?history", headers=auth).get_json()["changes"]
    assert {c["actor"] for c in changes} == {hashlib.sha256(b"s3cret").hexdigest()[:8]}
    assert "s3cret" not in str(changes)
    db.get_store(app).close()


def test_history_is_complete_and_ordered_under_concurrent_writers(app, client):
    store = store_of(app)
    writers, writes_each = 6, 15

    def write(n: int) -> None:
        for i in range(writes_each):
            store.put("shared", f"{n}-{i}")
            store.put(f"own-{n}", str(i))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    shared = store.numbered_history("shared", None, 1000, True)
    assert [c.version for c in shared] == list(range(writers * writes_each, 0, -1))
    assert sorted(c.value for c in shared) == sorted(
        f"{n}-{i}" for n in range(writers) for i in range(writes_each)
    )
    # The log as a whole: dense seqs, and each name's versions in seq order.
    log = store.changes_since(0, store.numbered_last_seq(), "", 10_000)
    seqs = [c.seq for c in log]
    assert seqs == list(range(seqs[0], seqs[0] + 2 * writers * writes_each))
    for name in {c.name for c in log}:
        versions = [c.version for c in log if c.name == name]
        assert versions == sorted(versions) == list(range(1, len(versions) + 1))


def test_retention_keeps_the_last_n_versions(app):
    store = store_of(app)
    for n in range(12):
        store.put("a", str(n))
    store.put("b", "only one")
    store.sweep(keep_versions=5, keep_days=30, batch=100)
    assert [c.version for c in store.numbered_history("a", None, 100, False)] == [12, 11, 10, 9, 8]
    assert [c.version for c in store.numbered_history("b", None, 100, False)] == [1]


def test_retention_drops_changes_older_than_the_days_kept(app):
    store = store_of(app)
    store.put("a", "old")
    time.sleep(0.05)
    store.sweep(keep_versions=100, keep_days=0.01 / 86400, batch=100)
    assert store.numbered_history("a", None, 100, False) == []
    assert store.get("a").value == "old"  # only the history goes, never the variable


# --- Expiry ---------------------------------------------------------------------------------


def test_a_variable_with_a_ttl_reads_404_from_its_deadline(client):
    response = client.put("/var/t", data={"value": "x", "ttl": "0.5"})
    assert response.status_code == 201
    body = client.get("/var/t", headers=JSON).get_json()
    assert body["expires_at"] > body["updated_at"]
    time.sleep(0.6)
    assert client.get("/var/t").status_code == 404
    assert client.get("/var?prefix=t").get_json()["variables"] == []
    assert client.get("/var?name=t").get_json()["missing"] == ["t"]


def test_ttl_in_json_and_in_the_query(client):
    assert client.put("/var/j", json={"value": "x", "ttl": 0.3}).status_code == 201
    client.put("/var/q?ttl=0.3", data="x", content_type="text/plain")
    time.sleep(0.4)
    assert client.get("/var/j").status_code == client.get("/var/q").status_code == 404


@pytest.mark.parametrize("ttl", ["-1", "abc", "nan", "inf", "1e3", "0.1234567", str(10**10)])
def test_an_invalid_ttl_is_400_and_stores_nothing(client, ttl):
    response = client.put("/var/t", data={"value": "x", "ttl": ttl})
    assert response.status_code == 400
    assert client.get("/var/t").status_code == 404


def test_a_later_write_without_ttl_makes_it_permanent(client):
    client.put("/var/t", data={"value": "x", "ttl": "0.3"})
    client.put("/var/t", data={"value": "y"})
    time.sleep(0.4)
    response = client.get("/var/t", headers=JSON)
    assert response.status_code == 200
    assert "expires_at" not in response.get_json()


def test_writing_an_expired_name_creates_it_anew(client):
    client.put("/var/t", data={"value": "x", "ttl": "0.2"})
    time.sleep(0.3)
    response = client.put("/var/t", data={"value": "again"}, headers={"If-None-Match": "*"})
    assert (response.status_code, response.headers["ETag"]) == (201, '"3"')
    assert [c["op"] for c in history(client, "t")] == ["set", "expire", "set"]


def test_an_expired_variable_cannot_be_deleted_or_matched(client):
    client.put("/var/t", data={"value": "x", "ttl": "0.2"})
    time.sleep(0.3)
    assert client.delete("/var/t").status_code == 404
    assert client.put("/var/t", data={"value": "y"}, headers={"If-Match": '"1"'}).status_code == 412


def test_the_sweeper_removes_expired_rows_and_logs_it_once(app, client):
    client.put("/var/t", data={"value": "x", "ttl": "0.2"})
    client.put("/var/keep", data={"value": "x", "ttl": "60"})
    time.sleep(0.3)
    store = store_of(app)
    # Two sweepers at once (two workers or replicas): one expiry, logged once.
    results = [store.sweep(100, 30, 10), store.sweep(100, 30, 10)]
    assert sum(r.expired for r in results) == 1
    assert [c["op"] for c in history(client, "t")] == ["expire", "set"]
    assert client.get("/var/keep").status_code == 200


def test_expiry_holds_across_a_restart(store_url: str):
    first = create_app({"TESTING": True, "DATABASE_URL": store_url})
    first.test_client().put("/var/t", data={"value": "x", "ttl": "0.5"})
    db.get_store(first).close()
    time.sleep(0.6)
    second = create_app({"TESTING": True, "DATABASE_URL": store_url})
    assert second.test_client().get("/var/t").status_code == 404
    db.get_store(second).close()


# --- Upgrading a database of the previous version -------------------------------------------


def test_a_sqlite_database_of_the_previous_version_upgrades_in_place(tmp_path: Path):
    import sqlite3

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE vars (name TEXT NOT NULL PRIMARY KEY, value TEXT NOT NULL, "
        "version INTEGER NOT NULL DEFAULT 1, created_at TEXT NOT NULL DEFAULT (datetime()), "
        "updated_at TEXT NOT NULL DEFAULT (datetime())) WITHOUT ROWID"
    )
    conn.execute("INSERT INTO vars (name, value, version) VALUES ('a', 'kept', 4)")
    conn.commit()
    conn.close()
    app = create_app({"TESTING": True, "DATABASE_URL": f"sqlite:///{path}"})
    client = app.test_client()
    assert client.get("/var/a").data == b"kept"
    assert client.post("/var/a", data={"value": "new"}).headers["ETag"] == '"5"'
    assert [c["version"] for c in history(client, "a")] == [5]
    db.get_store(app).close()


def test_a_mysql_database_of_the_previous_version_upgrades_in_place(mysql_server: str):
    with scratch_database(mysql_server) as url:
        create_database(
            url,
            "CREATE TABLE vars (name VARBINARY(1020) NOT NULL PRIMARY KEY, "
            "value LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, "
            "version BIGINT UNSIGNED NOT NULL DEFAULT 1, "
            "created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), "
            "updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))",
            "INSERT INTO vars (name, value, version) VALUES ('a', 'kept', 4)",
        )
        app = create_app({"TESTING": True, "DATABASE_URL": url})
        client = app.test_client()
        assert client.get("/var/a").data == b"kept"
        assert client.post("/var/a", data={"value": "new"}).headers["ETag"] == '"5"'
        assert [c["version"] for c in history(client, "a")] == [5]
        store = store_of(app)
        store.close()
        assert store.prepare_schema() == "up to date"  # idempotent
        store.close()


# --- The web page ---------------------------------------------------------------------------


def form(client: FlaskClient, **fields: str) -> dict:
    """A page form, with the CSRF token of the page it came from."""
    return {"data": with_csrf(client, fields), "content_type": "application/x-www-form-urlencoded"}


def test_the_view_page_lists_the_history_with_restore_buttons(client):
    client.post("/var/a", data={"value": "first <b>"})
    client.post("/var/a", data={"value": "second"})
    page = client.get("/view?name=a").get_data(as_text=True)
    assert "History" in page
    assert "first &lt;b&gt;" in page
    assert page.count("<button>Restore</button>") == 1  # not for the current version
    assert '<input type="hidden" name="restore" value="1">' in page


def test_restoring_from_the_page_writes_a_new_version(client):
    client.post("/var/a", data={"value": "good"})
    client.post("/var/a", data={"value": "bad"})
    response = client.post("/restore", **form(client, name="a", restore="1", version="2"))
    assert (response.status_code, response.headers["Location"]) == (303, "/view?name=a&saved=3")
    assert client.get("/var/a").data == b"good"


def test_restoring_from_a_stale_page_is_409_and_changes_nothing(client):
    client.post("/var/a", data={"value": "one"})
    client.post("/var/a", data={"value": "two"})
    client.post("/var/a", data={"value": "someone else's"})
    response = client.post("/restore", **form(client, name="a", restore="1", version="2"))
    assert response.status_code == 409
    assert client.get("/var/a").data == b"someone else's"


def test_a_deleted_variable_s_page_offers_its_history_back(client):
    client.post("/var/a", data={"value": "lost"})
    client.delete("/var/a")
    page = client.get("/view?name=a")
    assert page.status_code == 404
    assert "deleted" in page.get_data(as_text=True)
    response = client.post("/restore", **form(client, name="a", restore="1", version=""))
    assert response.status_code == 303
    assert client.get("/var/a").data == b"lost"
