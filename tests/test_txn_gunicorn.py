"""Transactions through a real gunicorn, on both stores (and through two instances on one
MySQL database; test_galera.py runs the same through a Galera cluster): concurrent transfers
keep an exact sum, a batch read never sees half a transaction, and a live event stream sees a
transaction's changes in order with its id."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.servers import Gunicorn, scratch_database
from tests.test_watch import later, read_events

pytestmark = pytest.mark.slow

TOTAL = 1000
THREADS = 8
TRANSFERS = 15  # per thread
GET_BOTH = {"operations": [{"op": "get", "name": "acct/a"}, {"op": "get", "name": "acct/b"}]}


@pytest.fixture(params=["sqlite", "mysql"])
def server(
    request: pytest.FixtureRequest, tmp_path: Path, gunicorn: Callable[..., Gunicorn]
) -> Iterator[Gunicorn]:
    """A gunicorn (2 workers of 4 threads) on a fresh SQLite file or scratch MySQL database."""
    if request.param == "sqlite":
        yield gunicorn({"DATABASE_URL": f"sqlite:///{tmp_path / 'vars.db'}"}, workers=2)
        return
    with scratch_database(request.getfixturevalue("mysql_server")) as url:
        yield gunicorn({"DATABASE_URL": url}, workers=2)


def transfer(bases: list[str], seed: int, transfers: int = TRANSFERS, seconds: float = 180) -> int:
    """``transfers`` compare-and-set transfers between the two counters, each read through one
    of ``bases`` and written through the next; return the 409s met (each retried). Bounded:
    at most 100 attempts a transfer, and ``seconds`` in all."""
    rng, conflicts, done = random.Random(seed), 0, 0
    deadline = time.monotonic() + seconds
    with requests.Session() as http:
        while done < transfers:
            attempt = done + conflicts
            assert attempt < 100 * transfers, f"client {seed}: {conflicts} conflicts, {done} done"
            assert time.monotonic() < deadline, f"client {seed}: {done} done in {seconds}s"
            reader = bases[(seed + attempt) % len(bases)]
            writer = bases[(seed + attempt + 1) % len(bases)]
            read = http.post(reader + "/txn", json=GET_BOTH, timeout=30)
            assert read.status_code == 200, read.text
            a, b = read.json()["results"]
            amount = rng.randint(-10, 10)
            body = {
                "operations": [
                    {"op": "check", "name": "acct/a", "version": a["version"]},
                    {"op": "check", "name": "acct/b", "version": b["version"]},
                    {"op": "set", "name": "acct/a", "value": str(int(a["value"]) - amount)},
                    {"op": "set", "name": "acct/b", "value": str(int(b["value"]) + amount)},
                ]
            }
            response = http.post(writer + "/txn", json=body, timeout=30)
            if response.status_code == 409:
                conflicts += 1
                continue
            assert response.status_code == 200, response.text
            done += 1
    return conflicts


@dataclass
class TransferRun:
    """What ``run_transfers`` saw: the 409s each client met, every sum a reader saw, the
    counters at the end and how long it took."""

    conflicts: list[int]
    sums: list[int]
    reads_by_base: Counter[str]
    final: tuple[dict, dict]
    seconds: float

    def check(self, clients: int, transfers: int) -> None:
        a, b = self.final
        assert int(a["value"]) + int(b["value"]) == TOTAL
        # Every applied transfer wrote each counter once: no write lost, none doubled.
        applied = 1 + clients * transfers
        assert (a["version"], b["version"]) == (applied, applied)
        assert self.sums
        assert set(self.sums) == {TOTAL}, Counter(self.sums).most_common(5)


def run_transfers(
    bases: list[str], clients: int = THREADS, transfers: int = TRANSFERS, max_reads: int = 50_000
) -> TransferRun:
    """Start the counters at (TOTAL, 0); ``clients`` threads transfer between them through
    ``bases`` while one reader polls both names in one batch read, through each base in turn."""
    start = {"operations": [{"op": "set", "name": "acct/a", "value": str(TOTAL)}]}
    start["operations"].append({"op": "set", "name": "acct/b", "value": "0"})
    started = requests.post(bases[0] + "/txn", json=start, timeout=30)
    assert started.status_code == 200, started.text
    stop, sums, reads_by_base = threading.Event(), [], Counter[str]()

    def read() -> None:
        with requests.Session() as http:
            while not stop.is_set() and len(sums) < max_reads:
                base = bases[len(sums) % len(bases)]
                response = http.get(base + "/var?name=acct/a&name=acct/b", timeout=30)
                assert response.status_code == 200, response.text
                sums.append(sum(int(v["value"]) for v in response.json()["variables"]))
                reads_by_base[base] += 1

    began = time.monotonic()
    with ThreadPoolExecutor(max_workers=1) as reader_pool:
        reader = reader_pool.submit(read)
        try:
            with ThreadPoolExecutor(max_workers=clients) as pool:
                work = [pool.submit(transfer, bases, seed, transfers) for seed in range(clients)]
                conflicts = [future.result(timeout=240) for future in work]
        finally:
            stop.set()
        reader.result(timeout=60)  # re-raises what the reader met
    seconds = time.monotonic() - began
    final = requests.post(bases[-1] + "/txn", json=GET_BOTH, timeout=30).json()["results"]
    run = TransferRun(conflicts, sums, reads_by_base, (final[0], final[1]), seconds)
    print(
        f"\n{clients} clients x {transfers} transfers through {len(bases)} instances in "
        f"{seconds:.1f}s: {sum(conflicts)} conflicts (409, retried); {len(sums)} batch reads "
        f"({dict(reads_by_base)}), sums seen {sorted(set(sums))}"
    )
    return run


def test_concurrent_transfers_keep_the_sum_and_no_reader_sees_half_of_one(server):
    run = run_transfers([server.base])

    run.check(THREADS, TRANSFERS)
    assert sum(run.conflicts) > 0  # they did race


def test_two_instances_on_one_database_keep_the_sum_and_no_reader_sees_half_of_one(
    mysql_server: str, gunicorn: Callable[..., Gunicorn]
):
    with scratch_database(mysql_server) as url:
        instances = [gunicorn({"DATABASE_URL": url}, workers=2) for _ in range(2)]
        run = run_transfers([instance.base for instance in instances])
        logs = [instance.log() for instance in instances]

    run.check(THREADS, TRANSFERS)
    assert sum(run.conflicts) > 0  # they did race
    assert all(run.reads_by_base[instance.base] > 0 for instance in instances)
    assert not [line for log in logs for line in log.splitlines() if "Traceback" in line]


def test_a_live_event_stream_sees_a_transaction_in_order_with_its_id(server):
    with requests.get(server.url("/events?prefix=s/"), stream=True, timeout=15) as stream:
        body: dict = {}

        def write() -> None:
            operations = [
                {"op": "set", "name": "s/2", "value": "first"},
                {"op": "set", "name": "s/1", "value": "second"},
                {"op": "delete", "name": "s/2"},
            ]
            response = requests.post(
                server.url("/txn"), json={"operations": operations}, timeout=15
            )
            body.update(response.json())

        writer = later(0.5, write)
        events = read_events(stream.iter_lines(decode_unicode=True), 3)
        writer.join()
    assert [(e["data"]["name"], e["data"]["op"]) for e in events] == [
        ("s/2", "set"),
        ("s/1", "set"),
        ("s/2", "delete"),
    ]
    assert {e["data"]["txn"] for e in events} == {body["txn"]}
