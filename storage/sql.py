"""``SQLStore``: what both SQL stores do alike, written once over their ``Dialect``.

Reads, history, the change-feed window and retention are the same statements in both dialects
(``storage.queries``); a store supplies how to run a read (``_read``) and a single-statement
write (``_write``) on its connections, its writes (each a transaction with its change-log
entry: the dialects differ there in how a write learns its new version), and how the change
log gets its seqs.
"""

from __future__ import annotations

import secrets
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from storage import queries, snapshot
from storage.dialect import Dialect
from storage.model import (
    Change,
    Operation,
    OperationResult,
    SweepResult,
    TooMany,
    TransactionFailed,
    Variable,
    VersionNotFound,
    WriteResult,
)
from storage.store import Store
from storage.url import DatabaseURL

_T = TypeVar("_T")
# Names deleted (and logged) by one statement in a subtree delete.
_DELETE_CHUNK = 500


@dataclass(frozen=True, slots=True)
class WriteOptions:
    """How one write goes: its condition, time to live, who made it and in which
    transaction (``Store.transact``)."""

    if_version: int | None = None
    if_absent: bool = False
    if_exists: bool = False
    ttl: float | None = None
    actor: str | None = None
    txn: str | None = None


class SQLStore(Store):
    dialect: Dialect

    def __init__(self, url: DatabaseURL) -> None:
        super().__init__(url)
        self._prune_cursor = 0  # the seq the version-retention walk of the log got to

    @abstractmethod
    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """The rows of one read."""

    @abstractmethod
    def _write(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one write statement on its own (autocommit); return the rows it affected."""

    @abstractmethod
    def _in_transaction(self, work: Callable[[Any], _T], *, serializable: bool = False) -> _T:
        """``work(tx)`` in one transaction on one connection, committed, or rolled back on any
        exception. ``serializable``: reads in it lock what they read, absent names included,
        until the commit (writes alone lock only what they change)."""

    @abstractmethod
    def _rows(self, tx: Any, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement in the transaction ``tx``; its rows, if it returns any."""

    @abstractmethod
    def _put_in(self, tx: Any, name: str, value: str, options: WriteOptions) -> WriteResult:
        """``put`` inside the transaction ``tx``, with its change-log entry."""

    @abstractmethod
    def _delete_in(self, tx: Any, name: str, options: WriteOptions) -> int | None:
        """``delete`` inside the transaction ``tx``, with its change-log entry: the delete's
        version, None if there was nothing to delete."""

    @abstractmethod
    def _expire(self, key: Any, version: int) -> bool:
        """In one transaction, delete ``key``'s row if its deadline has passed and it is still
        at ``version``, logging an ``expire`` change; False if there was nothing to expire."""

    def _numbered(self, sql: str, params: Sequence[Any]) -> list[Change]:
        """The changes ``sql`` selects, each with its seq."""
        return [queries.change(row) for row in self._read(sql, params)]

    def _number_log(self) -> None:
        """Give every committed change-log entry its seq (where that is not done at commit)."""

    def ping(self) -> None:
        self._read("SELECT 1")

    # Reads

    def get(self, name: str) -> Variable | None:
        rows = self._read(queries.get_variable(self.dialect), (self.dialect.encode_name(name),))
        return queries.variable(rows[0]) if rows else None

    def get_value(self, name: str) -> tuple[str, int] | None:
        rows = self._read(queries.get_value(self.dialect), (self.dialect.encode_name(name),))
        return (rows[0][0], int(rows[0][1])) if rows else None

    def get_many(self, names: Sequence[str]) -> list[Variable]:
        if not names:
            return []
        sql = queries.get_variables(self.dialect, len(names))
        rows = self._read(sql, [self.dialect.encode_name(name) for name in names])
        return [queries.variable(row) for row in rows]

    def count(self) -> int:
        return int(self._read(queries.count_variables(self.dialect))[0][0])

    def list(
        self,
        prefix: str,
        after: str | None,
        limit: int,
        with_values: bool,
        value_chars: int | None = None,
    ) -> list[Variable]:
        sql, params = queries.list_variables(
            self.dialect, prefix, after, limit, with_values, value_chars
        )
        return [queries.variable(r) for r in self._read(sql, params)]

    def list_folder(
        self,
        prefix: str,
        delimiter: str,
        after: str | None,
        limit: int,
        with_values: bool,
        value_chars: int | None = None,
    ) -> list[Variable | str]:
        # Range scans in name order; the first name met inside a sub-prefix stands for it, and
        # the names after it in the same sub-prefix are skipped: within the rows already read,
        # or by the next scan starting past the sub-prefix. So a page costs one scan, plus one
        # for each sub-prefix that holds more names than the rest of the page. After a scan that
        # gave one entry (a big sub-prefix) the next reads 8 rows, after one that gave more it
        # reads twice as many: names to skip are not read a page's worth per big sub-prefix
        # (limit * limit rows a page).
        lower = prefix if after is None else queries.folder_skip(prefix, delimiter, after)
        entries: list[Variable | str] = []
        fetch = limit
        while len(entries) < limit:
            wanted = min(limit - len(entries), fetch)
            sql, params = queries.list_from(
                self.dialect, prefix, lower, wanted, with_values, value_chars
            )
            rows = self._read(sql, params)
            before = len(entries)
            for var in map(queries.variable, rows):
                if var.name < lower or len(entries) == limit:
                    continue
                cut = var.name.find(delimiter, len(prefix))
                entries.append(var.name[: cut + 1] if cut >= 0 else var)
                lower = queries.folder_skip(prefix, delimiter, var.name)
            if len(rows) < wanted:
                break
            fetch = 2 * wanted if len(entries) - before > 1 else 8
        return entries

    def state(self, name: str) -> tuple[Variable | None, int]:
        var = self.get(name)
        if var is not None:
            return var, var.version
        rows = self._read(queries.latest_change(self.dialect), (self.dialect.encode_name(name),))
        if not rows:
            return None, 0
        version, op = rows[0]
        return None, int(version) + (1 if op == "set" else 0)

    # Writes: each one transaction with its change-log entry

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
        options = WriteOptions(if_version, if_absent, if_exists, ttl, actor)
        return self._put(name, value, options)

    def _put(self, name: str, value: str, options: WriteOptions) -> WriteResult:
        """One write of ``value``, in its own transaction (a store may send it more cheaply)."""
        return self._in_transaction(lambda tx: self._put_in(tx, name, value, options))

    def restore(
        self,
        name: str,
        version: int,
        *,
        if_version: int | None = None,
        if_absent: bool = False,
        if_exists: bool = False,
        ttl: float | None = None,
        actor: str | None = None,
    ) -> WriteResult:
        options = WriteOptions(if_version, if_absent, if_exists, ttl, actor)

        def work(tx: Any) -> WriteResult:
            params = (self.dialect.encode_name(name), version)
            rows = self._rows(tx, queries.one_change(self.dialect), params)
            old = queries.change(rows[0]) if rows else None
            if old is None or old.value is None:
                raise VersionNotFound(name, version)
            return self._put_in(tx, name, old.value, options)

        return self._in_transaction(work)

    def delete(
        self,
        name: str,
        *,
        if_version: int | None = None,
        if_exists: bool = False,
        actor: str | None = None,
    ) -> bool:
        options = WriteOptions(if_version=if_version, if_exists=if_exists, actor=actor)
        return self._in_transaction(lambda tx: self._delete_in(tx, name, options)) is not None

    def transact(
        self, operations: Sequence[Operation], actor: str | None = None
    ) -> tuple[str, list[OperationResult]]:
        txn = secrets.token_hex(8)

        def work(tx: Any) -> list[OperationResult]:
            return [self._apply(tx, index, op, actor, txn) for index, op in enumerate(operations)]

        return txn, self._in_transaction(work, serializable=True)

    def _apply(
        self, tx: Any, index: int, op: Operation, actor: str | None, txn: str
    ) -> OperationResult:
        if op.kind == "set":
            if op.value is None:
                raise ValueError(f"operation {index}: set needs a value")
            done = self._put_in(
                tx, op.name, op.value, WriteOptions(ttl=op.ttl, actor=actor, txn=txn)
            )
            return OperationResult(op.name, done.version, created=done.created)
        if op.kind == "delete":
            deleted = self._delete_in(tx, op.name, WriteOptions(actor=actor, txn=txn))
            return OperationResult(op.name, deleted)
        rows = self._rows(
            tx, queries.get_variable(self.dialect), (self.dialect.encode_name(op.name),)
        )
        var = queries.variable(rows[0]) if rows else None
        version = var.version if var else None
        if op.kind == "get":
            return OperationResult(op.name, version, var.value if var else None)
        if op.kind != "check":
            raise ValueError(f"operation {index}: unknown kind {op.kind!r}")
        failed = _failed_check(op, version)
        if failed:
            raise TransactionFailed(index, failed)
        return OperationResult(op.name, version)

    def delete_prefix(self, prefix: str, *, limit: int, actor: str | None = None) -> int:
        d, txn = self.dialect, secrets.token_hex(8)

        def work(tx: Any) -> int:
            rows = self._rows(tx, *queries.names_under(d, prefix, limit + 1))
            if len(rows) > limit:
                raise TooMany(int(self._rows(tx, *queries.count_under(d, prefix))[0][0]), limit)
            for start in range(0, len(rows), _DELETE_CHUNK):
                chunk = rows[start : start + _DELETE_CHUNK]
                self._rows(tx, queries.delete_names(d, len(chunk)), [name for name, _ in chunk])
                entries = [(name, int(v) + 1, "delete", actor, txn) for name, v in chunk]
                self._rows(tx, queries.log_gone(d, len(chunk)), [p for e in entries for p in e])
            return len(rows)

        return self._in_transaction(work, serializable=True)

    # The change log

    def numbered_history(
        self, name: str, before_version: int | None, limit: int, with_values: bool
    ) -> list[Change]:
        return self._numbered(
            *queries.history(self.dialect, name, before_version, limit, with_values)
        )

    def numbered_change(self, name: str, version: int) -> Change | None:
        params = (self.dialect.encode_name(name), version)
        changes = self._numbered(queries.one_change(self.dialect), params)
        return changes[0] if changes else None

    def changes_since(self, after_seq: int, upto_seq: int, prefix: str, limit: int) -> list[Change]:
        sql, params = queries.changes_window(self.dialect, after_seq, upto_seq, prefix, limit)
        return [queries.change(r) for r in self._read(sql, params)]

    def first_seq(self) -> int | None:
        rows = self._read(queries.first_seq())
        return int(rows[0][0]) if rows and rows[0][0] is not None else None

    def load_image(self, image: snapshot.Image) -> None:
        snapshot.load(self, image)

    def pruned_through(self) -> int:
        rows = self._read(queries.PRUNED_THROUGH)
        return int(rows[0][0]) if rows else 0

    def changes_and_watermark(
        self, after_seq: int, upto_seq: int, prefix: str, limit: int
    ) -> tuple[list[Change], int]:
        d = self.dialect
        rows = self._read(*queries.changes_window_pruned(d, after_seq, upto_seq, prefix, limit))
        if not rows:  # no row to carry it: read after the window, which errs towards a resync
            return [], self.pruned_through()
        return [queries.change(row[:-1]) for row in rows], int(rows[0][-1])

    # Expiry and retention

    def sweep(self, keep_versions: int, keep_days: float, batch: int) -> SweepResult:
        self._number_log()  # so that the log is ordered, and pruned, with nobody watching
        due = self._read(queries.due_for_expiry(self.dialect), (batch,))
        # Each conditioned on the version seen: a rewrite meanwhile (or another sweeper) wins.
        expired = sum(self._expire(key, int(version)) for key, version in due)
        return SweepResult(expired, self.prune(keep_versions, keep_days, batch))

    def prune(self, keep_versions: int, keep_days: float, batch: int) -> int:
        d = self.dialect
        pruned = 0
        seconds = d.seconds_ago_param(int(keep_days * 86400))
        oldest = self._read(queries.oldest_out_of_time(d), (batch, seconds))
        if oldest and oldest[0][0] is not None:
            through = int(oldest[0][0])
            pruned += self._prune(through, (queries.delete_through_seq(d), [through]))
        # More than keep_versions behind their name's newest: found by walking the log in seq
        # order, a batch a sweep (a range scan of the seq index), from where this process
        # stopped.
        rows = self._read(queries.log_walk(d), (self._prune_cursor, batch))
        for key, newest in _crowded(rows, keep_versions).items():
            through_version = newest - keep_versions
            top = self._read(*queries.prune_versions_top(d, key, through_version))
            if top and top[0][0] is not None:
                delete = queries.prune_versions(d, key, through_version, batch)
                pruned += self._prune(int(top[0][0]), delete)
        self._prune_cursor = int(rows[-1][0]) if len(rows) == batch else 0
        return pruned

    def _prune(self, top_seq: int, delete: queries.Statement) -> int:
        """Run a retention ``delete`` that removes no seq above ``top_seq``, the watermark
        (``pruned_through``) raised to ``top_seq`` first: a reader that finds an entry gone
        finds the watermark past it (at worst it is raised a moment early, and a stream that
        could still have read the entry resyncs all the same)."""
        self._write(queries.raise_pruned_through(self.dialect), (top_seq, top_seq))
        return self._write(*delete)


def _failed_check(op: Operation, version: int | None) -> str | None:
    """Why a check operation fails against the version found (None: absent), or None."""
    if op.version is not None and version != op.version:
        found = "absent" if version is None else f"at version {version}"
        return f"{op.name!r} is {found}, not at version {op.version}"
    if op.exists is True and version is None:
        return f"{op.name!r} does not exist"
    if op.exists is False and version is not None:
        return f"{op.name!r} exists (version {version})"
    return None


def _crowded(rows: Sequence[Sequence[Any]], keep_versions: int) -> dict[Any, int]:
    """From (seq, name, version) rows: each name with a version past ``keep_versions``, and
    its newest version among the rows."""
    newest: dict[Any, int] = {}
    for _, name, version in rows:
        if int(version) > keep_versions:
            newest[name] = max(newest.get(name, 0), int(version))
    return newest
