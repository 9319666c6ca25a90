"""MySQL/MariaDB connections: failover across hosts, Galera readiness, the pool's leases.

A store's statements all go through ``MySQLConnections``: ``query`` (a read, retried once on a
lost connection), ``execute`` (one write statement) and ``transaction`` (several), the last two
retried as a whole when the server says it applied nothing (a deadlock, a Galera certification
conflict, a node not ready). With several hosts in ``DATABASE_URL`` a process connects to the
first that is ready, skips one that failed lately, and goes back to the first once it is back.
What each driver error means, and the retrying, are in ``storage.mysql.errors``.
"""

from __future__ import annotations

import logging
import select
import sys
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from storage import deadline
from storage.model import OutOfSpace, StoreUnavailable
from storage.mysql.driver import cursor_class, mysql
from storage.mysql.errors import (
    CONFLICT,
    CONNECTION_LOST,
    FILE_ERRORS,
    NODE_NOT_READY,
    OUT_OF_SPACE,
    TIMEOUTS,
    ConnectionLost,
    NotApplied,
    describe,
    enospc,
    retrying,
    roll_back,
)
from storage.pool import ConnectionPool
from storage.url import DatabaseURL

log = logging.getLogger("var_keeper.db")
_T = TypeVar("_T")

# MySQL 8's default utf8mb4_0900_ai_ci does not exist on MariaDB (before 11.4) and MariaDB 11's
# uca1400 collations do not exist on MySQL; utf8mb4_unicode_ci exists on both. Names are compared
# as bytes anyway (VARBINARY), values are stored with utf8mb4_bin: no collation ever merges two
# distinct strings.
MYSQL_CHARSET = "utf8mb4"
MYSQL_COLLATION = "utf8mb4_unicode_ci"
MYSQL_SQL_MODE = ",".join(
    ("STRICT_ALL_TABLES", "NO_ZERO_IN_DATE", "NO_ZERO_DATE", "NO_ENGINE_SUBSTITUTION")
)
# Run on every new connection; the value is an int computed from DATABASE_TIMEOUT, never input.
_LOCK_WAIT_SQL = "SET SESSION innodb_lock_wait_timeout = {seconds}, lock_wait_timeout = {seconds}"

_HOST_DOWN_SECONDS = 5.0  # a host that failed is tried last for this long
# A connection to any host but the first is closed after this long, so that a process goes back
# to its first host once that host is back (the hosts' order is the operator's preference).
_FAILBACK_SECONDS = 10.0
# On a Galera node, wait until the node has applied every write the cluster committed before
# this session's reads (1) and UPDATE/DELETE (2): a client reads its own writes through any
# node, and a conditional write does not fail on a version another node already replaced.
_GALERA_SYNC_WAIT = 3
_GALERA_STATUS_SQL = (
    "SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_ready', 'wsrep_local_state')"
)


