"""The soak: two instances on one MariaDB under a mixed load for minutes, the database restarted
every few minutes. Does anything grow, break or get lost?

    python -m bench.soak                      # 10 minutes (SOAK_SECONDS), bench/results/soak.*
    python -m bench.soak --seconds 30 --results /tmp/soak   # CI's version (tests/test_soak.py)

Everything runs on 127.0.0.1 and is started and stopped here, by PID: a private mariadbd
(bench.services: temporary datadir, spare port), two gunicorn instances of the app with the
shipped gunicorn.conf.py on its one database, and the load, from threads of this process:

- clients doing GET, PUT (form, JSON or raw text), POST, read-modify-write PUT with
  ``If-Match``, batch reads, paged listings and create/delete cycles with ``If-None-Match`` and
  ``If-Match``, each against either instance;
- Server-Sent Events watchers (``/events``, resumed with ``Last-Event-ID``) and long-poll
  watchers (``?wait=``).

The database is restarted every ``--restart-every`` seconds (scaled down so that a short run
has two restarts), by turns ``kill -9`` and a clean stop, and started again on the same datadir
and port. Every few seconds a sampler reads each gunicorn process's RSS and open descriptors
from /proc and the database's connection count. Afterwards:

- every write and read of the shared names goes to ``tests/history_checker.py`` (linearizable
  per name; final reads through both instances make a lost write a violation too);
- lost writes: the database's final rows against the last acknowledged write of each name;
- the load's own checks: listings complete and in order, each delete name in the state its
  owner last saw acknowledged, long-polls newer than asked, every acknowledged write delivered
  to every event stream, in order.

It writes ``soak.md`` and ``soak.json`` and exits 1 if a verdict fails: a worker's RSS growing
by more than 10 % after the warm-up (the first third), descriptors or connections growing, a
violation, a lost write, a 5xx other than 503, a request with no answer, a replaced worker.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mysql.connector
import requests

from bench.services import ROOT, Gunicorn, MariaDB
from tests.history_checker import History, Op, check

DATABASE = "vk_soak"
INSTANCES = ("A", "B")
WORKERS_PER_INSTANCE = 2
CLIENTS = 10
EVENT_WATCHERS = 2  # one on each instance
LONG_POLLERS = 2
SHARED_NAMES = [f"soak/h/{n:02d}" for n in range(48)]  # everyone's: the history checker's
DELETE_NAMES_PER_CLIENT = 3  # soak/d/<client>/<n>: one owner each, created and deleted in turn
SENTINEL = "soak/end"  # written last: a stream that delivers it has delivered everything before
WATCHED_PREFIX = "soak/"
LIST_PAGE = 20  # so that a listing of the shared names takes three pages
BATCH_NAMES = 6
LONG_POLL_WAIT_S = 5
THINK_S = 0.01  # a client's pause between operations: a soak, not a stress test
# After a 503 a client pauses longer (the answer's Retry-After says 1 s; shorter here, so that
# outages stay probed).
BACKOFF_S = 0.2
# A request must end within one pool wait, two connects and two statements (README,
# Guarantees: 36 s with the defaults); beyond this the client calls it a hang.
CLIENT_TIMEOUT_S = 40.0
DATABASE_DOWN_S = 2.0
RESTART_KINDS = ("kill -9", "clean stop")
# The operation mix: (label, weight). A "cas" is a JSON read and a PUT with If-Match.
MIX = (
    ("get", 30),
    ("put", 14),
    ("post", 10),
    ("cas", 14),
    ("batch", 10),
    ("list", 7),
    ("delete cycle", 15),
)
MAX_RSS_GROWTH_PCT = 10.0
# RSS is judged after the warm-up: each worker's pool opens its connections, and its change
# feed fills its bounded memory of recent changes (watch.py: 10,000 names and seqs, about
# 1.5 MiB), which takes about 100 s at this load's write rate. A third of a 10-minute run is
# past both; in CI's 30 seconds the feed is still filling, and that run's growth includes
# some of it.
WARMUP_FRACTION = 1 / 3
# "Flat": a count at the end (median of its last samples) may exceed the one just after the
# warm-up by this much. Both move with the load: a worker's descriptors include its clients'
# keep-alive connections and its pool's connections, which open lazily up to
# DATABASE_POOL_SIZE; a leak of one per request or per restart would exceed it within minutes.
FD_SLACK = 10
CONNECTION_SLACK = 10
WINDOW = 3  # samples per end of a "before/after" comparison (medians)
# Samples taken while the database is down or within SETTLE_S of its return are left out of
# those medians: pools and clients are reconnecting then.
SETTLE_S = 3.0
# 503s are expected from a restart until this long after the database is back.
UNAVAILABLE_AFTER_S = 15.0
TEXT = {"Content-Type": "text/plain; charset=utf-8"}
JSON = {"Accept": "application/json"}


# --- What the clients saw ---------------------------------------------------------------------


class Tally:
    """Every request by label and status ("no answer": no HTTP response), with durations."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.statuses: dict[str, Counter[str]] = defaultdict(Counter)
        self.durations: dict[str, list[float]] = defaultdict(list)
        self.unavailable_at: list[float] = []  # when each 503 came
        self.problems: list[str] = []  # the load's own checks that failed

    def add(self, label: str, response: requests.Response | None, started: float) -> None:
        ended = time.monotonic()
        status = "no answer" if response is None else str(response.status_code)
        with self.lock:
            self.statuses[label][status] += 1
            self.durations[label].append(ended - started)
            if status == "503":
                self.unavailable_at.append(ended)

    def problem(self, text: str) -> None:
        with self.lock:
            self.problems.append(text)

    def total(self) -> int:
        return sum(sum(counts.values()) for counts in self.statuses.values())


def request(
    session: requests.Session, tally: Tally, label: str, method: str, url: str, **kwargs: Any
) -> requests.Response | None:
    """One request, counted; None when no HTTP answer came."""
    started = time.monotonic()
    try:
        response: requests.Response | None = session.request(
            method, url, timeout=CLIENT_TIMEOUT_S, **kwargs
        )
    except requests.RequestException:
        response = None
    tally.add(label, response, started)
    return response


