"""``MySQLStore``: MySQL 8.x, MariaDB and Galera. Its writes, and its change-log reads.

A write is one transaction on one pooled connection: the row and its change-log entry, which
gets its seq after the commit (``storage.mysql.numbering``). An unconditional write is one
upsert and its log entry, sent with START TRANSACTION and COMMIT in one round trip (``_UPSERT``;
not on Galera); a conditional one goes statement by statement (``UPDATE ... version =
LAST_INSERT_ID(version + 1)`` hands the new version back in the OK packet; INSERT only for a
new name). Reads, history and retention are ``SQLStore``'s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from storage import queries
from storage.dialect import MYSQL
from storage.model import Change, PreconditionFailed, StoreError, WriteResult
from storage.mysql import numbering, schema
from storage.mysql.connections import MySQLConnections
from storage.mysql.snapshot import consistent_snapshot
from storage.snapshot import Snapshot
from storage.sql import SQLStore, WriteOptions
from storage.url import DatabaseURL

_T = TypeVar("_T")
_DUPLICATE_KEY = 1062
_LIVE = MYSQL.live
_EXPIRES = MYSQL.expires_in
# The change feed's poll. Entries without a seq come first (NULL sorts first): one range scan
# of the seq index answers both "anything new?" and "anything to number?", so an idle poll is
# one read.
RECENT_CHANGES = (
    f"SELECT {queries.CHANGE_META_COLUMNS} FROM var_changes "
    "WHERE seq IS NULL OR seq > %s ORDER BY seq LIMIT %s"
)
# The same once numbered: unnumbered entries left (a burst) cannot crowd the new ones out.
_NUMBERED_CHANGES = (
    f"SELECT {queries.CHANGE_META_COLUMNS} FROM var_changes WHERE seq > %s ORDER BY seq LIMIT %s"
)
_LAST_SEQ = (
    "SELECT n, EXISTS (SELECT 1 FROM var_changes WHERE seq IS NULL) FROM var_seq WHERE id = 1"
)


# An unconditional write as one transaction in one round trip: one upsert of the row, then the
# change-log entry copied from it (``queries.log_set``), between START TRANSACTION and COMMIT.
# A new name's version continues from its retained history (the SELECT always yields one row);
# a live row's goes up by one. LAST_INSERT_ID(expr) hands the version back in the OK packet,
# and the affected rows say which happened (1: inserted, 2: updated). The first assignment
# checks the row it met: an expired row still in the way gets a NULL version, which the strict
# sql_mode refuses (``_EXPIRED_IN_THE_WAY``) before anything else ran, and ``MySQLStore._put``
# goes the long way, which logs the expiry first. The long way too when the log entry's
# version is taken (1062): under READ COMMITTED the history was read before the row's lock
# was granted, and a delete or expiry that held it committed a version meanwhile; the long way
# takes the lock first. VALUES(col) is the value the INSERT would
# have written (MySQL 8 deprecates it in favour of a row alias, which MariaDB lacks).
_UPSERT = (
    "INSERT INTO vars (name, value, version, created_at, updated_at, expires_at) "
    "SELECT %s, %s, LAST_INSERT_ID(COALESCE(MAX(version), 0) + 1), UTC_TIMESTAMP(6), "
    f"UTC_TIMESTAMP(6), {_EXPIRES} FROM var_changes WHERE name = %s "
    "ON DUPLICATE KEY UPDATE "
    f"version = IF({MYSQL.live.replace('expires_at', 'vars.expires_at')}, "
    "LAST_INSERT_ID(vars.version + 1), NULL), "
    "value = VALUES(value), updated_at = VALUES(updated_at), expires_at = VALUES(expires_at)"
)
_EXPIRED_IN_THE_WAY = 1048  # "Column 'version' cannot be null": see ``_UPSERT``
_UPSERT_INSERTED = 1  # the affected rows of an upsert that inserted (2: it updated)


class _Taken(StoreError):
    """A bulk insert met a name that exists: the transaction is rolled back."""


class MySQLStore(SQLStore):
    kind = "mysql"
    dialect = MYSQL

    def __init__(
        self, url: DatabaseURL, connect_timeout: int, statement_timeout: int, pool_size: int
    ) -> None:
        super().__init__(url)
        self.init_wait = connect_timeout + 1
        self.connections = MySQLConnections(
            url, connect_timeout, statement_timeout, pool_size, self._connections_changed
        )

    def prepare_schema(self) -> str:
        return schema.prepare(self.connections)

    def close(self) -> None:
        self.connections.close()

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.connections.query(sql, params)

    def snapshot(self) -> AbstractContextManager[Snapshot]:
        return consistent_snapshot(self.connections)

    def _write(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self.connections.execute(sql, params)[0]

    # Writes: one transaction each, on one connection (see ``SQLStore``)

    def _in_transaction(self, work: Callable[[Any], _T], *, serializable: bool = False) -> _T:
        return self.connections.transaction(work, serializable=serializable)

    def _rows(self, tx: Any, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        tx.execute(sql, params)
        return tx.fetchall() if tx.with_rows else []

    def _put(self, name: str, value: str, options: WriteOptions) -> WriteResult:
        """An unconditional write goes in one round trip (``_UPSERT`` and its log entry),
        except on Galera (see ``transaction_in_one_trip``); a conditional one, or one that
        meets an expired row or a just-committed version in its way, goes statement by
        statement (``_put_in``)."""
        if options.if_version is None and not (options.if_absent or options.if_exists):
            key = name.encode()
            try:
                answers = self.connections.transaction_in_one_trip(
                    [
                        (_UPSERT, (key, value, MYSQL.expiry(options.ttl), key)),
                        (queries.log_set(MYSQL), (options.actor, options.txn, key)),
                    ]
                )
            except self.connections.errors.IntegrityError as exc:
                if exc.errno not in (_EXPIRED_IN_THE_WAY, _DUPLICATE_KEY):
                    raise
                answers = None
            if answers is not None:  # None: not sent (Galera), or a row in the way
                (affected, version, _), _ = answers
                return WriteResult(int(version), created=affected == _UPSERT_INSERTED)
        return super()._put(name, value, options)

    def _put_in(self, tx: Any, name: str, value: str, options: WriteOptions) -> WriteResult:
        key, expiry = name.encode(), MYSQL.expiry(options.ttl)
        result = None
        if not options.if_absent:
            # LAST_INSERT_ID(expr) hands the new version back in the OK packet.
            sql = (
                "UPDATE vars SET value = %s, version = LAST_INSERT_ID(version + 1), "
                f"updated_at = UTC_TIMESTAMP(6), expires_at = {_EXPIRES} "
                f"WHERE name = %s AND {_LIVE}"
            )
            params: tuple[Any, ...] = (value, expiry, key)
            if options.if_version is not None:
                sql, params = sql + " AND version = %s", (*params, options.if_version)
            tx.execute(sql, params)
            if tx.rowcount:
                result = WriteResult(int(tx.lastrowid), created=False)
            elif options.if_version is not None or options.if_exists:
                raise PreconditionFailed(name)
        if result is None:
            result = self._create(tx, key, value, expiry, options.if_absent)
        tx.execute(queries.log_set(MYSQL), (options.actor, options.txn, key))
        return result

    def _create(
        self, cur: Any, key: bytes, value: str, expiry: int | None, if_absent: bool
    ) -> WriteResult:
        """Insert ``key``, its version continuing from its retained history (a recreated
        variable never reuses a version, so an old ETag cannot match it). If an expired row is
        in the way, expire it first; if a live one is (created meanwhile), update it unless
        ``if_absent``."""
        try:
            cur.execute(
                "INSERT INTO vars (name, value, version, created_at, updated_at, expires_at) "
                "SELECT %s, %s, LAST_INSERT_ID(COALESCE(MAX(version), 0) + 1), "
                f"UTC_TIMESTAMP(6), UTC_TIMESTAMP(6), {_EXPIRES} "
                "FROM var_changes WHERE name = %s",
                (key, value, expiry, key),
            )
            return WriteResult(int(cur.lastrowid), created=True)
        except self.connections.errors.IntegrityError as exc:
            if exc.errno != _DUPLICATE_KEY:
                raise
        if self._expire_row(cur, key, None):
            return self._create(cur, key, value, expiry, if_absent)
        if if_absent:
            raise PreconditionFailed(key.decode())
        cur.execute(
            "UPDATE vars SET value = %s, version = LAST_INSERT_ID(version + 1), "
            f"updated_at = UTC_TIMESTAMP(6), expires_at = {_EXPIRES} WHERE name = %s",
            (value, expiry, key),
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
        cur.execute(queries.log_gone(MYSQL), (key, int(rows[0][0]) + 1, "expire", None, None))
        return True

    def _expire(self, key: Any, version: int) -> bool:
        return bool(self.connections.transaction(lambda cur: self._expire_row(cur, key, version)))

    def _insert_new(self, items: list[tuple[str, str]]) -> bool:
        keys = [name.encode() for name, _ in items]
        values = [value for _, value in items]

        def work(cur: Any) -> bool:
            cur.execute(
                "SELECT name, MAX(version) FROM var_changes "
                f"WHERE name IN ({MYSQL.marks(len(keys))}) GROUP BY name",
                keys,
            )
            before = {bytes(name): int(version) for name, version in cur.fetchall()}
            rows = list(zip(keys, values, [before.get(key, 0) + 1 for key in keys], strict=True))
            marks = ", ".join(["(%s, %s, %s, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))"] * len(rows))
            try:
                cur.execute(
                    "INSERT INTO vars (name, value, version, created_at, updated_at) "
                    f"VALUES {marks}",
                    [p for row in rows for p in row],
                )
            except self.connections.errors.IntegrityError as exc:
                if exc.errno != _DUPLICATE_KEY:
                    raise
                raise _Taken from exc
            logged = ", ".join(["(%s, %s, 'set', %s, UTC_TIMESTAMP(6), NULL)"] * len(rows))
            cur.execute(
                "INSERT INTO var_changes (name, version, op, value, changed_at, actor) "
                f"VALUES {logged}",
                [p for key, value, version in rows for p in (key, version, value)],
            )
            return True

        try:
            return bool(self.connections.transaction(work))
        except _Taken:
            return False

    def _delete_in(self, tx: Any, name: str, options: WriteOptions) -> int | None:
        key = name.encode()
        tx.execute(f"SELECT version FROM vars WHERE name = %s AND {_LIVE} FOR UPDATE", (key,))
        rows = tx.fetchall()
        if not rows or (options.if_version is not None and int(rows[0][0]) != options.if_version):
            if options.if_exists or options.if_version is not None:
                raise PreconditionFailed(name)
            return None
        version = int(rows[0][0]) + 1
        tx.execute("DELETE FROM vars WHERE name = %s", (key,))
        tx.execute(queries.log_gone(MYSQL), (key, version, "delete", options.actor, options.txn))
        return version

    # The change log: reads that find an entry without a seq number the log first

    def _number_log(self) -> None:
        numbering.number(self.connections)

    def _numbered(self, sql: str, params: Sequence[Any], again: str | None = None) -> list[Change]:
        """The changes ``sql`` selects; if one had no seq yet, numbered first and selected
        again (by ``again``, if given, with the same parameters)."""
        changes = [queries.change(r) for r in self._read(sql, params)]
        if any(c.seq is None for c in changes):
            numbering.number(self.connections, pending=True, backlog=False)
            changes = [queries.change(r) for r in self._read(again or sql, params)]
        return changes

    def numbered_recent_changes(self, after_seq: int, limit: int) -> list[Change]:
        changes = self._numbered(RECENT_CHANGES, (after_seq, limit), again=_NUMBERED_CHANGES)
        # Unnumbered entries (the first read found nothing else) wait for the next poll.
        return [c for c in changes if c.seq is not None]

    def numbered_last_seq(self) -> int:
        rows = self._read(_LAST_SEQ)
        if rows and rows[0][1]:
            numbering.number(self.connections, pending=True, backlog=False)
            rows = self._read(_LAST_SEQ)
        return int(rows[0][0]) if rows else 0
