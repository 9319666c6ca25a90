"""var_keeper's benchmark: ``make bench`` (about 13 minutes) or ``make bench-smoke`` (seconds).

One run starts everything itself on 127.0.0.1 (a private MariaDB, gunicorn with the shipped
gunicorn.conf.py, webdis on a private redis-server, etcd with its v2 keys API), measures, stops
what it started and writes ``bench/results/`` (results.md, throughput.png, results.json). Every
figure is compared with references measured in the same run, interleaved job by job, because
this 2-core machine is shared and noisy: read ratios, not absolute numbers.

    python -m bench.run                  # the full run (5 s per measurement)
    python -m bench.run --smoke          # CI: 1 s runs, 8 connections, 1k rows, no peers
    python -m bench.run --compare try=/tmp/vk-try   # also measure a scratch copy of the app
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import report
from bench.load import HttpJob, Result, mysqlslap, wrk
from bench.profile import profile_worker
from bench.services import (
    ROOT,
    Etcd,
    Gunicorn,
    MariaDB,
    PlainApp,
    Webdis,
    driver_of,
    server_environ,
)

SCHEMA = "vk_bench"
SCALE_SCHEMA = "vk_scale"
FORM = "application/x-www-form-urlencoded"
VALUE = "hello world, this is a value"
COLUMNS = "name, value, version, created_at, updated_at"
BATCH = [f"k{n:07d}" for n in range(1, 11)]


def http_jobs(rows: int) -> dict[str, HttpJob]:
    """Our service's jobs; the names exist (seeded) unless the job creates them."""
    body = "value=" + VALUE.replace(" ", "+").replace(",", "%2C")
    return {
        "GET": HttpJob("GET", "/var/k0000001"),
        "POST same": HttpJob("POST", "/var/k0000002", body=body, content_type=FORM),
        "POST distinct": HttpJob("POST", "/var/d-", "distinct", body=body, content_type=FORM),
        "list": HttpJob("GET", "/var?prefix=k&limit=100"),
        "batch 10": HttpJob("GET", "/var?" + "&".join(f"name={n}" for n in BATCH)),
    }


def slap_queries() -> dict[str, str]:
    """The same statements as the service runs for each job, for mysqlslap."""
    now = "UTC_TIMESTAMP(6)"
    names = ", ".join(f"'{n}'" for n in BATCH)
    return {
        "GET": f"SELECT {COLUMNS} FROM vars WHERE name = 'k0000001'",
        "POST same": (
            f"UPDATE vars SET value = '{VALUE}', version = LAST_INSERT_ID(version + 1), "
            f"updated_at = {now} WHERE name = 'k0000002'"
        ),
        # The database's upsert of a new name: one statement (the service adds its log entry).
        "POST distinct": (
            f"INSERT INTO vars ({COLUMNS}) VALUES (CONCAT('slap-', UUID()), '{VALUE}', 1, "
            f"{now}, {now}) ON DUPLICATE KEY UPDATE value = VALUES(value), "
            f"version = version + 1, updated_at = {now}"
        ),
        "list": (
            "SELECT name, NULL, version, created_at, updated_at FROM vars "
            "WHERE name >= 'k' AND name < 'l' ORDER BY name LIMIT 101"
        ),
        "batch 10": f"SELECT {COLUMNS} FROM vars WHERE name IN ({names}) ORDER BY name",
    }


def our_write_statements() -> str:
    """POST distinct as the MySQL store sends it (storage/mysql/store.py, one round trip), for
    mysqlslap: the database's own limit for our write, beside its limit for a bare upsert."""
    now = "UTC_TIMESTAMP(6)"
    live = f"(vars.expires_at IS NULL OR vars.expires_at > {now})"
    return "; ".join(
        [
            # As the store's sessions run (storage/mysql/connections.py).
            "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
            "SET @n = CONCAT('slapw-', UUID())",
            "START TRANSACTION",
            f"INSERT INTO vars ({COLUMNS}, expires_at) SELECT @n, '{VALUE}', "
            f"LAST_INSERT_ID(COALESCE(MAX(version), 0) + 1), {now}, {now}, NULL "
            "FROM var_changes WHERE name = @n ON DUPLICATE KEY UPDATE "
            f"version = IF({live}, LAST_INSERT_ID(vars.version + 1), NULL), "
            "value = VALUES(value), updated_at = VALUES(updated_at), "
            "expires_at = VALUES(expires_at)",
            "INSERT INTO var_changes (name, version, op, value, changed_at, actor, txn) "
            "SELECT name, version, 'set', value, updated_at, NULL, NULL FROM vars "
            "WHERE name = @n",
            "COMMIT",
        ]
    )


