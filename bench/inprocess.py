"""What one request costs in Python, without gunicorn or a network client: the WSGI apps called
directly, one request after another, ours beside bench/plain_app.py and its constant route.

    python -m bench.inprocess mysql://root@127.0.0.1:3306 [--requests 2000] [--profile]

Creates the database ``vk_inprocess`` on that server (the app's own schema code), measures
microseconds a GET and a POST of a new name, and drops the database. No concurrency, so the
figures are per-request costs (the database's answer included), not throughput.

``--profile`` also runs each GET and POST job once under cProfile and prints, per module (a
package of site-packages, or a file of ours or of the standard library), the microseconds of
self time a request spends there, ours beside the plain app's: where our extra time goes.
cProfile slows every Python call alike, so the figures are for comparing, not absolute.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mysql.connector
from werkzeug.test import EnvironBuilder

from bench.services import ROOT, server_environ

SCHEMA = "vk_inprocess"


def per_request_us(app: Callable[..., Any], environs: list[dict[str, Any]]) -> float:
    def start_response(*_: Any) -> None:
        pass

    started = time.perf_counter()
    for environ in environs:
        for _ in app(environ, start_response):
            pass
    return (time.perf_counter() - started) / len(environs) * 1e6


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


def print_profile(job: str, ours: Counter[str], plain: Counter[str], top: int = 20) -> None:
    print(f"\n{job}: self time a request under cProfile, us (ours, plain app, difference)")
    print(f"  {'all':<44} {sum(ours.values()):8.1f} {sum(plain.values()):8.1f}")
    for module in sorted(set(ours) | set(plain), key=lambda m: plain[m] - ours[m])[:top]:
        difference = ours[module] - plain[module]
        print(f"  {module:<44} {ours[module]:8.1f} {plain[module]:8.1f} {difference:+8.1f}")


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
    args = parser.parse_args(argv)
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
    from app import create_app

    app = create_app({"DATABASE_URL": f"{args.server_url}/{SCHEMA}"})
    store = db.get_store(app)
    store.ensure_ready()
    try:
        store.put("k1", "hello world")
        n = args.requests
        jobs = {
            "ours GET": (app.wsgi_app, lambda r: [environ("GET", "/var/k1") for _ in range(n)]),
            "plain GET": (
                plain_app.app.wsgi_app,
                lambda r: [environ("GET", "/var/k1") for _ in range(n)],
            ),
            "constant GET": (
                plain_app.app.wsgi_app,
                lambda r: [environ("GET", "/constant") for _ in range(n)],
            ),
            "ours POST new": (
                app.wsgi_app,
                lambda r: [environ("POST", f"/var/o{r}-{i}", "v") for i in range(n // 2)],
            ),
            "plain POST new": (
                plain_app.app.wsgi_app,
                lambda r: [environ("POST", f"/var/p{r}-{i}", "v") for i in range(n // 2)],
            ),
        }
        results: dict[str, list[float]] = {job: [] for job in jobs}
        for round_number in range(args.rounds):
            for job, (wsgi, make) in jobs.items():
                results[job].append(per_request_us(wsgi, make(round_number)))
        driver = "C extension" if mysql.connector.HAVE_CEXT else "pure Python"
        print(f"# mysql-connector: {driver} (ours and the plain app)")
        for job, figures in results.items():
            print(f"{job:<16} {statistics.median(figures):8.1f} us a request (median of rounds)")
        if args.profile:
            for method in ("GET", "POST new"):
                ours, plain = jobs[f"ours {method}"], jobs[f"plain {method}"]
                print_profile(
                    method,
                    self_time_by_module(ours[0], ours[1](args.rounds)),
                    self_time_by_module(plain[0], plain[1](args.rounds)),
                )
    finally:
        store.close()
        conn = store.connections.connect(None)
        try:
            conn.cursor().execute(f"DROP DATABASE IF EXISTS `{SCHEMA}`")
        finally:
            conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
