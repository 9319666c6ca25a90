"""What idle watchers cost: GET/POST latency and database queries with 0 and N idle watchers.

    python -m bench.watchers --database-url mysql://root@127.0.0.1:3306 [--watchers 300]

Starts gunicorn (the shipped gunicorn.conf.py) on 127.0.0.1 against a scratch database on the
given server, measures GET and POST latency (p50/p99) from a few client threads with no
watcher, then opens N idle watchers (half SSE streams on /events, half long-polls
/var/<name>?wait=60 on names nobody writes) and measures again, in the same run. It also
counts the statements the database server ran per second while only the watchers were open
(``Questions``). Prints a Markdown table (bench/results/watchers.md holds one run's).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import mysql.connector
import requests

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure(base: str, method: str, clients: int, requests_each: int) -> list[float]:
    """Latencies in ms of ``clients`` threads sending ``requests_each`` requests each."""
    latencies: list[float] = []
    lock = threading.Lock()

    def run(n: int) -> None:
        mine: list[float] = []
        with requests.Session() as http:
            for i in range(requests_each):
                started = time.perf_counter()
                if method == "GET":
                    response = http.get(f"{base}/var/bench-read", timeout=10)
                else:
                    response = http.post(
                        f"{base}/var/bench-w{n}", data={"value": str(i)}, timeout=10
                    )
                response.raise_for_status()
                mine.append((time.perf_counter() - started) * 1000)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies


def open_watchers(port: int, count: int) -> list[socket.socket]:
    """``count`` idle watchers: raw sockets with a request sent, never read."""
    sockets = []
    for n in range(count):
        path = "/events?prefix=nobody/" if n % 2 else f"/var/nobody/{n}?wait=60"
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        sockets.append(sock)
    return sockets


def questions(conn: mysql.connector.MySQLConnection) -> int:
    cur = conn.cursor()
    cur.execute("SHOW GLOBAL STATUS LIKE 'Questions'")
    return int(cur.fetchall()[0][1])


def summary(latencies: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(latencies, n=100)
    return cuts[49], cuts[98]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default="mysql://root@127.0.0.1:3306")
    parser.add_argument("--watchers", type=int, default=300)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=250, help="per client and method")
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()

    server = urlsplit(args.database_url)
    database = f"vk_watchers_{uuid.uuid4().hex[:8]}"
    admin = mysql.connector.connect(
        host=server.hostname, port=server.port or 3306, user=server.username or "root",
        password=server.password or "", autocommit=True,
    )  # fmt: skip
    port = free_port()
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WEB_CONCURRENCY": str(args.workers),
        "DATABASE_URL": f"{args.database_url}/{database}",
    }
    log = open(os.devnull, "wb")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:app"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    watchers: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("gunicorn did not get ready")
            time.sleep(0.2)
        requests.post(base + "/var/bench-read", data={"value": "x"}, timeout=10)
        measure(base, "GET", args.clients, 20)  # warm up every worker's pool
        rows = []
        for label, count in (("idle", 0), (f"{args.watchers} idle watchers", args.watchers)):
            if count:
                watchers = open_watchers(port, count)
                time.sleep(2)  # every watcher is waiting
            before, started = questions(admin), time.monotonic()
            time.sleep(5)
            per_second = (questions(admin) - before - 1) / (time.monotonic() - started)
            get = summary(measure(base, "GET", args.clients, args.requests))
            post = summary(measure(base, "POST", args.clients, args.requests))
            rows.append((label, get, post, per_second))
        print(f"{args.workers} workers, {args.clients} client threads, ")
        print(f"{args.requests} requests each per method; latencies in ms\n")
        print("| watchers | GET p50 | GET p99 | POST p50 | POST p99 | DB statements/s (idle) |")
        print("|---|---|---|---|---|---|")
        for label, get, post, per_second in rows:
            print(
                f"| {label} | {get[0]:.1f} | {get[1]:.1f} | {post[0]:.1f} | {post[1]:.1f} "
                f"| {per_second:.1f} |"
            )
    finally:
        for sock in watchers:
            sock.close()
        proc.terminate()
        proc.wait(timeout=30)
        admin.cursor().execute(f"DROP DATABASE IF EXISTS `{database}`")
        admin.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
