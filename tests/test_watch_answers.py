"""What a watcher is told, exactly (events.py): the stream's first line and headers, the
``resync`` event's id and reason, and the body and ETag of a long-poll that sees a delete.

tests/test_watch.py and tests/test_resync.py check when these come; here, what they say.
"""

from __future__ import annotations

import queue
import threading
import time

import pytest
from flask import Flask
from flask.testing import FlaskClient

import db
import events
import watch
from tests.sse import open_stream

JSON = {"Accept": "application/json"}
CARRY_ON = "read the current state, then carry on from this event"


def test_a_stream_starts_with_the_reconnection_delay(client: FlaskClient):
    response = client.get("/events", buffered=False)
    first = next(iter(response.response))
    response.close()
    assert first == b"retry: 2000\n\n"


def test_a_stream_is_neither_cached_nor_buffered_by_a_proxy(client: FlaskClient):
    response = client.get("/events", buffered=False)
    response.close()
    assert (response.headers["Cache-Control"], response.headers["X-Accel-Buffering"]) == (
        "no-cache",
        "no",
    )


def test_a_last_event_id_past_the_newest_is_a_resync_at_the_newest(app: Flask, client):
    client.put("/var/a", data={"value": "v"})
    head = db.get_store(app).numbered_last_seq()
    stream = open_stream(app, "/events", last_event_id=head + 5)
    event = stream.next()
    stream.close()
    assert event == {
        "event": "resync",
        "id": str(head),
        "data": {"seq": head, "reason": f"that event is not one this database issued: {CARRY_ON}"},
    }


def test_after_a_resync_at_the_newest_the_next_change_follows(app: Flask, client):
    client.put("/var/a", data={"value": "v"})
    head = db.get_store(app).numbered_last_seq()
    stream = open_stream(app, "/events", last_event_id=head + 5)
    stream.next()
    client.put("/var/b", data={"value": "w"})
    event = stream.next()
    stream.close()
    assert (event["id"], event["data"]["name"], event["data"]["value"]) == (str(head + 1), "b", "w")


def test_a_resync_after_pruning_says_the_changes_are_no_longer_retained(app: Flask, client):
    for value in ("1", "2", "3"):
        client.put("/var/a", data={"value": value})
    store = db.get_store(app)
    store.sweep(keep_versions=1, keep_days=30, batch=100)
    stream = open_stream(app, "/events", last_event_id=0)
    event = stream.next()
    stream.close()
    head = store.numbered_last_seq()
    assert event == {
        "event": "resync",
        "id": str(head),
        "data": {
            "seq": head,
            "reason": f"changes after that event are no longer retained: {CARRY_ON}",
        },
    }


def test_a_stream_sends_only_the_changes_under_its_prefix(app: Flask, client):
    stream = open_stream(app, "/events?prefix=app/")
    assert stream.started.wait(5)
    client.put("/var/other", data={"value": "x"})
    client.put("/var/app/a", data={"value": "y"})
    event = stream.next()
    stream.close()
    assert event["data"]["name"] == "app/a"


@pytest.mark.parametrize("query", ["wait=0&after_version=1", "wait=5&after_version=1"])
def test_a_long_poll_that_sees_a_delete_says_not_found_with_the_delete_etag(client, query):
    client.put("/var/lp", data={"value": "v"})
    client.delete("/var/lp")
    response = client.get(f"/var/lp?{query}", headers=JSON)
    assert (response.status_code, response.get_json(), response.headers["ETag"]) == (
        404,
        {"error": "not_found", "message": "no variable named 'lp'"},
        '"2"',
    )


def test_a_long_poll_answer_must_be_revalidated(client: FlaskClient):
    client.put("/var/a", data={"value": "v"})
    response = client.get("/var/a?wait=1&after_version=0")
    assert (response.headers["Cache-Control"], response.headers["ETag"]) == ("no-cache", '"1"')


def test_a_waiting_long_poll_waits_on_the_feed_not_on_the_database(app, client, monkeypatch):
    client.put("/var/a", data={"value": "v"})
    store = db.get_store(app)
    reads: list[str] = []
    state = store.state
    monkeypatch.setattr(store, "state", lambda name: (reads.append(name), state(name))[1])
    assert client.get("/var/a?wait=1").status_code == 304
    assert reads == ["a"]  # once, before waiting