@dataclass
class Owned:
    """A delete name as its only writer last knew it: "absent", "present" or "unknown"."""

    state: str = "absent"
    version: int = 0
    value: str | None = None
    sent: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Acked:
    """An acknowledged write with its version: every event stream must deliver it."""

    name: str
    version: int
    value: str
    started: float


class Client(threading.Thread):
    """One client: the mix of operations, on the shared names and on its own delete names."""

    def __init__(
        self, number: int, bases: list[str], history: History, tally: Tally, stop: threading.Event
    ) -> None:
        super().__init__(name=f"client-{number}", daemon=True)
        self.tag = f"c{number}"
        self.bases, self.history, self.tally, self.stop = bases, history, tally, stop
        self.rng = random.Random(number)
        self.session = requests.Session()
        self.counter = 0
        self.unavailable = False  # the last request met a 503 or no answer
        self.owned = {f"soak/d/{self.tag}/{n}": Owned() for n in range(DELETE_NAMES_PER_CLIENT)}
        self.acked_creates: list[Acked] = []
        labels, weights = zip(*MIX, strict=True)
        self.choices: list[str] = list(labels)
        self.weights: list[int] = list(weights)

    def run(self) -> None:
        operations: dict[str, Callable[[], None]] = {
            "get": self.get,
            "put": self.put,
            "post": self.post,
            "cas": self.cas,
            "batch": self.batch,
            "list": self.listing,
            "delete cycle": self.delete_cycle,
        }
        while not self.stop.is_set():
            self.unavailable = False
            operations[self.rng.choices(self.choices, self.weights)[0]]()
            time.sleep(BACKOFF_S if self.unavailable else THINK_S)
        self.session.close()

    # Values are unique per write (the checker tells writes apart by them) and of varied size.
    def value(self) -> str:
        self.counter += 1
        return f"{self.tag}-{self.counter:07d}-" + "v" * self.rng.randint(8, 200)

    def base(self) -> str:
        return self.rng.choice(self.bases)

    def note(self, response: requests.Response | None) -> None:
        if response is None or response.status_code == 503:
            self.unavailable = True

    def send(self, label: str, method: str, url: str, **kwargs: Any) -> requests.Response | None:
        response = request(self.session, self.tally, label, method, url, **kwargs)
        self.note(response)
        return response

    def read(self, name: str) -> requests.Response | None:
        started = time.monotonic()
        response, _ = self.history.read(
            self.session, f"{self.base()}/var/{name}", name, timeout=CLIENT_TIMEOUT_S
        )
        self.tally.add("GET /var/<name>", response, started)
        self.note(response)
        return response

    def write(self, label: str, method: str, name: str, value: str, **kwargs: Any) -> None:
        started = time.monotonic()
        response = self.history.write(
            self.session,
            method,
            f"{self.base()}/var/{name}",
            name,
            value,
            timeout=CLIENT_TIMEOUT_S,
            **kwargs,
        )
        self.tally.add(label, response, started)
        self.note(response)

    def get(self) -> None:
        self.read(self.rng.choice(SHARED_NAMES))

    def put(self) -> None:
        name, value = self.rng.choice(SHARED_NAMES), self.value()
        body = self.rng.choice(("form", "json", "text"))
        if body == "form":
            self.write("PUT /var/<name>", "PUT", name, value, data={"value": value})
        elif body == "json":
            self.write("PUT /var/<name>", "PUT", name, value, json={"value": value})
        else:
            self.write("PUT /var/<name>", "PUT", name, value, data=value.encode(), headers=TEXT)

    def post(self) -> None:
        name, value = self.rng.choice(SHARED_NAMES), self.value()
        self.write("POST /var/<name>", "POST", name, value, data={"value": value})

    def cas(self) -> None:
        """Read, then write only if nobody wrote in between (412 otherwise)."""
        name = self.rng.choice(SHARED_NAMES)
        response = self.read(name)
        if response is None or response.status_code != 200:
            return
        version = response.json()["version"]
        value = self.value()
        headers = {"If-Match": f'"{version}"'}
        self.write("PUT If-Match", "PUT", name, value, data={"value": value}, headers=headers)

    def batch(self) -> None:
        names = self.rng.sample(SHARED_NAMES, BATCH_NAMES)
        url = f"{self.base()}/var"
        started = time.monotonic()
        response = self.send(
            "GET /var?name=..", "GET", url,
            params=[("name", name) for name in names],
        )  # fmt: skip
        if response is None or response.status_code != 200:
            return
        ended, body = time.monotonic(), response.json()
        for var in body["variables"]:
            self.history.add(
                Op("read", var["name"], started, ended, "ok", var["version"], var["value"], url)
            )
        for name in body["missing"]:
            self.history.add(Op("read", name, started, ended, "ok", 0, None, url))

    def listing(self) -> None:
        """Every page of the shared names, with values: each name exactly once, in order."""
        base = self.base()
        url: str | None = f"{base}/var?prefix=soak/h/&values=true&limit={LIST_PAGE}"
        listed: list[str] = []
        while url is not None:
            started = time.monotonic()
            response = self.send("GET /var?prefix=", "GET", url)
            if response is None or response.status_code != 200:
                return
            ended, body = time.monotonic(), response.json()
            for var in body["variables"]:
                listed.append(var["name"])
                self.history.add(
                    Op("read", var["name"], started, ended, "ok", var["version"], var["value"], url)
                )
            url = base + body["next"] if body["next"] else None
        if listed != SHARED_NAMES:
            missing = sorted(set(SHARED_NAMES) - set(listed))
            self.tally.problem(
                f"listing: {len(listed)} names, missing {missing[:5]}, "
                f"in order: {listed == sorted(listed)}"
            )

    # --- Create/delete cycles on names only this client writes --------------------------------

    def delete_cycle(self) -> None:
        name = self.rng.choice(sorted(self.owned))
        owned = self.owned[name]
        if owned.state == "unknown":
            self.learn(name, owned)
        elif owned.state == "absent":
            self.create(name, owned)
        else:
            self.delete(name, owned)

    def create(self, name: str, owned: Owned) -> None:
        value = self.value()
        owned.sent.add(value)
        started = time.monotonic()
        response = self.send(
            "PUT If-None-Match: *", "PUT", f"{self.base()}/var/{name}",
            data={"value": value}, headers={"If-None-Match": "*"},
        )  # fmt: skip
        status = None if response is None else response.status_code
        if response is not None and status == 201:
            owned.state, owned.value = "present", value
            owned.version = int(response.headers["ETag"].strip('"'))
            self.acked_creates.append(Acked(name, owned.version, value, started))
            self.verify(name, owned)
        elif status == 412:
            self.tally.problem(f"{name}: create refused (412) although its delete was acknowledged")
            owned.state = "unknown"
        elif status is not None and 400 <= status < 500:
            self.tally.problem(f"{name}: create answered {status}")
        else:
            owned.state = "unknown"  # 503 or no answer: it may or may not exist now

    def delete(self, name: str, owned: Owned) -> None:
        response = self.send(
            "DELETE If-Match", "DELETE", f"{self.base()}/var/{name}",
            headers={"If-Match": f'"{owned.version}"'},
        )  # fmt: skip
        status = None if response is None else response.status_code
        if status == 204:
            owned.state, owned.value = "absent", None
            self.verify(name, owned)
        elif status is not None and 400 <= status < 500:
            self.tally.problem(f"{name}: delete of acknowledged v{owned.version} answered {status}")
            owned.state = "unknown"
        else:
            owned.state = "unknown"

    def learn(self, name: str, owned: Owned) -> None:
        """After a write whose outcome is unknown: what is there now (one of our values)."""
        response = self.send(
            "GET /var/<name>", "GET", f"{self.base()}/var/{name}",
            headers=JSON,
        )  # fmt: skip
        if response is None:
            return
        if response.status_code == 404:
            owned.state, owned.value = "absent", None
        elif response.status_code == 200:
            body = response.json()
            if body["value"] not in owned.sent:
                self.tally.problem(f"{name}: holds a value its only writer never sent")
            owned.state, owned.version, owned.value = "present", body["version"], body["value"]

    def verify(self, name: str, owned: Owned) -> None:
        """Right after an acknowledged create or delete: a read shows it, through either
        instance."""
        response = self.send(
            "GET /var/<name>", "GET", f"{self.base()}/var/{name}",
            headers=JSON,
        )  # fmt: skip
        if response is None or response.status_code == 503:
            return
        if owned.state == "absent" and response.status_code != 404:
            self.tally.problem(f"{name}: {response.status_code} after its delete was acknowledged")
        elif owned.state == "present":
            body = response.json() if response.status_code == 200 else {}
            if (body.get("version"), body.get("value")) != (owned.version, owned.value):
                self.tally.problem(
                    f"{name}: read {response.status_code} v{body.get('version')} after "
                    f"v{owned.version} was acknowledged"
                )


