"""Fixtures and hooks shared by the whole suite (Flask tutorial style: ``app``, ``client``,
``runner``); the helpers they use (servers, ports, databases) live in tests/servers.py.

Every HTTP behaviour runs once per store: the ``store_url`` fixture is parametrised over SQLite
and MySQL. The session's MySQL server (``mysql_server``) is, in this order:

1. ``TEST_DATABASE_URL`` when set: a server URL such as ``mysql://root@127.0.0.1:3306``; the
   suite creates its own uniquely named databases and drops them;
2. a ``mysql:8.4`` container from testcontainers, when a Docker engine answers;
3. otherwise one private ``mariadbd`` for the whole session (Debian's mariadb-server package):
   a temporary datadir, a spare port on 127.0.0.1, killed and deleted when the session ends.
   No configuration is needed: a fresh clone runs the MySQL half with ``make test``.

Only when none of these exists is the MySQL half skipped, and the end of the run then says so
in a warning block (``pytest_terminal_summary``) with the number of tests it cost. With
``CI=true`` it fails instead.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner

from app import create_app
from tests.servers import (
    SESSION_SERVER_OPTIONS,
    Gunicorn,
    PrivateMariaDB,
    docker_engine_error,
    docker_mysql,
    empty_var_tables,
    mariadb_binaries,
    scratch_database,
)

# --- MySQL server ---------------------------------------------------------------------------

# In the reason of every test skipped for want of a MySQL server; the summary counts them.
NO_MYSQL_SERVER = "no MySQL/MariaDB server to test against"
# For the end of the run: where the session's server came from, or why there was none.
MYSQL_SOURCE: list[str] = []
NO_DOCKER: list[str] = []


@pytest.fixture(scope="session")
def mysql_server() -> Iterator[str]:
    """A MySQL/MariaDB server URL without a database name (see the module docstring)."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        parts = urlsplit(url)
        yield urlunsplit((parts.scheme, parts.netloc, "", "", ""))
        return
    docker_error = docker_engine_error()
    if docker_error is None:
        with docker_mysql() as url:
            MYSQL_SOURCE.append("a mysql:8.4 container (testcontainers)")
            yield url
        return
    if mariadb_binaries() is None:
        message = (
            f"{NO_MYSQL_SERVER}: TEST_DATABASE_URL is unset, no Docker engine answers "
            "and mariadbd is not installed"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"MySQL tests cannot run in CI: {message} (Docker: {docker_error})")
        NO_DOCKER[:] = [docker_error]
        pytest.skip(f"{message} (see the warning at the end)")
    base = Path(tempfile.mkdtemp(prefix="vk-mariadb-session-"))
    server = PrivateMariaDB(base, SESSION_SERVER_OPTIONS)
    try:
        began = time.monotonic()
        server.start()
        MYSQL_SOURCE.append(
            f"a private mariadbd on 127.0.0.1:{server.port}, "
            f"started in {time.monotonic() - began:.1f}s"
        )
        yield server.url
    finally:
        server.kill()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def mysql_database(mysql_server: str) -> Iterator[str]:
    """One database for the session's MySQL-backed app tests, emptied before each test."""
    with scratch_database(mysql_server) as url:
        yield url


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> Generator[None]:
    """Say where the MySQL tests ran; say loudly when they did not run at all. Wraps pytest's
    own summary, so this comes last, after the list of skips, just above the final counts."""
    result = yield
    mysql_summary(terminalreporter)
    return result


def mysql_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for source in MYSQL_SOURCE:
        terminalreporter.write_line(f"MySQL tests ran against {source}.")
    skipped = [
        report
        for report in terminalreporter.stats.get("skipped", [])
        if NO_MYSQL_SERVER in str(getattr(report, "longrepr", ""))
    ]
    if not skipped:
        return
    write = terminalreporter.write_line
    terminalreporter.section("WARNING: THE MYSQL TESTS DID NOT RUN", sep="!", red=True, bold=True)
    write(f"{len(skipped)} tests were SKIPPED because there is no MySQL/MariaDB server:", red=True)
    write("TEST_DATABASE_URL is unset, no Docker engine answers, and mariadbd is not installed.")
    for error in NO_DOCKER:
        write(f"(Docker: {error})")
    write("Only the SQLite half of the suite was checked. To run everything, either")
    write("  - install MariaDB's server (the suite starts a private one by itself):")
    write("      sudo apt-get install mariadb-server   (or: make system-deps)")
    write("  - or point the suite at a server it may create and drop databases on:")
    write("      TEST_DATABASE_URL=mysql://root@127.0.0.1:3306 make test")
    terminalreporter.write_sep("!", red=True, bold=True)


# --- The app --------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "mysql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'vars.db'}"
    url = request.getfixturevalue("mysql_database")
    empty_var_tables(url)
    return url


@pytest.fixture
def app(store_url: str) -> Iterator[Flask]:
    import db
    import watch

    # Apps that earlier tests built (and dropped) must not sweep this test's database.
    watch.stop_all()
    app = create_app({"TESTING": True, "DATABASE_URL": store_url})
    yield app
    watch.stop_background(app)
    db.get_store(app).close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    return app.test_cli_runner()


# --- Real processes -------------------------------------------------------------------------


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


@pytest.fixture
def private_mariadb() -> Iterator[PrivateMariaDB]:
    """A stopped private MariaDB (call ``.start()``); killed and deleted afterwards."""
    base = Path(tempfile.mkdtemp(prefix="vk-mariadb-"))
    server = PrivateMariaDB(base)
    yield server
    server.kill()
    shutil.rmtree(base, ignore_errors=True)
