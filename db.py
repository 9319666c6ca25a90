"""Storage for var_keeper: connections, schema and every SQL statement.

Two stores share one interface (:class:`Store`): :class:`MySQLStore` for production (MySQL 8.x and
MariaDB 10.6+) and :class:`SQLiteStore`, the embedded default. They differ only where the SQL
dialect does. The views in ``app.py`` call the store and never see a connection or a query.

Connections come from a bounded pool per process (:class:`ConnectionPool`), opened lazily after
gunicorn has forked: a connection serves one request at a time and never crosses a fork. Every
statement is parameterized;
the only identifier ever put into SQL text (the database name in ``CREATE DATABASE``) is
validated against a strict pattern first.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import select
import sqlite3
import sys
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import click
from flask import Flask, current_app
from flask.cli import with_appcontext

log = logging.getLogger("var_keeper.db")
_T = TypeVar("_T")

MAX_NAME_CHARS = 255
# The name column holds UTF-8 bytes: 4 bytes a character at most.
_NAME_COLUMN_BYTES = MAX_NAME_CHARS * 4
_DATABASE_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")
_LOCK_NAME = "var_keeper.schema"


# --- What the store speaks


@dataclass(frozen=True, slots=True)
class Variable:
    """One stored variable. ``value`` is None when a listing did not ask for values, and only
    its beginning when it asked for previews; ``length`` is then the whole value's, in
    characters."""

    name: str
    value: str | None
    version: int
    created_at: datetime
    updated_at: datetime
    length: int | None = None
    expires_at: datetime | None = None  # None: permanent


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of the change log (``var_changes``): a write, a delete or an expiry.

    ``seq`` orders every change of the database, dense and in the order changes become
    visible (see ``_MYSQL_CHANGES_TABLE``); None for a change too new to have one yet (MySQL
    gives seqs just after the commit);
    ``version`` orders the changes of one name and keeps counting across a delete, so that
    (name, version) names one change. A delete or an expiry has a version of its own and no
    value. ``actor`` is a token's public identifier, or None without tokens.
    """

    seq: int | None
    name: str
    version: int
    op: str  # "set", "delete" or "expire"
    value: str | None
    changed_at: datetime
    actor: str | None


@dataclass(frozen=True, slots=True)
class SweepResult:
    """What one pass of the background sweeper removed."""

    expired: int
    pruned: int


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What a write did: the variable's new version, and whether it created the variable."""

    version: int
    created: bool


class StoreError(Exception):
    """Base class of everything a store raises on purpose."""


class StoreUnavailable(StoreError):
    """The database cannot be reached, timed out, or its schema is not ready yet."""


class _ConnectionLost(StoreUnavailable):
    """The connection broke under a statement."""


class _NotApplied(StoreUnavailable):
    """The server rolled the statement back or refused to run it: it changed nothing, so it may
    run again. A Galera certification conflict (or an InnoDB deadlock), a node not ready."""


class _Taken(StoreError):
    """A bulk insert met a name that exists: the transaction is rolled back."""


class PreconditionFailed(StoreError):
    """A conditional write found the variable in another state than the caller expected."""


@dataclass(frozen=True, slots=True)
class DatabaseURL:
    """A parsed ``DATABASE_URL``. ``str()`` of it never shows the password.

    A cluster is several hosts in the host part, tried in that order:
    ``mysql://user:pw@h1:3306,h2:3306,h3:3306/vars``. ``host`` and ``port`` are the first one.
    """

    scheme: str
    host: str = ""
    port: int = 3306
    user: str = ""
    password: str = field(default="", repr=False)
    database: str = ""
    path: str = ""
    hosts: tuple[tuple[str, int], ...] = ()

    @classmethod
    def parse(cls, url: str, password_file: str | None = None) -> DatabaseURL:
        parts = urlsplit(url)
        scheme = parts.scheme.split("+", 1)[0].lower()
        if scheme == "sqlite":
            # SQLAlchemy's convention: sqlite:///relative/file.db, sqlite:////absolute/file.db.
            path = unquote(url.split("://", 1)[1])[1:]
            if not path:
                raise ValueError("DATABASE_URL sqlite:///PATH needs a file path")
            return cls(scheme="sqlite", path=path)
        if scheme not in ("mysql", "mariadb"):
            raise ValueError(
                f"DATABASE_URL must start with mysql:// or sqlite:///, not {parts.scheme or '(none)'}://"
            )
        database = unquote(parts.path.lstrip("/")) or "vars"
        if not _DATABASE_NAME.match(database):
            raise ValueError("the database name in DATABASE_URL may use only letters, digits and _")
        password = unquote(parts.password or "")
        if password_file:
            password = Path(password_file).read_text(encoding="utf-8").rstrip("\r\n")
        # urlsplit knows one host only: split "h1:3306,h2:3306" ourselves.
        host_part = parts.netloc.rpartition("@")[2]
        hosts = tuple(_host_and_port(h) for h in host_part.split(",")) if host_part else ()
        hosts = hosts or (("127.0.0.1", 3306),)
        return cls(
            scheme="mysql",
            host=hosts[0][0],
            port=hosts[0][1],
            user=unquote(parts.username or "root"),
            password=password,
            database=database,
            hosts=hosts,
        )

    def __str__(self) -> str:
        if self.scheme == "sqlite":
            return f"sqlite:///{self.path}"
        secret = ":***" if self.password else ""
        hosts = ",".join(
            f"[{h}]:{p}" if ":" in h else f"{h}:{p}"
            for h, p in self.hosts or [(self.host, self.port)]
        )
        return f"mysql://{self.user}{secret}@{hosts}/{self.database}"


def _host_and_port(text: str) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6 address]:port`` of a DATABASE_URL, port 3306 if none."""
    text = text.strip()
    host, port = text, ""
    if text.startswith("["):  # [::1]:3306
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
    elif ":" in text:
        host, _, port = text.rpartition(":")
    if not host:
        raise ValueError("DATABASE_URL has an empty host in its list of hosts")
    if port and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise ValueError("the port in DATABASE_URL is not a number")
    return host.lower(), int(port or 3306)


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a variable's name, or None if it can."""
    if not name:
        return "a name may not be empty"
    if name.startswith("/"):
        return "a name may not start with /"
    if len(name) > MAX_NAME_CHARS:
        return f"a name may have at most {MAX_NAME_CHARS} characters"
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in name):
        return "a name may not contain control characters"
    return None


def next_prefix(prefix: str) -> str | None:
    """The smallest string greater than every string that starts with ``prefix``.

    Both stores order names by code point (UTF-8 bytes in MySQL's VARBINARY, SQLite's BINARY
    collation), so ``prefix <= name < next_prefix(prefix)`` is an index range scan. None means
    there is no upper bound.
    """
    chars = list(prefix)
    while chars:
        code = ord(chars.pop()) + 1
        if code == 0xD800:  # surrogates cannot be encoded: skip them
            code = 0xE000
        if code <= 0x10FFFF:
            return "".join(chars) + chr(code)
    return None