# --- Watchers ----------------------------------------------------------------------------------


class LongPoller(threading.Thread):
    """Waits for the next version of a random shared name, again and again (``?wait=``)."""

    def __init__(
        self, number: int, base: str, history: History, tally: Tally, stop: threading.Event
    ) -> None:
        super().__init__(name=f"long-poll-{number}", daemon=True)
        self.base, self.history, self.tally, self.stop = base, history, tally, stop
        self.rng = random.Random(1000 + number)
        self.session = requests.Session()
        self.known: dict[str, int] = {}

    def run(self) -> None:
        while not self.stop.is_set():
            name = self.rng.choice(SHARED_NAMES)
            after = self.known.get(name, 0)
            started = time.monotonic()
            response, _ = self.history.read(
                self.session,
                f"{self.base}/var/{name}",
                name,
                params={"wait": LONG_POLL_WAIT_S, "after_version": after},
                timeout=CLIENT_TIMEOUT_S + LONG_POLL_WAIT_S,
            )
            self.tally.add("GET /var/<name>?wait=", response, started)
            if response is not None and response.status_code == 200:
                version = response.json()["version"]
                if version <= after:
                    self.tally.problem(f"long-poll {name} after v{after} answered v{version}")
                self.known[name] = version
            elif response is None or response.status_code == 503:
                time.sleep(0.5)
        self.session.close()


class EventWatcher(threading.Thread):
    """An event stream of everything under WATCHED_PREFIX, resumed with ``Last-Event-ID``
    whenever it breaks (a database restart may end it), until it delivers SENTINEL."""

    def __init__(self, number: int, base: str, tally: Tally) -> None:
        super().__init__(name=f"events-{number}", daemon=True)
        self.label = f"events-{number}"
        self.base, self.tally = base, tally
        self.session = requests.Session()
        self.since: float | None = None  # the first stream's answer: changes after it count
        self.resynced_at: float | None = None
        self.last_id: int | None = None
        self.events: dict[tuple[str, int], str | None] = {}
        self.delivered = 0
        self.streams = 0
        self.broken = 0
        self.resyncs = 0
        self.checked = 0  # acknowledged writes it had to deliver
        self.caught_up = threading.Event()
        self.give_up = threading.Event()

    def run(self) -> None:
        url = f"{self.base}/events"
        while not self.caught_up.is_set() and not self.give_up.is_set():
            headers = {} if self.last_id is None else {"Last-Event-ID": str(self.last_id)}
            started = time.monotonic()
            answered = False
            try:
                with self.session.get(
                    url,
                    params={"prefix": WATCHED_PREFIX},
                    headers=headers,
                    stream=True,
                    timeout=(5, CLIENT_TIMEOUT_S),  # a heartbeat comes every 15 s
                ) as response:
                    answered = True
                    self.tally.add("GET /events", response, started)
                    if response.status_code != 200:
                        time.sleep(1.0)
                        continue
                    self.streams += 1
                    if self.since is None:
                        self.since = time.monotonic()
                    self.read(response.iter_lines(decode_unicode=True))
            except requests.RequestException:
                if not answered:
                    self.tally.add("GET /events", None, started)
                self.broken += 1  # cut off mid-stream (a restart) or never answered
                time.sleep(0.5)
        self.session.close()

    def read(self, lines: Iterator[str]) -> None:
        event: dict[str, str] = {}
        for line in lines:
            if self.give_up.is_set():
                return
            if line:
                if not line.startswith(":"):
                    key, _, value = line.partition(":")
                    event[key] = value.removeprefix(" ")
                continue
            if "data" in event and self.dispatch(event):
                return
            event = {}

    def dispatch(self, event: dict[str, str]) -> bool:
        """Take one event; True once SENTINEL came."""
        seq = int(event["id"])
        if self.last_id is not None and seq <= self.last_id:
            self.tally.problem(f"{self.label}: event {seq} after {self.last_id}")
        self.last_id = seq
        if event.get("event") == "resync":
            self.resyncs += 1
            self.resynced_at = time.monotonic()
            return False
        change = json.loads(event["data"])
        self.delivered += 1
        self.events[(change["name"], change["version"])] = change.get("value")
        if change["name"] == SENTINEL:
            self.caught_up.set()
            return True
        return False

    def missed(self, acked: list[Acked]) -> list[str]:
        """Acknowledged writes this stream should have delivered (begun after it started and
        after its last resync) but did not, or delivered with another value."""
        if self.since is None:
            return [f"{self.label}: never connected"]
        after = max(self.since, self.resynced_at or 0.0)
        problems = []
        for write in acked:
            if write.started <= after:
                continue
            self.checked += 1
            key = (write.name, write.version)
            if key not in self.events:
                problems.append(f"{self.label}: {write.name} v{write.version} never delivered")
            elif self.events[key] != write.value:
                problems.append(f"{self.label}: {write.name} v{write.version}: another value")
        return problems


