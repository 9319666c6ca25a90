"""The MySQL driver as the store uses it: mysql-connector-python, without its script parsing.

Since 9.2 the connector looks for ``DELIMITER`` commands (a feature of the ``mysql`` command
line client, not of the server) in every statement a cursor executes, *after* the parameters
are in it, with a pattern that does not know about escaped quotes. A value such as
``a delimiter ; b'`` then reads as a delimiter command: the connector rewrites the statement and
stores ``a;\\nb'`` (and ``'delimiter x'`` fails with "The backslash (\\) character is not a valid
delimiter"). The store never sends scripts or DELIMITER commands, so the statement goes to the
server exactly as built: both cursor classes (pure Python and C extension) get a splitter that
passes it through (tests/test_driver.py stores such values, and fails if a connector upgrade
moves the function this replaces).

And its cursors keep to the request's deadline (``storage.deadline``): ``cursor_class``.

Import ``mysql.connector`` from here so that the fix is in place before any statement runs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

import mysql.connector
from mysql.connector import cursor as _pure_cursor
from mysql.connector.types import MySQLScriptPartition

from storage import deadline

try:
    from mysql.connector import cursor_cext as _c_cursor
except ImportError:  # the C extension did not load: only the pure-Python cursors exist
    _c_cursor = None

__all__ = ["cursor_class", "mysql"]


def _statement_as_built(sql_code: bytes, map_results: bool = False) -> Iterator[Any]:
    """The whole statement as one partition, never parsed for DELIMITER commands."""
    yield MySQLScriptPartition(single_stmts=deque(), mappable_stmt=sql_code)


for _module in (_pure_cursor, _c_cursor):
    if _module is not None:
        if not hasattr(_module, "split_multi_statement"):
            raise ImportError(
                f"{_module.__name__} has no split_multi_statement: storage/mysql/driver.py "
                "must be revisited for this mysql-connector-python version"
            )
        _module.split_multi_statement = _statement_as_built  # type: ignore[assignment]


class _PureCursor(_pure_cursor.MySQLCursor):
    """No statement starts past the request's deadline."""

    def execute(self, operation: Any, params: Any = None, map_results: bool = False) -> Any:
        deadline.remaining()
        return super().execute(operation, params, map_results)


if _c_cursor is not None:

    class _CCursor(_c_cursor.CMySQLCursor):
        """No statement starts past the request's deadline."""

        def execute(self, operation: Any, params: Any = (), map_results: bool = False) -> Any:
            deadline.remaining()
            return super().execute(operation, params, map_results)


def cursor_class(use_pure: bool) -> type:
    """The cursor class for a connection made with ``use_pure``."""
    return _PureCursor if use_pure or _c_cursor is None else _CCursor
