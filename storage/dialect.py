"""The SQL dialects: every difference between MySQL/MariaDB and SQLite SQL, written once.

A ``Dialect`` is a value handed to the statement builders in ``storage.queries`` (the way
encode/databases keeps one dialect object per backend): nothing else asks which database it
talks to. Times are UTC with microseconds in both (DATETIME(6); ISO text in SQLite).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class Dialect:
    name: str
    mark: str  # the driver's placeholder
    now: str  # the current UTC time
    char_length: str  # the function counting a text's characters
    expires_in: str  # a deadline a ttl after now (one placeholder); NULL for a NULL ttl
    seconds_ago: str  # the time a number of seconds before now (one placeholder)
    encode_name: Callable[[str], Any]  # a name as its column holds it
    ttl_param: Callable[[float], Any]  # a ttl in seconds as ``expires_in`` takes it
    seconds_ago_param: Callable[[int], Any]  # seconds as ``seconds_ago`` takes them
    delete_limit: bool  # DELETE ... LIMIT is allowed
    encode_time: Callable[[datetime], Any]  # a UTC time as a time column holds it
    last_seq: str  # the last seq the change log gave (a query; no row or NULL: none yet)
    set_last_seq: tuple[str, ...]  # statements (one placeholder each) that set it

    @property
    def live(self) -> str:
        """A variable whose deadline has passed reads as absent at once, before the sweeper
        removes it."""
        return f"(expires_at IS NULL OR expires_at > {self.now})"

    def marks(self, count: int) -> str:
        """``count`` placeholders, comma-separated (an IN list)."""
        return ", ".join([self.mark] * count)

    def expiry(self, ttl: float | None) -> Any:
        """The parameter of ``expires_in`` for ``ttl`` seconds (None: permanent)."""
        return None if ttl is None else self.ttl_param(ttl)


_MYSQL_NOW = "UTC_TIMESTAMP(6)"
MYSQL = Dialect(
    name="mysql",
    mark="%s",
    now=_MYSQL_NOW,
    char_length="CHAR_LENGTH",
    # DATE_ADD(..., INTERVAL NULL ...) is NULL: one statement for "expires" and "permanent".
    expires_in=f"DATE_ADD({_MYSQL_NOW}, INTERVAL %s MICROSECOND)",
    seconds_ago=f"{_MYSQL_NOW} - INTERVAL %s SECOND",
    # Names are VARBINARY: exact bytes, no collation merges two of them.
    encode_name=str.encode,
    ttl_param=lambda ttl: int(ttl * 1_000_000),
    seconds_ago_param=int,
    delete_limit=True,
    encode_time=lambda moment: moment.replace(tzinfo=None),  # the session's time zone is UTC
    last_seq="SELECT n FROM var_seq WHERE id = 1",
    set_last_seq=("UPDATE var_seq SET n = %s WHERE id = 1",),
)

_SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f', 'now')"
SQLITE = Dialect(
    name="sqlite",
    mark="?",
    now=_SQLITE_NOW,
    char_length="LENGTH",
    # strftime(..., NULL) is NULL: one statement for "expires" and "permanent".
    expires_in="strftime('%Y-%m-%d %H:%M:%f', 'now', '+' || ? || ' seconds')",
    seconds_ago="strftime('%Y-%m-%d %H:%M:%f', 'now', ?)",
    encode_name=lambda name: name,
    ttl_param=lambda ttl: f"{ttl:.3f}",  # a modifier: no exponent notation
    seconds_ago_param=lambda seconds: f"-{seconds} seconds",
    delete_limit=False,
    encode_time=lambda moment: f"{moment:%Y-%m-%d %H:%M:%S}.{moment.microsecond // 1000:03d}",
    # AUTOINCREMENT keeps it in sqlite_sequence, an ordinary table (its row appears with the
    # first entry).
    last_seq="SELECT seq FROM sqlite_sequence WHERE name = 'var_changes'",
    set_last_seq=(
        "UPDATE sqlite_sequence SET seq = ? WHERE name = 'var_changes'",
        "INSERT INTO sqlite_sequence (name, seq) SELECT 'var_changes', ? "
        "WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'var_changes')",
    ),
)
