"""What our statements cost the database, beside the plain app's (bench/plain_app.py).

    python -m bench.statements mysql://root@127.0.0.1:3306 [--requests 2000] [--rounds 5]

Creates the database ``vk_statements`` on that server (the app's own schema code), sends each
set of statements below ``--requests`` times from one client on a session set up as the
store's (``MySQLConnections.connect``), each write with a new name, and drops the database.
Prints, a request, the median over rounds of: the database server's CPU time (when it runs on
this machine: bench/server_cpu.py), the client's CPU time (the driver, and the store's Python
for the rows "through the store") and the wall time. The writes take the server's own
durability settings; the statements are the store's own (storage/mysql/store.py,
storage/queries.py), so the figures follow the code.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from bench.server_cpu import ServerCpu
from bench.services import ROOT, close_and_drop, server_environ

SCHEMA = "vk_statements"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("server_url", help="mysql://user@host:port of a server to use")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    if args.requests < 1 or args.rounds < 1:
        parser.error("--requests and --rounds must be at least 1")
    server_env = server_environ()
    if server_env != os.environ and not os.environ.get("VK_STATEMENTS_STARTED_AGAIN"):
        # the servers' driver, as bench.inprocess: start again in that environment
        command = [sys.executable, "-m", "bench.statements", *(argv or sys.argv[1:])]
        server_env["VK_STATEMENTS_STARTED_AGAIN"] = "1"
        os.execve(sys.executable, command, server_env)  # noqa: S606 - ourselves, same arguments
    host_port = args.server_url.rsplit("@", 1)[-1]
    os.environ["PLAIN_DB_PORT"] = host_port.rsplit(":", 1)[-1]  # plain_app reads them
    os.environ["PLAIN_DB_NAME"] = SCHEMA
    sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
    import mysql.connector

    import db
    import watch
    from app import create_app

    app = create_app({"DATABASE_URL": f"{args.server_url}/{SCHEMA}"})
    watch.stop_background(app)
    store = db.get_store(app)
    try:
        store.ensure_ready()
        store.put("k1", "hello world")
        conn = store.connections.connect(SCHEMA)
        try:
            cur = conn.cursor()
            jobs = _jobs(store, cur)
            server = ServerCpu.of(cur)
            costs: dict[str, list[tuple[float, float, float | None]]] = {job: [] for job in jobs}
            for _ in range(args.rounds):
                for job, send in jobs.items():
                    costs[job].append(_cost(send, args.requests, server))
        finally:
            conn.close()
    finally:
        close_and_drop(store, SCHEMA)
    driver = "C extension" if mysql.connector.HAVE_CEXT else "pure Python"
    print(f"# mysql-connector: {driver}; one client; us a request, median of {args.rounds}")
    print(f"# rounds of {args.requests}")
    if server is not None:  # /proc counts whole ticks
        print(f"# database CPU in steps of {server.tick * 1e6 / args.requests:.0f} us")
    print(f"{'statements':<52} {'database CPU':>12} {'client CPU':>10} {'wall':>7}")
    for job, rounds in costs.items():
        database = [d for _, _, d in rounds if d is not None]
        print(
            f"{job:<52} "
            + (f"{statistics.median(database):12.1f}" if database else f"{'n/a':>12}")
            + f" {statistics.median(c for _, c, _ in rounds):10.1f}"
            + f" {statistics.median(w for w, _, _ in rounds):7.1f}"
        )
    return 0


def _jobs(store: Any, cur: Any) -> dict[str, Callable[[], None]]:
    """What to send, by what it shows: the store's own statements (storage/mysql/store.py,
    storage/queries.py) and the plain app's (bench/plain_app.py)."""
    import plain_app

    from storage import queries
    from storage.dialect import MYSQL
    from storage.mysql.store import _UPSERT

    fresh = itertools.count()

    def batch(*statements: tuple[str, tuple[Any, ...]]) -> Callable[[], None]:
        """Send ``statements`` in one round trip (the store's one-trip write), a new name in
        each ``{name}`` parameter."""
        sql = "; ".join(statement for statement, _ in statements)

        def send() -> None:
            name = f"s{next(fresh)}".encode()
            params = [name if p == "{name}" else p for _, ps in statements for p in ps]
            cur.execute(sql, params)
            while cur.nextset():
                pass

        return send

    def read(sql: str) -> Callable[[], None]:
        def send() -> None:
            cur.execute(sql, (b"k1",))
            cur.fetchall()

        return send

    start, commit = ("START TRANSACTION", ()), ("COMMIT", ())
    plain_upsert = (plain_app.UPSERT, ("{name}", "v"))
    our_upsert = (_UPSERT, ("{name}", "v", None, "{name}"))
    log_entry = (queries.log_set(MYSQL), (None, None, "{name}"))
    # The version a new name starts from, without looking up its history.
    lookup, source = "COALESCE(MAX(version), 0) + 1", "FROM var_changes WHERE name = %s"
    if lookup not in _UPSERT or source not in _UPSERT:
        raise SystemExit("bench.statements: the store's upsert changed; update 'no lookup'")
    no_lookup = _UPSERT.replace(lookup, "1").replace(source, "FROM DUAL")
    bare_log_row = (
        "INSERT INTO var_changes (name, version, op, value, changed_at) "
        "VALUES (%s, 1, 'set', %s, UTC_TIMESTAMP(6))",
        ("{name}", "v"),
    )
    return {
        "POST: the plain app's upsert (autocommit)": batch(plain_upsert),
        "POST: the same in START TRANSACTION .. COMMIT": batch(start, plain_upsert, commit),
        "POST: the same and a bare log row, one transaction": batch(
            start, plain_upsert, bare_log_row, commit
        ),
        "POST: our upsert alone (autocommit)": batch(our_upsert),
        "POST: our write, as the store sends it": batch(start, our_upsert, log_entry, commit),
        "POST: our write, no history lookup": batch(
            start, (no_lookup, ("{name}", "v", None)), log_entry, commit
        ),
        "POST: our write through the store (put)": lambda: store.put(f"s{next(fresh)}", "v"),
        "GET: the plain app's SELECT value": read("SELECT value FROM vars WHERE name = %s"),
        "GET: our SELECT value, version (live)": read(queries.get_value(MYSQL)),
        "GET: ours through the store (get_value)": lambda: store.get_value("k1"),
    }


def _cost(
    send: Callable[[], None], requests: int, server: ServerCpu | None
) -> tuple[float, float, float | None]:
    """Wall, client CPU and server CPU microseconds a request."""
    database = server.seconds() if server else 0.0
    started, cpu = time.perf_counter(), time.thread_time()
    for _ in range(requests):
        send()
    wall = (time.perf_counter() - started) / requests * 1e6
    client = (time.thread_time() - cpu) / requests * 1e6
    return wall, client, (server.seconds() - database) / requests * 1e6 if server else None


if __name__ == "__main__":
    sys.exit(main())
