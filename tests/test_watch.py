"""Watching: long-polls and Server-Sent Events, through the test client and real gunicorns."""

from __future__ import annotations

import functools
import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

import db
from tests.servers import Gunicorn
from tests.sse import open_stream

JSON = {"Accept": "application/json"}
get = functools.partial(requests.get, timeout=15)
post = functools.partial(requests.post, timeout=15)


def later(seconds: float, action: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(seconds), action()))
    thread.start()
    return thread


# --- Long-poll, through the test client (both stores) ----------------------------------------


def test_a_long_poll_answers_as_soon_as_a_newer_version_exists(app, client):
    client.post("/var/a", data={"value": "one"})
    writer = later(0.3, lambda: app.test_client().post("/var/a", data={"value": "two"}))
    started = time.monotonic()
    response = client.get("/var/a?wait=10&after_version=1")
    writer.join()
    assert (response.status_code, response.data, response.headers["ETag"]) == (200, b"two", '"2"')
    assert time.monotonic() - started < 3


def test_a_long_poll_answers_at_once_when_already_newer(client):
    client.post("/var/a", data={"value": "one"})
    client.post("/var/a", data={"value": "two"})
    started = time.monotonic()
    assert client.get("/var/a?wait=10&after_version=1").data == b"two"
    assert time.monotonic() - started < 1


def test_a_long_poll_times_out_with_304_and_the_etag(client):
    client.post("/var/a", data={"value": "one"})
    started = time.monotonic()
    response = client.get("/var/a?wait=1", headers={"If-None-Match": '"1"'})
    assert (response.status_code, response.headers["ETag"]) == (304, '"1"')
    assert 0.9 < time.monotonic() - started < 5


def test_a_long_poll_sees_a_delete_as_404(app, client):
    client.post("/var/a", data={"value": "one"})
    writer = later(0.3, lambda: app.test_client().delete("/var/a"))
    response = client.get("/var/a?wait=10&after_version=1")
    writer.join()
    assert (response.status_code, response.headers["ETag"]) == (404, '"2"')


def test_a_long_poll_on_a_missing_name_waits_for_its_creation(app, client):
    writer = later(0.3, lambda: app.test_client().post("/var/new", data={"value": "hi"}))
    response = client.get("/var/new?wait=10")
    writer.join()
    assert response.data == b"hi"


def test_a_long_poll_on_a_name_that_never_existed_times_out_with_304(client):
    started = time.monotonic()
    response = client.get("/var/never?wait=1")
    assert response.status_code == 304
    assert "ETag" not in response.headers  # there is no version to name
    assert 0.9 < time.monotonic() - started < 5


def test_a_long_poll_on_a_deleted_name_times_out_with_304_and_its_last_etag(client):
    client.post("/var/gone", data={"value": "x"})
    client.delete("/var/gone")
    response = client.get("/var/gone?wait=1")
    assert (response.status_code, response.headers["ETag"]) == (304, '"2"')


def test_a_long_poll_answers_404_at_the_expiry_deadline(client):
    client.put("/var/t", data={"value": "x", "ttl": "0.5"})
    started = time.monotonic()
    response = client.get("/var/t?wait=10&after_version=1")
    assert response.status_code == 404
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("query", ["wait=61", "wait=-1", "wait=x", "wait=1&after_version=x"])
def test_an_invalid_wait_is_400(client, query):
    assert client.get(f"/var/a?{query}").status_code == 400


# --- Server-Sent Events, through the test client ----------------------------------------------


def read_events(lines: Iterator[str], count: int, timeout: float = 10.0) -> list[dict]:
    """The next ``count`` events (id, event, data) of a stream, comments skipped, read in a
    thread of their own: a stream that never sends them fails the test after ``timeout``
    seconds instead of hanging it (its heartbeats keep any read time limit from firing)."""
    outcome: queue.Queue[list[dict] | BaseException] = queue.Queue()

    def read() -> None:
        try:
            outcome.put(parse_events(lines, count))
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            outcome.put(exc)

    threading.Thread(target=read, daemon=True).start()
    try:
        result = outcome.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"the stream sent fewer than {count} events in {timeout}s") from None
    if isinstance(result, BaseException):
        raise result
    return result


def parse_events(lines: Iterator[str], count: int) -> list[dict]:
    events: list[dict] = []
    current: dict = {}
    for line in lines:
        if line == "":
            if "data" in current:
                events.append(current)
                if len(events) == count:
                    return events
            current = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(": ")
            current[field] = json.loads(value) if field == "data" else value
    raise AssertionError(f"the stream ended after {len(events)} of {count} events")


def test_events_stream_changes_under_a_prefix_from_last_event_id(client):
    client.post("/var/app/a", data={"value": "1"})
    client.post("/var/other", data={"value": "x"})
    client.post("/var/app/b", data={"value": "2"})
    client.delete("/var/app/a")
    before = client.get("/var/app/a?history").get_json()["changes"][-1]["seq"] - 1
    response = client.get(
        "/events?prefix=app/", headers={"Last-Event-ID": str(before)}, buffered=False
    )
    assert response.mimetype == "text/event-stream"
    lines = (line.decode() for chunk in response.response for line in chunk.splitlines())
    events = read_events(lines, 3)
    response.close()
    assert [(e["data"]["name"], e["data"]["op"]) for e in events] == [
        ("app/a", "set"),
        ("app/b", "set"),
        ("app/a", "delete"),
    ]
    assert [int(e["id"]) for e in events] == [e["data"]["seq"] for e in events]