class Store(ABC):
    """What the HTTP layer may ask of a database."""

    kind: str
    init_wait: float = 5.0  # seconds a request waits for the schema preparation under way

    def __init__(self, url: DatabaseURL) -> None:
        self.url = url
        self._ready = False
        self._init_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self.open_connections = 0
        # Told the number of open connections whenever it changes (observability.py's gauge).
        self.on_connections: Callable[[int], None] = lambda count: None

    def _connections_changed(self, delta: int) -> None:
        with self._count_lock:
            self.open_connections += delta
            self.on_connections(self.open_connections)

    # Lifecycle

    @property
    def ready(self) -> bool:
        return self._ready

    def ensure_ready(self) -> None:
        """Create or migrate the schema once per process; StoreUnavailable until that is done."""
        if self._ready:
            return
        # Wait for a preparation under way (the background one at start-up) rather than fail
        # at once; bounded, so a request never hangs on a database that is not there.
        if not self._init_lock.acquire(timeout=self.init_wait):
            raise StoreUnavailable(
                "the service is starting up: the database schema is being prepared"
            )
        try:
            if not self._ready:
                outcome = self._init_schema()
                self._ready = True
                log.info("store ready: %s (schema %s)", self.url, outcome)
        finally:
            self._init_lock.release()

    def wait_until_ready(self, stop: threading.Event, max_delay: float = 10.0) -> None:
        """Retry ``ensure_ready`` with backoff, logging while the database is not reachable."""
        delay = 0.5
        while not stop.is_set():
            try:
                self.ensure_ready()
                return
            except StoreUnavailable as exc:
                log.warning(
                    "waiting for the database at %s: %s (retrying in %.1fs)", self.url, exc, delay
                )
            stop.wait(delay)
            delay = min(delay * 2, max_delay)

    @abstractmethod
    def _init_schema(self) -> str:
        """Create or upgrade the schema; return "created", "migrated" or "up to date"."""

    @abstractmethod
    def ping(self) -> None:
        """Raise StoreUnavailable unless the database answers a query."""

    @abstractmethod
    def close(self) -> None:
        """Close the connections not in use (they are opened again when needed)."""

    # Reads

    @abstractmethod
    def get(self, name: str) -> Variable | None: ...

    @abstractmethod
    def get_many(self, names: Sequence[str]) -> list[Variable]: ...

    @abstractmethod
    def count(self) -> int:
        """How many variables there are."""

    @abstractmethod
    def list(
        self,
        prefix: str,
        after: str | None,
        limit: int,
        with_values: bool,
        value_chars: int | None = None,
    ) -> list[Variable]:
        """Variables whose names start with ``prefix`` and sort after ``after``, in name order;
        with ``value_chars``, each value cut to its first that many characters (previews)."""

    # Writes

    @abstractmethod
    def put(
        self,
        name: str,
        value: str,
        *,
        if_version: int | None = None,
        if_absent: bool = False,
        if_exists: bool = False,
        ttl: float | None = None,
        actor: str | None = None,
    ) -> WriteResult:
        """Store ``value``; with a condition, only if the variable is at ``if_version``, does not
        exist (``if_absent``) or exists (``if_exists``). A failed condition raises
        PreconditionFailed. With ``ttl`` (seconds) the variable expires that long after the
        write; without, it is permanent. The write and its change-log entry are one
        transaction."""

    def import_batch(self, items: Sequence[tuple[str, str]]) -> tuple[int, int]:
        """Store many (name, value) pairs, changing only what differs; return (created, updated).

        Idempotent: importing the same data twice changes nothing the second time, not even a
        version. New names go in one transaction (rows and change-log entries); if someone else
        created one of them meanwhile, the batch falls back to ordinary writes.
        """
        current = {v.name: v.value for v in self.get_many(sorted({n for n, _ in items}))}
        new = dict((n, v) for n, v in items if n not in current)
        changed = [(n, v) for n, v in items if n in current and current[n] != v]
        if new and not self._insert_new(list(new.items())):
            changed += list(new.items())
            new = {}
        for name, value in changed:
            self.put(name, value)
        return len(new), len(changed)

    @abstractmethod
    def _insert_new(self, items: list[tuple[str, str]]) -> bool:
        """Insert names that do not exist (an expired row counts as existing here), all or
        none, with their change-log entries; False if one exists by now."""

    @abstractmethod
    def delete(
        self,
        name: str,
        *,
        if_version: int | None = None,
        if_exists: bool = False,
        actor: str | None = None,
    ) -> bool:
        """Delete the variable; False if there was none. With a condition (at ``if_version``,
        or existing at all), raise PreconditionFailed instead of returning False."""

    # The change log

    @abstractmethod
    def history(
        self, name: str, before_version: int | None, limit: int, with_values: bool
    ) -> list[Change]:
        """``name``'s retained changes older than ``before_version``, newest first."""

    @abstractmethod
    def change(self, name: str, version: int) -> Change | None:
        """One retained change of ``name``, with its value."""

    @abstractmethod
    def changes_since(self, after_seq: int, upto_seq: int, prefix: str, limit: int) -> list[Change]:
        """Changes with ``after_seq < seq <= upto_seq`` under ``prefix``, in seq order, with
        values."""

    @abstractmethod
    def recent_changes(self, after_seq: int, limit: int) -> list[Change]:
        """The next changes after ``after_seq``, in seq order, without values (the feed)."""

    @abstractmethod
    def last_seq(self) -> int:
        """The seq of the newest change that has one (0 if none ever): every change committed
        before the call has a seq up to it, or gets a higher one."""

    @abstractmethod
    def first_seq(self) -> int | None:
        """The seq of the oldest retained change, None if none is retained."""

    @abstractmethod
    def sweep(self, keep_versions: int, keep_days: float, batch: int) -> SweepResult:
        """Remove at most ``batch`` expired variables (recording their expiry) and at most
        ``batch`` changes out of retention. Safe to run in several processes at once."""


# --- Connections