class MySQLConnections:
    """The connections of one store in one process: opened on the first host that is ready,
    lent from a ``ConnectionPool``, the driver's errors mapped to the store's."""

    def __init__(
        self,
        url: DatabaseURL,
        connect_timeout: int,
        statement_timeout: int,
        pool_size: int,
        on_change: Callable[[int], None],
    ) -> None:
        self.url = url
        self.errors = mysql.connector.errors
        self.connect_timeout = connect_timeout
        self.statement_timeout = statement_timeout
        # Whether the hosts are Galera nodes (known from the first connection on): writes then
        # never go in one round trip (``transaction_in_one_trip``).
        self.galera = False
        # Per process: until when each host (an index into url.hosts) is tried last, and which
        # host each open connection is on, with when it was opened.
        self._down_until: dict[int, float] = {}
        self._host_of: weakref.WeakKeyDictionary[Any, tuple[int, float]] = (
            weakref.WeakKeyDictionary()
        )
        self._pool = ConnectionPool(
            lambda: self.connect(self.url.database),
            self.close_connection,
            self._reusable,
            size=pool_size,
            wait=statement_timeout,
            on_change=on_change,
        )
        # The C extension does its socket I/O in C, out of gevent's reach: under gevent workers
        # one slow statement would stall every request of the worker. So there it is not used.
        self._use_pure = _gevent_sockets() or not mysql.connector.HAVE_CEXT
        self._cursor_class = cursor_class(self._use_pure)
        if not self._use_pure:
            why = "C extension"
        elif mysql.connector.HAVE_CEXT:
            why = "pure Python: gevent workers need cooperative sockets"
        else:
            # ``python app.py`` gives gunicorn the connector's own OpenSSL where it can
            why = (
                "pure Python: the C extension did not load (it needs OpenSSL >= 3.2: see "
                "storage/mysql/driver.py, environ_for_c_extension)"
            )
        log.info(
            "mysql-connector-python %s: connection class %s (%s)",
            mysql.connector.__version__,
            "MySQLConnection" if self._use_pure else "CMySQLConnection",
            why,
        )

    # Connections

    def connect(self, database: str | None) -> Any:
        args: dict[str, Any] = {
            "host": self.url.host,
            "port": self.url.port,
            "user": self.url.user,
            "password": self.url.password,
            "charset": MYSQL_CHARSET,
            "collation": MYSQL_COLLATION,
            "autocommit": True,
            "sql_mode": MYSQL_SQL_MODE,
            "time_zone": "+00:00",
            "connection_timeout": self.connect_timeout,
            "read_timeout": self.statement_timeout,
            "write_timeout": self.statement_timeout,
            # The server gives up waiting on a row or table lock before the client gives up on
            # the statement: otherwise a write answered 503 stays queued on the lock (50 s by
            # default) and takes effect once the lock is released, after its client was told
            # it failed. Both variables exist on MySQL and MariaDB; integers only.
            "init_command": _LOCK_WAIT_SQL.format(seconds=max(1, self.statement_timeout - 1)),
            "use_pure": self._use_pure,
            # A write's transaction goes in one round trip (``transaction_in_one_trip``).
            "client_flags": [mysql.connector.constants.ClientFlag.MULTI_STATEMENTS],
        }
        if database:
            args["database"] = database
        conn = self._connect_first_ready(args)
        try:
            cur = conn.cursor()
            # A write is a transaction (the row and its change-log entry). Under
            # REPEATABLE READ its UPDATE of a missing name would hold a gap lock until COMMIT,
            # and two writers creating names in the same gap would deadlock on each other's:
            # READ COMMITTED locks only the rows it touches. Same syntax on MySQL and MariaDB.
            cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
            cur.close()
        except self.errors.Error as exc:
            self.close_connection(conn)
            raise StoreUnavailable(describe(exc)) from exc
        return conn

    def _connect_first_ready(self, args: dict[str, Any]) -> Any:
        """A connection to the first host that answers and is ready, trying the hosts in their
        order, those that failed lately last. Each try has the whole connect timeout."""
        now = time.monotonic()
        hosts = list(enumerate(self.url.hosts or [(self.url.host, self.url.port)]))
        hosts.sort(key=lambda item: self._down_until.get(item[0], 0.0) > now)  # stable
        failures: list[str] = []
        for index, (host, port) in hosts:
            try:
                conn = mysql.connector.connect(**{**args, "host": host, "port": port})
            except self.errors.Error as exc:
                if exc.errno == 1049 or len(hosts) == 1:  # "Unknown database": same on every host
                    raise StoreUnavailable(describe(exc)) from exc
                failures.append(f"{host}:{port}: {describe(exc)}")
                self._mark_down(index)
                continue
            try:
                problem = self._galera_setup(conn)
            except self.errors.Error as exc:
                problem = describe(exc)
            if problem is None:
                self._host_of[conn] = (index, time.monotonic())
                if failures:
                    log.warning("connected to %s:%s after: %s", host, port, "; ".join(failures))
                return conn
            self.close_connection(conn)
            failures.append(f"{host}:{port}: {problem}")
            self._mark_down(index)
        raise StoreUnavailable("no database host is ready: " + "; ".join(failures))

    def _galera_setup(self, conn: Any) -> str | None:
        """On a Galera node: why it cannot serve yet (not synced with the cluster), or None
        after turning on read-your-writes for the session. Elsewhere (MySQL, a lone MariaDB,
        whose wsrep variables are off or absent): None, and nothing is changed."""
        cur = conn.cursor()
        try:
            try:
                cur.execute("SELECT @@global.wsrep_on")
                wsrep_on = cur.fetchall()[0][0]
            except self.errors.Error as exc:
                if exc.errno == 1193:  # "Unknown system variable": MySQL, no Galera
                    return None
                raise
            if not wsrep_on:  # MariaDB without Galera
                return None
            cur.execute(_GALERA_STATUS_SQL)
            status = {str(name).lower(): str(value) for name, value in cur.fetchall()}
            if "wsrep_local_state" not in status:  # no Galera provider loaded
                return None
            self.galera = True
            if status.get("wsrep_ready") != "ON" or status["wsrep_local_state"] != "4":
                return (
                    f"Galera node not synced (wsrep_ready {status.get('wsrep_ready')}, "
                    f"wsrep_local_state {status['wsrep_local_state']})"
                )
            cur.execute(f"SET SESSION wsrep_sync_wait = {_GALERA_SYNC_WAIT}")  # a constant
            return None
        finally:
            cur.close()

    def _mark_down(self, index: int) -> None:
        self._down_until[index] = time.monotonic() + _HOST_DOWN_SECONDS

    def _reusable(self, conn: Any, last_used: float) -> bool:
        """The pool's test before lending an idle connection: alive, and on the first host
        unless that host failed lately or the connection is younger than _FAILBACK_SECONDS."""
        if not _idle_alive(conn, last_used):
            return False
        index, opened = self._host_of.get(conn, (0, 0.0))
        now = time.monotonic()
        return index == 0 or now - opened < _FAILBACK_SECONDS or self._down_until.get(0, 0.0) > now

    def close_connection(self, conn: Any) -> None:
        try:
            conn.close()
        except self.errors.Error as exc:  # a broken connection may fail to close: it is gone
            log.debug("closing a broken connection: %s", exc)

    def close(self) -> None:
        self._pool.close_idle()

    @contextmanager
    def cursor(self) -> Iterator[Any]:
        """A cursor on a pooled connection, with the driver's errors mapped to ours."""
        with self._pool.lease() as lease:
            try:
                if lease.cursor is None:
                    # Made once per connection: conn.cursor() pings the server every time.
                    lease.cursor = lease.conn.cursor(cursor_class=self._cursor_class)
                yield lease.cursor
            except self.errors.Error as exc:
                errno = getattr(exc, "errno", None)
                if errno is None or errno < 0 or 2000 <= errno < 3000:
                    # A client-side error (e.g. "Unread result found"): the connection may be
                    # out of step with the server, so it is not lent again.
                    lease.broken = True
                if errno == CONFLICT:  # rolled back; the connection is fine
                    raise NotApplied(describe(exc)) from exc
                if errno == NODE_NOT_READY:  # this node left the cluster's primary component
                    lease.broken = True
                    self._mark_down(self._host_of.get(lease.conn, (0, 0.0))[0])
                    raise NotApplied(describe(exc)) from exc
                if errno in CONNECTION_LOST or isinstance(exc, self.errors.InterfaceError):
                    lease.broken = True
                    self._mark_down(self._host_of.get(lease.conn, (0, 0.0))[0])
                    raise ConnectionLost(describe(exc)) from exc
                if errno in OUT_OF_SPACE or (errno in FILE_ERRORS and enospc(exc)):
                    raise OutOfSpace(
                        f"the database is out of disk space ({describe(exc)})"
                    ) from exc
                if errno in TIMEOUTS:
                    lease.broken = True  # the statement may still hold the connection busy
                    deadline.remaining()  # the request's deadline cut the wait: say so
                    raise StoreUnavailable(f"the database timed out ({describe(exc)})") from exc
                if isinstance(exc, self.errors.OperationalError):
                    # E.g. -1 "MySQL Connection not available": a ping that timed out leaves
                    # its reply unread (the driver does not close the connection, whatever its
                    # message says). Reused, the connection would hand each statement the
                    # previous one's reply: a SELECT gets an OK packet, a stored name reads 404.
                    lease.broken = True
                    raise StoreUnavailable(describe(exc)) from exc
                raise

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read. A read may safely run twice, so a lost connection is replaced (on the
        next host, if the URL has several) and the read retried once; a write is retried only
        when the server says it changed nothing (see ``execute``)."""
        try:
            with self.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall()
        except (ConnectionLost, NotApplied):
            with self.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> tuple[int, int | None]:
        """Run one write statement; return (affected rows, last insert id).

        A connection lost mid-write leaves the outcome unknown, and guessing could apply a
        write twice: the caller gets a 503 (an idle connection the server had closed is already
        replaced before the statement by the pool). A statement the server rolled back or
        refused (a Galera certification conflict, a node not ready) changed nothing: it runs
        again (see ``retrying``).
        """

        def once() -> tuple[int, int | None]:
            with self.cursor() as cur:
                cur.execute(sql, params)
                return cur.rowcount, cur.lastrowid

        return retrying(once)

    def transaction_in_one_trip(
        self, statements: Sequence[tuple[str, Sequence[Any]]]
    ) -> list[tuple[int, int | None, list[tuple[Any, ...]]]] | None:
        """Run ``statements`` as one transaction, sent with its START TRANSACTION and COMMIT
        in a single round trip (the connections allow multi-statements; every value still goes
        in through the driver's escaping). Return each statement's (affected rows, last insert
        id, rows).

        The server stops at the first statement that fails; the transaction is then rolled
        back and the error raised, as ``transaction`` does, and one the server rolled back as a
        whole (an InnoDB deadlock) runs again (``retrying``).

        None, and nothing sent, on a Galera node: the caller goes statement by statement. A
        Galera node rolls back a local transaction whenever another node's conflicting write
        reaches it first (a brute-force abort), even between two statements of one batch; the
        statements after that point then ran by themselves, each committed on its own, and the
        batch succeeded. Seen in CI: two writes to one name through two nodes both answered
        version 1136, one of them lost (tests/test_galera.py). Sent one at a time, the next
        statement after such an abort fails with 1213 and the whole write runs again."""
        if self.galera:  # known from the first connection on: no lease taken for nothing
            return None
        sql = "; ".join(["START TRANSACTION", *(text for text, _ in statements), "COMMIT"])
        params = [param for _, values in statements for param in values]

        def once() -> list[tuple[int, int | None, list[tuple[Any, ...]]]] | None:
            with self.cursor() as cur:
                if self.galera:  # this lease opened the process's first connection
                    return None
                results = []
                try:
                    cur.execute(sql, params)  # START TRANSACTION's answer
                    while cur.nextset():
                        rows = cur.fetchall() if cur.with_rows else []
                        results.append((cur.rowcount, cur.lastrowid, rows))
                except BaseException as exc:
                    roll_back(cur, exc)
                    raise
                return results[:-1]  # COMMIT's answer is not the caller's

        return retrying(once)

    # Schema

    def transaction(
        self, work: Callable[[Any], _T], *, retried: bool = True, serializable: bool = False
    ) -> _T:
        """Run ``work(cursor)`` in one transaction and commit it; roll back on any exception
        before the connection goes back to the pool. A transaction the server rolled back (a
        deadlock, a Galera certification conflict) runs again as a whole (``retrying``),
        unless not ``retried``: then the caller gets ``NotApplied``. ``serializable``: this
        one transaction runs SERIALIZABLE (its reads take shared next-key locks, so what it
        checked, an absent name included, stays so until the commit); the session stays READ
        COMMITTED."""

        def once() -> _T:
            with self.cursor() as cur:
                if serializable:
                    cur.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                cur.execute("START TRANSACTION")
                try:
                    result = work(cur)
                    cur.execute("COMMIT")
                except BaseException as exc:
                    roll_back(cur, exc)
                    raise
                return result

        return retrying(once) if retried else once()


def _gevent_sockets() -> bool:
    """Whether gevent has patched the socket module (gunicorn's gevent worker does)."""
    monkey = sys.modules.get("gevent.monkey")
    return bool(monkey and monkey.is_module_patched("socket"))


def _idle_alive(conn: Any, last_used: float) -> bool:
    """False if the server has closed an idle connection (restart, KILL, wait_timeout).

    An idle MySQL connection never has anything to read, so a readable socket means EOF or a
    farewell error packet. This costs one poll() and no round trip, unlike ping(). The C
    extension hides its socket: there a ping, only after a second of idleness.
    """
    sock = getattr(getattr(conn, "_socket", None), "sock", None)
    if sock is None:
        return time.monotonic() - last_used < 1.0 or conn.is_connected()
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable
