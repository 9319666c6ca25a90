"""What the stores speak: variables, change-log entries, results, errors, the name rules, and
the text of a stored time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

MAX_NAME_CHARS = 255
# The name column holds UTF-8 bytes: 4 bytes a character at most.
NAME_COLUMN_BYTES = MAX_NAME_CHARS * 4


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


def utc_text(moment: datetime) -> str:
    """A stored time (always UTC) as the API and the export file write it: RFC 3339 with
    microseconds, ``2026-12-01T03:45:00.123456Z``. ``isoformat``: strftime was 2.4x slower,
    28 % of a loaded worker's samples under listings, and drops a small year's zeros."""
    return moment.isoformat(timespec="microseconds")[:26] + "Z"


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of the change log (``var_changes``): a write, a delete or an expiry.

    ``seq`` orders every change of the database, dense and in the order changes become
    visible; None for a change too new to have one yet (MySQL gives seqs just after the
    commit: ``storage.mysql.numbering``). ``version`` orders the changes of one name and keeps
    counting across a delete, so that (name, version) names one change. A delete or an expiry
    has a version of its own and no value. ``actor`` is a token's public identifier, or None
    without tokens.
    """

    seq: int | None
    name: str
    version: int
    op: str  # "set", "delete" or "expire"
    value: str | None
    changed_at: datetime
    actor: str | None
    txn: str | None = None  # the transaction (``Store.transact``) it was part of, if any


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


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation of a transaction (``Store.transact``): ``kind`` is

    - "set": store ``value``, permanent or expiring after ``ttl`` seconds;
    - "delete": delete the variable (nothing to delete is not a failure);
    - "check": the variable is at ``version``, or exists (``exists`` True) or is absent
      (``exists`` False); a failed check fails the whole transaction;
    - "get": read the variable.
    """

    kind: str
    name: str
    value: str | None = None
    ttl: float | None = None
    version: int | None = None
    exists: bool | None = None


@dataclass(frozen=True, slots=True)
class OperationResult:
    """What one operation of a transaction did. ``version``: a set's new version, a delete's
    version (None: there was nothing to delete), a get's or a check's version read (None:
    absent). ``value``: what a get read. ``created``: whether a set created the variable."""

    name: str
    version: int | None = None
    value: str | None = None
    created: bool | None = None


class StoreError(Exception):
    """Base class of everything a store raises on purpose."""


class StoreUnavailable(StoreError):
    """The database cannot be reached, timed out, or its schema is not ready yet."""


class OutOfSpace(StoreUnavailable):
    """The database's disk is full: the write changed nothing, and writes fail until space is
    freed (no restart needed); reads still work."""


class PreconditionFailed(StoreError):
    """A conditional write found the variable in another state than the caller expected."""


class VersionNotFound(StoreError):
    """A restore named a version that is not in the retained history or has no value (a
    delete or an expiry)."""


class TransactionFailed(StoreError):
    """A check of a transaction failed: nothing was changed. ``index`` is the operation's
    position (from 0)."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"operation {index}: {reason}")
        self.index, self.reason = index, reason


class TooMany(StoreError):
    """A subtree delete found more variables than it may delete at once: nothing was changed."""

    def __init__(self, count: int, limit: int) -> None:
        super().__init__(f"{count} variables, more than {limit}")
        self.count, self.limit = count, limit


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
