"""Fixtures shared by the whole suite (Flask tutorial style: ``app``, ``client``, ``runner``).

Every HTTP behaviour runs once per store: the ``store_url`` fixture is parametrised over SQLite
and MySQL. MySQL comes from ``TEST_DATABASE_URL`` (a server URL such as
``mysql://root@127.0.0.1:3306``; the suite creates its own uniquely named databases and drops
them) or, when that is unset and Docker answers, from testcontainers (``mysql:8.4``). With
``CI=true`` and neither, the MySQL half fails instead of being skipped.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import mysql.connector
import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner

from app import create_app

ROOT = Path(__file__).resolve().parent.parent


# --- MySQL server ---------------------------------------------------------------------------


def _docker_mysql() -> Iterator[str]:
    from testcontainers.mysql import MySqlContainer

    with MySqlContainer("mysql:8.4", username="root", password="test") as container:
        host = container.get_container_host_ip()
        port = container.get_exposed_port(3306)
        yield f"mysql://root:test@{host}:{port}"


@pytest.fixture(scope="session")
def mysql_server() -> Iterator[str]:
    """A MySQL/MariaDB server URL without a database name."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        parts = urlsplit(url)
        yield urlunsplit((parts.scheme, parts.netloc, "", "", ""))
        return
    try:
        import docker

        docker.from_env().ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "no usable Docker here"
        message = f"no TEST_DATABASE_URL and no Docker engine for testcontainers ({exc})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"MySQL tests cannot run in CI: {message}")
        pytest.skip(message)
    yield from _docker_mysql()


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


@pytest.fixture(scope="session")
def mysql_database(mysql_server: str) -> Iterator[str]:
    """One database for the session's MySQL-backed app tests, emptied before each test."""
    with scratch_database(mysql_server) as url:
        yield url


# --- The app --------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "mysql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'vars.db'}"
    url = request.getfixturevalue("mysql_database")
    _empty_mysql_table(url)
    return url


def _empty_mysql_table(url: str) -> None:
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


@pytest.fixture
def app(store_url: str) -> Iterator[Flask]:
    app = create_app({"TESTING": True, "DATABASE_URL": store_url})
    yield app
    app.extensions["var_keeper.store"].close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    return app.test_cli_runner()


# --- Real processes -------------------------------------------------------------------------


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
        log = self.log_path.open("ab")
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


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[Callable[..., Gunicorn]]:
    """Factory: ``gunicorn({"DATABASE_URL": ...})`` starts a server; all are stopped afterwards."""
    started: list[Gunicorn] = []
    numbers = itertools.count()

    def start(env: dict[str, str], wait_ready: bool = True, **kwargs: int) -> Gunicorn:
        server = Gunicorn(env, tmp_path / f"gunicorn-{next(numbers)}.log", **kwargs)
        started.append(server)
        return server.start(wait_ready=wait_ready)

    yield start
    for server in started:
        if server.proc and server.proc.poll() is None:
            server.stop()


class PrivateMariaDB:
    """A MariaDB server of our own on a spare port with a temporary datadir, stopped by PID."""

    def __init__(self, base: Path):
        self.base = base
        self.datadir = base / "data"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"mysql://root@127.0.0.1:{self.port}"

    def install(self) -> None:
        mariadbd = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
        install_db = shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db"
        if not Path(mariadbd).exists() or not Path(install_db).exists():
            pytest.fail("needs mariadbd and mariadb-install-db (apt-get install mariadb-server)")
        done = subprocess.run(
            [
                install_db,
                "--no-defaults",
                f"--datadir={self.datadir}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--user=root",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"mariadb-install-db failed: {done.stdout[-1000:]}{done.stderr[-1000:]}"
            )

    def start(self) -> PrivateMariaDB:
        if not self.datadir.exists():
            self.install()
        log = (self.base / "mariadbd.log").open("ab")
        self.proc = subprocess.Popen(
            [
                shutil.which("mariadbd") or "/usr/sbin/mariadbd",
                "--no-defaults",
                f"--datadir={self.datadir}",
                f"--port={self.port}",
                "--bind-address=127.0.0.1",
                f"--socket={self.base / 'mysqld.sock'}",
                f"--pid-file={self.base / 'mysqld.pid'}",
                "--user=root",
                "--innodb-buffer-pool-size=32M",
                "--innodb-log-file-size=16M",
                "--skip-name-resolve",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                server_connection(self.url, connection_timeout=1).close()
                return self
            except mysql.connector.Error:
                if self.proc.poll() is not None:
                    raise RuntimeError((self.base / "mariadbd.log").read_text()[-2000:]) from None
                time.sleep(0.2)
        raise TimeoutError("private MariaDB did not start in 30s")

    def kill(self) -> None:
        """SIGKILL, like a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)


@pytest.fixture
def private_mariadb() -> Iterator[PrivateMariaDB]:
    """A stopped private MariaDB (call ``.start()``); killed and deleted afterwards."""
    base = Path(tempfile.mkdtemp(prefix="vk-mariadb-"))
    server = PrivateMariaDB(base)
    yield server
    server.kill()
    shutil.rmtree(base, ignore_errors=True)
