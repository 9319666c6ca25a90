"""What one request costs, without gunicorn or a network client: the WSGI apps called
directly, one request after another, ours beside bench/plain_app.py and its constant route.

    python -m bench.inprocess mysql://root@127.0.0.1:3306 [--requests 2000] [--profile] [--hooks]

Creates the database ``vk_inprocess`` on that server (the app's own schema code), measures a
GET and a POST of a new name, and drops the database. No concurrency, so the figures are
per-request costs, not throughput: the wall time (the database's answer included), the CPU
time of the Python thread that served it (the app and the driver), and, when the server runs on
this machine and its pid file can be read, the CPU time the database server spent (all its
threads, so anything else it serves meanwhile counts too). On a machine where the database and
the app share the cores, the two CPU figures together bound the throughput.

``--profile`` also runs each GET and POST job once under cProfile and prints, per module (a
package of site-packages, or a file of ours or of the standard library), the microseconds of
self time a request spends there, ours beside the plain app's: where our extra time goes.
cProfile slows every Python call alike, so the figures are for comparing, not absolute.

``--hooks`` measures what our app-wide request hooks cost a GET and a POST: the median time
inside each, and the Python CPU time of a request with all of them left out against all in.
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import os
import pstats
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mysql.connector
from flask import Flask
from werkzeug.test import EnvironBuilder

from bench.server_cpu import ServerCpu
from bench.services import ROOT, close_and_drop, server_environ

SCHEMA = "vk_inprocess"


@dataclass
class Cost:
    """Microseconds a request: wall time, the serving thread's CPU, the database server's CPU
    (None: not measured)."""

    wall: float
    python: float
    database: float | None


def cost_a_request(
    app: Callable[..., Any], environs: list[dict[str, Any]], server: ServerCpu | None = None
) -> Cost:
    def start_response(*_: Any) -> None:
        pass

    database = server.seconds() if server else 0.0
    started, cpu = time.perf_counter(), time.thread_time()
    for environ in environs:
        for _ in app(environ, start_response):
            pass
    n = len(environs)
    wall, python = (time.perf_counter() - started) / n * 1e6, (time.thread_time() - cpu) / n * 1e6
    return Cost(wall, python, (server.seconds() - database) / n * 1e6 if server else None)


def self_time_by_module(app: Callable[..., Any], environs: list[dict[str, Any]]) -> Counter[str]:
    """Microseconds of self time a request spends in each module (see the module's doc)."""

    def start_response(*_: Any) -> None:
        pass

    profile = cProfile.Profile()
    profile.enable()
    for environ in environs:
        for _ in app(environ, start_response):
            pass
    profile.disable()
    per_module: Counter[str] = Counter()
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    for (filename, _, function), (_, _, self_time, _, _) in stats.items():
        if filename == "~":  # a builtin: sockets, str methods, isinstance...
            module = f"builtin {function.split(' of ')[0].strip('<>').split()[-1]}"
        elif "site-packages/" in filename:
            module = filename.split("site-packages/")[1].split("/")[0]
        elif str(ROOT) in filename:
            module = filename.split(str(ROOT) + "/")[1]
        else:
            module = "stdlib " + Path(filename).name
        per_module[module] += self_time * 1e6 / len(environs)
    return per_module


def hook_costs(
    app: Flask, make: Callable[[], list[dict[str, Any]]], rounds: int
) -> list[tuple[str, float]]:
    """What our app-wide hooks cost a request, in microseconds: the median time inside each
    hook (every call timed: medians shrug off the machine's noise, but miss work a hook
    causes later), then the Python CPU time of a request with all of them in, and what
    leaving all of them out changes (the median over rounds of the difference from the same
    round's ``all in``: pairs close in time, so the machine's drift cancels)."""
    registries = (app.before_request_funcs, app.after_request_funcs, app.teardown_request_funcs)
    kept = [list(registry.get(None, [])) for registry in registries]
    inside: dict[str, list[float]] = {}

    def timed(hook: Callable[..., Any]) -> Callable[..., Any]:
        calls = inside.setdefault(f"inside {hook.__module__}.{hook.__name__}", [])

        def call(*args: Any) -> Any:
            started = time.perf_counter_ns()
            try:
                return hook(*args)
            finally:
                calls.append((time.perf_counter_ns() - started) / 1000)

        return call

    with_all: list[float] = []
    without: list[float] = []
    try:
        for registry, funcs in zip(registries, kept, strict=True):
            registry[None] = [timed(hook) for hook in funcs]
        cost_a_request(app.wsgi_app, make())
        for registry, funcs in zip(registries, kept, strict=True):
            registry[None] = funcs
        for _ in range(rounds):
            with_all.append(cost_a_request(app.wsgi_app, make()).python)
            for registry in registries:
                registry[None] = []
            without.append(cost_a_request(app.wsgi_app, make()).python)
            for registry, funcs in zip(registries, kept, strict=True):
                registry[None] = funcs
    finally:
        for registry, funcs in zip(registries, kept, strict=True):
            registry[None] = funcs
    return [
        *((label, statistics.median(calls)) for label, calls in inside.items()),
        ("request, all in (Python CPU)", statistics.median(with_all)),
        (
            "request, none of them: change",
            statistics.median(b - a for a, b in zip(with_all, without, strict=True)),
        ),
    ]


def print_profile(job: str, ours: Counter[str], plain: Counter[str], top: int = 20) -> None:
    print(f"\n{job}: self time a request under cProfile, us (ours, plain app, difference)")
    print(f"  {'all':<44} {sum(ours.values()):8.1f} {sum(plain.values()):8.1f}")
    for module in sorted(set(ours) | set(plain), key=lambda m: plain[m] - ours[m])[:top]:
        difference = ours[module] - plain[module]
        print(f"  {module:<44} {ours[module]:8.1f} {plain[module]:8.1f} {difference:+8.1f}")


def _server_cpu(store: Any) -> ServerCpu | None:
    conn = store.connections.connect(None)
    try:
        return ServerCpu.of(conn.cursor())
    finally:
        conn.close()


def environ(method: str, path: str, value: str | None = None) -> dict[str, Any]:
    data = {"value": value} if value is not None else None
    built = EnvironBuilder(path=path, method=method, data=data).get_environ()
    built["RAW_URI"] = path  # as gunicorn sets it
    return built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("server_url", help="mysql://user@host:port of a server to use")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="and where the time goes")
    parser.add_argument("--hooks", action="store_true", help="and what each hook of ours costs")
    args = parser.parse_args(argv)
    if args.requests < 2 or args.rounds < 1:
        parser.error("--requests must be at least 2 (a POST job has half) and --rounds at least 1")
    server_env = server_environ()
    if server_env != os.environ and not os.environ.get(
        "VK_INPROCESS_STARTED_AGAIN"
    ):  # the servers' driver (bench/services.py): start again
        command = [sys.executable, "-m", "bench.inprocess", *(argv or sys.argv[1:])]
        server_env["VK_INPROCESS_STARTED_AGAIN"] = "1"  # once, whatever the probe says then
        os.execve(sys.executable, command, server_env)  # noqa: S606 - ourselves, same arguments
    host_port = args.server_url.rsplit("@", 1)[-1]
    os.environ["PLAIN_DB_PORT"] = host_port.rsplit(":", 1)[-1]
    os.environ["PLAIN_DB_NAME"] = SCHEMA
    sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
    import plain_app

    import db
    import watch
    from app import create_app

    app = create_app({"DATABASE_URL": f"{args.server_url}/{SCHEMA}"})
    watch.stop_background(app)  # its sweeper's work would land in whichever job runs
    store = db.get_store(app)
    store.ensure_ready()
    try:
        store.put("k1", "hello world")
        n = args.requests
        fresh = itertools.count()  # a new name for every POST, in every round and variant

        def gets() -> list[dict[str, Any]]:
            return [environ("GET", "/var/k1") for _ in range(n)]

        def posts() -> list[dict[str, Any]]:
            return [environ("POST", f"/var/n{next(fresh)}", "v") for _ in range(n // 2)]

        def constants() -> list[dict[str, Any]]:
            return [environ("GET", "/constant") for _ in range(n)]

        jobs = {
            "ours GET": (app.wsgi_app, gets),
            "plain GET": (plain_app.app.wsgi_app, gets),
            "constant GET": (plain_app.app.wsgi_app, constants),
            "ours POST new": (app.wsgi_app, posts),
            "plain POST new": (plain_app.app.wsgi_app, posts),
        }
        server = _server_cpu(store)
        results: dict[str, list[Cost]] = {job: [] for job in jobs}
        for _ in range(args.rounds):
            for job, (wsgi, make) in jobs.items():
                results[job].append(cost_a_request(wsgi, make(), server))
        driver = "C extension" if mysql.connector.HAVE_CEXT else "pure Python"
        print(f"# mysql-connector: {driver} (ours and the plain app)")
        print(f"# us a request, median of {args.rounds} rounds of {n} (POST: {n // 2})")
        if server is not None:  # /proc counts whole ticks
            print(f"# database CPU in steps of {server.tick * 1e6 / (n // 2):.0f} us (POST)")
        print(f"{'job':<16} {'wall':>8} {'Python CPU':>11} {'database CPU':>13}")
        for job, costs in results.items():
            database = [cost.database for cost in costs if cost.database is not None]
            print(
                f"{job:<16} {statistics.median(cost.wall for cost in costs):8.1f} "
                f"{statistics.median(cost.python for cost in costs):11.1f} "
                + (f"{statistics.median(database):13.1f}" if database else f"{'n/a':>13}")
            )
        if args.hooks:
            for method, make in (("GET", gets), ("POST new", posts)):
                print(f"\n{method}: our app-wide hooks, us a request")
                for label, cost in hook_costs(app, make, rounds=2 * args.rounds):
                    print(f"  {label:<48} {cost:8.1f}")
        if args.profile:
            for method in ("GET", "POST new"):
                ours, plain = jobs[f"ours {method}"], jobs[f"plain {method}"]
                print_profile(
                    method,
                    self_time_by_module(ours[0], ours[1]()),
                    self_time_by_module(plain[0], plain[1]()),
                )
    finally:
        close_and_drop(store, SCHEMA)
    return 0


if __name__ == "__main__":
    sys.exit(main())
