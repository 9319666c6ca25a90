"""``SQLStore``: what both SQL stores do alike, written once over their ``Dialect``.

Reads, history, the change-feed window and retention are the same statements in both dialects
(``storage.queries``); a store supplies how to run a read (``_read``) and a single-statement
write (``_write``) on its connections, its writes (each a transaction with its change-log
entry: the dialects differ there in how a write learns its new version), and how the change
log gets its seqs.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

from storage import queries
from storage.dialect import Dialect
from storage.model import Change, SweepResult, Variable
from storage.store import Store
from storage.url import DatabaseURL


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

    def state(self, name: str) -> tuple[Variable | None, int]:
        var = self.get(name)
        if var is not None:
            return var, var.version
        rows = self._read(queries.latest_change(self.dialect), (self.dialect.encode_name(name),))
        if not rows:
            return None, 0
        version, op = rows[0]
        return None, int(version) + (1 if op == "set" else 0)

    def list_folder(self, prefix, delimiter, after, limit, with_values):  # type: ignore[no-untyped-def]
        raise NotImplementedError  # TODO(txn)

    def transact(self, operations, actor=None):  # type: ignore[no-untyped-def]
        raise NotImplementedError  # TODO(txn)

    def delete_prefix(self, prefix, *, limit, actor=None):  # type: ignore[no-untyped-def]
        raise NotImplementedError  # TODO(txn)

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
            pruned += self._write(queries.delete_through_seq(d), (int(oldest[0][0]),))
        # More than keep_versions behind their name's newest: found by walking the log in seq
        # order, a batch a sweep (a range scan of the seq index), from where this process
        # stopped.
        rows = self._read(queries.log_walk(d), (self._prune_cursor, batch))
        for key, newest in _crowded(rows, keep_versions).items():
            pruned += self._write(*queries.prune_versions(d, key, newest - keep_versions, batch))
        self._prune_cursor = int(rows[-1][0]) if len(rows) == batch else 0
        return pruned


def _crowded(rows: Sequence[Sequence[Any]], keep_versions: int) -> dict[Any, int]:
    """From (seq, name, version) rows: each name with a version past ``keep_versions``, and
    its newest version among the rows."""
    newest: dict[Any, int] = {}
    for _, name, version in rows:
        if int(version) > keep_versions:
            newest[name] = max(newest.get(name, 0), int(version))
    return newest
