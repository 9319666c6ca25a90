"""What the MySQL driver's errors mean to the store, and running again what changed nothing.

``MySQLConnections.cursor`` maps each driver error with these codes: a connection that broke
(``ConnectionLost``), a statement the server rolled back or refused (``NotApplied``: it may
run again, ``retrying``), a timeout, a full disk. ``roll_back`` ends a transaction an error
interrupted; ``describe`` is an error as one line, without anything secret.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from storage import deadline
from storage.model import StoreUnavailable
from storage.mysql.driver import mysql

log = logging.getLogger("var_keeper.db")
_T = TypeVar("_T")


class ConnectionLost(StoreUnavailable):
    """The connection broke under a statement."""


class NotApplied(StoreUnavailable):
    """The server rolled the statement back or refused to run it: it changed nothing, so it may
    run again. A Galera certification conflict (or an InnoDB deadlock), a node not ready."""


# The connection is gone: 2006 server has gone away, 2013 lost during a query, 2055 lost on a
# system error, 1927 killed (MariaDB), 4031 closed by the server for inactivity (MySQL sends it
# on wait_timeout before closing), 1053 server shutdown in progress.
CONNECTION_LOST = {2006, 2013, 2055, 1927, 4031, 1053}
TIMEOUTS = {1205, 3024, 1969}  # lock wait timeout; MySQL / MariaDB statement time limit
# The client's own timeouts (no answer within DATABASE_TIMEOUT; errno 3024 too): the statement
# may still be running and its answer still on its way, so the connection is out of step. The
# driver leaves it open, whatever its message says (it tests for the builtin TimeoutError).
CLIENT_TIMEOUTS = (
    mysql.connector.errors.ReadTimeoutError,
    mysql.connector.errors.WriteTimeoutError,
)
# Out of disk space: 1114 "The table is full" (InnoDB cannot extend a tablespace), 1021 "Disk
# full"; and file errors (3 "Error writing file", 1030 "Got error from storage engine") when
# their OS error is 28, ENOSPC (``enospc``). The statement is rolled back; the connection stays
# usable.
OUT_OF_SPACE = {1114, 1021}
FILE_ERRORS = {3, 1030}
# Several hosts (a Galera cluster, or primaries behind failover): errors that mean the statement
# changed nothing and may run again. 1213: a deadlock, or on Galera a certification conflict at
# commit (another node's write to the same row won); the transaction was rolled back. 1047:
# "WSREP has not yet prepared node for application use", refused before it ran.
CONFLICT = 1213
NODE_NOT_READY = 1047
# Then 503. Measured on the 3-node test cluster, 24 writers of one row spread over the nodes:
# 2.6 % of the writes conflicted 6 times in a row, 0.14 % 10 times (12 writers: none).
_WRITE_ATTEMPTS = 10
# Before retry n: a random fraction of min(_BACKOFF_SECONDS * 2**n, _BACKOFF_MAX_SECONDS), so at
# most 2.6 s of waiting in all, well within DATABASE_TIMEOUT's default 10 s.
_BACKOFF_SECONDS = 0.01
_BACKOFF_MAX_SECONDS = 0.5


def roll_back(cur: Any, exc: BaseException) -> None:
    """Roll back the transaction ``exc`` interrupted, on its connection. Not when the client
    gave up waiting for an answer (``CLIENT_TIMEOUTS``): a ROLLBACK sent then would wait
    DATABASE_TIMEOUT again (in a stalled network a write took twice the timeout), or take the
    late answer of the statement before it for its own. That connection is closed instead (the
    error breaks the lease), which rolls the transaction back on the server just the same."""
    if isinstance(exc, CLIENT_TIMEOUTS):
        return
    # Past the request's deadline too (``DeadlineExceeded``: raised before a statement was
    # sent, so the connection is in step): one round trip keeps the connection, where closing
    # it would cost the next request a new one (several round trips on a slow link).
    with deadline.bounded(None):
        cur.execute("ROLLBACK")  # fails only on a broken connection: closed


def retrying(attempt: Callable[[], _T]) -> _T:
    """Run a write. One the server rolled back or refused (``NotApplied``: a deadlock, a Galera
    certification conflict, a node not ready) changed nothing, so it runs again, up to
    _WRITE_ATTEMPTS times with jittered exponential backoff, then StoreUnavailable (503)."""
    for number in range(1, _WRITE_ATTEMPTS + 1):
        try:
            return attempt()
        except NotApplied as exc:
            if number == _WRITE_ATTEMPTS:
                raise StoreUnavailable(
                    f"a write was rolled back {number} times in a row ({exc})"
                ) from exc
            log.info("write retried (attempt %d of %d): %s", number + 1, _WRITE_ATTEMPTS, exc)
            # Jitter: writers that collided once must not retry in step. Not for security.
            backoff = min(_BACKOFF_SECONDS * 2**number, _BACKOFF_MAX_SECONDS)
            time.sleep(random.uniform(0, backoff))  # noqa: S311
    raise AssertionError("unreachable")


def enospc(exc: Exception) -> bool:
    """Whether a file error's message says the disk is full (OS error 28)."""
    msg = str(getattr(exc, "msg", exc))
    return any(sign in msg for sign in ("No space left", "Errcode: 28", "errno: 28", "error 28 "))


def describe(exc: Exception) -> str:
    """A one-line account of a driver error, without anything secret."""
    errno = getattr(exc, "errno", None)
    msg = getattr(exc, "msg", None) or str(exc)
    text = f"{errno}: {msg}" if errno else msg
    return " ".join(text.split())
