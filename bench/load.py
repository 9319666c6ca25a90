"""Load generators: wrk for every HTTP target, mysqlslap for the database's own limit.

Each run is bounded: wrk by ``--duration``, mysqlslap by a query count sized from a short pilot
run so that it, too, lasts about ``duration`` seconds. Every target is on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.services import need

LUA = Path(__file__).resolve().parent / "wrk" / "load.lua"
WRK_TIMEOUT_S = 2  # a response slower than this counts as an error (wrk "timeout")
MAX_SLAP_QUERIES = 3_000_000


@dataclass
class Result:
    """One measurement: a target doing one job at one concurrency."""

    target: str  # "var_keeper", "mysqlslap", "webdis", "etcd v2", ...
    job: str  # "GET", "POST same", "POST distinct", "list", "batch 10"
    connections: int
    rps: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int = 0
    requests: int = 0
    seconds: float = 0.0
    note: str = ""
    # wrk's errors by kind: connect, read, write (socket errors), timeout, status (non-2xx/3xx)
    error_kinds: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class HttpJob:
    """What wrk sends: see wrk/load.lua for the modes."""

    method: str
    path: str
    mode: str = "fixed"
    body: str = ""
    content_type: str = ""
    rows: int = 1000


def wrk(
    target: str, job: str, base_url: str, spec: HttpJob, connections: int, duration: float
) -> Result:
    threads = 1 if connections == 1 else 2
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as out:
        out_path = out.name
    env = {
        **os.environ,
        "BENCH_METHOD": spec.method,
        "BENCH_PATH": spec.path,
        "BENCH_MODE": spec.mode,
        "BENCH_BODY": spec.body,
        "BENCH_CTYPE": spec.content_type,
        "BENCH_ROWS": str(spec.rows),
        "BENCH_TAG": f"{int(time.time() * 1000):x}",
        "BENCH_OUT": out_path,
    }
    argv = [
        need("wrk"),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        f"--timeout={WRK_TIMEOUT_S}s",
        "-s",
        str(LUA),
        base_url,
    ]
    done = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=duration + 60, check=False
    )
    try:
        data = json.loads(Path(out_path).read_text())
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"wrk failed: {done.stdout[-500:]}{done.stderr[-500:]}") from exc
    finally:
        Path(out_path).unlink(missing_ok=True)
    seconds = data["duration_us"] / 1e6
    kinds = {k: data[k] for k in ("connect", "read", "write", "timeout", "status")}
    errors = sum(kinds.values())
    good = data["requests"] - data["status"]
    return Result(
        target=target,
        job=job,
        connections=connections,
        rps=good / seconds if seconds else 0.0,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        errors=errors,
        requests=data["requests"],
        seconds=seconds,
        error_kinds=kinds,
    )


_SLAP_SECONDS = re.compile(r"Average number of seconds to run all queries:\s*([0-9.]+)")


def _slap_once(port: int, schema: str, query: str, connections: int, count: int) -> float:
    statements = query.count(";") + 1
    argv = [
        need("mysqlslap"),
        "--no-defaults",
        "--host=127.0.0.1",
        f"--port={port}",
        "--user=root",
        f"--create-schema={schema}",
        "--no-drop",
        f"--concurrency={connections}",
        f"--number-of-queries={count}",
        "--iterations=1",
        f"--query={query}",
        *(["--delimiter=;"] if statements > 1 else []),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    match = _SLAP_SECONDS.search(done.stdout)
    if done.returncode != 0 or not match:
        raise RuntimeError(f"mysqlslap failed: {done.stdout[-500:]}{done.stderr[-500:]}")
    return float(match.group(1))


def mysqlslap(
    job: str,
    port: int,
    schema: str,
    query: str,
    connections: int,
    duration: float,
    target: str = "mysqlslap",
) -> Result:
    """The server's rate for ``query`` at ``connections`` clients, over about ``duration`` s.
    A ``query`` of several statements (``;`` between them) runs them in order, as one unit:
    its rate is of units (mysqlslap counts statements)."""
    statements = query.count(";") + 1
    pilot = max(50 * connections, 1000) * statements
    pilot_seconds = max(_slap_once(port, schema, query, connections, pilot), 1e-3)
    count = int(min(MAX_SLAP_QUERIES, max(pilot, pilot / pilot_seconds * duration)))
    count -= count % (connections * statements)
    seconds = max(_slap_once(port, schema, query, connections, count), 1e-3)
    return Result(
        target=target,
        job=job,
        connections=connections,
        rps=count / statements / seconds,
        requests=count // statements,
        seconds=seconds,
    )