# --- Processes: RSS, descriptors, connections --------------------------------------------------


def proc_figures(pid: int) -> dict[str, int] | None:
    """RSS (KiB) and open descriptors of a process; None if it is gone."""
    try:
        rss = 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
        return {"pid": pid, "rss_kib": rss, "fds": len(os.listdir(f"/proc/{pid}/fd"))}
    except OSError:
        return None


class Sampler(threading.Thread):
    """Every ``every`` seconds: each gunicorn process's figures and the database's
    connections (``Threads_connected``, without the sampler's own; None while it is down)."""

    def __init__(
        self, instances: dict[str, Gunicorn], mariadb: MariaDB, every: float, t0: float
    ) -> None:
        super().__init__(name="sampler", daemon=True)
        self.instances, self.mariadb, self.every, self.t0 = instances, mariadb, every, t0
        self.samples: list[dict[str, Any]] = []
        self.labels: dict[int, str] = {}  # pid -> "A worker 1", ...
        self.stop = threading.Event()

    def label(self, instance: str, pid: int) -> str:
        if pid not in self.labels:
            count = sum(1 for label in self.labels.values() if label.startswith(f"{instance} w"))
            self.labels[pid] = f"{instance} worker {count + 1}"
        return self.labels[pid]

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(self.every)

    def sample(self) -> None:
        processes: dict[str, dict[str, int]] = {}
        for instance, server in self.instances.items():
            master = proc_figures(server.process.proc.pid)
            if master:
                processes[f"{instance} master"] = master
            for pid in server.worker_pids():
                figures = proc_figures(pid)
                if figures:
                    processes[self.label(instance, pid)] = figures
        connections = None
        try:
            rows = self.mariadb.query("SHOW GLOBAL STATUS LIKE 'Threads_connected'")
            connections = int(rows[0][1]) - 1
        except (mysql.connector.Error, OSError):
            pass
        self.samples.append(
            {
                "t": round(time.monotonic() - self.t0, 1),
                "processes": processes,
                "db_connections": connections,
            }
        )


# --- The database restarts ---------------------------------------------------------------------


def restart_times(seconds: float, every: float) -> list[float]:
    """When to restart: every ``every`` seconds, at most every third of the run (so a short
    run has two), none in the last stretch (the service must be seen recovering)."""
    interval = min(every, seconds / 3)
    times, at = [], interval
    while at <= seconds - min(interval / 2, 30):
        times.append(round(at, 1))
        at += interval
    return times


def restart(mariadb: MariaDB, kind: str) -> float:
    """Take the database down (``kill -9`` or a clean stop), wait, start it again on the same
    datadir and port; return how long it took until it accepted connections."""
    began = time.monotonic()
    assert mariadb.server is not None
    if kind == "kill -9":
        mariadb.server.proc.kill()
        mariadb.server.proc.wait()
    else:
        mariadb.stop()
    time.sleep(DATABASE_DOWN_S)
    mariadb.start()
    return time.monotonic() - began


# --- After the load ----------------------------------------------------------------------------


def write_sentinel(bases: list[str], tally: Tally) -> None:
    with requests.Session() as session:
        for _ in range(60):
            response = request(
                session, tally, "PUT /var/<name>", "PUT", f"{bases[0]}/var/{SENTINEL}",
                data={"value": "end"},
            )  # fmt: skip
            if response is not None and response.status_code in (200, 201):
                return
            time.sleep(0.5)
    tally.problem("the final write (soak/end) was never acknowledged")


def final_reads(bases: list[str], history: History, tally: Tally) -> None:
    """Every shared name through every instance, once the load is over: the checker's
    real-time rule then requires the last acknowledged version (or a newer one)."""
    with requests.Session() as session:
        for name in SHARED_NAMES:
            for base in bases:
                started = time.monotonic()
                response, _ = history.read(
                    session, f"{base}/var/{name}", name, timeout=CLIENT_TIMEOUT_S
                )
                tally.add("GET /var/<name>", response, started)


def stored_rows(mariadb: MariaDB) -> dict[str, tuple[int, str]]:
    conn = mariadb.connect(DATABASE)
    try:
        cur = conn.cursor()
        cur.execute("SELECT name, version, value FROM vars WHERE name LIKE %s", (b"soak/%",))
        return {bytes(name).decode(): (version, value) for name, version, value in cur.fetchall()}
    finally:
        conn.close()