def peer_jobs() -> dict[str, dict[str, HttpJob]]:
    """The same jobs on the peers (they have no listing or batch read of this shape)."""
    form = "value=" + VALUE.replace(" ", "+").replace(",", "%2C")
    return {
        # Same stack, no features (bench/plain_app.py), and the stack's ceiling.
        "plain app": {
            "GET": HttpJob("GET", "/var/k0000001"),
            "POST same": HttpJob("POST", "/var/k0000002", body=form, content_type=FORM),
            "POST distinct": HttpJob("POST", "/var/p-", "distinct", body=form, content_type=FORM),
        },
        "constant": {"GET": HttpJob("GET", "/constant")},
        "webdis": {
            "GET": HttpJob("GET", "/GET/k0000001"),
            "POST same": HttpJob("PUT", "/SET/k0000002", body=VALUE),
            "POST distinct": HttpJob("PUT", "/SET/d-", "distinct", body=VALUE),
        },
        "etcd v2": {
            "GET": HttpJob("GET", "/v2/keys/k0000001"),
            "POST same": HttpJob("PUT", "/v2/keys/k0000002", body=form, content_type=FORM),
            "POST distinct": HttpJob(
                "PUT", "/v2/keys/d-", "distinct", body=form, content_type=FORM
            ),
        },
    }


# --- Database preparation


def create_schema(app_dir: Path, server_url: str, schema: str) -> None:
    """The app's own schema code creates the database and table, exactly as in production."""
    sys.path.insert(0, str(app_dir))
    try:
        import db
        import watch
        from app import create_app

        app = create_app({"DATABASE_URL": f"{server_url}/{schema}"})
        # The app's background work (sweeper) must not outlive this: it swept the scaling
        # schema from the benchmark's own process, and failed once the run dropped it.
        watch.stop_background(app)
        store = db.get_store(app)
        store.ensure_ready()
        store.close()
    finally:
        sys.path.remove(str(app_dir))


def fill(mariadb: MariaDB, schema: str, first: int, last: int) -> float:
    """Rows k<first>..k<last> on the server side (recursive CTE, INSERT ... SELECT)."""
    started = time.monotonic()
    conn = mariadb.connect(schema)
    try:
        cur = conn.cursor()
        # MariaDB 10.11 stops a recursive CTE after 1000 iterations by default.
        cur.execute("SET SESSION max_recursive_iterations = 100000000")
        step = 250_000
        for low in range(first, last + 1, step):
            high = min(last, low + step - 1)
            cur.execute(
                f"INSERT INTO vars ({COLUMNS}) "
                "WITH RECURSIVE seq (n) AS (SELECT %s UNION ALL SELECT n + 1 FROM seq "
                "WHERE n < %s) "
                "SELECT CONCAT('k', LPAD(n, 7, '0')), CONCAT('value of variable ', n), 1, "
                "UTC_TIMESTAMP(6), UTC_TIMESTAMP(6) FROM seq",
                (low, high),
            )
        cur.execute("ANALYZE TABLE vars")
        cur.fetchall()
    finally:
        conn.close()
    return time.monotonic() - started


def drop(mariadb: MariaDB, schema: str) -> None:
    conn = mariadb.connect()
    try:
        conn.cursor().execute(f"DROP DATABASE IF EXISTS `{schema}`")
    finally:
        conn.close()


# --- Phases