def test_a_long_poll_for_a_version_ahead_waits_through_the_writes_before_it(
    app, client, monkeypatch
):
    client.put("/var/a", data={"value": "1"})
    store = db.get_store(app)
    reads: list[str] = []
    state = store.state
    monkeypatch.setattr(store, "state", lambda name: (reads.append(name), state(name))[1])

    def write_three() -> None:
        for value in ("2", "3", "4"):
            time.sleep(0.3)
            app.test_client().put("/var/a", data={"value": value})

    writer = threading.Thread(target=write_three)
    writer.start()
    response = client.get("/var/a?wait=10&after_version=3")
    writer.join()
    assert (response.status_code, response.data, response.headers["ETag"]) == (200, b"4", '"4"')
    assert len(reads) <= 6  # once before waiting, then once a write (not a busy loop)


def test_a_long_poll_on_an_expired_variable_names_the_expiry_s_version(client: FlaskClient):
    client.put("/var/a", data={"value": "v", "ttl": "0"})  # expired at once, not yet swept
    response = client.get("/var/a?wait=0")
    assert (response.status_code, response.headers["ETag"]) == (304, '"2"')


def test_a_long_poll_with_the_etag_of_an_old_version_answers_at_once(client: FlaskClient):
    client.put("/var/a", data={"value": "1"})
    client.put("/var/a", data={"value": "2"})
    started = time.monotonic()
    response = client.get("/var/a?wait=3", headers={"If-None-Match": '"1"'})
    assert (response.status_code, response.data) == (200, b"2")
    assert time.monotonic() - started < 2


def raw_chunks(response) -> queue.Queue[bytes]:
    """A stream's chunks as sent, read in a thread: a test waits for one with a time limit."""
    chunks: queue.Queue[bytes] = queue.Queue()

    def read() -> None:
        for chunk in response.response:
            chunks.put(chunk)

    threading.Thread(target=read, daemon=True).start()
    return chunks


def test_an_event_is_its_id_and_its_change_as_one_compact_line_of_utf8(app: Flask, client):
    response = client.get("/events", buffered=False)
    chunks = raw_chunks(response)
    assert chunks.get(timeout=10) == b"retry: 2000\n\n"
    client.put("/var/é", data={"value": "ü"})
    event = chunks.get(timeout=10)
    watch.get_feed(app).stopping = lambda: True  # ends the stream and its reading thread
    change = db.get_store(app).numbered_history("é", None, 1, True)[0]
    at = change.changed_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    data = (
        f'{{"name":"é","version":1,"op":"set","value":"ü","seq":{change.seq},"changed_at":"{at}"}}'
    )
    assert event == f"id: {change.seq}\ndata: {data}\n\n".encode()


def test_a_stream_is_not_woken_by_changes_outside_its_prefix(app: Flask, client, monkeypatch):
    store = db.get_store(app)
    store.ensure_ready()
    reads: list[int] = []
    window = store.changes_and_watermark

    def counted(*args):
        reads.append(args[0])
        return window(*args)

    monkeypatch.setattr(store, "changes_and_watermark", counted)
    stream = open_stream(app, "/events?prefix=app/")
    assert stream.started.wait(5)
    time.sleep(0.5)  # the stream has read once and waits on the feed
    for value in ("1", "2", "3", "4"):
        client.put("/var/other", data={"value": value})
        time.sleep(0.1)
    client.put("/var/app/a", data={"value": "v"})
    event = stream.next()
    stream.close()
    assert event["data"]["name"] == "app/a"
    assert len(reads) <= 3  # at the start and for app/a, not for each change of other


def test_a_quiet_stream_sends_a_keepalive_comment(app: Flask, client, monkeypatch):
    monkeypatch.setattr(events, "HEARTBEAT_SECONDS", 0.2)
    response = client.get("/events", buffered=False)
    chunks = raw_chunks(response)
    assert chunks.get(timeout=10) == b"retry: 2000\n\n"
    assert chunks.get(timeout=10) == b": keepalive\n\n"
    watch.get_feed(app).stopping = lambda: True


def test_a_long_poll_after_a_version_ignores_the_etag_of_if_none_match(client: FlaskClient):
    client.put("/var/a", data={"value": "1"})
    client.put("/var/a", data={"value": "2"})
    # after_version 2 says "wait for 3"; the ETag of version 1 alone would answer at once.
    response = client.get("/var/a?wait=1&after_version=2", headers={"If-None-Match": '"1"'})
    assert response.status_code == 304