def lost_writes(
    ops: list[Op], clients: list[Client], rows: dict[str, tuple[int, str]]
) -> tuple[list[str], int]:
    """Acknowledged writes whose effect is not in the database at the end, and how many writes
    were acknowledged. A shared name must hold its last acknowledged version or a newer one
    sent by a write of unknown outcome; a delete name must be as its owner last saw
    acknowledged (unless a write of unknown outcome came after)."""
    lost: list[str] = []
    writes: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        if op.kind == "write":
            writes[op.name].append(op)
    acknowledged = 0
    for name in SHARED_NAMES:
        acked = [op for op in writes[name] if op.outcome == "ok"]
        acknowledged += len(acked)
        if not acked:
            continue
        last = max(acked, key=lambda op: op.version or 0)
        unknown = {op.value for op in writes[name] if op.outcome == "unknown"}
        version, value = rows.get(name, (0, None))
        if version < (last.version or 0):
            lost.append(f"{name}: v{last.version} acknowledged, the database holds v{version}")
        elif version == last.version and value != last.value:
            lost.append(f"{name}: v{version} holds another value than the acknowledged one")
        elif version > (last.version or 0) and value not in unknown:
            lost.append(f"{name}: v{version} holds a value no write of unknown outcome sent")
    for client in clients:
        acknowledged += len(client.acked_creates)
        for name, owned in client.owned.items():
            stored = rows.get(name)
            if owned.state == "present" and stored != (owned.version, owned.value):
                lost.append(f"{name}: v{owned.version} acknowledged, the database holds {stored}")
            elif owned.state == "absent" and stored is not None:
                lost.append(f"{name}: its delete was acknowledged, the database holds {stored}")
    return lost, acknowledged


def acked_writes(ops: list[Op], clients: list[Client]) -> list[Acked]:
    acked = [
        Acked(op.name, op.version, op.value or "", op.started)
        for op in ops
        if op.kind == "write" and op.outcome == "ok" and op.version is not None
    ]
    for client in clients:
        acked.extend(client.acked_creates)
    return acked


def log_findings(paths: list[Path]) -> dict[str, Any]:
    """gunicorn's and the app's error lines (tracebacks, ERROR, CRITICAL), counted by message."""
    counts: Counter[str] = Counter()
    tracebacks = 0
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("Traceback"):
                tracebacks += 1
            for level in ("[ERROR]", "[CRITICAL]"):
                if level in line:
                    counts[level + " " + line.split(level, 1)[1].strip()[:160]] += 1
    return {"tracebacks": tracebacks, "error_lines": dict(counts.most_common(10))}


# --- Verdicts ----------------------------------------------------------------------------------


def series(samples: list[dict[str, Any]], label: str, key: str) -> list[tuple[float, int]]:
    return [(s["t"], s["processes"][label][key]) for s in samples if label in s["processes"]]


def ends(values: list[int]) -> tuple[float, float]:
    """The median of the first WINDOW values and of the last WINDOW."""
    return statistics.median(values[:WINDOW]), statistics.median(values[-WINDOW:])


def growth(samples: list[dict[str, Any]], warmup: float) -> dict[str, dict[str, Any]]:
    """Per process, from the end of the warm-up to the end of the run: RSS and descriptors."""
    after = [s for s in samples if s["t"] >= warmup]
    labels = sorted({label for s in samples for label in s["processes"]})
    figures = {}
    for label in labels:
        rss = [v for _, v in series(after, label, "rss_kib")]
        fds = [v for _, v in series(after, label, "fds")]
        if len(rss) < 2 * WINDOW:
            continue
        rss_start, rss_end = ends(rss)
        fds_start, fds_end = ends(fds)
        figures[label] = {
            "rss_start_mib": round(rss_start / 1024, 1),
            "rss_end_mib": round(rss_end / 1024, 1),
            "rss_max_mib": round(max(rss) / 1024, 1),
            "rss_growth_pct": round(100 * (rss_end - rss_start) / rss_start, 1),
            "fds_start": fds_start,
            "fds_end": fds_end,
            "fds_max": max(fds),
        }
    return figures


def connection_figures(samples: list[dict[str, Any]], warmup: float) -> dict[str, Any]:
    counts = [s["db_connections"] for s in samples if s["t"] >= warmup]
    counts = [n for n in counts if n is not None]
    if len(counts) < 2 * WINDOW:
        return {}
    start, end = ends(counts)
    return {"start": start, "end": end, "max": max(counts)}


@dataclass
class Verdict:
    check: str
    result: str
    limit: str
    ok: bool


def verdicts(result: dict[str, Any]) -> list[Verdict]:
    procs = result["processes"]
    workers = {k: v for k, v in procs.items() if "worker" in k}
    worst = max(workers.items(), key=lambda kv: kv[1]["rss_growth_pct"], default=None)
    fd_growth = {k: v["fds_end"] - v["fds_start"] for k, v in procs.items()}
    worst_fd = max(fd_growth.items(), key=lambda kv: kv[1], default=None)
    conns = result["db_connections"]
    statuses = result["statuses"]
    server_errors = sum(
        n for counts in statuses.values() for s, n in counts.items() if s[0] == "5" and s != "503"
    )
    no_answer = sum(counts.get("no answer", 0) for counts in statuses.values())
    checker = result["history"]
    replaced = len(result["workers_seen"]) - len(INSTANCES) * WORKERS_PER_INSTANCE
    return [
        Verdict(
            "RSS growth per worker after warm-up",
            f"{worst[1]['rss_growth_pct']:+.1f} % at most ({worst[0]})" if worst else "no data",
            f"<= {MAX_RSS_GROWTH_PCT:g} %",
            worst is not None and worst[1]["rss_growth_pct"] <= MAX_RSS_GROWTH_PCT,
        ),
        Verdict(
            "open descriptors per process (end - start after warm-up)",
            f"{worst_fd[1]:+g} at most ({worst_fd[0]})" if worst_fd else "no data",
            f"<= +{FD_SLACK} (flat)",
            worst_fd is not None and worst_fd[1] <= FD_SLACK,
        ),
        Verdict(
            "database connections (end - start after warm-up)",
            f"{conns['start']:g} -> {conns['end']:g} (max {conns['max']})" if conns else "no data",
            f"<= +{CONNECTION_SLACK} (flat)",
            bool(conns) and conns["end"] - conns["start"] <= CONNECTION_SLACK,
        ),
        Verdict(
            "database restarts", str(len(result["restarts"])), ">= 1", bool(result["restarts"])
        ),
        Verdict("workers replaced", str(max(replaced, 0)), "0", replaced <= 0),
        Verdict("5xx other than 503 (500s included)", str(server_errors), "0", server_errors == 0),
        Verdict("requests with no answer", str(no_answer), "0", no_answer == 0),
        Verdict(
            "history checker violations",
            f"{len(checker['violations'])} in {checker['operations']:,} operations",
            "0",
            not checker["violations"],
        ),
        Verdict(
            "lost writes",
            f"{len(result['lost_writes'])} of {result['acknowledged_writes']:,} acknowledged",
            "0",
            not result["lost_writes"],
        ),
        Verdict(
            "load's own checks (listings, delete names, long-polls, event streams)",
            str(len(result["problems"])),
            "0",
            not result["problems"],
        ),
    ]