def test_events_resume_after_retention_removed_the_gap_is_a_resync(app, client):
    for n in range(3):
        client.post("/var/a", data={"value": str(n)})
    db.get_store(app).sweep(keep_versions=1, keep_days=30, batch=100)
    response = client.get("/events", headers={"Last-Event-ID": "0"}, buffered=False)
    lines = (line.decode() for chunk in response.response for line in chunk.splitlines())
    event = read_events(lines, 1)[0]
    response.close()
    assert event["event"] == "resync"
    assert int(event["id"]) == event["data"]["seq"]


def test_an_invalid_last_event_id_is_400(client):
    assert client.get("/events", headers={"Last-Event-ID": "abc"}).status_code == 400


# --- Across server instances (real gunicorns on one database) -------------------------------


@pytest.fixture
def two_servers(gunicorn: Callable[..., Gunicorn], store_url: str) -> tuple[Gunicorn, Gunicorn]:
    env = {"DATABASE_URL": store_url}
    return gunicorn(env, workers=2), gunicorn(env, workers=2)


@pytest.mark.slow
def test_a_watcher_sees_a_write_made_through_another_instance(two_servers):
    watched, written = two_servers
    assert post(written.url("/var/w"), data={"value": "one"}).text == "OK"
    result: dict[str, object] = {}

    def watch() -> None:
        response = get(watched.url("/var/w?wait=20&after_version=1"))
        result.update(status=response.status_code, text=response.text, at=time.monotonic())

    watcher = threading.Thread(target=watch)
    watcher.start()
    time.sleep(0.5)  # the watcher is waiting
    wrote_at = time.monotonic()
    post(written.url("/var/w"), data={"value": "two"})
    watcher.join(timeout=25)
    assert (result["status"], result["text"]) == (200, "two")
    assert result["at"] - wrote_at < 1.5  # poll interval 0.2 s, plus the requests


@pytest.mark.slow
def test_sse_resume_with_last_event_id_loses_and_duplicates_nothing(two_servers):
    watched, written = two_servers
    expected: list[tuple[str, int]] = []
    seen: list[tuple[str, int, str]] = []

    def write(count: int, start: int) -> None:
        for n in range(start, start + count):
            name = f"s/{n % 3}"
            body = post(written.url(f"/var/{name}"), data={"value": str(n)}, headers=JSON).json()
            expected.append((name, body["version"]))
        post(written.url("/var/elsewhere"), data={"value": "not under s/"})

    last_id = ""  # the first connection starts from now
    for round_number in range(3):
        with requests.get(
            watched.url("/events?prefix=s/"),
            headers={"Last-Event-ID": last_id} if last_id else {},
            stream=True,
            timeout=15,
        ) as stream:
            writer = later(0.2, lambda r=round_number: write(7, r * 7))
            # Read only part of what is written, then drop the connection mid-stream.
            for event in read_events(stream.iter_lines(decode_unicode=True), 4):
                seen.append((event["data"]["name"], event["data"]["version"], event["id"]))
                last_id = event["id"]
            writer.join()
    with requests.get(
        watched.url("/events?prefix=s/"),
        headers={"Last-Event-ID": last_id},
        stream=True,
        timeout=15,
    ) as stream:
        rest = read_events(stream.iter_lines(decode_unicode=True), len(expected) - len(seen))
    seen += [(e["data"]["name"], e["data"]["version"], e["id"]) for e in rest]

    assert [(name, version) for name, version, _ in seen] == expected
    ids = [int(i) for _, _, i in seen]
    assert ids == sorted(set(ids))


@pytest.mark.slow
def test_sigterm_ends_open_streams_promptly(gunicorn, tmp_path: Path):
    server = gunicorn({"DATABASE_URL": f"sqlite:///{tmp_path / 'vars.db'}"}, workers=1)
    with requests.get(server.url("/events"), stream=True, timeout=15) as stream:
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        waiting = later(0, lambda: get(server.url("/var/x?wait=60")))
        time.sleep(0.5)
        started = time.monotonic()
        assert server.stop() == 0
        assert time.monotonic() - started < 5
        waiting.join(timeout=5)


def test_a_resumed_stream_delivers_a_backlog_past_a_page_then_goes_on_live(app, client):
    # More changes than one read of the change log (events.PAGE, 100) are waiting.
    client.post("/var/s/0", data={"value": "0"})
    first = client.get("/var/s/0?history").get_json()["changes"][0]["seq"]
    operations = [{"op": "set", "name": f"s/{n:03d}", "value": str(n)} for n in range(1, 151)]
    assert client.post("/txn", json={"operations": operations}).status_code == 200
    reader = open_stream(app, "/events?prefix=s/", last_event_id=first)
    try:
        backlog = reader.take(150)
        assert [e["data"]["name"] for e in backlog] == [f"s/{n:03d}" for n in range(1, 151)]
        assert [int(e["id"]) for e in backlog] == sorted({int(e["id"]) for e in backlog})
        client.post("/var/elsewhere", data={"value": "x"})
        client.post("/var/s/live", data={"value": "x"})
        live = reader.next()
        assert (live["data"]["name"], live.get("event")) == ("s/live", None)
    finally:
        reader.close()


def test_a_stream_resumed_at_the_newest_event_has_no_resync(app, client):
    client.post("/var/r/a", data={"value": "1"})
    head = client.get("/var/r/a?history").get_json()["changes"][0]["seq"]
    reader = open_stream(app, "/events", last_event_id=head)
    try:
        client.post("/var/r/b", data={"value": "2"})
        event = reader.next()
        assert (event.get("event"), event["data"]["name"]) == (None, "r/b")
    finally:
        reader.close()
