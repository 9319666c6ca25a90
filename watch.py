"""Work a process does besides answering requests, and the one place where it starts: the
schema preparation, the sweeper, and the change feed.

``init_app`` (called by ``create_app``) starts it, so it runs wherever an app is built: in each
gunicorn worker after the fork (no preload), under ``flask run`` and under the test client.
``stop_background`` ends an app's work, ``stop_all`` every app's; an app that is dropped
without either stops its work when it is collected.
The database is the only state that workers and replicas share, so all of it reads the database:

- schema preparation: ``Store.wait_until_ready`` in a thread, so that a worker gets ready (and
  logs that it is waiting for the database) without waiting for a first request.
- ``ChangeFeed``: while at least one request waits for a change (a long-poll, an event
  stream), one poller per process reads the change log's newest entries (names and seqs, no
  values: an index range scan that finds nothing when nothing changed; on MySQL it first
  numbers the entries committed since: ``storage.mysql.numbering``) every
  ``WATCH_POLL_INTERVAL`` seconds and wakes the waiting requests whose names it saw. A waiting
  request costs a thread (of the worker's watcher pool: workers.py; a greenlet under gevent)
  blocked on a Condition and no query at all; with nobody waiting, the poller stops.
- the sweeper: one background loop per process, at a jittered interval, that removes expired
  variables and changes out of retention in small batches. Every removal is conditioned on
  what it saw, so any number of sweepers (workers, replicas) may run at once.

Under gunicorn's gevent worker (``GUNICORN_WORKER_CLASS=gevent``) the threads here are
greenlets (it patches ``threading``).
"""

from __future__ import annotations

import logging
import random
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from flask import Flask, current_app

import db

log = logging.getLogger("var_keeper.watch")

# Names of the latest changes the feed keeps to decide who to wake; a waiter further behind
# is woken to look in the database itself.
_RECENT_CHANGES = 10_000
_POLL_BATCH = 1000
# A waiter looks at least this often whether the worker is stopping.
_STOP_CHECK_SECONDS = 1.0
SWEEP_BATCH = 100
SWEEP_BATCHES_PER_PASS = 10


