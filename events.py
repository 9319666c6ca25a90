"""Watching over HTTP: the long-poll read (``GET /var/<name>?wait=``) and the Server-Sent
Events stream ``GET /events``.

Both wait on the process's ``watch.ChangeFeed`` (one poller of the change log, whoever waits)
and read what changed from the store: the database is the only state workers share.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response

import access
import db
import inputs
import watch
from errors import ApiError
from responses import change_dict, etag, no_cache, variable_response

bp = Blueprint("events", __name__)

HEARTBEAT_SECONDS = 15  # a comment line keeps proxies from closing a quiet stream
RETRY_MS = 2000  # EventSource's reconnection delay
PAGE = 100  # changes read from the store at a time


def long_poll(name: str, wait: float, after: int | None) -> Response:
    """Answer as soon as ``name`` is at a version newer than ``after`` (by default the version
    it is at now): 200 with it, 404 if that change deleted or expired it; or 304 once ``wait``
    seconds passed without one. A name that does not exist (yet) is waited for like any other:
    200 once it is created, else 304 (with the ETag of its last change, if it ever had one)."""
    store, feed = db.ready_store(), watch.get_feed()
    deadline = time.monotonic() + wait
    # The seq first, then the state: a change after the read has a seq above it.
    seen = store.numbered_last_seq()
    var, version = store.state(name)
    after = version if after is None else after
    while version <= after:
        timeout = deadline - time.monotonic()
        if var is not None and var.expires_at is not None:  # wake at the deadline too
            timeout = min(timeout, (var.expires_at - datetime.now(UTC)).total_seconds())
        top = feed.wait(seen, lambda changed: changed == name, max(timeout, 0))
        if (top is None and time.monotonic() >= deadline) or feed.stopping():
            # Nothing changed since ``after``: 304, whether the name exists or not.
            return no_cache(Response(status=304), version or None)
        seen = top if top is not None else seen
        with db.fresh_deadline():
            var, version = store.state(name)
    if var is None:
        raise ApiError(404, "not_found", f"no variable named {name!r}", {"ETag": etag(version)})
    return no_cache(variable_response(var), var.version)


@bp.get("/events")
def stream() -> Response:
    """Server-Sent Events: every change under ``prefix`` from now, or after the seq of
    ``Last-Event-ID`` (``after_seq`` in the query for clients that cannot set it)."""
    query = inputs.events_query()
    store, feed = db.ready_store(), watch.get_feed()
    last = query.last_seq
    head = store.numbered_last_seq()
    # Only the changes the caller's token may read (by the policy in force at each event).
    visible = access.read_filter()
    response = Response(
        _event_stream(store, feed, query.prefix, last, head, visible),
        mimetype="text/event-stream",
    )
    no_cache(response)
    response.headers["X-Accel-Buffering"] = "no"  # nginx: pass events on at once
    return response


def _sse(event: str | None, seq: int, data: dict[str, Any]) -> str:
    head = f"event: {event}\n" if event else ""
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"{head}id: {seq}\ndata: {body}\n\n"


def _resync(seq: int, why: str) -> str:
    reason = f"{why}: read the current state, then carry on from this event"
    return _sse("resync", seq, {"seq": seq, "reason": reason})


def _event_stream(
    store: db.Store,
    feed: watch.ChangeFeed,
    prefix: str,
    last: int | None,
    head: int,
    visible: Callable[[str], bool] = lambda name: True,
) -> Iterator[str]:
    """The events after ``last`` (or ``head``), forever. Every change, or a ``resync`` event
    where some are missing: when ``last`` is not a seq we issued, and whenever retention
    removed a change after the stream's position before the stream read it (resuming from
    long ago, or a stream that lags behind the pruning). The client then reads the current
    state and carries on from the resync's id."""
    yield f"retry: {RETRY_MS}\n\n"
    after = head if last is None else last
    if last is not None and last > head:
        yield _resync(head, "that event is not one this database issued")
        after = head
    upto = head

    def matches(name: str) -> bool:
        return name.startswith(prefix) and visible(name)

    while not feed.stopping():
        changes, pruned_through = store.changes_and_watermark(after, upto, prefix, PAGE)
        if pruned_through > after:  # read in the same snapshot as the window
            head = store.numbered_last_seq()  # at least pruned_through
            yield _resync(head, "changes after that event are no longer retained")
            after, upto = head, max(upto, head)
            continue
        for change in changes:
            if visible(change.name):
                yield _sse(None, change.seq, change_dict(change))
        if len(changes) == PAGE:
            after = changes[-1].seq
            continue
        after = upto
        top = feed.wait(after, matches, HEARTBEAT_SECONDS)
        if top is None:
            yield ": keepalive\n\n"
        else:
            upto = top
