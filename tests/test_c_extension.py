"""The connector's C extension where the system's OpenSSL is older than it needs (Debian 12):
``python app.py`` serves on it, and the store's tests pass on it (tests/on_c_extension.py)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from requests import get, post

from storage.mysql.driver import c_extension_loads, environ_for_c_extension
from tests.servers import free_port, scratch_database, wait_for_http
from tests.test_gunicorn import start_python_app_py

ROOT = Path(__file__).resolve().parent.parent
# The SQLite runs of the parametrized tests are left out: this is about the MySQL driver.
PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]


@pytest.fixture(scope="module")
def c_environ() -> dict[str, str]:
    environ = environ_for_c_extension(os.environ)
    assert c_extension_loads(environ), "the connector's C extension loads nowhere here"
    return environ


def test_the_store_tests_pass_on_the_c_extension(c_environ, mysql_server: str):
    run = subprocess.run(
        [*PYTEST, "tests/on_c_extension.py", "-k", "not sqlite"],
        cwd=ROOT,
        env={**c_environ, "TEST_DATABASE_URL": mysql_server},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    passed = re.search(r"(\d+) passed", summary)
    assert passed, summary
    assert int(passed.group(1)) >= 50, summary
    assert "skipped" not in summary, summary
    assert "failed" not in summary, summary


def test_python_app_py_serves_on_the_c_extension(mysql_server: str, tmp_path: Path):
    """``python app.py`` (``make run``) puts the connector's OpenSSL on gunicorn's library path
    where the system's is too old, and the tutorial's contract works on that driver."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "app.log"
    with scratch_database(mysql_server) as url:
        env = {"PORT": str(port), "WEB_CONCURRENCY": "1", "DATABASE_URL": url}
        proc = start_python_app_py(env, log)
        try:
            wait_for_http(base + "/readyz", ok=lambda s: s == 200)
            assert post(base + "/var/c", data={"value": "on C"}, timeout=10).text == "OK"
            assert get(base + "/var/c", timeout=10).text == "on C"
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
    text = log.read_text()
    assert "connection class CMySQLConnection (C extension)" in text, text[-3000:]


def test_python_in_that_environment_still_trusts_the_systems_certificates():
    """The bundled OpenSSL was built to look in /usr/local/mysql/ssl: SSL_CERT_FILE and
    SSL_CERT_DIR point it at the system's certificates, or TLS could verify nothing."""
    plain = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    environ = environ_for_c_extension(plain)
    assert "LD_LIBRARY_PATH" in environ  # this host needs the bundled OpenSSL
    count = "import ssl; print(len(ssl.create_default_context().get_ca_certs()))"

    def trusted(env: dict[str, str]) -> int:
        run = subprocess.run([sys.executable, "-c", count], env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        return int(run.stdout)

    assert trusted(environ) == trusted(plain) > 0
