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

And its cursors keep to the request's deadline (``storage.deadline``): ``cursor_class``. The C
extension's cursor raised the error of a batch's later statement from ``nextset`` as the
extension's bare ``MySQLInterfaceError``, not as the connector's error for its number (an
IntegrityError, a deadlock's DatabaseError): ours maps it as the extension's ``execute`` does.

And the environment in which a server process can load the connector's C extension
(``environ_for_c_extension``): the extension in the connector's Linux wheel needs OpenSSL >= 3.2
and the wheel carries one (``mysql/vendor``), but a process that has imported Python's ``ssl``
first (gunicorn does, before any code of ours) has the system's ``libssl.so.3`` loaded, and where
that one is older (Debian 12: 3.0) the extension fails to load and the store runs on the
pure-Python driver. With the wheel's folder first on the library path, ``ssl`` and the extension
load the wheel's OpenSSL, one copy for both.

Import ``mysql.connector`` from here so that the fix is in place before any statement runs.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from collections import deque
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mysql.connector
from mysql.connector import cursor as _pure_cursor
from mysql.connector.types import MySQLScriptPartition

from storage import deadline

try:
    from _mysql_connector import MySQLInterfaceError
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

        def nextset(self) -> bool | None:
            try:
                return super().nextset()
            except MySQLInterfaceError as exc:
                if getattr(exc, "errno", None) is None:
                    raise mysql.connector.errors.InterfaceError(str(exc)) from exc
                raise mysql.connector.errors.get_mysql_exception(
                    exc.errno, msg=exc.msg, sqlstate=exc.sqlstate
                ) from exc


def cursor_class(use_pure: bool) -> type:
    """The cursor class for a connection made with ``use_pure``."""
    return _PureCursor if use_pure or _c_cursor is None else _CCursor


# A process as gunicorn's: Python's ssl first, then the extension.
_PROBE = "import ssl, _mysql_connector"


def environ_for_c_extension(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` for a server process, with the connector's bundled OpenSSL first on the
    library path if the C extension cannot load without it and can with it (see the module's
    doc). Unchanged where the extension loads anyway (the image), and where the wheel carries
    no OpenSSL or the extension will not load either way (the pure-Python driver serves).

    The bundled OpenSSL looks for trusted certificates under the folder it was built for
    (/usr/local/mysql/ssl), which a system has not: ``SSL_CERT_FILE`` and ``SSL_CERT_DIR``, where
    unset, point at the system OpenSSL's own, so that TLS verifies as it did."""
    environ = dict(environ)
    bundled = Path(mysql.connector.__file__).resolve().parent.parent / "vendor"
    if not (bundled / "libssl.so.3").is_file() or c_extension_loads(environ):
        return environ
    path = environ.get("LD_LIBRARY_PATH")
    with_bundled = {
        **environ,
        "LD_LIBRARY_PATH": os.pathsep.join(filter(None, [str(bundled), path])),
    }
    system = ssl.get_default_verify_paths()  # this process's ssl: the system's OpenSSL
    for variable, found in (
        (system.openssl_cafile_env, system.cafile),
        (system.openssl_capath_env, system.capath),
    ):
        if found and variable not in with_bundled:
            with_bundled[variable] = found
    return with_bundled if c_extension_loads(with_bundled) else environ


def c_extension_loads(environ: Mapping[str, str]) -> bool:
    """Whether a new process of this interpreter, in ``environ``, loads the C extension (a
    probe that does not answer within a minute counts as no)."""
    try:
        probe = subprocess.run(  # noqa: S603 - our own interpreter, a fixed statement
            [sys.executable, "-c", _PROBE], env=environ, capture_output=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        return False
    return probe.returncode == 0