class ChangeFeed:
    """One per process: a poller of the change log that wakes waiting requests."""

    def __init__(self, store: db.Store, interval: float) -> None:
        self._store = store
        self.interval = interval
        # Set by gunicorn.conf.py: true once the worker is shutting down, so streams end.
        self.stopping: Callable[[], bool] = lambda: False
        self._cond = threading.Condition()
        self._waiters = 0
        self._polling = False
        self._seen: int | None = None  # the newest seq polled; None until the poller starts
        self._complete_after = 0  # _recent holds every change after this seq
        self._recent: deque[tuple[int, str]] = deque(maxlen=_RECENT_CHANGES)
        self.polls = 0  # queries the poller made, for the benchmark

    def wait(self, after_seq: int, matches: Callable[[str], bool], timeout: float) -> int | None:
        """Block until a change with a seq above ``after_seq`` whose name ``matches`` is
        committed; return the newest seq polled (every change up to it is committed). None
        when ``timeout`` seconds pass first, or the worker is stopping."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._waiters += 1
            try:
                while True:
                    if not self._polling:  # the first waiter, or the poller gave up on an error
                        self._polling = True
                        threading.Thread(
                            target=self._poll, name="var_keeper-feed", daemon=True
                        ).start()
                    if self._has_match(after_seq, matches):
                        return self._seen
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self.stopping():
                        return None
                    self._cond.wait(min(remaining, _STOP_CHECK_SECONDS))
            finally:
                self._waiters -= 1

    def _has_match(self, after_seq: int, matches: Callable[[str], bool]) -> bool:
        if self._seen is None or self._seen <= after_seq:
            return False
        if after_seq < self._complete_after:
            return True  # the feed does not know what happened before it started: go and look
        for seq, name in reversed(self._recent):
            if seq <= after_seq:
                return False
            if matches(name):
                return True
        return False

    def _poll(self) -> None:
        try:
            start = self._store.numbered_last_seq()
        except db.StoreError as exc:
            log.warning("change feed cannot start: %s", exc)
            start = None
        with self._cond:
            if start is not None:
                self._seen = self._complete_after = start
                self._recent.clear()
        while True:
            with self._cond:
                if not self._waiters or self._seen is None:
                    self._polling = False
                    self._seen = None
                    self._cond.notify_all()
                    return
                after = self._seen
            try:
                changes = self._store.numbered_recent_changes(after, _POLL_BATCH)
                self.polls += 1
            except db.StoreError as exc:
                log.warning("change feed: %s", exc)
                changes = []
            if changes:
                with self._cond:
                    self._recent.extend((c.seq, c.name) for c in changes)
                    self._seen = changes[-1].seq
                    self._cond.notify_all()
            if len(changes) < _POLL_BATCH:
                time.sleep(self.interval)


@dataclass(frozen=True, slots=True)
class _Background:
    feed: ChangeFeed
    stop: threading.Event


_EXTENSION = "var_keeper.watch"
# The stop event of every app whose work may still run, for stop_all (a test-suite builds many).
_RUNNING: weakref.WeakSet[threading.Event] = weakref.WeakSet()


def init_app(app: Flask) -> None:
    """Give ``app`` its change feed, and start preparing the schema and sweeping."""
    store = db.get_store(app)
    stop = threading.Event()
    _RUNNING.add(stop)
    app.extensions[_EXTENSION] = _Background(
        ChangeFeed(store, app.config["WATCH_POLL_INTERVAL"]), stop
    )
    _start("var_keeper-schema", store.wait_until_ready, stop)
    sweep = (
        app.config["HISTORY_KEEP_VERSIONS"],
        app.config["HISTORY_KEEP_DAYS"],
        app.config["SWEEP_INTERVAL"],
    )
    _start("var_keeper-sweeper", _sweep_until_stopped, store, *sweep, stop)
    # Neither thread holds the app: one dropped without stop_background (a test's) stops them.
    weakref.finalize(app, stop.set)


def get_feed(app: Flask | None = None) -> ChangeFeed:
    """The app's change feed (the current app's by default)."""
    return _background(app).feed


def stop_background(app: Flask | None = None) -> None:
    """Stop the app's schema preparation and sweeper (a pass under way finishes first)."""
    _background(app).stop.set()


def stop_all() -> None:
    """Stop the background work of every app built in this process."""
    for stop in list(_RUNNING):
        stop.set()


def _background(app: Flask | None) -> _Background:
    return (app or current_app).extensions[_EXTENSION]


def _start(name: str, target: Callable[..., None], *args: object) -> None:
    threading.Thread(target=target, args=args, name=name, daemon=True).start()


def _sweep_until_stopped(
    store: db.Store, keep_versions: int, keep_days: float, interval: float, stop: threading.Event
) -> None:
    """Sweep expired variables and old history now and then, until ``stop`` is set."""
    # Jitter: workers and replicas started together do not sweep in step.
    while not stop.wait(interval * random.uniform(0.5, 1.5)):  # noqa: S311 - not for security
        if not store.ready:
            continue
        # Small batches (short transactions, never a long lock), but several of them when
        # there is a backlog, so that pruning keeps up with a busy writer.
        for _ in range(SWEEP_BATCHES_PER_PASS):
            try:
                result = store.sweep(keep_versions, keep_days, SWEEP_BATCH)
            except db.StoreError as exc:
                log.warning("sweep failed (retried next time): %s", exc)
                break
            except Exception:
                # Not the database being away (say, its tables dropped under it): logged, and
                # the sweeper lives on to try again.
                log.exception("sweep failed unexpectedly (retried next time)")
                break
            if result.expired or result.pruned:
                log.info("swept %d expired, %d old changes", result.expired, result.pruned)
            if result.expired < SWEEP_BATCH and result.pruned < SWEEP_BATCH:
                break