@dataclass(slots=True)
class _Lease:
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
        self._idle: list[_Lease] = []  # last in, first out: the warmest connection first
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.size)

    @contextmanager
    def lease(self) -> Iterator[_Lease]:
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

    def _take(self) -> _Lease:
        while True:
            with self._lock:
                lease = self._idle.pop() if self._idle else None
            if lease is None:
                conn = self._opener()
                self._on_change(+1)
                return _Lease(conn, time.monotonic())
            if self._alive(lease.conn, lease.used):
                return lease
            self._close(lease)

    def _close(self, lease: _Lease) -> None:
        self._on_change(-1)
        self._closer(lease.conn)

    def close_idle(self) -> None:
        """Close every connection not lent out (they are opened again when needed)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for lease in idle:
            self._close(lease)


# --- MySQL / MariaDB

# MySQL 8's default utf8mb4_0900_ai_ci does not exist on MariaDB (before 11.4) and MariaDB 11's
# uca1400 collations do not exist on MySQL; utf8mb4_unicode_ci exists on both. Names are compared
# as bytes anyway (VARBINARY), values are stored with utf8mb4_bin: no collation ever merges two
# distinct strings.
MYSQL_CHARSET = "utf8mb4"
MYSQL_COLLATION = "utf8mb4_unicode_ci"
MYSQL_SQL_MODE = ",".join(
    ("STRICT_ALL_TABLES", "NO_ZERO_IN_DATE", "NO_ZERO_DATE", "NO_ENGINE_SUBSTITUTION")
)
_MYSQL_TABLE = f"""
CREATE TABLE IF NOT EXISTS vars (
    name VARBINARY({_NAME_COLUMN_BYTES}) NOT NULL,
    value LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    version BIGINT UNSIGNED NOT NULL DEFAULT 1,
    created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    expires_at DATETIME(6) NULL,
    PRIMARY KEY (name),
    KEY expires_at (expires_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
"""
# The change log. A write inserts its entry with seq NULL, in its own transaction: nothing in
# the write path is shared by every write, so writers do not queue on one lock and, on a
# multi-primary Galera cluster, do not conflict with each other at commit (a counter row
# touched by every write made every pair of concurrent writes on two nodes a certification
# conflict). seqs are given afterwards, to committed entries only, by ``_sequence``: under
# the lock of the one-row counter var_seq, dense and in the order they are given, so a reader
# that has seen seq N has seen every change up to N and a watcher can never skip one. (An
# AUTO_INCREMENT allocated at insert would commit out of order; on Galera it is not even
# increasing across nodes.) id only identifies an entry until it has a seq.
_MYSQL_CHANGES_TABLE = f"""
CREATE TABLE IF NOT EXISTS var_changes (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    seq BIGINT UNSIGNED NULL,
    name VARBINARY({_NAME_COLUMN_BYTES}) NOT NULL,
    version BIGINT UNSIGNED NOT NULL,
    op VARCHAR(6) CHARACTER SET ascii NOT NULL,
    value LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    changed_at DATETIME(6) NOT NULL,
    actor VARCHAR(16) CHARACTER SET ascii NULL,
    PRIMARY KEY (id),
    UNIQUE KEY seq (seq),
    UNIQUE KEY name_version (name, version)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
"""
_MYSQL_SEQ_TABLE = """
CREATE TABLE IF NOT EXISTS var_seq (
    id TINYINT UNSIGNED NOT NULL PRIMARY KEY,
    n BIGINT UNSIGNED NOT NULL
) ENGINE=InnoDB
"""
# Idempotent, in this order: each step may have been done by another instance meanwhile.
_MYSQL_HISTORY_MIGRATIONS = (
    _MYSQL_CHANGES_TABLE,
    _MYSQL_SEQ_TABLE,
    "INSERT IGNORE INTO var_seq (id, n) SELECT 1, COALESCE(MAX(seq), 0) FROM var_changes",
)
# A change log of the version before: seq BIGINT UNSIGNED NOT NULL PRIMARY KEY, no id.
_MYSQL_CHANGES_ID_MIGRATION = (
    "ALTER TABLE var_changes DROP PRIMARY KEY, "
    "ADD COLUMN id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT FIRST, ADD PRIMARY KEY (id), "
    "MODIFY seq BIGINT UNSIGNED NULL, ADD UNIQUE KEY seq (seq)"
)
# Entries given a seq at a time: one short transaction, one UPDATE of at most this many rows.
_SEQUENCE_BATCH = 1000
_MYSQL_EXPIRY_MIGRATION = (
    "ALTER TABLE vars ADD COLUMN expires_at DATETIME(6) NULL, ADD KEY expires_at (expires_at)"
)
_MYSQL_NOW = "UTC_TIMESTAMP(6)"
_MYSQL_LIVE = "(expires_at IS NULL OR expires_at > UTC_TIMESTAMP(6))"
# DATE_ADD(..., INTERVAL NULL ...) is NULL: one statement for "expires in ttl" and "permanent".
_MYSQL_EXPIRES = "DATE_ADD(UTC_TIMESTAMP(6), INTERVAL %s MICROSECOND)"
_MYSQL_LOG_SET = (
    "INSERT INTO var_changes (name, version, op, value, changed_at, actor) "
    "SELECT name, version, 'set', value, updated_at, %s FROM vars WHERE name = %s"
)
_MYSQL_LOG_GONE = (
    "INSERT INTO var_changes (name, version, op, value, changed_at, actor) "
    "VALUES (%s, %s, %s, NULL, UTC_TIMESTAMP(6), %s)"
)
# The tutorial's table: vars(id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(100),
# value VARCHAR(100), UNIQUE (name)), in the server's default character set (latin1 on older
# MariaDB). CONVERT re-encodes both columns to utf8mb4 before the name becomes bytes, so every
# existing row stays readable; its id column stays, unused.
_MYSQL_MIGRATIONS = (
    "ALTER TABLE vars CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
    "UPDATE vars SET value = '' WHERE value IS NULL",
    f"""ALTER TABLE vars
        MODIFY name VARBINARY({_NAME_COLUMN_BYTES}) NULL,
        MODIFY value LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
        ADD COLUMN version BIGINT UNSIGNED NOT NULL DEFAULT 1,
        ADD COLUMN created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        ADD COLUMN updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)""",
)
_COLUMNS = "name, value, version, created_at, updated_at, expires_at"
_META_COLUMNS = "name, NULL, version, created_at, updated_at, expires_at"
# A variable whose deadline has passed reads as absent at once, before the sweeper removes it.
_LIVE = "(expires_at IS NULL OR expires_at > {now})"
_CHANGE_COLUMNS = "seq, name, version, op, value, changed_at, actor"
_CHANGE_META_COLUMNS = "seq, name, version, op, NULL, changed_at, actor"
# The change feed's poll. Entries without a seq come first (NULL sorts first): one range scan
# of the seq index answers both "anything new?" and "anything to number?", so an idle poll is
# one read.
_MYSQL_RECENT_CHANGES = (
    f"SELECT {_CHANGE_META_COLUMNS} FROM var_changes "
    "WHERE seq IS NULL OR seq > %s ORDER BY seq LIMIT %s"
)
# The same once numbered: unnumbered entries left (a burst) cannot crowd the new ones out.
_MYSQL_NUMBERED_CHANGES = (
    f"SELECT {_CHANGE_META_COLUMNS} FROM var_changes WHERE seq > %s ORDER BY seq LIMIT %s"
)

# Client error codes that mean the connection is gone (and the server codes it sends on KILL and
# on wait_timeout before closing).
_CONNECTION_LOST = {2006, 2013, 2055, 1927, 4031, 1053}
_TIMEOUTS = {1205, 3024, 1969}  # lock wait timeout; MySQL / MariaDB statement time limit
# Run on every new connection; the value is an int computed from DATABASE_TIMEOUT, never input.
_LOCK_WAIT_SQL = "SET SESSION innodb_lock_wait_timeout = {seconds}, lock_wait_timeout = {seconds}"

# Several hosts (a Galera cluster, or primaries behind failover): errors that mean the statement
# changed nothing and may run again. 1213: a deadlock, or on Galera a certification conflict at
# commit (another node's write to the same row won); the transaction was rolled back. 1047:
# "WSREP has not yet prepared node for application use", refused before it ran.
_CONFLICT = 1213
_NODE_NOT_READY = 1047
# Then 503. Measured on the 3-node test cluster, 24 writers of one row spread over the nodes:
# 2.6 % of the writes conflicted 6 times in a row, 0.14 % 10 times (12 writers: none).
_WRITE_ATTEMPTS = 10
# Before retry n: a random fraction of min(_BACKOFF_SECONDS * 2**n, _BACKOFF_MAX_SECONDS), so at
# most 2.6 s of waiting in all, well within DATABASE_TIMEOUT's default 10 s.
_BACKOFF_SECONDS = 0.01
_BACKOFF_MAX_SECONDS = 0.5
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


class MySQLStore(Store):
    kind = "mysql"

    def __init__(
        self, url: DatabaseURL, connect_timeout: int, statement_timeout: int, pool_size: int
    ) -> None:
        super().__init__(url)
        import mysql.connector  # imported here so that the SQLite default needs no MySQL driver

        self._mysql = mysql.connector
        self._errors = mysql.connector.errors
        self._connect_timeout = connect_timeout
        self._statement_timeout = statement_timeout
        self._prune_cursor = 0  # the seq the version-retention walk of the log got to
        self.init_wait = connect_timeout + 1
        # Per process: until when each host (an index into url.hosts) is tried last, and which
        # host each open connection is on, with when it was opened.
        self._down_until: dict[int, float] = {}
        self._host_of: weakref.WeakKeyDictionary[Any, tuple[int, float]] = (
            weakref.WeakKeyDictionary()
        )
        self._pool = ConnectionPool(
            lambda: self._connect(self.url.database),
            self._close_connection,
            self._reusable,
            size=pool_size,
            wait=statement_timeout,
            on_change=self._connections_changed,
        )
        # The C extension does its socket I/O in C, out of gevent's reach: under gevent workers
        # one slow statement would stall every request of the worker. So there it is not used.
        self._use_pure = _gevent_sockets() or not mysql.connector.HAVE_CEXT
        if not self._use_pure:
            why = "C extension"
        elif mysql.connector.HAVE_CEXT:
            why = "pure Python: gevent workers need cooperative sockets"
        else:
            why = "pure Python: the C extension did not load (it needs OpenSSL >= 3.2)"
        log.info(
            "mysql-connector-python %s: connection class %s (%s)",
            mysql.connector.__version__,
            "MySQLConnection" if self._use_pure else "CMySQLConnection",
            why,
        )

    # Connections

    def _connect(self, database: str | None) -> Any:
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
            "connection_timeout": self._connect_timeout,
            "read_timeout": self._statement_timeout,
            "write_timeout": self._statement_timeout,
            # The server gives up waiting on a row or table lock before the client gives up on
            # the statement: otherwise a write answered 503 stays queued on the lock (50 s by
            # default) and takes effect once the lock is released, after its client was told
            # it failed. Both variables exist on MySQL and MariaDB; integers only.
            "init_command": _LOCK_WAIT_SQL.format(seconds=max(1, self._statement_timeout - 1)),
            "use_pure": self._use_pure,
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
        except self._errors.Error as exc:
            self._close_connection(conn)
            raise StoreUnavailable(_describe(exc)) from exc
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
                conn = self._mysql.connect(**{**args, "host": host, "port": port})
            except self._errors.Error as exc:
                if exc.errno == 1049 or len(hosts) == 1:  # "Unknown database": same on every host
                    raise StoreUnavailable(_describe(exc)) from exc
                failures.append(f"{host}:{port}: {_describe(exc)}")
                self._mark_down(index)
                continue
            try:
                problem = self._galera_setup(conn)
            except self._errors.Error as exc:
                problem = _describe(exc)
            if problem is None:
                self._host_of[conn] = (index, time.monotonic())
                if failures:
                    log.warning("connected to %s:%s after: %s", host, port, "; ".join(failures))
                return conn
            self._close_connection(conn)
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
            except self._errors.Error as exc:
                if exc.errno == 1193:  # "Unknown system variable": MySQL, no Galera
                    return None
                raise
            if not wsrep_on:  # MariaDB without Galera
                return None
            cur.execute(_GALERA_STATUS_SQL)
            status = {str(name).lower(): str(value) for name, value in cur.fetchall()}
            if "wsrep_local_state" not in status:  # no Galera provider loaded
                return None
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

    def _close_connection(self, conn: Any) -> None:
        try:
            conn.close()
        except self._errors.Error as exc:  # a broken connection may fail to close: it is gone
            log.debug("closing a broken connection: %s", exc)

    def close(self) -> None:
        self._pool.close_idle()

    @contextmanager
    def _cursor(self) -> Iterator[Any]:
        """A cursor on a pooled connection, with the driver's errors mapped to ours."""
        with self._pool.lease() as lease:
            try:
                if lease.cursor is None:
                    # Made once per connection: conn.cursor() pings the server every time.
                    lease.cursor = lease.conn.cursor()
                yield lease.cursor
            except self._errors.Error as exc:
                errno = getattr(exc, "errno", None)
                if errno is None or errno < 0 or 2000 <= errno < 3000:
                    # A client-side error (e.g. "Unread result found"): the connection may be
                    # out of step with the server, so it is not lent again.
                    lease.broken = True
                if errno == _CONFLICT:  # rolled back; the connection is fine
                    raise _NotApplied(_describe(exc)) from exc
                if errno == _NODE_NOT_READY:  # this node left the cluster's primary component
                    lease.broken = True
                    self._mark_down(self._host_of.get(lease.conn, (0, 0.0))[0])
                    raise _NotApplied(_describe(exc)) from exc
                if errno in _CONNECTION_LOST or isinstance(exc, self._errors.InterfaceError):
                    lease.broken = True
                    self._mark_down(self._host_of.get(lease.conn, (0, 0.0))[0])
                    raise _ConnectionLost(_describe(exc)) from exc
                if errno in _TIMEOUTS:
                    lease.broken = True  # the statement may still hold the connection busy
                    raise StoreUnavailable(f"the database timed out ({_describe(exc)})") from exc
                if isinstance(exc, self._errors.OperationalError):
                    # E.g. -1 "MySQL Connection not available": a ping that timed out leaves
                    # its reply unread (the driver does not close the connection, whatever its
                    # message says). Reused, the connection would hand each statement the
                    # previous one's reply: a SELECT gets an OK packet, a stored name reads 404.
                    lease.broken = True
                    raise StoreUnavailable(_describe(exc)) from exc
                raise

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read. A read may safely run twice, so a lost connection is replaced (on the
        next host, if the URL has several) and the read retried once; a write is retried only
        when the server says it changed nothing (see ``_execute``)."""
        try:
            with self._cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall()
        except (_ConnectionLost, _NotApplied):
            with self._cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall()

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> tuple[int, int | None]:
        """Run one write statement; return (affected rows, last insert id).

        A connection lost mid-write leaves the outcome unknown, and guessing could apply a
        write twice: the caller gets a 503 (an idle connection the server had closed is already
        replaced before the statement by the pool). A statement the server rolled back or
        refused (a Galera certification conflict, a node not ready) changed nothing: it runs
        again (see ``_retrying``).
        """

        def once() -> tuple[int, int | None]:
            with self._cursor() as cur:
                cur.execute(sql, params)
                return cur.rowcount, cur.lastrowid

        return _retrying(once)

    # Schema

    def _init_schema(self) -> str:
        try:
            conn = self._connect(self.url.database)
        except StoreUnavailable as exc:
            if getattr(exc.__cause__, "errno", None) != 1049:  # anything but "Unknown database"
                raise
            self._create_database()
            conn = self._connect(self.url.database)
        try:
            cur = conn.cursor()
            # Several workers and replicas start together: one of them migrates, the others wait.
            # Waiting less long than the client's read timeout, so it is the lock that times out.
            wait = max(1, self._statement_timeout - 1)
            cur.execute("SELECT GET_LOCK(%s, %s)", (_LOCK_NAME, wait))
            if cur.fetchone()[0] != 1:
                raise StoreUnavailable(
                    "timed out waiting for another instance to prepare the schema"
                )
            try:
                return self._create_or_migrate_retrying(cur)
            finally:
                cur.execute("SELECT RELEASE_LOCK(%s)", (_LOCK_NAME,))
                cur.fetchall()
        except self._errors.Error as exc:
            raise StoreUnavailable(_describe(exc)) from exc
        finally:
            conn.close()

    def _create_database(self) -> None:
        conn = self._connect(None)
        try:
            # Identifiers cannot be parameters; DatabaseURL.parse allowed only [A-Za-z0-9_].
            conn.cursor().execute(
                f"CREATE DATABASE IF NOT EXISTS `{self.url.database}` "
                f"CHARACTER SET {MYSQL_CHARSET} COLLATE {MYSQL_COLLATION}"
            )
            log.info("created database %s", self.url.database)
        except self._errors.Error as exc:
            raise StoreUnavailable(
                f"database {self.url.database!r} is missing and could not be created: "
                f"{_describe(exc)}"
            ) from exc
        finally:
            conn.close()

    def _create_or_migrate_retrying(self, cur: Any) -> str:
        """``_create_or_migrate``, run again (``_retrying``) when a step lost to the same step
        of an instance on another Galera node (1213: seen in CI with six instances on three
        nodes starting together; GET_LOCK does not span nodes). Every step is idempotent."""

        def attempt() -> str:
            try:
                return self._create_or_migrate(cur)
            except self._errors.Error as exc:
                if exc.errno == _CONFLICT:
                    raise _NotApplied(_describe(exc)) from exc
                raise

        return _retrying(attempt)

    def _create_or_migrate(self, cur: Any) -> str:
        outcome = self._create_or_migrate_vars(cur)
        if self._add_history_and_expiry(cur) and outcome == "up to date":
            outcome = "migrated"
        return outcome

    def _add_history_and_expiry(self, cur: Any) -> bool:
        """Give a database of an earlier version vars.expires_at, var_changes and var_seq;
        True if something had to be added. Idempotent, and harmless when another instance
        (on another Galera node, past GET_LOCK) does the same at the same time."""
        changed = False
        if "expires_at" not in _columns(cur, "vars"):
            log.info("adding vars.expires_at")
            try:
                cur.execute(_MYSQL_EXPIRY_MIGRATION)
            except self._errors.Error:
                if "expires_at" not in _columns(cur, "vars"):
                    raise
            changed = True
        cur.execute(
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
            "AND TABLE_NAME IN ('var_changes', 'var_seq')"
        )
        if cur.fetchall()[0][0] != 2:
            log.info("creating the change log (var_changes, var_seq)")
            for statement in _MYSQL_HISTORY_MIGRATIONS:
                cur.execute(statement)
            changed = True
        if "id" not in _columns(cur, "var_changes"):
            # A log whose seqs were given inside the writes (seq the primary key). Every entry
            # keeps its seq; id numbers them in seq order. One statement: ALTER is atomic.
            log.info("letting var_changes entries wait for their seq (adding var_changes.id)")
            try:
                cur.execute(_MYSQL_CHANGES_ID_MIGRATION)
            except self._errors.Error:
                if "id" not in _columns(cur, "var_changes"):  # another node did it meanwhile
                    raise
            changed = True
        return changed

    def _create_or_migrate_vars(self, cur: Any) -> str:
        columns = _columns(cur, "vars")
        if not columns:
            cur.execute(_MYSQL_TABLE)  # IF NOT EXISTS: another node may have created it
            return "created"
        if "version" in columns:
            return "up to date"
        log.info("migrating the tutorial's vars table in place")
        try:
            for statement in _MYSQL_MIGRATIONS:
                cur.execute(statement)
        except self._errors.Error:
            # GET_LOCK() is local to one server: on a Galera cluster an instance on another
            # node may migrate at the same time (DDL is replicated in total order, so its ALTER
            # makes ours fail with 1060 "Duplicate column name", or aborts our UPDATE). Every
            # step is idempotent: what counts is that the table ends up migrated.
            if "version" not in _columns(cur, "vars"):
                raise
            log.info("another instance migrated the vars table meanwhile")
            return "up to date"
        return "migrated"

    def ping(self) -> None:
        self._query("SELECT 1")

    # Reads

    def get(self, name: str) -> Variable | None:
        rows = self._query(
            f"SELECT {_COLUMNS} FROM vars WHERE name = %s AND {_MYSQL_LIVE}", (name.encode(),)
        )
        return _variable(rows[0]) if rows else None

    def get_many(self, names: Sequence[str]) -> list[Variable]:
        if not names:
            return []
        marks = ", ".join(["%s"] * len(names))
        rows = self._query(
            f"SELECT {_COLUMNS} FROM vars WHERE name IN ({marks}) AND {_MYSQL_LIVE} ORDER BY name",
            [n.encode() for n in names],
        )
        return [_variable(r) for r in rows]

    def count(self) -> int:
        return int(self._query(f"SELECT COUNT(*) FROM vars WHERE {_MYSQL_LIVE}")[0][0])

    def list(
        self,
        prefix: str,
        after: str | None,
        limit: int,
        with_values: bool,
        value_chars: int | None = None,
    ) -> list[Variable]:
        sql, params = _list_query(
            prefix, after, limit, with_values, "%s", lambda s: s.encode(), value_chars
        )
        return [_variable(r) for r in self._query(sql, params)]

    # Writes: each one a transaction on one pooled connection, with its change-log entry

    def _transaction(self, work: Callable[[Any], Any], *, retried: bool = True) -> Any:
        """Run ``work(cursor)`` in one transaction and commit it; roll back on any exception
        before the connection goes back to the pool. A transaction the server rolled back (a
        deadlock, a Galera certification conflict) runs again as a whole (``_retrying``),
        unless not ``retried``: then the caller gets ``_NotApplied``."""

        def once() -> Any:
            with self._cursor() as cur:
                cur.execute("START TRANSACTION")
                try:
                    result = work(cur)
                    cur.execute("COMMIT")
                except BaseException:
                    cur.execute("ROLLBACK")  # fails only on a broken connection: closed
                    raise
                return result

        return _retrying(once) if retried else once()

    def put(
        self,
        name: str,
        value: str,
        *,
        if_version: int | None = None,
        if_absent: bool = False,
        if_exists: bool = False,
        ttl: float | None = None,
        actor: str | None = None,
    ) -> WriteResult:
        key = name.encode()
        micros = None if ttl is None else int(ttl * 1_000_000)

        def work(cur: Any) -> WriteResult:
            result = None
            if not if_absent:
                # LAST_INSERT_ID(expr) hands the new version back in the OK packet.
                sql = (
                    "UPDATE vars SET value = %s, version = LAST_INSERT_ID(version + 1), "
                    f"updated_at = UTC_TIMESTAMP(6), expires_at = {_MYSQL_EXPIRES} "
                    f"WHERE name = %s AND {_MYSQL_LIVE}"
                )
                params: tuple[Any, ...] = (value, micros, key)
                if if_version is not None:
                    sql, params = sql + " AND version = %s", (*params, if_version)
                cur.execute(sql, params)
                if cur.rowcount:
                    result = WriteResult(int(cur.lastrowid), created=False)
                elif if_version is not None or if_exists:
                    raise PreconditionFailed(name)
            if result is None:
                result = self._create(cur, name, value, micros, if_absent)
            cur.execute(_MYSQL_LOG_SET, (actor, key))
            return result

        return self._transaction(work)

    def _create(
        self, cur: Any, name: str, value: str, micros: int | None, if_absent: bool
    ) -> WriteResult:
        """Insert ``name``, its version continuing from its retained history (a recreated
        variable never reuses a version, so an old ETag cannot match it). If an expired row is
        in the way, expire it first; if a live one is (created meanwhile), update it unless
        ``if_absent``."""
        key = name.encode()
        try:
            cur.execute(
                "INSERT INTO vars (name, value, version, created_at, updated_at, expires_at) "
                "SELECT %s, %s, LAST_INSERT_ID(COALESCE(MAX(version), 0) + 1), "
                f"UTC_TIMESTAMP(6), UTC_TIMESTAMP(6), {_MYSQL_EXPIRES} "
                "FROM var_changes WHERE name = %s",
                (key, value, micros, key),
            )
            return WriteResult(int(cur.lastrowid), created=True)
        except self._errors.IntegrityError as exc:
            if exc.errno != 1062:
                raise
        if self._expire_row(cur, key, None):
            return self._create(cur, name, value, micros, if_absent)
        if if_absent:
            raise PreconditionFailed(name)
        cur.execute(
            "UPDATE vars SET value = %s, version = LAST_INSERT_ID(version + 1), "
            f"updated_at = UTC_TIMESTAMP(6), expires_at = {_MYSQL_EXPIRES} WHERE name = %s",
            (value, micros, key),
        )
        return WriteResult(int(cur.lastrowid), created=False)

    def _expire_row(self, cur: Any, key: bytes, version: int | None) -> bool:
        """Delete ``key``'s row if its deadline has passed (and it is still at ``version``,
        if given), logging an ``expire`` change; False if there was nothing to expire."""
        sql = "SELECT version FROM vars WHERE name = %s AND expires_at <= UTC_TIMESTAMP(6)"
        params: tuple[Any, ...] = (key,)
        if version is not None:
            sql, params = sql + " AND version = %s", (*params, version)
        cur.execute(sql + " FOR UPDATE", params)
        rows = cur.fetchall()
        if not rows:
            return False
        cur.execute("DELETE FROM vars WHERE name = %s", (key,))
        cur.execute(_MYSQL_LOG_GONE, (key, int(rows[0][0]) + 1, "expire", None))
        return True

    def _insert_new(self, items: list[tuple[str, str]]) -> bool:
        keys = [name.encode() for name, _ in items]

        def work(cur: Any) -> bool:
            marks = ", ".join(["%s"] * len(keys))
            cur.execute(
                f"SELECT name, MAX(version) FROM var_changes WHERE name IN ({marks}) GROUP BY name",
                keys,
            )
            before = {bytes(name): int(version) for name, version in cur.fetchall()}
            versions = [before.get(key, 0) + 1 for key in keys]
            rows = ", ".join(["(%s, %s, %s, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))"] * len(items))
            try:
                cur.execute(
                    "INSERT INTO vars (name, value, version, created_at, updated_at) "
                    f"VALUES {rows}",
                    [
                        p
                        for key, (_, v), n in zip(keys, items, versions, strict=True)
                        for p in (key, v, n)
                    ],
                )
            except self._errors.IntegrityError as exc:
                if exc.errno != 1062:
                    raise
                raise _Taken from exc
            logged = ", ".join(["(%s, %s, 'set', %s, UTC_TIMESTAMP(6), NULL)"] * len(items))
            cur.execute(
                "INSERT INTO var_changes (name, version, op, value, changed_at, actor) "
                f"VALUES {logged}",
                [
                    p
                    for key, (_, v), n in zip(keys, items, versions, strict=True)
                    for p in (key, n, v)
                ],
            )
            return True

        try:
            return bool(self._transaction(work))
        except _Taken:
            return False

    def delete(
        self,
        name: str,
        *,
        if_version: int | None = None,
        if_exists: bool = False,
        actor: str | None = None,
    ) -> bool:
        key = name.encode()

        def work(cur: Any) -> bool:
            cur.execute(
                f"SELECT version FROM vars WHERE name = %s AND {_MYSQL_LIVE} FOR UPDATE", (key,)
            )
            rows = cur.fetchall()
            if not rows or (if_version is not None and int(rows[0][0]) != if_version):
                if if_exists or if_version is not None:
                    raise PreconditionFailed(name)
                return False
            cur.execute("DELETE FROM vars WHERE name = %s", (key,))
            cur.execute(_MYSQL_LOG_GONE, (key, int(rows[0][0]) + 1, "delete", actor))
            return True

        return bool(self._transaction(work))

    # The change log

    def _sequence(self, *, pending: bool = False, backlog: bool = True) -> None:
        """Give the committed change-log entries without a seq the next seqs, in id order,
        except that each name's entries take the order of their versions. Run by whoever
        reads seqs and finds an entry without one (the change feed's poller, SSE and
        long-poll requests, history reads: their own query tells them, at no extra cost; one
        batch each), and by the sweeper, so that the log is numbered with nobody watching.
        Unless ``pending`` (the caller saw such an entry), it first looks: one indexed read.
        Batches follow while the last one was full, unless not ``backlog``. Two processes at
        once: on one server the second finds the counter locked and leaves (SKIP LOCKED: the
        first is numbering); on Galera one of them fails certification (1213) because the
        other did the work. Either way nothing is numbered twice and nothing waits, and what
        is left over is numbered by the next call, so a conflict is not retried here."""
        look = "SELECT id FROM var_changes WHERE seq IS NULL LIMIT 1"
        while pending or self._query(look):
            pending = False
            try:
                read = self._transaction(self._sequence_batch, retried=False)
            except _NotApplied:
                return
            if read < _SEQUENCE_BATCH or not backlog:
                return

    def _sequence_batch(self, cur: Any) -> int:
        """Number a batch of entries in the caller's transaction; return how many were read
        (the batch's size: when full, there may be more)."""
        # SKIP LOCKED (MySQL 8.0.1+, MariaDB 10.6+): if another process holds the counter, it
        # is numbering right now; no row means leave it to that one.
        cur.execute("SELECT n FROM var_seq WHERE id = 1 FOR UPDATE SKIP LOCKED")
        counter = cur.fetchall()
        if not counter:
            return 0
        last = int(counter[0][0])
        # A consistent read, so no lock on an entry being inserted. Holding the counter, this
        # transaction is the only one numbering: what it reads without a seq stays so.
        cur.execute(
            "SELECT id, name, version FROM var_changes WHERE seq IS NULL ORDER BY id LIMIT %s",
            (_SEQUENCE_BATCH,),
        )
        rows = [(int(i), bytes(name), int(version)) for i, name, version in cur.fetchall()]
        read = len(rows)
        if not rows:  # another process numbered them after our look
            return 0
        if read == _SEQUENCE_BATCH:
            # The batch may hold a name's later version and not an earlier one (on Galera,
            # nodes draw ids from their own ranges): the earlier ones join the batch.
            cur.execute(
                "SELECT id, name, version FROM var_changes WHERE seq IS NULL AND name IN "
                f"({', '.join(['%s'] * len(rows))})",
                [name for _, name, _ in rows],
            )
            more = [(int(i), bytes(name), int(version)) for i, name, version in cur.fetchall()]
            rows = _with_earlier_versions(rows, more)
        ids = _in_version_order(rows)
        marks = ", ".join(["%s"] * len(ids))
        # FIELD(id, a, b, ...) is id's 1-based position in the list: seq last+1, last+2, ...
        cur.execute(
            f"UPDATE var_changes SET seq = %s + FIELD(id, {marks}) "
            f"WHERE id IN ({marks}) AND seq IS NULL",
            [last, *ids, *ids],
        )
        if cur.rowcount != len(ids):  # numbered by another process meanwhile: undone
            raise _NotApplied("the change log was numbered by another process meanwhile")
        cur.execute("UPDATE var_seq SET n = %s WHERE id = 1", (last + len(ids),))
        return read

    def history(
        self, name: str, before_version: int | None, limit: int, with_values: bool
    ) -> list[Change]:
        columns = _CHANGE_COLUMNS if with_values else _CHANGE_META_COLUMNS
        sql = f"SELECT {columns} FROM var_changes WHERE name = %s"
        params: list[Any] = [name.encode()]
        if before_version is not None:
            sql += " AND version < %s"
            params.append(before_version)
        return self._numbered(sql + " ORDER BY version DESC LIMIT %s", [*params, limit])

    def _numbered(self, sql: str, params: Sequence[Any], again: str | None = None) -> list[Change]:
        """The changes ``sql`` selects; if one had no seq yet, numbered first and selected
        again (by ``again``, if given, with the same parameters)."""
        changes = [_change(r) for r in self._query(sql, params)]
        if any(c.seq is None for c in changes):
            self._sequence(pending=True, backlog=False)
            changes = [_change(r) for r in self._query(again or sql, params)]
        return changes

    def change(self, name: str, version: int) -> Change | None:
        changes = self._numbered(
            f"SELECT {_CHANGE_COLUMNS} FROM var_changes WHERE name = %s AND version = %s",
            (name.encode(), version),
        )
        return changes[0] if changes else None

    def changes_since(self, after_seq: int, upto_seq: int, prefix: str, limit: int) -> list[Change]:
        sql, params = _changes_query(after_seq, upto_seq, prefix, limit, "%s", str.encode)
        return [_change(r) for r in self._query(sql, params)]

    def recent_changes(self, after_seq: int, limit: int) -> list[Change]:
        changes = self._numbered(
            _MYSQL_RECENT_CHANGES, (after_seq, limit), again=_MYSQL_NUMBERED_CHANGES
        )
        # Unnumbered entries (the first read found nothing else) wait for the next poll.
        return [c for c in changes if c.seq is not None]

    def last_seq(self) -> int:
        sql = (
            "SELECT n, EXISTS (SELECT 1 FROM var_changes WHERE seq IS NULL) "
            "FROM var_seq WHERE id = 1"
        )
        rows = self._query(sql)
        if rows and rows[0][1]:
            self._sequence(pending=True, backlog=False)
            rows = self._query(sql)
        return int(rows[0][0]) if rows else 0

    def first_seq(self) -> int | None:
        rows = self._query("SELECT MIN(seq) FROM var_changes")
        return int(rows[0][0]) if rows and rows[0][0] is not None else None

    def sweep(self, keep_versions: int, keep_days: float, batch: int) -> SweepResult:
        self._sequence()  # so that the log is ordered, and pruned, with nobody watching
        due = self._query(
            "SELECT name, version FROM vars WHERE expires_at <= UTC_TIMESTAMP(6) "
            "ORDER BY expires_at LIMIT %s",
            (batch,),
        )
        expired = 0
        for key, version in due:
            # Conditioned on the version seen: a rewrite meanwhile (or another sweeper) wins.
            if self._transaction(lambda cur, k=key, v=version: self._expire_row(cur, k, int(v))):
                expired += 1
        pruned = self._prune(keep_versions, keep_days, batch)
        return SweepResult(expired, pruned)

    def _prune(self, keep_versions: int, keep_days: float, batch: int) -> int:
        pruned = 0
        # Older than keep_days: seq order is time order, so look at the oldest batch only.
        oldest = self._query(
            "SELECT MAX(seq) FROM (SELECT seq, changed_at FROM var_changes "
            "WHERE seq IS NOT NULL ORDER BY seq LIMIT %s) AS oldest "
            "WHERE changed_at < UTC_TIMESTAMP(6) - INTERVAL %s SECOND",
            (batch, int(keep_days * 86400)),
        )
        if oldest and oldest[0][0] is not None:
            pruned += self._execute(
                "DELETE FROM var_changes WHERE seq <= %s", (int(oldest[0][0]),)
            )[0]
        # More than keep_versions behind their name's newest: found by walking the log in seq
        # order, a batch a sweep (a range scan of the seq index), from where this process
        # stopped.
        rows = self._query(
            "SELECT seq, name, version FROM var_changes WHERE seq > %s ORDER BY seq LIMIT %s",
            (self._prune_cursor, batch),
        )
        for key, newest in _crowded(rows, keep_versions).items():
            pruned += self._execute(
                "DELETE FROM var_changes WHERE name = %s AND version <= %s "
                "AND seq IS NOT NULL LIMIT %s",
                (key, newest - keep_versions, batch),
            )[0]
        self._prune_cursor = int(rows[-1][0]) if len(rows) == batch else 0
        return pruned


def _with_earlier_versions(
    batch: list[tuple[int, bytes, int]], candidates: list[tuple[int, bytes, int]]
) -> list[tuple[int, bytes, int]]:
    """``batch`` of (id, name, version) rows, plus those of ``candidates`` that are a batch
    name's version below the newest the batch has of it."""
    newest: dict[bytes, int] = {}
    for _, name, version in batch:
        newest[name] = max(newest.get(name, 0), version)
    return sorted({*batch, *(row for row in candidates if row[2] < newest.get(row[1], 0))})


def _in_version_order(rows: list[tuple[int, bytes, int]]) -> list[int]:
    """The ids of (id, name, version) rows in id order, except that the places a name's
    rows take are given to its versions in ascending order."""
    ordered = sorted(rows)
    by_name: dict[bytes, list[tuple[int, bytes, int]]] = {}
    for row in ordered:
        by_name.setdefault(row[1], []).append(row)
    queues = {name: iter(sorted(group, key=lambda r: r[2])) for name, group in by_name.items()}
    return [next(queues[name])[0] for _, name, _ in ordered]


def _crowded(rows: Sequence[Sequence[Any]], keep_versions: int) -> dict[Any, int]:
    """From (seq, name, version) rows: each name with a version past ``keep_versions``, and
    its newest version among the rows."""
    newest: dict[Any, int] = {}
    for _, name, version in rows:
        if int(version) > keep_versions:
            newest[name] = max(newest.get(name, 0), int(version))
    return newest


def _changes_query(
    after_seq: int, upto_seq: int, prefix: str, limit: int, mark: str, encode: Callable[[str], Any]
) -> tuple[str, list[Any]]:
    """Changes in a seq window under a prefix: a range scan of the seq index (MySQL; the primary
    key on SQLite), the prefix filtered."""
    sql = f"SELECT {_CHANGE_COLUMNS} FROM var_changes WHERE seq > {mark} AND seq <= {mark}"
    params: list[Any] = [after_seq, upto_seq]
    if prefix:
        sql += f" AND name >= {mark}"
        params.append(encode(prefix))
        upper = next_prefix(prefix)
        if upper is not None:
            sql += f" AND name < {mark}"
            params.append(encode(upper))
    return sql + f" ORDER BY seq LIMIT {mark}", [*params, limit]


def _columns(cur: Any, table: str) -> set[str]:
    """The lower-case column names of ``table`` in the current database (none: no table)."""
    cur.execute(
        "SELECT COLUMN_NAME FROM information_schema.COLUMNS "
        "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s",
        (table,),
    )
    return {str(row[0]).lower() for row in cur.fetchall()}


def _retrying(attempt: Callable[[], _T]) -> _T:
    """Run a write. One the server rolled back or refused (``_NotApplied``: a deadlock, a Galera
    certification conflict, a node not ready) changed nothing, so it runs again, up to
    _WRITE_ATTEMPTS times with jittered exponential backoff, then StoreUnavailable (503)."""
    for number in range(1, _WRITE_ATTEMPTS + 1):
        try:
            return attempt()
        except _NotApplied as exc:
            if number == _WRITE_ATTEMPTS:
                raise StoreUnavailable(
                    f"a write was rolled back {number} times in a row ({exc})"
                ) from exc
            log.info("write retried (attempt %d of %d): %s", number + 1, _WRITE_ATTEMPTS, exc)
            # Jitter: writers that collided once must not retry in step. Not for security.
            backoff = min(_BACKOFF_SECONDS * 2**number, _BACKOFF_MAX_SECONDS)
            time.sleep(random.uniform(0, backoff))  # noqa: S311
    raise AssertionError("unreachable")


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


def _describe(exc: Exception) -> str:
    """A one-line account of a driver error, without anything secret."""
    errno = getattr(exc, "errno", None)
    msg = getattr(exc, "msg", None) or str(exc)
    text = f"{errno}: {msg}" if errno else msg
    return " ".join(text.split())


def _utc(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)


def _variable(row: Sequence[Any]) -> Variable:
    name, value, version, created_at, updated_at, expires_at, *length = row
    if isinstance(name, bytes | bytearray):
        name = bytes(name).decode()
    whole = int(length[0]) if length else (len(value) if value is not None else None)
    expires = _utc(expires_at) if expires_at is not None else None
    return Variable(name, value, int(version), _utc(created_at), _utc(updated_at), whole, expires)


def _change(row: Sequence[Any]) -> Change:
    seq, name, version, op, value, changed_at, actor = row
    if isinstance(name, bytes | bytearray):
        name = bytes(name).decode()
    seq = None if seq is None else int(seq)
    return Change(seq, name, int(version), str(op), value, _utc(changed_at), actor)


def _list_query(
    prefix: str,
    after: str | None,
    limit: int,
    with_values: bool,
    mark: str,
    encode: Callable[[str], Any],
    value_chars: int | None = None,
) -> tuple[str, list[Any]]:
    """A keyset-paginated range scan over the name index, in either dialect."""
    # Expired rows are filtered after the range scan: the plan stays the name index's.
    where: list[str] = [_LIVE.format(now=_SQLITE_NOW if mark == "?" else "UTC_TIMESTAMP(6)")]
    params: list[Any] = []
    columns = _COLUMNS if with_values else _META_COLUMNS
    if with_values and value_chars is not None:
        # SUBSTR counts characters in both dialects: a page of previews never reads megabytes.
        length = "LENGTH" if mark == "?" else "CHAR_LENGTH"  # characters, in either dialect
        columns = (
            f"name, SUBSTR(value, 1, {mark}), version, created_at, updated_at, expires_at, "
            f"{length}(value)"
        )
        params.append(value_chars)
    if prefix:
        where.append(f"name >= {mark}")
        params.append(encode(prefix))
        upper = next_prefix(prefix)
        if upper is not None:
            where.append(f"name < {mark}")
            params.append(encode(upper))
    if after is not None:
        where.append(f"name > {mark}")
        params.append(encode(after))
    sql = f"SELECT {columns} FROM vars WHERE " + " AND ".join(where)
    sql += f" ORDER BY name LIMIT {mark}"
    params.append(limit)
    return sql, params


# --- SQLite

_SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f', 'now')"
_SQLITE_TABLE = f"""
CREATE TABLE IF NOT EXISTS vars (
    name TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL,
    version INTEGER NOT NULL DEFAULT 1,
    created_at TEXT NOT NULL DEFAULT ({_SQLITE_NOW}),
    updated_at TEXT NOT NULL DEFAULT ({_SQLITE_NOW}),
    expires_at TEXT
) WITHOUT ROWID
"""
# Writers take the database lock (BEGIN IMMEDIATE) before allocating a seq, so seqs commit in
# order; AUTOINCREMENT never reuses one, even after the log is pruned empty.
_SQLITE_SCHEMA = (
    _SQLITE_TABLE,
    "CREATE INDEX IF NOT EXISTS vars_expires_at ON vars (expires_at)",
    """CREATE TABLE IF NOT EXISTS var_changes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        op TEXT NOT NULL,
        value TEXT,
        changed_at TEXT NOT NULL,
        actor TEXT,
        UNIQUE (name, version)
    )""",
)
_SQLITE_LIVE = _LIVE.format(now=_SQLITE_NOW)
# strftime(..., NULL) is NULL: one statement for "expires in ttl" and "permanent".
_SQLITE_EXPIRES = "strftime('%Y-%m-%d %H:%M:%f', 'now', '+' || ? || ' seconds')"
_SQLITE_LOG_SET = (
    "INSERT INTO var_changes (name, version, op, value, changed_at, actor) "
    "SELECT name, version, 'set', value, updated_at, ? FROM vars WHERE name = ?"
)
_SQLITE_LOG_GONE = (
    "INSERT INTO var_changes (name, version, op, value, changed_at, actor) "
    f"VALUES (?, ?, ?, NULL, {_SQLITE_NOW}, ?)"
)


@dataclass(frozen=True, slots=True)
class _Rows:
    """A statement's rows, read before its connection went back to the pool."""

    rows: list[Any]
    rowcount: int

    def fetchone(self) -> Any:
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[Any]:
        return self.rows


class SQLiteStore(Store):
    """The embedded default: one file, WAL mode, safe with several gunicorn workers."""

    kind = "sqlite"

    def __init__(self, url: DatabaseURL, busy_timeout: float, pool_size: int) -> None:
        super().__init__(url)
        self._busy_timeout = busy_timeout
        self._prune_cursor = 0
        self._pool = ConnectionPool(
            self._open,
            lambda conn: conn.close(),
            lambda conn, used: True,
            size=pool_size,
            wait=busy_timeout,
            on_change=self._connections_changed,
        )

    def _open(self) -> sqlite3.Connection:
        # check_same_thread=False: a pooled connection serves one thread at a time, but not
        # always the same one.
        conn = sqlite3.connect(
            self.url.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
        )
        # FULL: an acknowledged write survives a power cut too, not only a crash.
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    def close(self) -> None:
        self._pool.close_idle()

    def _run(self, sql: str, params: Sequence[Any] = ()) -> _Rows:
        with self._pool.lease() as lease:
            try:
                cursor = lease.conn.execute(sql, params)
                return _Rows(cursor.fetchall(), cursor.rowcount)
            except sqlite3.OperationalError as exc:  # locked past the busy timeout, disk I/O...
                raise StoreUnavailable(f"sqlite: {exc}") from exc

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; rolled back on any exception, before the connection goes
        back to the pool."""
        with self._pool.lease() as lease:
            conn = lease.conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError):
                    raise StoreUnavailable(f"sqlite: {exc}") from exc
                raise

    def _init_schema(self) -> str:
        path = Path(self.url.path)
        existed = path.exists()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"cannot create {path.parent}: {exc}") from exc
        self._run("PRAGMA journal_mode = WAL")
        with self._transaction() as conn:  # several workers start at once: one migrates
            columns = {row[1] for row in conn.execute("PRAGMA table_info(vars)")}
            migrated = bool(columns) and "expires_at" not in columns
            if migrated:
                conn.execute("ALTER TABLE vars ADD COLUMN expires_at TEXT")
            for statement in _SQLITE_SCHEMA:
                conn.execute(statement)
        if not existed:
            return "created"
        return "migrated" if migrated else "up to date"

    def ping(self) -> None:
        self._run("SELECT 1").fetchall()

    def get(self, name: str) -> Variable | None:
        row = self._run(
            f"SELECT {_COLUMNS} FROM vars WHERE name = ? AND {_SQLITE_LIVE}", (name,)
        ).fetchone()
        return _variable(row) if row else None

    def get_many(self, names: Sequence[str]) -> list[Variable]:
        if not names:
            return []
        marks = ", ".join(["?"] * len(names))
        rows = self._run(
            f"SELECT {_COLUMNS} FROM vars WHERE name IN ({marks}) AND {_SQLITE_LIVE} ORDER BY name",
            names,
        )
        return [_variable(r) for r in rows.fetchall()]

    def count(self) -> int:
        return int(self._run(f"SELECT COUNT(*) FROM vars WHERE {_SQLITE_LIVE}").fetchone()[0])

    def list(
        self,
        prefix: str,
        after: str | None,
        limit: int,
        with_values: bool,
        value_chars: int | None = None,
    ) -> list[Variable]:
        sql, params = _list_query(prefix, after, limit, with_values, "?", lambda s: s, value_chars)
        return [_variable(r) for r in self._run(sql, params).fetchall()]

    def put(
        self,
        name: str,
        value: str,
        *,
        if_version: int | None = None,
        if_absent: bool = False,
        if_exists: bool = False,
        ttl: float | None = None,
        actor: str | None = None,
    ) -> WriteResult:
        seconds = None if ttl is None else f"{ttl:.3f}"  # a modifier: no exponent notation
        with self._transaction() as conn:
            result = None
            if not if_absent:
                sql = (
                    "UPDATE vars SET value = ?, version = version + 1, "
                    f"updated_at = {_SQLITE_NOW}, expires_at = {_SQLITE_EXPIRES} "
                    f"WHERE name = ? AND {_SQLITE_LIVE}"
                )
                params: tuple[Any, ...] = (value, seconds, name)
                if if_version is not None:
                    sql, params = sql + " AND version = ?", (*params, if_version)
                row = conn.execute(sql + " RETURNING version", params).fetchone()
                if row is not None:
                    result = WriteResult(int(row[0]), created=False)
                elif if_version is not None or if_exists:
                    raise PreconditionFailed(name)
            if result is None:
                if (
                    if_absent
                    and conn.execute(
                        f"SELECT 1 FROM vars WHERE name = ? AND {_SQLITE_LIVE}", (name,)
                    ).fetchone()
                ):
                    raise PreconditionFailed(name)
                self._expire_row(conn, name, None)
                # The version continues from the retained history: an old ETag never matches.
                row = conn.execute(
                    "INSERT INTO vars (name, value, version, expires_at) "
                    f"SELECT ?, ?, COALESCE(MAX(version), 0) + 1, {_SQLITE_EXPIRES} "
                    "FROM var_changes WHERE name = ? RETURNING version",
                    (name, value, seconds, name),
                ).fetchone()
                result = WriteResult(int(row[0]), created=True)
            conn.execute(_SQLITE_LOG_SET, (actor, name))
            return result

    def _expire_row(self, conn: sqlite3.Connection, name: str, version: int | None) -> bool:
        sql = f"DELETE FROM vars WHERE name = ? AND expires_at <= {_SQLITE_NOW}"
        params: tuple[Any, ...] = (name,)
        if version is not None:
            sql, params = sql + " AND version = ?", (*params, version)
        row = conn.execute(sql + " RETURNING version", params).fetchone()
        if row is None:
            return False
        conn.execute(_SQLITE_LOG_GONE, (name, int(row[0]) + 1, "expire", None))
        return True

    def _insert_new(self, items: list[tuple[str, str]]) -> bool:
        try:
            with self._transaction() as conn:
                for name, value in items:
                    conn.execute(
                        "INSERT INTO vars (name, value, version) SELECT ?, ?, "
                        "COALESCE(MAX(version), 0) + 1 FROM var_changes WHERE name = ?",
                        (name, value, name),
                    )
                    conn.execute(_SQLITE_LOG_SET, (None, name))
        except sqlite3.IntegrityError:
            return False
        return True

    def delete(
        self,
        name: str,
        *,
        if_version: int | None = None,
        if_exists: bool = False,
        actor: str | None = None,
    ) -> bool:
        with self._transaction() as conn:
            sql = f"DELETE FROM vars WHERE name = ? AND {_SQLITE_LIVE}"
            params: tuple[Any, ...] = (name,)
            if if_version is not None:
                sql, params = sql + " AND version = ?", (*params, if_version)
            row = conn.execute(sql + " RETURNING version", params).fetchone()
            if row is None:
                if if_exists or if_version is not None:
                    raise PreconditionFailed(name)
                return False
            conn.execute(_SQLITE_LOG_GONE, (name, int(row[0]) + 1, "delete", actor))
            return True

    def history(
        self, name: str, before_version: int | None, limit: int, with_values: bool
    ) -> list[Change]:
        columns = _CHANGE_COLUMNS if with_values else _CHANGE_META_COLUMNS
        sql = f"SELECT {columns} FROM var_changes WHERE name = ?"
        params: list[Any] = [name]
        if before_version is not None:
            sql += " AND version < ?"
            params.append(before_version)
        rows = self._run(sql + " ORDER BY version DESC LIMIT ?", [*params, limit])
        return [_change(r) for r in rows.fetchall()]

    def change(self, name: str, version: int) -> Change | None:
        row = self._run(
            f"SELECT {_CHANGE_COLUMNS} FROM var_changes WHERE name = ? AND version = ?",
            (name, version),
        ).fetchone()
        return _change(row) if row else None

    def changes_since(self, after_seq: int, upto_seq: int, prefix: str, limit: int) -> list[Change]:
        sql, params = _changes_query(after_seq, upto_seq, prefix, limit, "?", lambda s: s)
        return [_change(r) for r in self._run(sql, params).fetchall()]

    def recent_changes(self, after_seq: int, limit: int) -> list[Change]:
        rows = self._run(
            f"SELECT {_CHANGE_META_COLUMNS} FROM var_changes WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        )
        return [_change(r) for r in rows.fetchall()]

    def last_seq(self) -> int:
        row = self._run("SELECT seq FROM sqlite_sequence WHERE name = 'var_changes'").fetchone()
        return int(row[0]) if row else 0

    def first_seq(self) -> int | None:
        row = self._run("SELECT MIN(seq) FROM var_changes").fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def sweep(self, keep_versions: int, keep_days: float, batch: int) -> SweepResult:
        due = self._run(
            f"SELECT name, version FROM vars WHERE expires_at <= {_SQLITE_NOW} "
            "ORDER BY expires_at LIMIT ?",
            (batch,),
        ).fetchall()
        expired = 0
        for name, version in due:
            with self._transaction() as conn:
                expired += self._expire_row(conn, name, int(version))
        pruned = 0
        oldest = self._run(
            "SELECT MAX(seq) FROM (SELECT seq, changed_at FROM var_changes ORDER BY seq "
            "LIMIT ?) WHERE changed_at < strftime('%Y-%m-%d %H:%M:%f', 'now', ?)",
            (batch, f"-{int(keep_days * 86400)} seconds"),
        ).fetchone()
        if oldest and oldest[0] is not None:
            pruned += self._run("DELETE FROM var_changes WHERE seq <= ?", (oldest[0],)).rowcount
        rows = self._run(
            "SELECT seq, name, version FROM var_changes WHERE seq > ? ORDER BY seq LIMIT ?",
            (self._prune_cursor, batch),
        ).fetchall()
        for name, newest in _crowded(rows, keep_versions).items():
            pruned += self._run(
                "DELETE FROM var_changes WHERE name = ? AND version <= ?",
                (name, newest - keep_versions),
            ).rowcount
        self._prune_cursor = int(rows[-1][0]) if len(rows) == batch else 0
        return SweepResult(expired, pruned)


# --- Flask integration


def open_store(config: dict[str, Any]) -> Store:
    """Build the store that ``config`` names. Connects to nothing yet."""
    url = DatabaseURL.parse(config["DATABASE_URL"], config.get("DATABASE_PASSWORD_FILE"))
    pool_size = config["DATABASE_POOL_SIZE"]
    if url.scheme == "sqlite":
        return SQLiteStore(url, config["DATABASE_TIMEOUT"], pool_size)
    return MySQLStore(
        url, config["DATABASE_CONNECT_TIMEOUT"], config["DATABASE_TIMEOUT"], pool_size
    )


def get_store() -> Store:
    """The current app's store (the counterpart of flaskr's ``get_db``)."""
    return current_app.extensions["var_keeper.store"]


def init_app(app: Flask) -> None:
    """Attach a store to ``app`` and add its CLI commands (init-db, export, import)."""
    store = open_store(app.config)
    app.extensions["var_keeper.store"] = store
    app.cli.add_command(init_db_command)
    app.cli.add_command(export_command)
    app.cli.add_command(import_command)
    log.info("store: %s", store.url)


def prepare_in_background(app: Flask) -> threading.Event:
    """Prepare the schema in a thread, logging while the database is not reachable yet.

    gunicorn.conf.py calls this in each worker after the fork, so a worker gets ready (and says
    that it is waiting) without waiting for a first request. Set the returned event to stop it.
    """
    stop = threading.Event()
    store: Store = app.extensions["var_keeper.store"]
    threading.Thread(
        target=store.wait_until_ready, args=(stop,), name="var_keeper-schema", daemon=True
    ).start()
    return stop


@click.command("init-db")
@with_appcontext
def init_db_command() -> None:
    """Create the database and table if missing, or migrate the tutorial's table."""
    store = get_store()
    started = time.monotonic()
    try:
        store.ensure_ready()
    except StoreUnavailable as exc:
        raise click.ClickException(f"cannot prepare {store.url}: {exc}") from exc
    click.echo(f"schema ready on {store.url} in {time.monotonic() - started:.2f}s")


EXPORT_FORMAT = "var_keeper/1"
_PAGE = 1000
_BATCH_ITEMS = 500
_BATCH_BYTES = 4 * 1024 * 1024  # well under max_allowed_packet (16 MiB on MariaDB, 64 on MySQL)


def _ready_store() -> Store:
    store = get_store()
    try:
        store.ensure_ready()
    except StoreUnavailable as exc:
        raise click.ClickException(f"cannot use {store.url}: {exc}") from exc
    return store


@click.command("export")
@click.argument("file", type=click.File("w", encoding="utf-8", lazy=True), default="-")
@with_appcontext
def export_command(file: Any) -> None:
    """Write every variable to FILE (default: standard output) as JSON.

    Values are plain UTF-8 strings: {"format": "var_keeper/1", "variables": [{"name": ...,
    "value": ...}, ...]}, in name order. Without concurrent writes it is an exact snapshot;
    with them, each variable is exported as it was when its page was read.
    """
    store = _ready_store()
    file.write(f'{{"format": "{EXPORT_FORMAT}", "variables": [')
    separator, after, count = "\n", None, 0
    with click.progressbar(length=store.count(), label="exporting", file=sys.stderr) as bar:
        while True:
            page = store.list("", after, _PAGE, with_values=True)
            for var in page:
                entry = json.dumps({"name": var.name, "value": var.value}, ensure_ascii=False)
                file.write(separator + entry)
                separator = ",\n"
            bar.update(len(page))
            count += len(page)
            if len(page) < _PAGE:
                break
            after = page[-1].name
    file.write("\n]}\n")
    click.echo(f"exported {count} variables from {store.url}", err=True)


@click.command("import")
@click.argument("file", type=click.File("r", encoding="utf-8"), default="-")
@with_appcontext
def import_command(file: Any) -> None:
    """Load variables from FILE (written by export). Idempotent: unchanged ones are untouched."""
    items = _read_export(file)
    store = _ready_store()
    created = updated = 0
    with click.progressbar(length=len(items), label="importing", file=sys.stderr) as bar:
        for batch in _batches(items):
            done = store.import_batch(batch)
            created, updated = created + done[0], updated + done[1]
            bar.update(len(batch))
    unchanged = len(items) - created - updated
    click.echo(
        f"imported {len(items)} variables into {store.url}: {created} created, "
        f"{updated} updated, {unchanged} unchanged",
        err=True,
    )


def _read_export(file: Any) -> list[tuple[str, str]]:
    try:
        data = json.load(file)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"not a var_keeper export: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("variables"), list):
        raise click.ClickException('not a var_keeper export: expected {"variables": [...]}')
    items: list[tuple[str, str]] = []
    for index, entry in enumerate(data["variables"]):
        name = entry.get("name") if isinstance(entry, dict) else None
        value = entry.get("value") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not isinstance(value, str):
            raise click.ClickException(f"variable #{index}: needs a string name and value")
        problem = name_problem(name)
        if problem:
            raise click.ClickException(f"variable #{index} ({name!r}): {problem}")
        items.append((name, value))
    return items


def _batches(items: list[tuple[str, str]]) -> Iterator[list[tuple[str, str]]]:
    """Runs of at most _BATCH_ITEMS pairs and _BATCH_BYTES bytes (one item may exceed it)."""
    batch: list[tuple[str, str]] = []
    size = 0
    for name, value in items:
        entry_size = len(name.encode()) + len(value.encode())
        if batch and (len(batch) == _BATCH_ITEMS or size + entry_size > _BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append((name, value))
        size += entry_size
    if batch:
        yield batch
