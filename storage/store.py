"""``Store``: what the HTTP layer, the CLI and the background work may ask of a database.

A store prepares its schema once per process (``ensure_ready``), counts its open connections
for the metrics, and offers reads, conditional writes, the change log and the sweep. The
methods whose names start with ``numbered_`` read the change log with every entry's seq; on
MySQL they may first give pending entries their seqs, which is a write
(``storage.mysql.numbering``).
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

from storage import deadline
from storage.model import (
    Change,
    Operation,
    OperationResult,
    StoreUnavailable,
    SweepResult,
    Variable,
    WriteResult,
)
from storage.snapshot import Image, Snapshot
from storage.url import DatabaseURL

log = logging.getLogger("var_keeper.db")


class Store(ABC):
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
                # Not bounded by a request's deadline: a migration cut half-way would start
                # again with the next request, and never finish.
                with deadline.bounded(None):
                    outcome = self.prepare_schema()
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
    def prepare_schema(self) -> str:
        """Apply the schema steps this database lacks (``storage.migrations``); return
        "created", "migrated" or "up to date". Safe with several processes at once."""

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
    def get_value(self, name: str) -> tuple[str, int] | None:
        """``name``'s value and version only (a plain-text read needs no more: two columns to
        fetch and convert instead of six)."""

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

    @abstractmethod
    def list_folder(
        self,
        prefix: str,
        delimiter: str,
        after: str | None,
        limit: int,
        with_values: bool,
        value_chars: int | None = None,
    ) -> list[Variable | str]:
        """One level of the hierarchy under ``prefix``: the variables directly under it and
        the sub-prefixes one level down (each a str ending with ``delimiter``, once), in name
        order, after ``after`` (a variable's name or a sub-prefix: keyset pagination over
        both); ``value_chars`` as for ``list``. Index range scans: one a page, plus one for
        each sub-prefix on it that holds more names than the rest of the page."""

    @abstractmethod
    def state(self, name: str) -> tuple[Variable | None, int]:
        """The variable (None if absent) and the version of its latest change (0: none ever
        retained). A variable past its deadline that the sweeper has not removed yet counts as
        expired already: one version more, the version its expiry will be logged with."""

    # Writes: each one transaction with its change-log entry

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
        write; without, it is permanent."""

    @abstractmethod
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
        """Write the value ``name`` had at ``version`` again, as a new version, under the same
        conditions as ``put``, in one transaction. VersionNotFound if that version is not
        retained or has no value (a delete, an expiry)."""

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

    @abstractmethod
    def transact(
        self, operations: Sequence[Operation], actor: str | None = None
    ) -> tuple[str, list[OperationResult]]:
        """Apply ``operations`` in order, all or nothing, in one database transaction: each sees
        the ones before it (the same name may appear several times). Return the transaction's
        id (recorded in each change it made: ``Change.txn``) and one result per operation.
        TransactionFailed (nothing changed) when a check fails."""

    @abstractmethod
    def delete_prefix(self, prefix: str, *, limit: int, actor: str | None = None) -> int:
        """Delete every variable whose name starts with ``prefix`` ("" is every variable), in
        one transaction, each delete in the change log; return how many. TooMany (nothing
        changed) if there are more than ``limit``."""

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

    # The change log

    @abstractmethod
    def numbered_history(
        self, name: str, before_version: int | None, limit: int, with_values: bool
    ) -> list[Change]:
        """``name``'s retained changes older than ``before_version``, newest first."""

    @abstractmethod
    def numbered_change(self, name: str, version: int) -> Change | None:
        """One retained change of ``name``, with its value."""

    @abstractmethod
    def changes_since(self, after_seq: int, upto_seq: int, prefix: str, limit: int) -> list[Change]:
        """Changes with ``after_seq < seq <= upto_seq`` under ``prefix``, in seq order, with
        values."""

    @abstractmethod
    def numbered_recent_changes(self, after_seq: int, limit: int) -> list[Change]:
        """The next changes after ``after_seq``, in seq order, without values (the feed)."""

    @abstractmethod
    def numbered_last_seq(self) -> int:
        """The seq of the newest change that has one (0 if none ever): every change committed
        before the call has a seq up to it, or gets a higher one."""

    @abstractmethod
    def first_seq(self) -> int | None:
        """The seq of the oldest retained change, None if none is retained."""

    @abstractmethod
    def snapshot(self) -> AbstractContextManager[Snapshot]:
        """``with store.snapshot() as view``: the whole store as it was at one instant, read
        in one read transaction (writers go on meanwhile), with the change log's position at
        that instant (``view.seq``): the view holds exactly the changes up to it."""

    @abstractmethod
    def load_image(self, image: Image) -> None:
        """Write a whole store's content (variables, retained log, position, watermark) into
        this one, which must be empty (``storage.snapshot.NotEmpty`` otherwise)."""

    @abstractmethod
    def pruned_through(self) -> int:
        """The highest seq retention has removed (0: none; a database upgraded from a release
        without this record counts every change before the upgrade as possibly removed).
        Changes after it are all retained; expiries and deletes are changes, not removals."""

    @abstractmethod
    def changes_and_watermark(
        self, after_seq: int, upto_seq: int, prefix: str, limit: int
    ) -> tuple[list[Change], int]:
        """``changes_since``, and ``pruned_through`` as of that read: if it is not above
        ``after_seq``, no change of the window is missing."""

    @abstractmethod
    def sweep(self, keep_versions: int, keep_days: float, batch: int) -> SweepResult:
        """Remove at most ``batch`` expired variables (recording their expiry) and at most
        ``batch`` changes out of retention. Safe to run in several processes at once."""
