"""The bounded pool of database connections each process keeps (both stores use it)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from storage.model import StoreUnavailable


@dataclass(slots=True)
class Lease:
    """A pooled connection, with the cursor reused for every statement on it."""

    conn: Any
    used: float
    cursor: Any = None
    broken: bool = False


class ConnectionPool:
    """At most ``size`` open connections per process, each lent to one caller at a time.

    Not mysql-connector's pool: exhausted, it raises PoolError at once instead of waiting, and
    with ``pool_reset_session=False`` the next borrower sees the previous one's open
    transaction. Here a borrower waits up to ``wait`` seconds and then gets StoreUnavailable
    (a 503), connections are in autocommit and every explicit transaction ends before the
    connection goes back, so no session state passes between requests. A connection found
    dead on the way out of the pool is replaced; one that failed under a statement is closed,
    never lent again. After a fork the child starts with an empty pool: no connection crosses
    a fork. The pool works the same under threads and under gevent's greenlets.
    """

    def __init__(
        self,
        opener: Callable[[], Any],
        closer: Callable[[Any], None],
        alive: Callable[[Any, float], bool],
        size: int,
        wait: float,
        on_change: Callable[[int], None],
    ) -> None:
        self._opener, self._closer, self._alive = opener, closer, alive
        self.size, self._wait, self._on_change = size, wait, on_change
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._idle: list[Lease] = []  # last in, first out: the warmest connection first
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.size)

    @contextmanager
    def lease(self) -> Iterator[Lease]:
        if self._pid != os.getpid():
            self._reset()  # the parent's connections stay the parent's
        if not self._slots.acquire(timeout=self._wait):
            raise StoreUnavailable(
                f"all {self.size} database connections of this process stayed busy "
                f"for {self._wait}s"
            )
        lease = None
        try:
            lease = self._take()
            yield lease
        except BaseException as exc:
            # Not an error the store handled (a greenlet killed mid-statement, an interrupt):
            # the connection may be half-way through a reply, so it is not lent again.
            if lease is not None and not isinstance(exc, Exception):
                lease.broken = True
            raise
        finally:
            if lease is not None:
                if lease.broken:
                    self._close(lease)
                else:
                    lease.used = time.monotonic()
                    with self._lock:
                        self._idle.append(lease)
            self._slots.release()

    def _take(self) -> Lease:
        while True:
            with self._lock:
                lease = self._idle.pop() if self._idle else None
            if lease is None:
                conn = self._opener()
                self._on_change(+1)
                return Lease(conn, time.monotonic())
            if self._alive(lease.conn, lease.used):
                return lease
            self._close(lease)

    def _close(self, lease: Lease) -> None:
        self._on_change(-1)
        self._closer(lease.conn)

    def close_idle(self) -> None:
        """Close every connection not lent out (they are opened again when needed)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for lease in idle:
            self._close(lease)
