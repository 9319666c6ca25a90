"""The app's database, as the HTTP layer sees it: a small face over the ``storage`` package.

``init_app(app)`` gives the app the store its settings name (``open_store``); views reach it
through ``get_store()`` (as it is) or ``ready_store()`` (its schema prepared first), the
counterpart of flaskr's ``get_db``. Each request gets ``DATABASE_TIMEOUT`` for all its database
work (``storage.deadline``; ``fresh_deadline`` re-arms it for a watcher's next read).
Everything a store speaks (variables, changes, results, errors, name rules) is re-exported from
``storage`` so that callers need one import.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any

from flask import Flask, current_app

from storage import (
    MAX_NAME_CHARS,
    Change,
    DatabaseURL,
    Operation,
    OperationResult,
    OutOfSpace,
    PreconditionFailed,
    Store,
    StoreError,
    StoreUnavailable,
    SweepResult,
    TooMany,
    TransactionFailed,
    Variable,
    VersionNotFound,
    WriteResult,
    deadline,
    name_problem,
    next_prefix,
    utc_text,
)
from storage import open_store as _open_store

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
    "get_store",
    "init_app",
    "name_problem",
    "next_prefix",
    "open_store",
    "ready_store",
    "utc_text",
]

log = logging.getLogger("var_keeper.db")
_EXTENSION = "var_keeper.store"


def open_store(config: Mapping[str, Any]) -> Store:
    """Build the store that ``config`` (the app's settings) names. Connects to nothing yet."""
    url = DatabaseURL.parse(config["DATABASE_URL"], config.get("DATABASE_PASSWORD_FILE"))
    return _open_store(
        url,
        connect_timeout=config["DATABASE_CONNECT_TIMEOUT"],
        timeout=config["DATABASE_TIMEOUT"],
        pool_size=config["DATABASE_POOL_SIZE"],
    )


def init_app(app: Flask) -> None:
    """Attach the store ``app.config`` names to ``app``."""
    store = open_store(app.config)
    app.extensions[_EXTENSION] = store
    log.info("store: %s", store.url)
    app.before_request(_start_deadline)
    app.teardown_request(_end_deadline)


def _start_deadline() -> None:
    deadline.start(current_app.config["DATABASE_TIMEOUT"])


def _end_deadline(_exc: BaseException | None) -> None:
    deadline.start(None)  # what runs after the request (a stream's body) has none


def fresh_deadline() -> AbstractContextManager[None]:
    """A context of a new deadline, ``DATABASE_TIMEOUT`` from now: a watcher's read after a
    wait is a request's worth of database work of its own."""
    return deadline.bounded(current_app.config["DATABASE_TIMEOUT"])


def get_store(app: Flask | None = None) -> Store:
    """The app's store (the current app's by default), whether or not its schema is ready."""
    return (app or current_app).extensions[_EXTENSION]


def ready_store() -> Store:
    """The current app's store, its schema prepared (StoreUnavailable until it can be)."""
    store = get_store()
    store.ensure_ready()
    return store
