"""What one request costs in Python, without gunicorn or a network client: the WSGI apps called
directly, one request after another, ours beside bench/plain_app.py and its constant route.

    python -m bench.inprocess mysql://root@127.0.0.1:3306 [--requests 2000]

Creates the database ``vk_inprocess`` on that server (the app's own schema code), measures
microseconds a GET and a POST of a new name, and drops the database. No concurrency, so the
figures are per-request costs (the database's answer included), not throughput.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from werkzeug.test import EnvironBuilder

from bench.services import ROOT

SCHEMA = "vk_inprocess"


def per_request_us(app: Callable[..., Any], environs: list[dict[str, Any]]) -> float:
    def start_response(*_: Any) -> None:
        pass

    started = time.perf_counter()
    for environ in environs:
        for _ in app(environ, start_response):
            pass
    return (time.perf_counter() - started) / len(environs) * 1e6


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
    args = parser.parse_args(argv)
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
        for job, figures in results.items():
            print(f"{job:<16} {statistics.median(figures):8.1f} us a request (median of rounds)")
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
