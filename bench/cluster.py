"""Scale-out figures: var_keeper on one MariaDB vs on a 3-node Galera cluster, 1 vs 3 instances.

    python -m bench.cluster               # about 4 minutes; writes bench/results/cluster.md
    python -m bench.cluster --seconds 2 --rounds 1   # a quicker, noisier run

Everything runs on 127.0.0.1: a private MariaDB (bench.services), the Galera cluster of
../shared/galera/cluster.sh (3311-3313, started if needed and stopped afterwards if this run
started it), gunicorn instances with the shipped gunicorn.conf.py (2 workers each), and wrk.
With 3 instances, three wrk processes run at once, one per instance, with a third of the
connections each: requests/s are summed, p50 and p99 are the worst of the three. The targets
are measured in turn, job by job, over several rounds (the median is kept). Every load is
bounded by time. Also measured: what ``wsrep_sync_wait`` (read-your-writes) costs a statement,
and how often a read on another node misses a write without it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import mysql.connector

import db
from app import create_app
from bench.load import HttpJob, Result, wrk
from bench.services import ROOT, Gunicorn, MariaDB
from storage.mysql import MySQLStore

CLUSTER_SH = ROOT.parent / "shared" / "galera" / "cluster.sh"
NODES = ("127.0.0.1:3311", "127.0.0.1:3312", "127.0.0.1:3313")
SCHEMA = "vk_bench_cluster"
ROWS = 1000
CONNECTIONS = 24
FORM = "application/x-www-form-urlencoded"
JOBS = {
    "GET": HttpJob("GET", "/var/", mode="random", rows=ROWS),
    "POST distinct": HttpJob(
        "POST", "/var/new-", mode="distinct", body="value=hello", content_type=FORM
    ),
    "POST same": HttpJob("POST", "/var/hot", body="value=hello", content_type=FORM),
}


def cluster(*args: str) -> str:
    done = subprocess.run(
        ["bash", str(CLUSTER_SH), *args], capture_output=True, text=True, timeout=300, check=True
    )
    return done.stdout


def node_connection(node: str, sync_wait: int | None = None) -> Any:
    host, port = node.split(":")
    conn = mysql.connector.connect(
        host=host, port=int(port), user="root", autocommit=True, database=SCHEMA
    )
    if sync_wait is not None:
        conn.cursor().execute(f"SET SESSION wsrep_sync_wait = {int(sync_wait)}")
    return conn


def prepare(database_url: str) -> None:
    """A fresh schema with ROWS variables k0000001..., through the store itself."""
    store = db.get_store(create_app({"DATABASE_URL": database_url}))
    assert isinstance(store, MySQLStore)
    store.ensure_ready()
    store.import_batch([(f"k{n:07d}", "hello world") for n in range(1, ROWS + 1)])
    store.put("hot", "hello")
    store.close()


def drop(node: str) -> None:
    host, port = node.split(":")
    conn = mysql.connector.connect(host=host, port=int(port), user="root", autocommit=True)
    try:
        conn.cursor().execute(f"DROP DATABASE IF EXISTS `{SCHEMA}`")
    finally:
        conn.close()


def measure_once(label: str, job: str, bases: list[str], seconds: float) -> Result:
    """One job against every instance of a target at once (a wrk process per instance)."""
    share = CONNECTIONS // len(bases)
    with ThreadPoolExecutor(len(bases)) as pool:
        runs = [pool.submit(wrk, label, job, b, JOBS[job], share, seconds) for b in bases]
        parts = [run.result() for run in runs]
    return Result(
        target=label,
        job=job,
        connections=CONNECTIONS,
        rps=sum(p.rps for p in parts),
        p50_ms=max(p.p50_ms or 0.0 for p in parts),
        p99_ms=max(p.p99_ms or 0.0 for p in parts),
        errors=sum(p.errors for p in parts),
        requests=sum(p.requests for p in parts),
        seconds=max(p.seconds for p in parts),
    )


def measure(targets: dict[str, list[str]], seconds: float, rounds: int) -> list[Result]:
    """Every job on every target, interleaved target by target and repeated ``rounds`` times
    (this machine is shared and noisy); the median round of each pair is kept."""
    runs: dict[tuple[str, str], list[Result]] = {}
    for round_number in range(1, rounds + 1):
        for job in JOBS:
            for label, bases in targets.items():
                result = measure_once(label, job, bases, seconds)
                runs.setdefault((label, job), []).append(result)
                print(
                    f"  round {round_number} {label:<36} {job:<14} {result.rps:7.0f} req/s  "
                    f"p99 {result.p99_ms:7.1f} ms  errors {result.errors}"
                )
    results = []
    for label in targets:
        for job in JOBS:
            ordered = sorted(runs[(label, job)], key=lambda r: r.rps)
            median = ordered[len(ordered) // 2]
            median.errors = sum(r.errors for r in ordered)  # every round's, not the median's
            results.append(median)
    return results


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def sync_wait_cost(rounds: int = 6, per_round: int = 300) -> dict[str, Any]:
    """Latency of one statement on node 2 with and without wsrep_sync_wait, interleaved."""
    statements = {
        "SELECT by name": ("SELECT value FROM vars WHERE name = %s", (b"k0000001",), (0, 1)),
        "UPDATE by name": (
            "UPDATE vars SET value = 'x', version = version + 1 WHERE name = %s",
            (b"k0000002",),
            (0, 3),
        ),
    }
    figures: dict[str, Any] = {}
    for label, (sql, params, settings) in statements.items():
        samples: dict[int, list[float]] = {s: [] for s in settings}
        conns = {s: node_connection(NODES[1], s) for s in settings}
        for _ in range(rounds):
            for setting, conn in conns.items():
                cur = conn.cursor()
                for _ in range(per_round):
                    started = time.perf_counter()
                    cur.execute(sql, params)
                    if cur.with_rows:
                        cur.fetchall()
                    samples[setting].append((time.perf_counter() - started) * 1000)
        for conn in conns.values():
            conn.close()
        figures[label] = {
            f"wsrep_sync_wait={s}": {
                "p50_ms": round(statistics.median(v), 3),
                "p99_ms": round(percentile(v, 0.99), 3),
                "per_second": round(len(v) / (sum(v) / 1000)),
            }
            for s, v in samples.items()
        }
    return figures


def stale_read_rate(tries: int = 300) -> dict[str, float]:
    """How often a read on node 2 right after a write on node 1 misses it."""
    rates = {}
    writer = node_connection(NODES[0])
    for setting in (0, 1):
        reader = node_connection(NODES[1], setting)
        stale = 0
        for i in range(tries):
            writer.cursor().execute(
                "UPDATE vars SET value = %s WHERE name = %s", (f"v{setting}-{i}", b"k0000003")
            )
            cur = reader.cursor()
            cur.execute("SELECT value FROM vars WHERE name = %s", (b"k0000003",))
            stale += cur.fetchall()[0][0] != f"v{setting}-{i}"
        reader.close()
        rates[f"wsrep_sync_wait={setting}"] = round(100 * stale / tries, 1)
    writer.close()
    return rates


def write_report(results: list[Result], extra: dict[str, Any], seconds: float) -> Path:
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        "# var_keeper on a 3-node Galera cluster vs one MariaDB",
        "",
        f"`python -m bench.cluster` on {platform.node()} ({extra['cpus']} CPUs), "
        f"{time.strftime('%Y-%m-%d')}: every process on this one machine, {seconds:g} s per "
        f"measurement, {CONNECTIONS} wrk connections in all, 2 gunicorn workers per instance.",
        "With 3 instances, three wrk processes run at once (one per instance): requests/s "
        "summed, p50/p99 the worst of the three. The four targets run side by side, measured "
        f"job by job in turn, {extra['rounds']} rounds; each row is the median round (errors: "
        "all rounds'; an error is a non-2xx answer or no answer within 5 s). "
        f"Load average before/after: {extra['load_average'][0]} / {extra['load_average'][1]} "
        "(the machine is shared). On one 2-core machine, three instances and three database "
        "nodes share the same cores: these figures show what the cluster costs, not what it "
        "gains on three machines.",
        "",
        "| target | job | req/s | p50 ms | p99 ms | errors |",
        "|---|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r.target} | {r.job} | {r.rps:.0f} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.errors} |"
        for r in results
    ]
    lines += [
        "",
        "## Read-your-writes: the cost of `wsrep_sync_wait`",
        "",
        "One connection to node 2, the statement repeated, the settings interleaved "
        "(var_keeper sets 3 = reads, UPDATE and DELETE wait for the cluster's latest writes).",
        "",
        "| statement | setting | p50 ms | p99 ms | per second |",
        "|---|---|---:|---:|---:|",
    ]
    for statement, settings in extra["sync_wait_cost"].items():
        for setting, f in settings.items():
            lines.append(
                f"| {statement} | `{setting}` | {f['p50_ms']} | {f['p99_ms']} | {f['per_second']} |"
            )
    lines += [
        "",
        "A read on node 2 right after a write on node 1 missed it: "
        + ", ".join(f"{pct} % with `{s}`" for s, pct in extra["stale_reads"].items())
        + ".",
        "",
    ]
    path = out / "cluster.md"
    path.write_text("\n".join(lines))
    (out / "cluster.json").write_text(
        json.dumps({"results": [r.as_dict() for r in results], **extra}, indent=2) + "\n"
    )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="repetitions, interleaved")
    args = parser.parse_args()
    started_cluster = "down" in cluster("status")
    cluster("start")
    workdir = Path(tempfile.mkdtemp(prefix="vk-bench-cluster-"))
    single = MariaDB(workdir).start()
    instances: list[Gunicorn] = []
    try:
        single_url = f"{single.server_url}/{SCHEMA}"
        galera_urls = [f"mysql://root@{','.join(NODES[i:] + NODES[:i])}/{SCHEMA}" for i in range(3)]
        prepare(single_url)
        prepare(galera_urls[0])
        configurations = {
            "one MariaDB, 1 instance": [single_url],
            "one MariaDB, 3 instances": [single_url] * 3,
            "Galera, 1 instance": galera_urls[:1],
            "Galera, 3 instances (one node each)": galera_urls,
        }
        targets: dict[str, list[str]] = {}
        for label, urls in configurations.items():
            started = [
                Gunicorn(ROOT, workdir, url, label=f"gunicorn-{len(instances) + i}", workers=2)
                for i, url in enumerate(urls)
            ]
            instances += started
            targets[label] = [instance.base for instance in started]
        load_before = os.getloadavg()
        results = measure(targets, args.seconds, args.rounds)
        extra = {
            "cpus": os.cpu_count(),
            "load_average": [round(load_before[0], 1), round(os.getloadavg()[0], 1)],
            "rounds": args.rounds,
            "sync_wait_cost": sync_wait_cost(),
            "stale_reads": stale_read_rate(),
        }
        print(json.dumps(extra, indent=2))
        print(f"wrote {write_report(results, extra, args.seconds)}")
    finally:
        for instance in instances:
            instance.stop()
        single.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        drop(NODES[0])
        if started_cluster:
            cluster("stop")


if __name__ == "__main__":
    main()