class Run:
    """One benchmark run: its options, the services it started and what it measured."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.app_dir = Path(args.app_dir).resolve()
        self.duration: float = args.duration
        self.results: list[Result] = []
        self.meta: dict[str, Any] = {}
        self.workdir = Path(tempfile.mkdtemp(prefix="vk-bench-"))
        self.cleanups: list[Callable[[], None]] = []

    def log(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    def record(self, result: Result) -> Result:
        self.results.append(result)
        errors = f" errors={result.errors}" if result.errors else ""
        latency = f" p50={result.p50_ms:.2f}ms p99={result.p99_ms:.2f}ms" if result.p50_ms else ""
        self.log(
            f"  {result.target:<22} {result.job:<14} c={result.connections:<4}"
            f"{result.rps:>10.0f} req/s{latency}{errors} {result.note}"
        )
        time.sleep(0.3)  # let closed connections drain between runs
        return result

    def start(self, service: Callable[[], Any]) -> Any:
        started = service()
        self.cleanups.append(started.stop)
        return started

    def stop_all(self) -> None:
        for cleanup in reversed(self.cleanups):
            try:
                cleanup()
            except Exception as exc:  # noqa: BLE001 - stop the others whatever happens
                print(f"bench: cleanup failed: {exc}", file=sys.stderr)
        self.cleanups.clear()

    def main(self) -> None:
        args = self.args
        self.log(f"work dir {self.workdir}; {self.duration:g} s per measurement")
        mariadb: MariaDB = self.start(lambda: MariaDB(self.workdir).start())
        self.log(f"private MariaDB on 127.0.0.1:{mariadb.port}")
        create_schema(self.app_dir, mariadb.server_url, SCHEMA)
        fill(mariadb, SCHEMA, 1, args.rows)
        ours: Gunicorn = self.start(
            lambda: Gunicorn(self.app_dir, self.workdir, f"{mariadb.server_url}/{SCHEMA}")
        )
        self.meta.update(self.describe(mariadb, ours))
        self.log(f"connector: {self.meta['connector']}")
        if args.compare_only:
            ours.stop()
            self.meta["compared"] = args.compare
            self.compare(mariadb)
            return
        plain: PlainApp = self.start(lambda: PlainApp(self.workdir, mariadb.port, SCHEMA))
        self.meta["plain_app"] = plain.config
        peers: dict[str, Any] = {"plain app": plain, "constant": plain}
        if args.peers and not args.smoke:
            peers["webdis"] = self.start(lambda: Webdis(self.workdir))
            peers["etcd v2"] = self.start(lambda: Etcd(self.workdir))
            self.meta["etcd"] = peers["etcd v2"].version()

        self.throughput(mariadb, ours, peers)
        self.meta["memory"] = ours.memory()
        if args.profile:
            self.meta["profiles"] = self.profiles(ours)
        if args.compare:
            self.meta["compared"] = args.compare
            self.compare(mariadb)
        ours.stop()
        plain.stop()
        # The smoke: a few requests, so that the tools keep working. They measure the work tree,
        # so not when the run measures another app (--app-dir).
        if (args.profile or args.smoke) and self.app_dir == ROOT.resolve():
            self.meta["one_client"] = self.one_client(mariadb)
        if args.matrix:
            self.matrix(mariadb)
        if args.scaling:
            self.scaling(mariadb)
        drop(mariadb, SCHEMA)
        drop(mariadb, SCALE_SCHEMA)

    def describe(self, mariadb: MariaDB, ours: Gunicorn) -> dict[str, Any]:
        conn = mariadb.connect()
        try:
            cur = conn.cursor()
            cur.execute("SELECT VERSION()")
            version = cur.fetchone()[0]
        finally:
            conn.close()
        return {
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "duration_s": self.duration,
            "cpus": _cpus(),
            "python": platform.python_version(),
            "mariadb": version,
            "connector": ours.connector_line(),
            "plain_connector": driver_of(server_environ()),
            "wrk": _version(["wrk", "-v"]),
            "gunicorn_config": "gunicorn.conf.py as in the work tree, its defaults (no "
            f"WEB_CONCURRENCY, GUNICORN_THREADS): worker class {ours.worker_class()}",
            "workers": len(ours.worker_pids()),
            "app_dir": str(self.app_dir),
        }

    def throughput(self, mariadb: MariaDB, ours: Gunicorn, peers: dict[str, Any]) -> None:
        """Each job at each concurrency: database limit, ours, peers, back to back."""
        jobs = http_jobs(self.args.rows)
        queries = slap_queries()
        peer_specs = peer_jobs()
        for job, spec in jobs.items():
            if job not in self.args.jobs:
                continue
            self.log(f"job {job}")
            for conns in self.args.connections:
                if self.args.peers and not self.args.smoke:
                    self.record(
                        mysqlslap(job, mariadb.port, SCHEMA, queries[job], conns, self.duration)
                    )
                    if job == "POST distinct":
                        self.record(
                            mysqlslap(
                                job,
                                mariadb.port,
                                SCHEMA,
                                our_write_statements(),
                                conns,
                                self.duration,
                                target="mysqlslap, our write",
                            )
                        )
                self.record(wrk("var_keeper", job, ours.base, spec, conns, self.duration))
                for name, peer in peers.items():
                    if job in peer_specs[name]:
                        self.record(
                            wrk(name, job, peer.base, peer_specs[name][job], conns, self.duration)
                        )

    def profiles(self, ours: Gunicorn, label: str = "") -> dict[str, Any]:
        """py-spy on one loaded worker while wrk drives 64 connections."""
        jobs = http_jobs(self.args.rows)
        out: dict[str, Any] = {}
        for job in ("GET", "POST distinct", "list"):
            name = f"{label} {job}".strip()
            self.log(f"profiling one worker under {name} at 64 connections")
            out[name] = profile_worker(
                ours, job, jobs[job], self.duration, self.args.results / f"profile-{_slug(name)}"
            )
        return out

    def one_client(self, mariadb: MariaDB) -> dict[str, str]:
        """Where a request's time goes, one client, nothing else running: bench.inprocess (the
        apps called directly, the time inside each of our hooks, cProfile) and
        bench.statements (what our statements cost the database), on the private MariaDB."""
        out: dict[str, str] = {}
        few = ["--requests", "40", "--rounds", "1"] if self.args.smoke else []
        for tool, options in (("inprocess", ["--hooks", "--profile", *few]), ("statements", few)):
            self.log(f"one client: bench.{tool}")
            command = [sys.executable, "-m", f"bench.{tool}", mariadb.server_url, *options]
            shown = " ".join(["$ python -m", f"bench.{tool}", "URL", *options])
            try:
                done = subprocess.run(
                    command, cwd=ROOT, capture_output=True, text=True, check=False, timeout=900
                )
                failure = ""
                if done.returncode:
                    failure = f"exit {done.returncode}: {done.stderr[-3000:]}"
            except subprocess.TimeoutExpired:
                done, failure = None, "no answer within 900 s"
            if failure and self.args.smoke:
                raise RuntimeError(f"bench.{tool} failed: {failure}")
            # A full run keeps what it measured so far: the failure is reported in its place.
            out[tool] = f"{shown}\n" + (f"failed: {failure}" if failure else done.stdout).rstrip()
        return out

    def compare(self, mariadb: MariaDB) -> None:
        """The shipped app beside scratch copies with proposed changes, interleaved."""
        url = f"{mariadb.server_url}/{SCHEMA}"
        servers = {"shipped": self.start(lambda: Gunicorn(self.app_dir, self.workdir, url))}
        for spec in self.args.compare:
            # LABEL=DIR[,VAR=VALUE...]: the extra variables go to that copy's environment only.
            label, _, rest = spec.partition("=")
            path, *assignments = rest.split(",")
            env = dict(a.split("=", 1) for a in assignments)
            servers[label] = self.start(
                lambda p=path, lb=label, e=env: Gunicorn(
                    Path(p), self.workdir, url, f"cmp-{lb}", env=e
                )
            )
        jobs = http_jobs(self.args.rows)
        for _ in range(self.args.rounds):
            for job in self.args.compare_jobs:
                for conns in self.args.compare_connections:
                    for label, server in servers.items():
                        result = wrk(
                            f"app {label}", job, server.base, jobs[job], conns, self.duration
                        )
                        result.note = "compare"
                        self.record(result)
        if self.args.profile:
            for label in ("shipped", list(servers)[-1]):
                profiles = self.profiles(servers[label], label)
                self.meta.setdefault("profiles", {}).update(profiles)
        for label, server in servers.items():
            self.meta.setdefault("compare_connector", {})[label] = server.connector_line()
            server.stop()

    def matrix(self, mariadb: MariaDB) -> None:
        """Worker class x processes x threads at 64 connections (the Core issue's question)."""
        url = f"{mariadb.server_url}/{SCHEMA}"
        jobs = http_jobs(self.args.rows)
        for worker_class, workers, threads in self.args.matrix_configs:
            if worker_class == "gevent" and importlib.util.find_spec("gevent") is None:
                continue  # not installed: nothing to measure
            label = f"{worker_class.removeprefix('workers.')} {workers}x{threads}"
            mariadb.query("FLUSH STATUS")  # restarts Max_used_connections from the current count
            server = Gunicorn(
                self.app_dir,
                self.workdir,
                url,
                label=f"matrix-{worker_class}-{workers}x{threads}",
                workers=workers,
                threads=threads,
                extra=["--worker-class", worker_class],
            )
            try:
                for job in ("GET", "POST distinct"):
                    result = wrk(label, job, server.base, jobs[job], 64, self.duration)
                    result.note = "matrix"
                    self.record(result)
                peak = max((w["peak_mib"] for w in server.memory()["workers"]), default=0.0)
                self.meta.setdefault("matrix_memory", {})[label] = peak
                used = mariadb.query("SHOW GLOBAL STATUS LIKE 'Max_used_connections'")
                self.meta.setdefault("matrix_db_connections", {})[label] = int(used[0][1])
            finally:
                server.stop()

    def scaling(self, mariadb: MariaDB) -> None:
        """GET and listing latency as the table grows from 1 thousand to 1 million rows."""
        create_schema(self.app_dir, mariadb.server_url, SCALE_SCHEMA)
        server = self.start(
            lambda: Gunicorn(
                self.app_dir, self.workdir, f"{mariadb.server_url}/{SCALE_SCHEMA}", "scale"
            )
        )
        filled = 0
        for rows in self.args.scale_rows:
            seconds = fill(mariadb, SCALE_SCHEMA, filled + 1, rows)
            filled = rows
            self.log(f"scaling: {rows} rows (filled in {seconds:.1f}s)")
            self.meta.setdefault("fill_seconds", {})[str(rows)] = round(seconds, 1)
            jobs = {
                "GET random": HttpJob("GET", "/var/", "random", rows=rows),
                "list random": HttpJob(
                    "GET", "/var?prefix=k&limit=100&after=", "list", rows=max(1, rows - 100)
                ),
            }
            for job, spec in jobs.items():
                for conns in self.args.scale_connections:
                    result = wrk("var_keeper", job, server.base, spec, conns, self.duration)
                    result.note = f"rows={rows}"
                    self.record(result)
        server.stop()


def _slug(text: str) -> str:
    return text.lower().replace(" ", "-")


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


def _version(argv: list[str]) -> str:
    if not shutil.which(argv[0]):
        return "missing"
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    return (done.stdout or done.stderr).splitlines()[0] if (done.stdout or done.stderr) else "?"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--smoke", action="store_true", help="CI: seconds, not minutes")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--app-dir", default=str(ROOT), help="the app to measure")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument(
        "--compare", action="append", default=[], metavar="LABEL=DIR", help="also measure DIR"
    )
    parser.add_argument(
        "--compare-only", action="store_true", help="only the --compare measurements"
    )
    parser.add_argument("--rounds", type=int, default=1, help="rounds of --compare")
    parser.add_argument(
        "--compare-jobs", nargs="+", default=["GET", "POST distinct", "list", "batch 10"]
    )
    parser.add_argument("--compare-connections", nargs="+", type=int, default=[8, 64, 256])
    parser.add_argument("--no-matrix", dest="matrix", action="store_false")
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    parser.add_argument(
        "--no-peers", dest="peers", action="store_false", help="no mysqlslap, webdis or etcd"
    )
    parser.add_argument("--no-scaling", dest="scaling", action="store_false")
    parser.add_argument("--jobs", nargs="+", default=list(http_jobs(0)), help="jobs to measure")
    parser.add_argument("--connections", nargs="+", type=int, default=[1, 8, 64, 256])
    parser.add_argument(
        "--report-only", action="store_true", help="redraw results.md/png from results.json"
    )
    args = parser.parse_args(argv)
    args.rows = 1000
    args.scale_rows = [1_000, 100_000, 1_000_000]
    args.scale_connections = [1, 64]
    args.matrix_configs = [
        ("workers.BufferedThreadWorker", 2, 8),
        ("workers.BufferedThreadWorker", 2, 16),
        ("workers.BufferedThreadWorker", 4, 8),
        ("gthread", 2, 8),
        ("gthread", 4, 8),
        ("sync", 4, 1),
        ("gevent", 2, 1),
        ("gevent", 4, 1),
    ]
    if args.smoke:
        args.duration = 1.0
        args.connections = [8]
        args.scale_rows = [1_000]
        args.scale_connections = [8]
        args.matrix = args.profile = False
        args.compare = []
        args.results = Path(tempfile.mkdtemp(prefix="vk-bench-smoke-"))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report_only:
        report.write(json.loads((args.results / "results.json").read_text()), args.results)
        return 0
    args.results.mkdir(parents=True, exist_ok=True)
    run = Run(args)
    try:
        run.main()
    finally:
        run.stop_all()
        shutil.rmtree(run.workdir, ignore_errors=True)
    data = {"meta": run.meta, "results": [r.as_dict() for r in run.results]}
    (args.results / "results.json").write_text(json.dumps(data, indent=1) + "\n")
    report.write(data, args.results, chart=not args.smoke)
    problems = report.smoke_problems(data) if args.smoke else []
    if args.smoke:  # CI keeps no files: the table goes to the log
        print((args.results / "results.md").read_text())
        shutil.rmtree(args.results, ignore_errors=True)
    else:
        run.log(f"results in {args.results}")
    for problem in problems:
        print(f"bench: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
