"""var_keeper's storage: variables, their change log, and the databases that keep them.

Imports neither Flask nor click: the HTTP layer (``db.py`` wires it into the app) and the CLI
use it, and so can any script. ``open_store`` builds the store a ``DatabaseURL`` names:

- ``model``: what the stores speak (Variable, Change, results, errors, name rules, a time's
  text);
- ``url``: ``DATABASE_URL`` parsed;
- ``dialect`` and ``queries``: each SQL dialect difference written once, and the statements and
  row mappers built over it;
- ``store``: the interface (``Store``); ``sql``: reads, history and retention written once
  (``SQLStore``); ``pool``: the bounded connection pool; ``deadline``: a request's deadline for
  its database work; ``migrations``: numbered schema steps;
- ``sqlite``: the embedded default; ``mysql``: MySQL 8.x, MariaDB and Galera.
"""

from __future__ import annotations

from storage.model import (
    MAX_NAME_CHARS,
    Change,
    Operation,
    OperationResult,
    OutOfSpace,
    PreconditionFailed,
    StoreError,
    StoreUnavailable,
    SweepResult,
    TooMany,
    TransactionFailed,
    Variable,
    VersionNotFound,
    WriteResult,
    name_problem,
    next_prefix,
    utc_text,
)
from storage.store import Store
from storage.url import DatabaseURL

__all__ = [
    "MAX_NAME_CHARS",
    "Change",
    "DatabaseURL",
    "Operation",
    "OperationResult",
    "OutOfSpace",
    "PreconditionFailed",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "SweepResult",
    "TooMany",
    "TransactionFailed",
    "Variable",
    "VersionNotFound",
    "WriteResult",
    "name_problem",
    "next_prefix",
    "open_store",
    "utc_text",
]


def open_store(url: DatabaseURL, *, connect_timeout: int, timeout: int, pool_size: int) -> Store:
    """The store ``url`` names, with the given timeouts (seconds) and connections per process.
    Connects to nothing yet."""
    if url.scheme == "sqlite":
        from storage.sqlite import SQLiteStore

        return SQLiteStore(url, timeout, pool_size)
    # Imported here so that the SQLite default needs no MySQL driver.
    from storage.mysql import MySQLStore

    return MySQLStore(url, connect_timeout, timeout, pool_size)
