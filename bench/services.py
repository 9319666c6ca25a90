"""The processes a benchmark run starts and stops itself, every one on 127.0.0.1 only.

A private MariaDB (temporary datadir, spare port: the shared server on :3306 and its other
databases are never touched), the service under gunicorn with the shipped gunicorn.conf.py, and
the peers: webdis in front of a private redis-server, and etcd with its v2 keys API. Each is
stopped by the PID this module started, never by name.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from functools import cache
from pathlib import Path
from typing import Any

import mysql.connector

ROOT = Path(__file__).resolve().parent.parent


@cache
def server_environ() -> dict[str, str]:
    """The environment ours and the plain app start in: this one, with the MySQL driver's C
    extension made loadable as ``python app.py`` makes it (storage/mysql/driver.py), so that
    both run on the same driver, whichever it is."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from storage.mysql.driver import environ_for_c_extension

    return environ_for_c_extension(os.environ)


def driver_of(environ: dict[str, str]) -> str:
    """Which mysql-connector a server started in ``environ`` runs on (the plain app takes the
    C extension whenever it loads: mysql.connector.connect's default)."""
    from storage.mysql.driver import c_extension_loads

    return "C extension" if c_extension_loads(environ) else "pure Python"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 30.0, want: int = 200) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
                if response.status == want:
                    return
                last = response.status
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer {want} within {timeout}s (last: {last})")


def need(program: str) -> str:
    path = shutil.which(program) or (f"/usr/sbin/{program}" if program == "mariadbd" else None)
    if not path or not Path(path).exists():
        raise SystemExit(f"bench: {program} is missing (make bench installs the Debian packages)")
    return path


def close_and_drop(store: Any, schema: str) -> None:
    """Close the app's ``store`` and drop its database ``schema`` (bench.inprocess and
    bench.statements make one each)."""
    store.close()
    conn = store.connections.connect(None)
    try:
        conn.cursor().execute(f"DROP DATABASE IF EXISTS `{schema}`")
    finally:
        conn.close()


class Process:
    """A child process with its output in a log file; stopped by its own PID."""

    def __init__(self, name: str, argv: list[str], workdir: Path, **popen: Any) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self.proc = subprocess.Popen(
            argv, stdout=self.log_path.open("ab"), stderr=subprocess.STDOUT, **popen
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, chars: int = 2000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


class MariaDB:
    """A private MariaDB: its own datadir and port, so a 1-million-row table disturbs no one."""

    def __init__(self, workdir: Path, buffer_pool: str = "512M") -> None:
        self.base = workdir / "mariadb"
        self.port = free_port()
        self.buffer_pool = buffer_pool
        self.server: Process | None = None

    @property
    def server_url(self) -> str:
        return f"mysql://root@127.0.0.1:{self.port}"

    def start(self) -> MariaDB:
        datadir = self.base / "data"
        if not datadir.exists():
            self.base.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [
                    need("mariadb-install-db"),
                    "--no-defaults",
                    f"--datadir={datadir}",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                    "--user=root",
                ],
                check=True,
                capture_output=True,
            )
        # Durability as shipped (innodb_flush_log_at_trx_commit=1): the peers' limits are
        # measured against a database that fsyncs each commit, like production.
        self.server = Process(
            "mariadbd",
            [
                need("mariadbd"),
                "--no-defaults",
                f"--datadir={datadir}",
                f"--port={self.port}",
                "--bind-address=127.0.0.1",
                f"--socket={self.base / 'mysqld.sock'}",
                f"--pid-file={self.base / 'mysqld.pid'}",
                "--user=root",
                f"--innodb-buffer-pool-size={self.buffer_pool}",
                "--innodb-log-file-size=256M",
                "--max-connections=1000",
                "--skip-name-resolve",
            ],
            self.base,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                self.connect().close()
                return self
            except mysql.connector.Error:
                if not self.server.alive():
                    raise RuntimeError(self.server.log_tail()) from None
                time.sleep(0.2)
        raise TimeoutError("the private MariaDB did not start within 60s")

    def connect(self, database: str | None = None) -> Any:
        args: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.port,
            "user": "root",
            "password": "",
            "autocommit": True,
            "connection_timeout": 2,
        }
        if database:
            args["database"] = database
        return mysql.connector.connect(**args)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        conn = self.connect()
        try:
            cur = conn.cursor()
            cur.execute(sql)
            return cur.fetchall() if cur.with_rows else []
        finally:
            conn.close()

    def stop(self) -> None:
        if self.server:
            self.server.stop(timeout=60)


