"""An event stream delivers every change or says ``resync``: retention (the sweeper pruning
old versions or old changes) may remove entries from the middle of the log, and a stream that
resumes before them, or lags behind the pruning, must say so instead of skipping them. Both
stores; the watermark that tells (``Store.pruned_through``) and its schema step."""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from flask import Flask

import db
import watch
from app import create_app
from storage import migrations
from storage.mysql import schema
from storage.sqlite import STEPS as SQLITE_STEPS
from tests.servers import Gunicorn, scratch_database, server_connection
from tests.sse import open_stream

JSON = {"Accept": "application/json"}


@pytest.fixture
def make_app(store_url: str) -> Iterator[Callable[..., Flask]]:
    """Factory: an app on the test's database with extra settings; all stopped afterwards."""
    built: list[Flask] = []

    def make(**settings: object) -> Flask:
        watch.stop_all()  # apps of earlier tests must not sweep this database
        app = create_app({"TESTING": True, "DATABASE_URL": store_url, **settings})
        built.append(app)
        return app

    yield make
    for app in built:
        watch.stop_background(app)
        db.get_store(app).close()


def ready(app: Flask) -> db.Store:
    store = db.get_store(app)
    store.ensure_ready()
    return store


def write_k_e_then_r(store: db.Store, r_writes: int = 14) -> int:
    """The reported scenario: k, then e twice, then r many times; k's seq."""
    store.put("k", "kept")
    k_seq = store.numbered_history("k", None, 1, False)[0].seq
    store.put("e", "1")
    store.put("e", "2")
    for n in range(r_writes):
        store.put("r", str(n))
    return k_seq


# --- The watermark --------------------------------------------------------------------------


def test_pruning_old_versions_raises_the_watermark_to_the_last_seq_removed(make_app):
    store = ready(make_app())
    k_seq = write_k_e_then_r(store)
    assert store.pruned_through() < k_seq
    store.sweep(keep_versions=3, keep_days=30, batch=100)
    r = store.numbered_history("r", None, 100, False)
    assert [c.version for c in r] == [14, 13, 12]
    # r's version 11 was the last entry removed; k's and e's few versions all stay.
    assert store.pruned_through() == r[-1].seq - 1
    assert [c.version for c in store.numbered_history("k", None, 100, False)] == [1]


def test_pruning_by_age_raises_the_watermark(make_app):
    store = ready(make_app())
    store.put("a", "old")
    store.put("b", "old")
    time.sleep(0.05)
    store.sweep(keep_versions=100, keep_days=0.01 / 86400, batch=100)
    assert store.pruned_through() == store.numbered_last_seq()


def test_deletes_and_expiry_are_changes_not_pruning(make_app):
    store = ready(make_app())
    before = store.pruned_through()
    store.put("gone", "x")
    store.delete("gone")
    store.put("t", "x", ttl=0.05)
    time.sleep(0.1)
    assert store.sweep(keep_versions=100, keep_days=30, batch=100).expired == 1
    assert store.pruned_through() == before


# --- Resuming with Last-Event-ID ------------------------------------------------------------


def test_resuming_before_versions_pruned_mid_log_starts_with_resync(make_app):
    app = make_app()
    store = ready(app)
    k_seq = write_k_e_then_r(store)
    store.sweep(keep_versions=3, keep_days=30, batch=100)  # r's versions 1-11 go, k's stays
    assert store.first_seq() <= k_seq  # the table-wide MIN(seq) says nothing was lost

    stream = open_stream(app, "/events", last_event_id=k_seq)
    event = stream.next()
    stream.close()
    assert event["event"] == "resync"
    assert int(event["id"]) == event["data"]["seq"] == store.numbered_last_seq()


def test_resuming_after_the_pruned_entries_gets_every_change_and_no_resync(make_app):
    app = make_app()
    store = ready(app)
    write_k_e_then_r(store)
    store.sweep(keep_versions=3, keep_days=30, batch=100)
    resume_at = store.pruned_through()  # r's version 11: everything after it is retained

    stream = open_stream(app, "/events", last_event_id=resume_at)
    events = stream.take(3)
    stream.close()
    assert [(e.get("event"), e["data"]["name"], e["data"]["version"]) for e in events] == [
        (None, "r", 12),
        (None, "r", 13),
        (None, "r", 14),
    ]


def test_a_resync_lets_the_stream_carry_on_with_later_changes(make_app):
    app = make_app()
    store = ready(app)
    k_seq = write_k_e_then_r(store)
    store.sweep(keep_versions=3, keep_days=30, batch=100)
    stream = open_stream(app, "/events", last_event_id=k_seq)
    resync = stream.next()
    store.put("later", "v")
    event = stream.next()
    stream.close()
    assert resync["event"] == "resync"
    assert (event["data"]["name"], int(event["id"])) == ("later", int(resync["id"]) + 1)


# --- A live stream that the pruning overtakes -----------------------------------------------


