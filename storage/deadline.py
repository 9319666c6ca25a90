"""A request's deadline for its database work: ``DATABASE_TIMEOUT`` bounds a whole request.

Each wait for the database (a pooled connection, an answer) is bounded by the store's own
timeout; over a link that is slow but keeps moving, a request of several statements would still
take as long as all its round trips together. So the HTTP layer gives each request a deadline
(``start``), and the store keeps to it: a pool wait ends at it, and on MySQL and MariaDB no
statement starts after it (SQLite's statements are local: its busy timeout bounds each); the
store then raises ``DeadlineExceeded`` (a 503), after rolling back what the request began.
A request therefore ends within its deadline, plus the statement in flight at that moment
(itself bounded by the store's timeout) and a ROLLBACK. The answer is not cut short at the
deadline: that would leave the connection out of step, to be closed, and on a slow link a new
connection takes several round trips; nor is opening one bounded by it (each step of that has
``DATABASE_CONNECT_TIMEOUT``), or a slow link would never get a connection at all.

Without a deadline (the CLI, a backup, the change-feed poller, a watcher's wait) nothing changes.
Context-local: each thread (or greenlet) serving a request has its own.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from storage.model import StoreUnavailable

# (when it passes, on the monotonic clock; the seconds it was set to, for messages)
_deadline: ContextVar[tuple[float, float] | None] = ContextVar("database_deadline", default=None)


class DeadlineExceeded(StoreUnavailable):
    """The request used up its time (``DATABASE_TIMEOUT``) waiting for the database."""


def _from_now(seconds: float | None) -> tuple[float, float] | None:
    return None if seconds is None else (time.monotonic() + seconds, seconds)


def start(seconds: float | None) -> None:
    """Give the current context a deadline ``seconds`` from now (None: no deadline)."""
    _deadline.set(_from_now(seconds))


@contextmanager
def bounded(seconds: float | None) -> Iterator[None]:
    """``start(seconds)`` for the block; the deadline before it afterwards."""
    token = _deadline.set(_from_now(seconds))
    try:
        yield
    finally:
        _deadline.reset(token)


def remaining() -> float | None:
    """Seconds left before the deadline (None: no deadline); DeadlineExceeded if it passed."""
    deadline = _deadline.get()
    if deadline is None:
        return None
    left = deadline[0] - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded(
            f"the request used up its {deadline[1]:g} s (DATABASE_TIMEOUT) waiting for the database"
        )
    return left