class Gunicorn:
    """``gunicorn app:app`` with the shipped gunicorn.conf.py, from ``app_dir`` (a clone or a
    scratch copy with a proposed change). ``extra`` are command-line overrides (they win over
    the config file), used only by the worker-class matrix."""

    def __init__(
        self,
        app_dir: Path,
        workdir: Path,
        database_url: str,
        label: str = "gunicorn",
        workers: int | None = None,
        threads: int | None = None,
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**server_environ(), **(env or {}), "HOST": "127.0.0.1", "PORT": str(self.port)}
        env["DATABASE_URL"] = database_url
        if workers is not None:
            env["WEB_CONCURRENCY"] = str(workers)
        if threads is not None:
            env["GUNICORN_THREADS"] = str(threads)
        argv = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", *(extra or [])]
        self.process = Process(label, [*argv, "app:app"], workdir, cwd=app_dir, env=env)
        wait_http(self.base + "/readyz", timeout=60)
        # /readyz answered from one worker: wait until every worker has prepared its store.
        time.sleep(1.0)

    def worker_pids(self) -> list[int]:
        master = self.process.proc.pid
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == master:
                pids.append(int(stat.parent.name))
        return sorted(pids)

    def memory(self) -> dict[str, Any]:
        """Peak (VmHWM) and current RSS of each worker, in MiB."""
        workers = []
        for pid in self.worker_pids():
            status = _proc_status(pid)
            workers.append(
                {"pid": pid, "peak_mib": status["VmHWM"] / 1024, "rss_mib": status["VmRSS"] / 1024}
            )
        master = _proc_status(self.process.proc.pid)
        return {"workers": workers, "master_rss_mib": master.get("VmRSS", 0) / 1024}

    def _log_line(self, needle: str) -> str:
        for line in self.process.log_path.read_text(errors="replace").splitlines():
            if needle in line:
                return line.split(needle, 1)[-1].strip()
        return "unknown"

    def connector_line(self) -> str:
        """What the app logged at start-up: the connector's version, C extension or not."""
        return "mysql-connector-python " + self._log_line("mysql-connector-python")

    def worker_class(self) -> str:
        return self._log_line("Using worker:")

    def stop(self) -> None:
        self.process.stop()


class PlainApp:
    """bench/plain_app.py under gunicorn (the "same stack, no features" reference and, at
    ``/constant``, the stack's ceiling): gthread, 2 processes x 8 threads unless told, started
    in bench/ with no config file, so nothing of ours (logging, hooks) runs in it."""

    def __init__(
        self,
        workdir: Path,
        db_port: int,
        schema: str,
        worker_class: str = "gthread",
        workers: int = 2,
        threads: int = 8,
        label: str = "plain-app",
    ) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.config = (
            f"{worker_class} {workers}x{threads}"
            if worker_class == "gthread"
            else (f"{worker_class} {workers}")
        )
        env = {**server_environ(), "PLAIN_DB_PORT": str(db_port), "PLAIN_DB_NAME": schema}
        argv = [
            sys.executable,
            "-m",
            "gunicorn",
            "--bind",
            f"127.0.0.1:{self.port}",
            "--worker-class",
            worker_class,
            "--workers",
            str(workers),
            "--threads",
            str(threads),
            "plain_app:app",
        ]
        self.process = Process(label, argv, workdir, cwd=ROOT / "bench", env=env)
        wait_http(self.base + "/constant", timeout=60)

    def stop(self) -> None:
        self.process.stop()


def _proc_status(pid: int) -> dict[str, int]:
    values: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                values[key] = int(rest.split()[0])
    except OSError:
        pass
    return values


class Webdis:
    """webdis (C, Redis over HTTP) in front of a private redis-server without persistence."""

    def __init__(self, workdir: Path) -> None:
        base = workdir / "webdis"
        base.mkdir(parents=True, exist_ok=True)
        redis_port, self.port = free_port(), free_port()
        self.redis = Process(
            "redis",
            [
                need("redis-server"),
                "--port",
                str(redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(base),
            ],
            base,
        )
        config = {
            "redis_host": "127.0.0.1",
            "redis_port": redis_port,
            "http_host": "127.0.0.1",
            "http_port": self.port,
            "threads": 2,
            "pool_size": 20,
            "daemonize": False,
            "websockets": False,
            "database": 0,
            "verbosity": 0,
            "logfile": str(base / "webdis-internal.log"),
        }
        config_path = base / "webdis.json"
        config_path.write_text(json.dumps(config))
        self.base = f"http://127.0.0.1:{self.port}"
        time.sleep(0.3)
        self.webdis = Process("webdis", [need("webdis"), str(config_path)], base)
        wait_http(self.base + "/SET/k0000001/value-1", timeout=20)

    def stop(self) -> None:
        self.webdis.stop()
        self.redis.stop()


class Etcd:
    """etcd with ``--enable-v2``: ``PUT /v2/keys/<k>`` takes ``value=`` like our form POST.
    Its WAL is fsynced on commit, like MariaDB's redo log."""

    def __init__(self, workdir: Path) -> None:
        base = workdir / "etcd"
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(parents=True)
        self.port, peer = free_port(), free_port()
        client_url, peer_url = f"http://127.0.0.1:{self.port}", f"http://127.0.0.1:{peer}"
        self.process = Process(
            "etcd",
            [
                need("etcd"),
                "--name=bench",
                f"--data-dir={base / 'data'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=bench={peer_url}",
                "--enable-v2=true",
                "--log-level=error",
            ],
            base,
        )
        self.base = client_url
        wait_http(self.base + "/health", timeout=30)
        request = urllib.request.Request(  # noqa: S310 - loopback
            self.base + "/v2/keys/k0000001",
            data=b"value=value-1",
            method="PUT",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback
            if response.status not in (200, 201):
                raise RuntimeError(f"etcd v2 PUT answered {response.status}")

    def version(self) -> str:
        with urllib.request.urlopen(self.base + "/version", timeout=5) as response:  # noqa: S310
            return json.loads(response.read()).get("etcdserver", "?")

    def stop(self) -> None:
        self.process.stop()
