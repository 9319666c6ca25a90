"""Servers the tests start or talk to; a plain module, no fixtures (those live in conftest.py).

It owns:
- ``ROOT`` (the repository) and ``free_port`` (a spare TCP port on 127.0.0.1);
- ``wait_for_http`` and ``Gunicorn``: a real ``gunicorn app:app`` with the shipped
  gunicorn.conf.py;
- MySQL/MariaDB access: ``server_connection`` (an autocommit connection from a server URL),
  ``scratch_database`` (a uniquely named database, dropped afterwards) and
  ``empty_var_tables``;
- where a MySQL server comes from: ``docker_engine_error`` and ``docker_mysql``
  (testcontainers), ``mariadb_binaries`` and ``PrivateMariaDB`` (a mariadbd of our own with a
  temporary datadir, used both as the session's server and by the fault tests), and
  ``SESSION_SERVER_OPTIONS`` (how the session's shared one is tuned).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from storage.mysql.driver import mysql  # values containing "delimiter" intact

ROOT = Path(__file__).resolve().parent.parent


# --- Ports and HTTP -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, timeout: float = 20.0, ok: Callable[[int], bool] = bool) -> int:
    """Poll ``url`` until it answers with a status that ``ok`` accepts; return the status."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            status = requests.get(url, timeout=2).status_code
            if ok(status):
                return status
            last = status
        except requests.RequestException as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer as expected within {timeout}s (last: {last})")


class Gunicorn:
    """A real ``gunicorn app:app`` with the shipped gunicorn.conf.py, on 127.0.0.1."""

    def __init__(self, env: dict[str, str], log_path: Path, workers: int = 2, threads: int = 4):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "WEB_CONCURRENCY": str(workers),
            "GUNICORN_THREADS": str(threads),
            **env,
        }
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_ready: bool = True) -> Gunicorn:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:app"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for_http(self.base + "/healthz")
        if wait_ready:
            wait_for_http(self.base + "/readyz", ok=lambda s: s == 200)
        return self

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def url(self, path: str) -> str:
        return self.base + path


# --- MySQL access ---------------------------------------------------------------------------


def server_connection(server_url: str, **kwargs: object) -> mysql.connector.MySQLConnection:
    parts = urlsplit(server_url)
    return mysql.connector.connect(
        host=parts.hostname,
        port=parts.port or 3306,
        user=parts.username or "root",
        password=parts.password or "",
        autocommit=True,
        **kwargs,
    )


@contextmanager
def scratch_database(server_url: str) -> Iterator[str]:
    """A new uniquely named database on ``server_url``, dropped afterwards; yields its URL."""
    name = f"vk_test_{uuid.uuid4().hex[:12]}"
    try:
        yield f"{server_url}/{name}"
    finally:
        conn = server_connection(server_url)
        try:
            conn.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            conn.close()


def create_database(url: str, *statements: str) -> None:
    """Create the database ``url`` names and run ``statements`` in it: tables as the tutorial
    or an earlier release left them, for the upgrade tests."""
    server, _, database = url.rpartition("/")
    conn = server_connection(server)
    try:
        cur = conn.cursor()
        cur.execute(f"CREATE DATABASE `{database}`")
        cur.execute(f"USE `{database}`")
        for statement in statements:
            cur.execute(statement)
    finally:
        conn.close()


def empty_var_tables(url: str) -> None:
    """Delete every row of the app's tables in the database ``url`` names, if they exist."""
    server, _, database = url.rpartition("/")
    conn = server_connection(server)
    try:
        cur = conn.cursor()
        cur.execute(
            "SELECT TABLE_NAME FROM information_schema.TABLES "
            "WHERE TABLE_SCHEMA = %s AND TABLE_NAME IN ('vars', 'var_changes')",
            (database,),
        )
        # The change log too: versions continue from a name's history.
        for (table,) in cur.fetchall():
            cur.execute(f"DELETE FROM `{database}`.`{table}`")
    finally:
        conn.close()


# --- Where a MySQL server comes from --------------------------------------------------------


def docker_engine_error() -> str | None:
    """Why testcontainers cannot run here, or None when a Docker engine answers."""
    try:
        import docker

        docker.from_env().ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "no usable Docker here"
        return str(exc)
    return None


