"""Where a loaded gunicorn worker spends its CPU: py-spy on one worker while wrk drives it.

Sampled with ``--gil``: a gthread worker's threads mostly wait for the GIL or the database,
and only the GIL holder runs Python, so that is where the worker's CPU goes. Every worker is
sampled at once and the stacks merged.

Writes the collapsed stacks (``<prefix>.txt``, flamegraph.pl / speedscope input) and returns
a summary: the share of samples per area (the leaf frame's package) and the top frames.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from bench.load import HttpJob, Result, wrk
from bench.services import Gunicorn

AREAS = (
    ("mysql/connector", "mysql-connector"),
    ("prometheus_client", "prometheus_client (metrics)"),
    ("werkzeug", "werkzeug"),
    ("flask", "flask"),
    ("gunicorn", "gunicorn"),
    ("gevent", "gevent"),
    ("logging", "logging"),
    ("json", "json"),
    ("site-packages", "other packages"),
    ("/storage/", "var_keeper storage/"),
    ("/bench/", "bench (plain app)"),
    ("/observability.py", "var_keeper observability.py"),
    ("/gunicorn.conf.py", "var_keeper gunicorn.conf.py (access log)"),
    ("/app.py", "var_keeper app.py (hooks)"),
    ("/inputs.py", "var_keeper inputs.py"),
    ("/responses.py", "var_keeper responses.py"),
    ("/access.py", "var_keeper access.py"),
    ("/api.py", "var_keeper api.py"),
    ("socket", "socket / selectors"),
    ("selectors", "socket / selectors"),
    ("threading", "threading / queue"),
    ("queue", "threading / queue"),
    ("concurrent", "threading / queue"),
)


def _py_spy() -> str:
    candidate = Path(sys.executable).parent / "py-spy"
    found = str(candidate) if candidate.exists() else shutil.which("py-spy")
    if not found:
        raise SystemExit("bench: py-spy is missing (pip install -r bench/requirements.txt)")
    return found


def area(frame: str) -> str:
    for needle, name in AREAS:
        if needle in frame:
            return name
    return "other (stdlib, interpreter)"


def summarize(stacks: dict[str, int], top: int = 15) -> dict[str, Any]:
    total = sum(stacks.values()) or 1
    by_area: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for stack, count in stacks.items():
        frames = stack.split(";")
        leaf = frames[-1]
        by_area[area(leaf)] += count
        self_time[leaf] += count
        for frame in set(frames):
            inclusive[frame] += count

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * n / total, 1)) for name, n in counter.most_common(top)]

    return {
        "samples": total,
        "areas_pct": share(by_area),
        "self_pct": share(self_time),
        "inclusive_pct": share(inclusive),
    }


def profile_worker(
    server: Gunicorn, job: str, spec: HttpJob, duration: float, prefix: Path
) -> dict[str, Any]:
    """Sample every worker at once (wrk's connections need not spread evenly) and merge."""
    load: dict[str, Result] = {}
    seconds = max(duration, 4.0)
    driver = threading.Thread(
        target=lambda: load.update(
            result=wrk("var_keeper", job, server.base, spec, 64, seconds + 2)
        )
    )
    driver.start()
    outputs = []
    samplers = []
    for pid in server.worker_pids():
        out = prefix.with_name(f"{prefix.name}-{pid}.tmp")
        outputs.append(out)
        argv = [_py_spy(), "record", "--pid", str(pid), "--duration", str(int(seconds))]
        # --gil: only the thread holding the GIL, i.e. where the worker's CPU goes.
        argv += ["--rate", "200", "--gil", "--nonblocking", "--nolineno"]
        argv += ["--format", "raw", "--output", str(out)]
        samplers.append(
            subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
    for sampler in samplers:
        sampler.wait(timeout=seconds + 60)
    driver.join()
    stacks: dict[str, int] = {}
    for out in outputs:
        if out.exists():
            for line in out.read_text().splitlines():
                stack, _, count = line.rpartition(" ")
                if stack and count.isdigit():  # a frame's text may itself hold spaces
                    stacks[stack] = stacks.get(stack, 0) + int(count)
            out.unlink()
    raw = prefix.with_suffix(".txt")
    raw.write_text("".join(f"{k} {v}\n" for k, v in sorted(stacks.items())))
    summary = summarize(stacks)
    summary["rps_while_sampled"] = round(load["result"].rps) if "result" in load else None
    summary["stacks_file"] = raw.name
    summary["workers"] = len(outputs)
    return summary
