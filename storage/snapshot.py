"""Consistent reads of a whole store, and loading one back: what backups are made of.

``Snapshot`` is a read-only view of the database at one instant, inside one read transaction
(each store opens it: ``Store.snapshot``): the variables that were live then, the change log
retained then, and ``seq``, the log's position at that instant: the view holds exactly the
changes up to it, so a watcher that resumes after ``seq`` misses nothing and sees nothing
twice. ``Image`` is such a view in memory (a backup file read back), and ``load`` writes one
into an empty store, the log with its seqs and watermark as they were.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from storage import queries
from storage.dialect import Dialect
from storage.model import Change, StoreError, Variable

if TYPE_CHECKING:
    from storage.sql import SQLStore

Rows = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]
_T = TypeVar("_T")
# Rows written by one statement of a load, and at most about this many bytes of values.
_LOAD_ROWS = 500
_LOAD_BYTES = 4 * 1024 * 1024


class NotEmpty(StoreError):
    """A load into a database that holds variables or history already: nothing was written."""


class Snapshot:
    """The database as it was at one instant. Valid only inside its ``Store.snapshot()``."""

    def __init__(
        self,
        dialect: Dialect,
        rows: Rows,
        *,
        numbered_through: int,
        pruned_through: int,
        now: Any,
        pending: Sequence[Change] = (),
    ) -> None:
        self._dialect, self._rows, self._now = dialect, rows, now
        self._numbered_through = numbered_through
        # Entries the view shows without a seq, numbered for it since (MySQL), in seq order.
        self._pending = list(pending)
        self.seq = self._pending[-1].seq if self._pending else numbered_through
        self.pruned_through = pruned_through

    @classmethod
    def begin(cls, dialect: Dialect, rows: Rows) -> Snapshot:
        """The view's first read (it fixes what a SQLite read transaction sees): the time that
        decides what has expired, the log's counter and its watermark."""
        sql = f"SELECT {dialect.now}, ({dialect.last_seq}), ({queries.PRUNED_THROUGH})"
        now, last, pruned = rows(sql, ())[0]
        return cls(
            dialect, rows, numbered_through=int(last or 0), pruned_through=int(pruned), now=now
        )

    def with_pending(self, pending: Sequence[Change]) -> Snapshot:
        """This view, with the entries it shows unnumbered and the seqs given them since."""
        return Snapshot(
            self._dialect,
            self._rows,
            numbered_through=self._numbered_through,
            pruned_through=self.pruned_through,
            now=self._now,
            pending=pending,
        )

    def count(self) -> int:
        """How many variables were live."""
        sql = f"SELECT COUNT(*) FROM vars WHERE {_LIVE_THEN.format(mark=self._dialect.mark)}"
        return int(self._rows(sql, (self._now,))[0][0])

    def variables(self, after: str | None, limit: int) -> list[Variable]:
        """The live variables (values and all) whose names sort after ``after``, in name
        order: a keyset-paginated range scan of the name index."""
        d = self._dialect
        sql = (
            f"SELECT {queries.COLUMNS} FROM vars WHERE {_LIVE_THEN.format(mark=d.mark)} "
            f"AND name > {d.mark} ORDER BY name LIMIT {d.mark}"
        )
        params = (self._now, d.encode_name(after or ""), limit)
        return [queries.variable(row) for row in self._rows(sql, params)]

    def changes(self, after_seq: int, limit: int) -> list[Change]:
        """The retained changes with seqs after ``after_seq`` (up to ``seq``), in seq order,
        with values: a range scan of the seq index."""
        sql, params = queries.changes_window(
            self._dialect, after_seq, self._numbered_through, "", limit
        )
        found = [queries.change(row) for row in self._rows(sql, params)]
        if len(found) < limit:
            later = [c for c in self._pending if c.seq is not None and c.seq > after_seq]
            found += later[: limit - len(found)]
        return found


# Live at the snapshot's time, not at each page's: a long export shows one instant.
_LIVE_THEN = "(expires_at IS NULL OR expires_at > {mark})"


@dataclass(frozen=True, slots=True)
class Image:
    """A whole store's content: live variables with their metadata, the retained log, its
    position (``seq``) and watermark (``pruned_through``)."""

    seq: int
    pruned_through: int
    variables: Sequence[Variable]
    changes: Sequence[Change]


def load(store: SQLStore, image: Image) -> None:
    """Write ``image`` into ``store``, which must hold no variable and no change (NotEmpty
    otherwise, and when its log has already given seqs past the image's). In transactions of
    a few hundred rows: until the last one, the watermark stands at the image's position, so
    a watcher never resumes into a log that is still being written."""
    d = store.dialect
    set_watermark = f"UPDATE var_pruned SET seq = {d.mark} WHERE id = 1"

    def claim(tx: Any) -> None:
        check = (
            "SELECT EXISTS (SELECT 1 FROM vars), EXISTS (SELECT 1 FROM var_changes), "
            f"({d.last_seq})"
        )
        has_vars, has_changes, last = store._rows(tx, check)[0]
        if has_vars or has_changes:
            raise NotEmpty("the database holds variables or history already")
        if int(last or 0) > image.seq:
            raise NotEmpty(
                f"the database's log has given seqs up to {last}, past the file's {image.seq}"
            )
        for statement in d.set_last_seq:
            store._rows(tx, statement, (image.seq,))
        store._rows(tx, set_watermark, (image.seq,))

    store._in_transaction(claim, serializable=True)
    columns = "name, value, version, created_at, updated_at, expires_at"
    for chunk in _chunks(image.variables, lambda v: v.value):
        rows = [_variable_row(d, var) for var in chunk]
        _insert(store, "vars", columns, rows)
    for chunk in _chunks(image.changes, lambda c: c.value):
        rows = [_change_row(d, change) for change in chunk]
        _insert(store, "var_changes", queries.CHANGE_COLUMNS, rows)
    store._write(set_watermark, (image.pruned_through,))


def _insert(store: SQLStore, table: str, columns: str, rows: list[tuple[Any, ...]]) -> None:
    d = store.dialect
    marks = ", ".join([f"({d.marks(len(rows[0]))})"] * len(rows))
    sql = f"INSERT INTO {table} ({columns}) VALUES {marks}"
    store._in_transaction(lambda tx: store._rows(tx, sql, [p for row in rows for p in row]))


def _variable_row(d: Dialect, var: Variable) -> tuple[Any, ...]:
    expires = d.encode_time(var.expires_at) if var.expires_at is not None else None
    return (
        d.encode_name(var.name),
        var.value,
        var.version,
        d.encode_time(var.created_at),
        d.encode_time(var.updated_at),
        expires,
    )


def _change_row(d: Dialect, change: Change) -> tuple[Any, ...]:
    return (
        change.seq,
        d.encode_name(change.name),
        change.version,
        change.op,
        change.value,
        d.encode_time(change.changed_at),
        change.actor,
        change.txn,
    )


def _chunks(items: Sequence[_T], value: Callable[[_T], str | None]) -> Iterator[list[_T]]:
    """Runs of at most _LOAD_ROWS items and about _LOAD_BYTES bytes of values."""
    chunk: list[_T] = []
    size = 0
    for item in items:
        length = len((value(item) or "").encode())
        if chunk and (len(chunk) == _LOAD_ROWS or size + length > _LOAD_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += length
    if chunk:
        yield chunk