# --- The report --------------------------------------------------------------------------------


def picked(samples: list[dict[str, Any]], warmup: float, rows: int = 13) -> list[int]:
    """About ``rows`` samples spread evenly over the run, the first and last included, and
    the first one after the warm-up."""
    chosen = {round(i * (len(samples) - 1) / (rows - 1)) for i in range(rows)}
    after = [i for i, sample in enumerate(samples) if sample["t"] >= warmup]
    return sorted(chosen & set(range(len(samples))) | set(after[:1]))


def process_table(result: dict[str, Any], key: str, scale: float, digits: int) -> list[str]:
    samples, warmup = result["samples"], result["settings"]["warmup_s"]
    labels = sorted({label for s in samples for label in s["processes"]})
    head = ["t (s)", *labels] + (["db connections"] if key == "fds" else []) + ["event"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    indexes = picked(samples, warmup)
    previous = float("-inf")
    for index in indexes:
        sample = samples[index]
        cells = [f"{sample['t']:g}"]
        for label in labels:
            figures = sample["processes"].get(label)
            cells.append(f"{figures[key] / scale:.{digits}f}" if figures else "-")
        if key == "fds":
            connections = sample["db_connections"]
            cells.append("down" if connections is None else str(connections))
        notes = [
            f"restart {n} ({event['kind']}) at {event['down_at']:.0f} s"
            for n, event in enumerate(result["restarts"], 1)
            if previous < event["down_at"] <= sample["t"]
        ]
        if index == min((i for i in indexes if samples[i]["t"] >= warmup), default=-1):
            notes.append("end of warm-up")
        cells.append("; ".join(notes))
        lines.append("| " + " | ".join(cells) + " |")
        previous = sample["t"]
    return lines


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def markdown(result: dict[str, Any]) -> str:
    settings, checks = result["settings"], result["verdicts"]
    passed = all(v["ok"] for v in checks)
    lines = [
        "# Soak: two instances, a mixed load, the database restarted",
        "",
        f"`{settings['command']}` on {settings['host']} ({settings['cpus']} CPUs, shared with "
        f"other work), {settings['date']}. **Verdict: {'PASS' if passed else 'FAIL'}.**",
        "",
        "## Settings",
        "",
        "| setting | value |",
        "|---|---|",
        f"| duration | {settings['seconds']:g} s of load |",
        f"| warm-up | the first third, {settings['warmup_s']:g} s (pools open, each worker's "
        "change feed fills its bounded memory of recent changes): growth is judged from its "
        f"end (median of the first {WINDOW} samples after it) to the end of the run (median "
        f"of the last {WINDOW}), leaving out samples taken while the database was down or "
        f"within {SETTLE_S:g} s of its return |",
        f"| samples | every {settings['sample_every_s']:g} s, {len(result['samples'])} in all |",
        f"| service | {len(INSTANCES)} gunicorn instances x {WORKERS_PER_INSTANCE} "
        f"{settings['worker_class']} workers (`WEB_CONCURRENCY`; everything else as "
        "gunicorn.conf.py ships it), on one database |",
        f"| database | {settings['database']}, private (temporary datadir), restarted at "
        f"{', '.join(f'{t:g}' for t in settings['restart_at'])} s, "
        f"{DATABASE_DOWN_S:g} s down each time |",
        f"| clients | {CLIENTS} threads, each against either instance at random, "
        f"{THINK_S * 1000:g} ms between operations; mix (weights): "
        + ", ".join(f"{label} {weight}" for label, weight in MIX)
        + " |",
        f"| watchers | {EVENT_WATCHERS} event streams (`/events?prefix={WATCHED_PREFIX}`), "
        f"{LONG_POLLERS} long-pollers (`?wait={LONG_POLL_WAIT_S}`) |",
        f"| names | {len(SHARED_NAMES)} shared (everyone writes and reads them), "
        f"{DELETE_NAMES_PER_CLIENT} per client created and deleted by it alone |",
        "",
        "## Verdicts",
        "",
        "| check | result | limit | |",
        "|---|---|---|---|",
        *(
            f"| {v['check']} | {v['result']} | {v['limit']} | {'ok' if v['ok'] else '**FAIL**'} |"
            for v in checks
        ),
        "",
        "## Requests by status",
        "",
    ]
    statuses = result["statuses"]
    codes = sorted({s for counts in statuses.values() for s in counts})
    lines += [
        "| request | total | " + " | ".join(codes) + " | p99 ms | max ms |",
        "|" + "---|" * (len(codes) + 4),
    ]
    for label, counts in sorted(statuses.items()):
        timing = result["durations"][label]
        lines.append(
            f"| {label} | {sum(counts.values()):,} | "
            + " | ".join(f"{counts.get(c, 0):,}" for c in codes)
            + f" | {timing['p99_ms']:,.0f} | {timing['max_ms']:,.0f} |"
        )
    total = sum(sum(c.values()) for c in statuses.values())
    lines += [
        f"| all | {total:,} | "
        + " | ".join(f"{sum(c.get(code, 0) for c in statuses.values()):,}" for code in codes)
        + " | | |",
        "",
        f"{result['outside_restarts_503']} of the 503s came outside a restart's window "
        "(from the restart until 15 s after the database was back).",
        "",
        "## Database restarts",
        "",
        "| # | at (s) | how | until it accepted connections (s) | first acknowledged write "
        "after that (s) |",
        "|---|---|---|---|---|",
    ]
    for n, event in enumerate(result["restarts"], 1):
        recovered = event["first_ack_after_s"]
        lines.append(
            f"| {n} | {event['at']:g} | {event['kind']} | {event['took_s']:.1f} | "
            + ("none" if recovered is None else f"{recovered:.2f}")
            + " |"
        )
    lines += [
        "",
        "## RSS per process over time (MiB)",
        "",
        *process_table(result, "rss_kib", 1024, 1),
        "",
        "Growth after the warm-up (MiB; descriptors):",
        "",
        "| process | RSS start | RSS end | RSS max | growth | fds start | fds end | fds max |",
        "|---|---|---|---|---|---|---|---|",
        *(
            f"| {label} | {g['rss_start_mib']} | {g['rss_end_mib']} | {g['rss_max_mib']} | "
            f"{g['rss_growth_pct']:+.1f} % | {g['fds_start']:g} | {g['fds_end']:g} | "
            f"{g['fds_max']} |"
            for label, g in result["processes"].items()
        ),
        "",
        "## Open descriptors and database connections over time",
        "",
        "Descriptors per process (`/proc/PID/fd`); the database's `Threads_connected` without "
        "the sampler's own connection (`down`: the database was restarting).",
        "",
        *process_table(result, "fds", 1, 0),
        "",
        "## History checker",
        "",
        f"`tests/history_checker.py` over every read and write of the {len(SHARED_NAMES)} "
        "shared names (single reads, read-modify-writes, batch reads and listing pages as "
        "reads of each name, long-polls, and a final read of each name through each instance "
        "after the load):",
        "",
        f"    {result['history']['summary']}",
        "",
        *(f"- {v}" for v in result["history"]["violations"][:20]),
        "",
        "## Lost writes",
        "",
        f"{len(result['lost_writes'])} of {result['acknowledged_writes']:,} acknowledged writes "
        "(the database's final rows against the last acknowledged write of each shared name, "
        "and each delete name's last acknowledged create or delete).",
        "",
        *(f"- {v}" for v in result["lost_writes"][:20]),
        "",
        "## Watchers and the load's own checks",
        "",
        "| event stream | streams opened | cut off | events | resyncs | acknowledged writes "
        "it had to deliver | delivered the last write |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {w['label']} | {w['streams']} | {w['broken']} | {w['delivered']:,} | "
            f"{w['resyncs']} | {w['acked_writes_checked']:,} | "
            f"{'yes' if w['caught_up'] else 'no'} |"
            for w in result["event_watchers"]
        ),
        "",
        f"Every acknowledged write begun after a stream opened was delivered by it with its "
        f"value, in order, unless listed here. Problems found by the load's own checks: "
        f"{len(result['problems'])}.",
        "",
        *(f"- {p}" for p in result["problems"][:20]),
        "",
        "## Server logs",
        "",
        f"{result['logs']['tracebacks']} tracebacks; error lines by message (top 10): "
        + ("none." if not result["logs"]["error_lines"] else ""),
        "",
        *(f"- {n} x `{line}`" for line, n in result["logs"]["error_lines"].items()),
        "",
    ]
    return "\n".join(lines)


