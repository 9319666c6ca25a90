"""The bounded pool of database connections each process keeps (both stores use it)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from storage import deadline
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
        self._lent = 0  # connections lent out now (at most ``size``)
        # One lock for the idle list and the count; borrowers wait on it only when all ``size``
        # are lent (threading.BoundedSemaphore, used before, took several Python-level lock
        # operations on every statement even when a connection was free).
        self._free = threading.Condition(threading.Lock())

    def _acquire(self) -> Lease | None:
        """A slot, and the warmest idle connection if there is one (None: open one)."""
        left = deadline.remaining()  # the request's deadline, if it ends first
        wait = self._wait if left is None else min(self._wait, left)
        with self._free:
            if self._lent >= self.size and not self._free.wait_for(
                lambda: self._lent < self.size, timeout=wait
            ):
                deadline.remaining()
                raise StoreUnavailable(
                    f"all {self.size} database connections of this process stayed busy "
                    f"for {self._wait}s"
                )
            self._lent += 1
            return self._idle.pop() if self._idle else None

    def _release(self, lease: Lease | None) -> None:
        with self._free:
            if lease is not None:
                self._idle.append(lease)
            self._lent -= 1
            self._free.notify()

    @contextmanager
    def lease(self) -> Iterator[Lease]:
        if self._pid != os.getpid():
            self._reset()  # the parent's connections stay the parent's
        idle = self._acquire()
        lease = None
        try:
            lease = self._take(idle)
            yield lease
        except BaseException as exc:
            # Not an error the store handled (a greenlet killed mid-statement, an interrupt):
            # the connection may be half-way through a reply, so it is not lent again.
            if lease is not None and not isinstance(exc, Exception):
                lease.broken = True
            raise
        finally:
            if lease is not None and lease.broken:
                self._close(lease)
                lease = None
            elif lease is not None:
                lease.used = time.monotonic()
            self._release(lease)

    def _take(self, idle: Lease | None) -> Lease:
        """``idle`` if it is still usable, else another idle one, else a new connection."""
        while idle is not None:
            if self._alive(idle.conn, idle.used):
                return idle
            self._close(idle)
            with self._free:
                idle = self._idle.pop() if self._idle else None
        conn = self._opener()
        self._on_change(+1)
        return Lease(conn, time.monotonic())

    def _close(self, lease: Lease) -> None:
        self._on_change(-1)
        self._closer(lease.conn)

    def close_idle(self) -> None:
        """Close every connection not lent out (they are opened again when needed)."""
        with self._free:
            idle, self._idle = self._idle, []
        for lease in idle:
            self._close(lease)
