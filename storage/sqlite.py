"""``SQLiteStore``: the embedded default. One file in WAL mode, safe with several gunicorn
workers: every write takes the database lock first (BEGIN IMMEDIATE), so seqs, which SQLite
allocates at insert, commit in order and no numbering step is needed."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from storage import migrations, queries
from storage.dialect import SQLITE
from storage.migrations import CREATED, MIGRATED, UP_TO_DATE, Step
from storage.model import Change, OutOfSpace, PreconditionFailed, StoreUnavailable, WriteResult
from storage.pool import ConnectionPool
from storage.snapshot import Snapshot
from storage.sql import SQLStore, WriteOptions
from storage.url import DatabaseURL

_T = TypeVar("_T")
_VARS_TABLE = f"""
CREATE TABLE IF NOT EXISTS vars (
    name TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL,
    version INTEGER NOT NULL DEFAULT 1,
    created_at TEXT NOT NULL DEFAULT ({SQLITE.now}),
    updated_at TEXT NOT NULL DEFAULT ({SQLITE.now}),
    expires_at TEXT
) WITHOUT ROWID
"""
# AUTOINCREMENT never reuses a seq, even after the log is pruned empty.
_CHANGES_TABLE = """
CREATE TABLE IF NOT EXISTS var_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    op TEXT NOT NULL,
    value TEXT,
    changed_at TEXT NOT NULL,
    actor TEXT,
    txn TEXT,
    UNIQUE (name, version)
)
"""


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _create_vars(conn: sqlite3.Connection) -> str:
    if "vars" in _tables(conn):
        return UP_TO_DATE
    conn.execute(_VARS_TABLE)
    return CREATED


def _add_expiry(conn: sqlite3.Connection) -> str:
    if "expires_at" in {row[1] for row in conn.execute("PRAGMA table_info(vars)")}:
        return UP_TO_DATE
    conn.execute("ALTER TABLE vars ADD COLUMN expires_at TEXT")
    return MIGRATED


def _add_change_log(conn: sqlite3.Connection) -> str:
    existed = "var_changes" in _tables(conn)
    conn.execute("CREATE INDEX IF NOT EXISTS vars_expires_at ON vars (expires_at)")
    conn.execute(_CHANGES_TABLE)
    return UP_TO_DATE if existed else MIGRATED


def _add_change_txn(conn: sqlite3.Connection) -> str:
    if "txn" in {row[1] for row in conn.execute("PRAGMA table_info(var_changes)")}:
        return UP_TO_DATE
    conn.execute("ALTER TABLE var_changes ADD COLUMN txn TEXT")
    return MIGRATED


def _add_pruned_through(conn: sqlite3.Connection) -> str:
    """The highest seq retention has removed (``Store.pruned_through``). A log of an earlier
    release may have lost any entry so far: its watermark starts at the last seq given."""
    if "var_pruned" in _tables(conn):
        return UP_TO_DATE
    conn.execute("CREATE TABLE var_pruned (id INTEGER PRIMARY KEY, seq INTEGER NOT NULL)")
    conn.execute(
        "INSERT INTO var_pruned (id, seq) SELECT 1, COALESCE(MAX(seq), 0) FROM sqlite_sequence "
        "WHERE name = 'var_changes'"
    )
    return MIGRATED


STEPS = (
    Step(1, "the vars table", _create_vars),
    Step(2, "vars.expires_at", _add_expiry),
    Step(3, "the change log (var_changes)", _add_change_log),
    Step(4, "var_changes.txn", _add_change_txn),
    Step(5, "the retention watermark (var_pruned)", _add_pruned_through),
)


class SQLiteStore(SQLStore):
    kind = "sqlite"
    dialect = SQLITE

    def __init__(self, url: DatabaseURL, busy_timeout: float, pool_size: int) -> None:
        super().__init__(url)
        self._busy_timeout = busy_timeout
        self._pool = ConnectionPool(
            self._open,
            lambda conn: conn.close(),
            lambda conn, used: True,
            size=pool_size,
            wait=busy_timeout,
            on_change=self._connections_changed,
        )

    # Connections

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

    def _cursor(self, sql: str, params: Sequence[Any]) -> tuple[list[Any], int]:
        with self._pool.lease() as lease:
            try:
                cursor = lease.conn.execute(sql, params)
                return cursor.fetchall(), cursor.rowcount
            except sqlite3.OperationalError as exc:  # locked past the busy timeout, disk I/O...
                raise _unavailable(exc) from exc

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._cursor(sql, params)[0]

    def _write(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._cursor(sql, params)[1]

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
                    raise _unavailable(exc) from exc
                raise

    @contextmanager
    def snapshot(self) -> Iterator[Snapshot]:
        """A read transaction on one connection: in WAL mode its first read fixes what it
        sees, and writers go on meanwhile."""
        with self._pool.lease() as lease:
            conn = lease.conn

            def rows(sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
                try:
                    return conn.execute(sql, params).fetchall()
                except sqlite3.OperationalError as exc:
                    raise _unavailable(exc) from exc

            conn.execute("BEGIN")
            try:
                yield Snapshot.begin(SQLITE, rows)
            finally:
                if conn.in_transaction:  # read only: nothing to commit
                    conn.execute("ROLLBACK")

    # Schema

    def prepare_schema(self) -> str:
        path = Path(self.url.path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"cannot create {path.parent}: {exc}") from exc
        self._read("PRAGMA journal_mode = WAL")
        with self._transaction() as conn:  # several workers start at once: one migrates
            applied = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if applied >= migrations.latest(STEPS):
                return UP_TO_DATE
            outcome = migrations.run(STEPS, applied, conn)
            # A pragma takes no parameter; the number is our own constant.
            conn.execute(f"PRAGMA user_version = {migrations.latest(STEPS):d}")
            return outcome

    # Writes: BEGIN IMMEDIATE makes every write transaction serializable

    def _in_transaction(self, work: Callable[[Any], _T], *, serializable: bool = False) -> _T:
        with self._transaction() as conn:
            return work(conn)

    def _rows(self, tx: Any, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return tx.execute(sql, params).fetchall()

    def _put_in(self, tx: Any, name: str, value: str, options: WriteOptions) -> WriteResult:
        expiry = SQLITE.expiry(options.ttl)
        result = None
        if not options.if_absent:
            sql = (
                "UPDATE vars SET value = ?, version = version + 1, "
                f"updated_at = {SQLITE.now}, expires_at = {SQLITE.expires_in} "
                f"WHERE name = ? AND {SQLITE.live}"
            )
            params: tuple[Any, ...] = (value, expiry, name)
            if options.if_version is not None:
                sql, params = sql + " AND version = ?", (*params, options.if_version)
            row = tx.execute(sql + " RETURNING version", params).fetchone()
            if row is not None:
                result = WriteResult(int(row[0]), created=False)
            elif options.if_version is not None or options.if_exists:
                raise PreconditionFailed(name)
        if result is None:
            live = f"SELECT 1 FROM vars WHERE name = ? AND {SQLITE.live}"
            if options.if_absent and tx.execute(live, (name,)).fetchone():
                raise PreconditionFailed(name)
            self._expire_row(tx, name, None)
            # The version continues from the retained history: an old ETag never matches.
            row = tx.execute(
                "INSERT INTO vars (name, value, version, expires_at) "
                f"SELECT ?, ?, COALESCE(MAX(version), 0) + 1, {SQLITE.expires_in} "
                "FROM var_changes WHERE name = ? RETURNING version",
                (name, value, expiry, name),
            ).fetchone()
            result = WriteResult(int(row[0]), created=True)
        tx.execute(queries.log_set(SQLITE), (options.actor, options.txn, name))
        return result

    def _delete_in(self, tx: Any, name: str, options: WriteOptions) -> int | None:
        sql = f"DELETE FROM vars WHERE name = ? AND {SQLITE.live}"
        params: tuple[Any, ...] = (name,)
        if options.if_version is not None:
            sql, params = sql + " AND version = ?", (*params, options.if_version)
        row = tx.execute(sql + " RETURNING version", params).fetchone()
        if row is None:
            if options.if_exists or options.if_version is not None:
                raise PreconditionFailed(name)
            return None
        version = int(row[0]) + 1
        tx.execute(queries.log_gone(SQLITE), (name, version, "delete", options.actor, options.txn))
        return version

    def _expire_row(self, conn: sqlite3.Connection, name: str, version: int | None) -> bool:
        sql = f"DELETE FROM vars WHERE name = ? AND expires_at <= {SQLITE.now}"
        params: tuple[Any, ...] = (name,)
        if version is not None:
            sql, params = sql + " AND version = ?", (*params, version)
        row = conn.execute(sql + " RETURNING version", params).fetchone()
        if row is None:
            return False
        conn.execute(queries.log_gone(SQLITE), (name, int(row[0]) + 1, "expire", None, None))
        return True

    def _expire(self, key: Any, version: int) -> bool:
        with self._transaction() as conn:
            return self._expire_row(conn, key, version)

    def _insert_new(self, items: list[tuple[str, str]]) -> bool:
        try:
            with self._transaction() as conn:
                for name, value in items:
                    conn.execute(
                        "INSERT INTO vars (name, value, version) SELECT ?, ?, "
                        "COALESCE(MAX(version), 0) + 1 FROM var_changes WHERE name = ?",
                        (name, value, name),
                    )
                    conn.execute(queries.log_set(SQLITE), (None, None, name))
        except sqlite3.IntegrityError:
            return False
        return True

    # The change log: seqs are given at insert, in commit order

    def numbered_recent_changes(self, after_seq: int, limit: int) -> list[Change]:
        rows = self._read(
            f"SELECT {queries.CHANGE_META_COLUMNS} FROM var_changes WHERE seq > ? "
            "ORDER BY seq LIMIT ?",
            (after_seq, limit),
        )
        return [queries.change(r) for r in rows]

    def numbered_last_seq(self) -> int:
        rows = self._read("SELECT seq FROM sqlite_sequence WHERE name = 'var_changes'")
        return int(rows[0][0]) if rows else 0


def _unavailable(exc: sqlite3.OperationalError) -> StoreUnavailable:
    """The error for a failed statement: a full disk (SQLITE_FULL: the statement or transaction
    was rolled back, reads go on), or another reason the database cannot serve it (locked past
    the busy timeout, disk I/O)."""
    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
        return OutOfSpace(f"the database is out of disk space (sqlite: {exc})")
    return StoreUnavailable(f"sqlite: {exc}")