@contextmanager
def docker_mysql() -> Iterator[str]:
    """A ``mysql:8.4`` container for the session; yields its server URL."""
    from testcontainers.mysql import MySqlContainer

    with MySqlContainer("mysql:8.4", username="root", password="test") as container:
        host = container.get_container_host_ip()
        port = container.get_exposed_port(3306)
        yield f"mysql://root:test@{host}:{port}"


def mariadb_binaries() -> tuple[str, str] | None:
    """``(mariadbd, mariadb-install-db)`` when both are installed, else None."""
    mariadbd = shutil.which("mariadbd") or shutil.which("mariadbd", path="/usr/sbin:/usr/libexec")
    install_db = shutil.which("mariadb-install-db") or shutil.which(
        "mariadb-install-db", path="/usr/bin:/usr/local/bin"
    )
    return (mariadbd, install_db) if mariadbd and install_db else None


# The session's shared server: several hundred tests, some gunicorns with several workers each
# holding a pool, threads hammering one database, a 100 000-row round trip. Nothing here is
# ever killed by a test, and the data is thrown away, so durability is traded for speed, but
# only as far as an OS crash: a commit still reaches the OS before it is acknowledged.
SESSION_SERVER_OPTIONS = (
    # A full run peaks near 25 connections today; the headroom is so that a test that opens
    # hundreds (or leaks them) fails on its own assertions, not "Too many connections" later.
    "--max-connections=1000",
    "--max-connect-errors=1000000000",  # aborted handshakes must never block 127.0.0.1
    "--innodb-buffer-pool-size=256M",
    "--innodb-log-file-size=128M",  # few checkpoints during the bulk tests
    "--innodb-flush-log-at-trx-commit=2",  # write the log on commit, fsync it once a second
    "--skip-innodb-doublewrite",
    "--character-set-server=utf8mb4",  # as Debian's packaged server and mysql:8.4
    "--collation-server=utf8mb4_general_ci",
)


class PrivateMariaDB:
    """A MariaDB server of our own on a spare port with a temporary datadir, stopped by PID.

    ``options`` are extra ``mariadbd`` options, appended to (and so overriding) the defaults;
    they are also given to ``mariadb-install-db``, so that InnoDB's files are created at the
    size the server then uses and its first start does not resize them.
    """

    DEFAULT_OPTIONS = (
        "--innodb-buffer-pool-size=32M",
        "--innodb-log-file-size=16M",
        "--skip-name-resolve",
    )

    def __init__(self, base: Path, options: Sequence[str] = ()):
        self.base = base
        self.datadir = base / "data"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"mysql://root@127.0.0.1:{self.port}"
        self.options = [*self.DEFAULT_OPTIONS, *options]

    def _binaries(self) -> tuple[str, str]:
        found = mariadb_binaries()
        if found is None:
            pytest.fail("needs mariadbd and mariadb-install-db (apt-get install mariadb-server)")
        return found

    def install(self) -> None:
        install_db = self._binaries()[1]
        done = subprocess.run(
            [
                install_db,
                "--no-defaults",
                f"--datadir={self.datadir}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--user=root",
                *self.options,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"mariadb-install-db failed: {done.stdout[-1000:]}{done.stderr[-1000:]}"
            )

    def start(self, timeout: float = 30.0) -> PrivateMariaDB:
        if not self.datadir.exists():
            self.install()
        log_path = self.base / "mariadbd.log"
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    self._binaries()[0],
                    "--no-defaults",
                    f"--datadir={self.datadir}",
                    f"--port={self.port}",
                    "--bind-address=127.0.0.1",
                    f"--socket={self.base / 'mysqld.sock'}",
                    f"--pid-file={self.base / 'mysqld.pid'}",
                    "--user=root",
                    *self.options,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                server_connection(self.url, connection_timeout=1).close()
                return self
            except mysql.connector.Error:
                if self.proc.poll() is not None:
                    raise RuntimeError(log_path.read_text(errors="replace")[-2000:]) from None
                time.sleep(0.05)
        raise TimeoutError(f"private MariaDB did not start in {timeout}s: see {log_path}")

    def kill(self) -> None:
        """SIGKILL, like a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)