# --- The run -----------------------------------------------------------------------------------


@dataclass
class Observed:
    """What one run saw, for ``analyse``. Times in ``restarts`` are seconds since ``t0``."""

    seconds: float
    sample_every: float
    schedule: list[float]
    t0: float
    ops: list[Op]
    tally: Tally
    restarts: list[dict[str, Any]]
    samples: list[dict[str, Any]]
    clients: list[Client]
    watchers: list[EventWatcher]
    rows: dict[str, tuple[int, str]]
    worker_class: str
    logs: list[Path]


def run(seconds: float, restart_every: float, workdir: Path) -> Observed:
    """Start everything, load it while restarting the database, check, stop everything."""
    sample_every = max(1.0, min(5.0, seconds / 60))
    schedule = restart_times(seconds, restart_every)
    mariadb = MariaDB(workdir, buffer_pool="64M").start()
    instances: dict[str, Gunicorn] = {}
    history, tally, stop = History(), Tally(), threading.Event()
    watchers: list[EventWatcher] = []
    sampler: Sampler | None = None
    try:
        for instance in INSTANCES:
            instances[instance] = Gunicorn(
                ROOT,
                workdir,
                f"{mariadb.server_url}/{DATABASE}",
                label=f"gunicorn-{instance}",
                workers=WORKERS_PER_INSTANCE,
            )
        bases = [server.base for server in instances.values()]
        with requests.Session() as session:  # every shared name exists before the load
            for name in SHARED_NAMES:
                history.write(
                    session, "PUT", f"{bases[0]}/var/{name}", name, f"{name}-initial",
                    data={"value": f"{name}-initial"}, timeout=CLIENT_TIMEOUT_S,
                )  # fmt: skip
        watchers = [EventWatcher(n, bases[n % len(bases)], tally) for n in range(EVENT_WATCHERS)]
        clients = [Client(n, bases, history, tally, stop) for n in range(CLIENTS)]
        pollers = [
            LongPoller(n, bases[n % len(bases)], history, tally, stop) for n in range(LONG_POLLERS)
        ]
        t0 = time.monotonic()
        sampler = Sampler(instances, mariadb, sample_every, t0)
        for thread in (*watchers, sampler, *clients, *pollers):
            thread.start()
        restarts = []
        for n, at in enumerate(schedule):
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            kind = RESTART_KINDS[n % len(RESTART_KINDS)]
            print(f"soak: {at:g} s, database restart ({kind})", flush=True)
            down_at = time.monotonic() - t0
            took = restart(mariadb, kind)
            restarts.append({"at": at, "kind": kind, "down_at": down_at, "up_at": down_at + took})
        time.sleep(max(0.0, t0 + seconds - time.monotonic()))
        stop.set()
        sampler.stop.set()
        for thread in (*clients, *pollers):
            thread.join(timeout=CLIENT_TIMEOUT_S + LONG_POLL_WAIT_S + 5)
            if thread.is_alive():
                tally.problem(f"{thread.name} did not stop: a request hung")
        sampler.join()
        print("soak: load stopped, checking", flush=True)
        write_sentinel(bases, tally)
        for watcher in watchers:
            if not watcher.caught_up.wait(timeout=30):
                tally.problem(f"{watcher.label}: did not deliver the final write within 30 s")
        final_reads(bases, history, tally)
        rows = stored_rows(mariadb)
        worker_class = instances[INSTANCES[0]].worker_class()
    finally:
        for watcher in watchers:
            watcher.give_up.set()
        stop.set()
        if sampler is not None:
            sampler.stop.set()
        for server in instances.values():
            server.stop()
        mariadb.stop()
    return Observed(
        seconds=seconds,
        sample_every=sample_every,
        schedule=schedule,
        t0=t0,
        ops=list(history.ops),
        tally=tally,
        restarts=restarts,
        samples=sampler.samples,
        clients=clients,
        watchers=watchers,
        rows=rows,
        worker_class=worker_class,
        logs=[server.process.log_path for server in instances.values()],
    )


