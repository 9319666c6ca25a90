"""The Docker image, built from the Dockerfile and checked through running containers.

Where ``../shared/container-engine/up`` exists (this repo's CI sandbox) it provides the engine and
stand-in base images; containers there share the host's network (``--network host`` on every
build and run, ``-p`` publishes nothing) and see MariaDB on 127.0.0.1. Elsewhere a normal Docker
engine is used with ``-p`` and ``host.docker.internal``. Without an engine the module is skipped,
with the reason in pytest's summary (``-ra``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests

from tests.servers import ROOT, free_port, scratch_database, server_connection

ENGINE_SCRIPTS = ROOT.parent / "shared" / "container-engine"
IMAGE = "var_keeper:test"
STOP_TIMEOUT = 20

# Its first test starts the engine and builds the image (each bounded at 900 s): more than the
# suite's time limit (pyproject.toml).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2700)]


def docker(*args: str, timeout: float = 60, check: bool = True) -> str:
    """Run the docker CLI; return its combined output, failing the test with it on error."""
    done = subprocess.run(
        ["docker", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and done.returncode != 0:
        pytest.fail(f"docker {' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}")
    return done.stdout


@dataclass(frozen=True)
class Engine:
    """How containers reach the host: the sandbox shares its network, a normal engine maps ports."""

    host_network: bool

    def network_args(self) -> list[str]:
        return ["--network", "host"] if self.host_network else []

    def run_args(self, port: int) -> list[str]:
        if self.host_network:
            # Listen on loopback only: the container is on the host's own network.
            return [*self.network_args(), "--env", "HOST=127.0.0.1"]
        return [
            "--publish",
            f"127.0.0.1:{port}:{port}",
            "--add-host",
            "host.docker.internal:host-gateway",
        ]

    def database_url(self, url: str) -> str:
        """``url`` as seen from inside a container."""
        parts = urlsplit(url)
        if self.host_network or parts.hostname not in ("127.0.0.1", "localhost"):
            return url
        netloc = parts.netloc.rsplit("@", 1)
        host_port = netloc[-1].replace(parts.hostname, "host.docker.internal", 1)
        netloc[-1] = host_port
        return urlunsplit(parts._replace(netloc="@".join(netloc)))


@dataclass(frozen=True)
class Container:
    name: str
    port: int
    started: float  # time.monotonic() just before `docker run`

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def state(self) -> dict[str, Any]:
        return json.loads(docker("inspect", "--format", "{{json .State}}", self.name))

    def logs(self) -> str:
        return docker("logs", self.name)

    def python(self, code: str) -> str:
        """Run ``code`` with the image's Python inside the running container."""
        return docker("exec", self.name, "python", "-c", code)


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    up = ENGINE_SCRIPTS / "up"
    if up.exists():
        done = subprocess.run(
            [str(up), "Dockerfile"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if done.returncode != 0:
            output = (done.stdout + done.stderr).strip()[-1500:]
            pytest.skip(f"container engine not available (up exited {done.returncode}): {output}")
        try:
            yield Engine(host_network=True)
        finally:
            subprocess.run([str(ENGINE_SCRIPTS / "down")], capture_output=True, check=False)
        return
    if shutil.which("docker") is None:
        pytest.skip(f"no {up} and no docker CLI")
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False)
    if info.returncode != 0:
        pytest.skip(f"no {up} and no Docker engine: {info.stderr.strip()[-500:]}")
    yield Engine(host_network=False)


@pytest.fixture(scope="session")
def image(engine: Engine) -> str:
    docker("build", *engine.network_args(), "--tag", IMAGE, str(ROOT), timeout=900)
    return IMAGE


@contextmanager
def running(engine: Engine, env: dict[str, str] | None = None) -> Iterator[Container]:
    """A container of the test image on a free port; removed with its anonymous volume after."""
    port = free_port()
    name = f"var_keeper-test-{uuid.uuid4().hex[:10]}"
    args = ["run", "--detach", "--name", name, "--env", f"PORT={port}", *engine.run_args(port)]
    for key, value in (env or {}).items():
        args += ["--env", f"{key}={value}"]
    started = time.monotonic()
    docker(*args, IMAGE)
    try:
        yield Container(name, port, started)
    finally:
        docker("rm", "--force", "--volumes", name, check=False)


def wait_ready(container: Container, timeout: float = 30) -> None:
    """Wait until /readyz answers 200; fail at once, with the log, if the container exits."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = requests.get(container.url("/readyz"), timeout=2).status_code
            if last == 200:
                return
        except requests.RequestException as exc:
            last = exc
        if not container.state()["Running"]:
            last = f"the container exited: {container.state()}"
            break
        time.sleep(0.2)
    pytest.fail(f"{container.name} is not ready (last: {last})\nlog:\n{container.logs()[-3000:]}")


@pytest.fixture(scope="module")
def embedded(engine: Engine, image: str) -> Iterator[Container]:
    """One running container on the embedded SQLite default, shared by the read-only checks."""
    with running(engine) as container:
        wait_ready(container)
        yield container


# --- The tutorial's contract ------------------------------------------------------------------


def test_tutorial_contract_against_mysql(engine: Engine, image: str, mysql_server: str) -> None:
    with (
        scratch_database(mysql_server) as url,
        running(engine, {"DATABASE_URL": engine.database_url(url)}) as container,
    ):
        wait_ready(container)
        posted = requests.post(container.url("/var/greeting"), data={"value": "hi"}, timeout=5)
        got = requests.get(container.url("/var/greeting"), timeout=5)
        stored = _stored_values(url)
        log = container.logs()

    assert (posted.status_code, posted.text) == (200, "OK")
    assert (got.status_code, got.text) == (200, "hi")
    assert stored == [(b"greeting", "hi")]
    assert re.search(r"mysql-connector-python \S+: connection class (C)?MySQLConnection", log)


def _stored_values(database_url: str) -> list[tuple[bytes, str]]:
    """The rows of ``vars``, read straight from the server: the container really wrote there."""
    server, _, database = database_url.rpartition("/")
    conn = server_connection(server)
    try:
        cur = conn.cursor()
        cur.execute(f"SELECT name, value FROM `{database}`.vars ORDER BY name")
        return [(bytes(name), value) for name, value in cur.fetchall()]
    finally:
        conn.close()


def test_tutorial_contract_on_embedded_default(embedded: Container) -> None:
    posted = requests.post(embedded.url("/var/x"), data={"value": "embedded"}, timeout=5)
    got = requests.get(embedded.url("/var/x"), timeout=5)

    assert (posted.status_code, posted.text) == (200, "OK")
    assert (got.status_code, got.text) == (200, "embedded")
    files = embedded.python("import os; print(*sorted(os.listdir('/app/instance')))").split()
    assert "var_keeper.db" in files


def test_embedded_database_lives_in_a_volume_that_survives_a_restart(
    engine: Engine, image: str
) -> None:
    with running(engine) as container:
        wait_ready(container)
        requests.post(container.url("/var/kept"), data={"value": "still here"}, timeout=5)
        docker("restart", "-t", str(STOP_TIMEOUT), container.name, timeout=STOP_TIMEOUT + 30)
        wait_ready(container)

        got = requests.get(container.url("/var/kept"), timeout=5)
        mounts = json.loads(docker("inspect", "--format", "{{json .Mounts}}", container.name))

    assert got.text == "still here"
    assert [(m["Type"], m["Destination"]) for m in mounts] == [("volume", "/app/instance")]


# --- Health, user, contents -------------------------------------------------------------------


def test_container_reports_healthy_within_30_seconds(engine: Engine, image: str) -> None:
    with running(engine) as container:
        health = container.state()["Health"]
        while health["Status"] != "healthy" and time.monotonic() - container.started < 30:
            time.sleep(0.5)
            state = container.state()
            health = state["Health"]
            if not state["Running"]:
                break

    assert health["Status"] == "healthy", health


def test_start_up_log_has_no_errors(embedded: Container) -> None:
    log = embedded.logs()

    assert "Listening at: http://" in log
    assert not [line for line in log.splitlines() if "[ERROR]" in line or "Traceback" in line]


def test_every_process_runs_as_a_non_root_uid(embedded: Container) -> None:
    listing = embedded.python(
        "import json, os\n"
        "procs = {}\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    try:\n"
        "        status = open(f'/proc/{pid}/status').read()\n"
        "        cmd = open(f'/proc/{pid}/cmdline', 'rb').read().replace(b'\\0', b' ').decode()\n"
        "    except OSError:\n"
        "        continue\n"
        "    uids = next(l for l in status.splitlines() if l.startswith('Uid:')).split()[1:]\n"
        "    procs[pid] = [cmd, [int(u) for u in uids]]\n"
        "print(json.dumps(procs))"
    )
    processes = json.loads(listing)

    assert "gunicorn" in processes["1"][0]
    assert len(processes) >= 3  # the master, its workers and this probe
    assert all(0 not in uids for _, uids in processes.values()), processes


def test_image_holds_no_tests_vcs_virtualenvs_or_secrets(embedded: Container) -> None:
    shipped = set(embedded.python("import os; print(*os.listdir('/app'))").split())

    assert {"app.py", "db.py", "web.py", "gunicorn.conf.py", "openapi.json"} <= shipped
    assert not shipped & {"tests", ".git", ".venv", "venv", ".ci", "secrets", "bench", ".github"}
    assert not [name for name in shipped if name.endswith((".db", ".pyc", ".md"))]


def test_image_config_bakes_in_no_database_settings(image: str) -> None:
    config = json.loads(docker("image", "inspect", "--format", "{{json .Config}}", image))
    env_names = {entry.split("=", 1)[0] for entry in config["Env"]}

    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", config["User"])
    assert not {name for name in env_names if "PASSWORD" in name or name.startswith("DATABASE")}
    assert {"PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"} <= env_names
    assert "5000/tcp" in config["ExposedPorts"]
    assert "/app/instance" in config["Volumes"]
    assert "/readyz" in " ".join(config["Healthcheck"]["Test"])
    assert config["Labels"]["org.opencontainers.image.title"] == "var_keeper"


def test_c_extension_loads_exactly_when_the_image_has_openssl_3_2(embedded: Container) -> None:
    # The stand-in base here is Debian 12 (OpenSSL 3.0); python:3.13-slim-trixie has OpenSSL 3.5.
    probe = embedded.python(
        "import ssl, mysql.connector; "
        "print(ssl.OPENSSL_VERSION_INFO[:2] >= (3, 2), mysql.connector.HAVE_CEXT)"
    )
    openssl_new_enough, have_cext = probe.split()

    assert have_cext == openssl_new_enough


# --- Stopping ---------------------------------------------------------------------------------


def test_docker_stop_ends_it_gracefully(engine: Engine, image: str) -> None:
    with running(engine) as container:
        wait_ready(container)
        # Every worker booted: a worker still booting has not set its signal handlers yet and
        # would miss the TERM (gunicorn then waits out graceful_timeout for it).
        deadline = time.monotonic() + 30
        while container.logs().count("store ready") < 4 and time.monotonic() < deadline:
            time.sleep(0.2)
        asked = time.monotonic()
        docker("stop", "-t", str(STOP_TIMEOUT), container.name, timeout=STOP_TIMEOUT + 30)
        took = time.monotonic() - asked
        state = container.state()
        log = container.logs()

    assert (state["ExitCode"], state["OOMKilled"]) == (0, False), f"{took:.1f}s\n{log[-3000:]}"
    assert took < STOP_TIMEOUT / 4, f"docker stop took {took:.1f}s"
    assert "Shutting down" in log