def test_a_live_stream_whose_next_changes_are_pruned_before_it_reads_them_says_resync(make_app):
    # The feed polls every 2 s: the writes and the pruning all happen between the stream's
    # position and its next read of the log.
    app = make_app(WATCH_POLL_INTERVAL=2.0)
    store = ready(app)
    stream = open_stream(app, "/events")
    assert stream.started.wait(5)
    time.sleep(0.5)  # the stream waits on the feed, which has polled once and sleeps
    for n in range(10):
        store.put("r", str(n))
    store.sweep(keep_versions=3, keep_days=30, batch=100)
    assert [c.version for c in store.numbered_history("r", None, 100, False)] == [10, 9, 8]

    first = stream.next()
    store.put("after", "v")
    second = stream.next()
    stream.close()
    assert first["event"] == "resync"
    assert first["data"]["seq"] >= store.pruned_through()
    assert (second.get("event"), second["data"]["name"]) == (None, "after")


def test_a_live_stream_that_keeps_up_sees_every_change_without_resync(make_app):
    app = make_app()
    store = ready(app)
    stream = open_stream(app, "/events")
    assert stream.started.wait(5)
    time.sleep(0.5)
    for n in range(6):
        store.put("r", str(n))
    events = stream.take(6)
    store.sweep(keep_versions=3, keep_days=30, batch=100)  # behind the stream: no loss
    store.put("after", "v")
    last = stream.next()
    stream.close()
    assert [e["data"]["version"] for e in events] == [1, 2, 3, 4, 5, 6]
    assert "event" not in last
    assert last["data"]["name"] == "after"


# --- As reported: real servers, the background sweeper --------------------------------------


@pytest.mark.slow
def test_the_reported_scenario_through_gunicorn_resyncs(gunicorn, store_url: str):
    server: Gunicorn = gunicorn(
        {"DATABASE_URL": store_url, "HISTORY_KEEP_VERSIONS": "3", "SWEEP_INTERVAL": "0.5"},
        workers=2,
    )
    post = functools.partial(requests.post, timeout=15, headers=JSON)
    post(server.url("/var/k"), data={"value": "kept"})
    history = requests.get(server.url("/var/k?history"), timeout=15).json()["changes"]
    k_seq = history[0]["seq"]
    for name, count in (("e", 2), ("r", 14)):
        for n in range(count):
            post(server.url(f"/var/{name}"), data={"value": str(n)})
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # until a sweeper has pruned r down to 3 versions
        changes = requests.get(server.url("/var/r?history"), timeout=15).json()["changes"]
        if len(changes) == 3:
            break
        time.sleep(0.2)
    assert [c["version"] for c in changes] == [14, 13, 12]

    with requests.get(
        server.url("/events"), headers={"Last-Event-ID": str(k_seq)}, stream=True, timeout=15
    ) as response:
        lines = response.iter_lines(decode_unicode=True)
        block = []
        for line in lines:  # the first event (the retry: line comes before it)
            if line == "" and any(part.startswith("data:") for part in block):
                break
            block.append(line)
    assert "event: resync" in block


# --- The schema step ------------------------------------------------------------------------


def test_a_sqlite_log_of_the_previous_step_counts_as_pruned_through_its_last_seq(tmp_path: Path):
    path = tmp_path / "old.db"
    app = create_app({"TESTING": True, "DATABASE_URL": f"sqlite:///{path}"})
    store = ready(app)
    for n in range(3):
        store.put("a", str(n))
    watch.stop_background(app)
    store.close()
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE var_pruned")
    conn.execute(f"PRAGMA user_version = {SQLITE_STEPS[-2].number}")
    conn.commit()
    conn.close()

    assert store.prepare_schema() == "migrated"
    assert store.pruned_through() == 3  # entries of the earlier release may be gone already
    assert store.prepare_schema() == "up to date"
    store.close()


def test_a_mysql_log_of_the_previous_step_counts_as_pruned_through_its_last_seq(mysql_server):
    with scratch_database(mysql_server) as url:
        app = create_app({"TESTING": True, "DATABASE_URL": url})
        store = ready(app)
        for n in range(3):
            store.put("a", str(n))
        last = store.numbered_last_seq()
        watch.stop_background(app)
        store.close()
        server, _, database = url.rpartition("/")
        conn = server_connection(server)
        conn.cursor().execute(f"DROP TABLE `{database}`.var_pruned")
        watermark = next(s for s in schema.STEPS if "retention watermark" in s.description)
        previous = watermark.number - 1  # the database as the step before the watermark left it
        conn.cursor().execute(f"UPDATE `{database}`.var_schema SET version = {previous}")
        conn.close()

        assert store.prepare_schema() == "migrated"
        assert store.pruned_through() == last == 3
        [(version,)] = store.connections.query("SELECT version FROM var_schema")
        assert version == migrations.latest(schema.STEPS)
        store.close()