def analyse(seen: Observed, command: str, database: str) -> dict[str, Any]:
    """Every figure and verdict of the report, from what the run saw."""
    warmup = seen.seconds * WARMUP_FRACTION
    tally = seen.tally
    lost, acknowledged = lost_writes(seen.ops, seen.clients, seen.rows)
    acked = acked_writes(seen.ops, seen.clients)
    for watcher in seen.watchers:
        for problem in watcher.missed(acked):
            tally.problem(problem)
    # A kill may lose a commit that was read but never acknowledged (tests/history_checker.py).
    crashes = [seen.t0 + event["up_at"] for event in seen.restarts if event["kind"] == "kill -9"]
    report = check(seen.ops, crashes)
    acked_at = sorted(
        op.ended - seen.t0 for op in seen.ops if op.kind == "write" and op.outcome == "ok"
    )
    restarts = []
    for event in seen.restarts:
        first = next((t for t in acked_at if t > event["up_at"]), None)
        restarts.append(
            {
                "at": event["at"],
                "kind": event["kind"],
                "down_at": round(event["down_at"], 2),
                "up_at": round(event["up_at"], 2),
                "took_s": round(event["up_at"] - event["down_at"], 2),
                "first_ack_after_s": None if first is None else round(first - event["up_at"], 3),
            }
        )
    unavailable = [moment - seen.t0 for moment in tally.unavailable_at]
    outside = sum(1 for t in unavailable if not near_restart(t, restarts, UNAVAILABLE_AFTER_S))
    steady = [s for s in seen.samples if not near_restart(s["t"], restarts, SETTLE_S)]
    result: dict[str, Any] = {
        "settings": {
            "command": command,
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "seconds": seen.seconds,
            "warmup_s": round(warmup, 1),
            "sample_every_s": seen.sample_every,
            "restart_at": seen.schedule,
            "instances": len(INSTANCES),
            "workers_per_instance": WORKERS_PER_INSTANCE,
            "worker_class": seen.worker_class,
            "database": database,
            "clients": CLIENTS,
            "mix": dict(MIX),
        },
        "statuses": {label: dict(counts) for label, counts in tally.statuses.items()},
        "durations": {
            label: {
                "p99_ms": round(1000 * percentile(values, 0.99), 1),
                "max_ms": round(1000 * max(values), 1),
            }
            for label, values in tally.durations.items()
        },
        "requests": tally.total(),
        "outside_restarts_503": outside,
        "restarts": restarts,
        "samples": seen.samples,
        "processes": growth(steady, warmup),
        "workers_seen": sorted({k for s in seen.samples for k in s["processes"] if "worker" in k}),
        "db_connections": connection_figures(steady, warmup),
        "history": {
            "summary": report.summary(),
            "operations": report.operations,
            "names": report.names,
            "outcomes": dict(report.outcomes),
            "checks": dict(report.checks),
            "violations": report.violations[:100],
        },
        "acknowledged_writes": acknowledged,
        "lost_writes": lost,
        "event_watchers": [
            {
                "label": w.label,
                "streams": w.streams,
                "broken": w.broken,
                "delivered": w.delivered,
                "resyncs": w.resyncs,
                "caught_up": w.caught_up.is_set(),
                "acked_writes_checked": w.checked,
            }
            for w in seen.watchers
        ],
        "problems": tally.problems[:100],
        "logs": log_findings(seen.logs),
    }
    result["verdicts"] = [vars(v) for v in verdicts(result)]
    return result


def near_restart(t: float, restarts: list[dict[str, Any]], after: float) -> bool:
    """Whether ``t`` falls in a restart or within ``after`` seconds of its end."""
    return any(e["down_at"] <= t <= e["up_at"] + after for e in restarts)


def mariadb_version(workdir: Path) -> str:
    """The server's version line from its log (it is stopped by now)."""
    log = workdir / "mariadb" / "mariadbd.log"
    for line in log.read_text(errors="replace").splitlines():
        if "Version: '" in line:
            return "MariaDB " + line.split("Version: '", 1)[1].split("'", 1)[0]
    return "MariaDB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds",
        type=float,
        default=float(os.environ.get("SOAK_SECONDS") or 600),
        help="how long the load runs (default: SOAK_SECONDS, else 600)",
    )
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument(
        "--restart-every",
        type=float,
        default=180,
        help="seconds between database restarts (at most a third of the run)",
    )
    args = parser.parse_args()
    command = "python -m bench.soak" + (f" --seconds {args.seconds:g}")
    workdir = Path(tempfile.mkdtemp(prefix="vk-soak-"))
    print(f"soak: {args.seconds:g} s, working in {workdir}", flush=True)
    seen = run(args.seconds, args.restart_every, workdir)
    result = analyse(seen, command, mariadb_version(workdir))
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "soak.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.results / "soak.md").write_text(markdown(result))
    failed = [v["check"] for v in result["verdicts"] if not v["ok"]]
    print(f"soak: {result['history']['summary']}")
    print(f"soak: wrote {args.results / 'soak.md'}; " + (f"FAILED: {failed}" if failed else "PASS"))
    if failed:
        print(f"soak: logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
