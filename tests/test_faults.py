"""Database faults and write concurrency, through a real gunicorn.

Faults: under a writer/reader load, a private MariaDB is ``kill -9``ed and restarted twice, or
frozen (SIGSTOP: connections hang instead of being refused) and thawed twice; a row lock and a
table lock held by another session make the database slow. Every request must end in bounded
time with a success or a 503, the service must recover by itself, and no acknowledged write may
be lost.

Concurrency: many writers on one name (several workers, and two gunicorn instances on one
database) leave one writer's whole value; If-Match read-modify-write loses no update. Both run
on MySQL and on SQLite.

What bounds what (the settings below):
- ``DATABASE_CONNECT_TIMEOUT`` bounds opening a connection (a down server usually refuses at
  once; a black-holed one costs this much).
- ``DATABASE_TIMEOUT`` is the client's read/write timeout on a statement (a frozen server).
- ``DATABASE_TIMEOUT - 1`` (at least 1) is each session's ``innodb_lock_wait_timeout`` and
  ``lock_wait_timeout``: the server abandons a lock wait before the client abandons the
  statement, so the answer is a definite "nothing written" 503 and no statement outlives its
  503 to take effect once the lock is released.
- A read is retried once on a lost connection, so a request costs at most a wait for a pooled
  connection (``DATABASE_TIMEOUT``), two connects and two statement timeouts.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.history_checker import History, check
from tests.servers import Gunicorn, PrivateMariaDB, scratch_database, server_connection

pytestmark = pytest.mark.slow

CONNECT_TIMEOUT_S = 1
STATEMENT_TIMEOUT_S = 2
APP_ENV = {
    "DATABASE_CONNECT_TIMEOUT": str(CONNECT_TIMEOUT_S),
    "DATABASE_TIMEOUT": str(STATEMENT_TIMEOUT_S),
}
# The longest any request may take while the database is down or slow: a wait for a pooled
# connection (DATABASE_TIMEOUT at most), two connects and two statements (a read is retried
# once), and slack for a busy 2-core CI machine.
REQUEST_BOUND_S = STATEMENT_TIMEOUT_S + 2 * (CONNECT_TIMEOUT_S + STATEMENT_TIMEOUT_S) + 2.0
# How soon after the database accepts connections again writes must succeed.
RECOVERY_BOUND_S = 5.0
# How soon after a lock is released its name is served again.
RELEASE_RECOVERY_S = 2.0
# A client that waits longer than this calls it a hang (and the test fails on the duration).
CLIENT_TIMEOUT_S = 30.0
TEXT = {"Content-Type": "text/plain; charset=utf-8"}


@pytest.fixture
def new_session(gunicorn: Callable[..., Gunicorn]) -> Iterator[Callable[[], requests.Session]]:
    """HTTP client sessions, closed before the servers stop: an idle keep-alive connection
    holds up gunicorn's graceful shutdown."""
    sessions: list[requests.Session] = []

    def make() -> requests.Session:
        sessions.append(requests.Session())
        return sessions[-1]

    yield make
    for session in sessions:
        session.close()


# --- Load and ledger -------------------------------------------------------------------------


@dataclass
class Call:
    kind: str  # "write" or "read"
    status: int | None  # None: no HTTP answer at all (connection error, client timeout)
    started: float
    ended: float

    @property
    def duration(self) -> float:
        return self.ended - self.started


@dataclass
class Ledger:
    """Each writer owns its names and writes increasing numbers to each of them.

    Per name: every number sent, and the last one acknowledged (2xx). Afterwards the stored
    number must be the last acknowledged one or one sent later whose outcome was unknown (503):
    anything smaller is a lost write, anything never sent is corruption.
    """

    sent: dict[str, list[int]] = field(default_factory=dict)
    acked: dict[str, int] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    history: History = field(default_factory=History)  # for tests/history_checker.py

    def record(self, call: Call) -> None:
        with self.lock:
            self.calls.append(call)

    def violation(self, text: str) -> None:
        with self.lock:
            self.violations.append(text)

    def check_stored(self, name: str, stored: int | None) -> str | None:
        """Why ``stored`` (None: missing) breaks the ledger for ``name``, or None if it fits."""
        last_acked = self.acked.get(name)
        if last_acked is None:
            allowed = set(self.sent.get(name, [])) | {None}
        else:
            allowed = {n for n in self.sent[name] if n >= last_acked}
        if stored in allowed:
            return None
        return f"{name}: stored {stored}, last acknowledged {last_acked}"


def encode_value(name: str, number: int) -> str:
    return f"{name}={number:09d}"


def decode_value(name: str, value: str) -> int:
    owner, _, number = value.partition("=")
    if owner != name:
        raise ValueError(f"{name} holds a value of {owner}: {value[:60]!r}")
    return int(number)


def write_loop(
    session: requests.Session,
    bases: list[str],
    names: list[str],
    ledger: Ledger,
    stop: threading.Event,
    max_calls: int,
) -> None:
    for number in range(1, max_calls + 1):
        if stop.is_set():
            return
        name = names[number % len(names)]
        with ledger.lock:
            ledger.sent.setdefault(name, []).append(number)
        value = encode_value(name, number)
        started = time.monotonic()
        response = ledger.history.write(
            session,
            "PUT",
            f"{bases[number % len(bases)]}/var/{name}",  # every instance in turn
            name,
            value,
            data=value.encode(),
            headers=TEXT,
            timeout=CLIENT_TIMEOUT_S,
        )
        status = None if response is None else response.status_code
        if response is None:
            ledger.violation(f"write {name}={number}: no answer")
        ledger.record(Call("write", status, started, time.monotonic()))
        if status in (200, 201):
            with ledger.lock:
                ledger.acked[name] = number
        elif status == 503:
            time.sleep(0.05)  # a polite client backs off (the answer says Retry-After: 1)
        elif status is not None:
            ledger.violation(f"write {name}={number}: HTTP {status}")


def read_loop(
    session: requests.Session,
    bases: list[str],
    names: list[str],
    ledger: Ledger,
    stop: threading.Event,
    max_calls: int,
) -> None:
    """Reads must never go back in time: at least the last number acknowledged before the read."""
    rng = random.Random(7)
    for _ in range(max_calls):
        if stop.is_set():
            return
        name = rng.choice(names)
        with ledger.lock:
            floor = ledger.acked.get(name)
        started = time.monotonic()
        base = rng.choice(bases)
        response, value = ledger.history.read(
            session, f"{base}/var/{name}", name, timeout=CLIENT_TIMEOUT_S
        )
        status = None if response is None else response.status_code
        if response is None:
            ledger.violation(f"read {name}: no answer")
        ledger.record(Call("read", status, started, time.monotonic()))
        if status == 200:
            try:
                number = decode_value(name, value or "")
            except ValueError as exc:  # another name's value, or garbage: requests crossed
                ledger.violation(f"read {name}: {exc}")
                continue
            with ledger.lock:
                sent = set(ledger.sent[name])
            if (floor is not None and number < floor) or number not in sent:
                ledger.violation(f"read {name}: got {number}, acknowledged before: {floor}")
        elif status == 404 and floor is not None:
            ledger.violation(f"read {name}: 404 after {floor} was acknowledged")
        elif status == 503:
            time.sleep(0.05)
        elif status not in (200, 404, None):
            ledger.violation(f"read {name}: HTTP {status}")


@dataclass
class Load:
    threads: list[threading.Thread]
    stop: threading.Event
    ledger: Ledger

    def finish(self) -> Ledger:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=CLIENT_TIMEOUT_S + 5)
            assert not thread.is_alive(), "a client thread is stuck"
        return self.ledger


def start_load(
    new_session: Callable[[], requests.Session],
    bases: list[str],
    writers: int,
    readers: int,
    names_per_writer: int = 5,
) -> Load:
    ledger = Ledger()
    stop = threading.Event()
    owned = [[f"w{w}-n{n}" for n in range(names_per_writer)] for w in range(writers)]
    every_name = [name for names in owned for name in names]
    threads = [
        threading.Thread(
            target=write_loop, args=(new_session(), bases, names, ledger, stop, 20_000)
        )
        for names in owned
    ] + [
        threading.Thread(
            target=read_loop, args=(new_session(), bases, every_name, ledger, stop, 20_000)
        )
        for _ in range(readers)
    ]
    for thread in threads:
        thread.start()
    return Load(threads, stop, ledger)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``predicate``; return how long it took to become true."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"{what} did not happen within {timeout}s")


def stored_numbers(server_url: str, database: str) -> dict[str, int]:
    conn = server_connection(server_url)
    try:
        cur = conn.cursor()
        cur.execute(f"SELECT name, value FROM `{database}`.vars")
        rows = cur.fetchall()
    finally:
        conn.close()
    names = [(bytes(name).decode(), value) for name, value in rows]
    return {name: decode_value(name, value) for name, value in names}


# --- The database goes away: killed and restarted, or frozen and thawed ---------------------


def kill_and_restart(mariadb: PrivateMariaDB) -> None:
    """A crash: SIGKILL, two seconds down, then crash recovery on the same datadir and port."""
    mariadb.kill()
    time.sleep(2.0)
    mariadb.start()


def freeze_and_thaw(mariadb: PrivateMariaDB) -> None:
    """A hung server: connections are accepted by the kernel but nothing ever answers, so only
    the app's own timeouts end the requests (no reset, no refusal)."""
    assert mariadb.proc is not None
    mariadb.proc.send_signal(signal.SIGSTOP)
    try:
        time.sleep(STATEMENT_TIMEOUT_S + 1.5)  # statements and connects time out meanwhile
    finally:
        mariadb.proc.send_signal(signal.SIGCONT)


@pytest.mark.parametrize("fault", [kill_and_restart, freeze_and_thaw], ids=["kill", "freeze"])
def test_database_outage_costs_bounded_503s_and_no_acknowledged_write(
    private_mariadb: PrivateMariaDB,
    gunicorn: Callable[..., Gunicorn],
    new_session: Callable[[], requests.Session],
    fault: Callable[[PrivateMariaDB], None],
) -> None:
    mariadb = private_mariadb.start()
    # Two instances on one database: the history is checked across them.
    servers = [gunicorn({**APP_ENV, "DATABASE_URL": f"{mariadb.url}/vk_faults"}) for _ in range(2)]
    load = start_load(new_session, [server.base for server in servers], writers=4, readers=2)
    ledger = load.ledger
    outages: list[tuple[float, float]] = []  # (fault began, database serving again)
    recoveries: list[float] = []

    def acked_write_since(moment: float) -> bool:
        with ledger.lock:
            return any(
                c.kind == "write" and c.status in (200, 201) and c.started >= moment
                for c in ledger.calls
            )

    try:
        wait_until(lambda: acked_write_since(0), 10, "a first acknowledged write")
        for _ in range(2):
            time.sleep(1.0)
            began = time.monotonic()
            fault(mariadb)
            back = time.monotonic()
            outages.append((began, back))
            recoveries.append(
                wait_until(lambda: acked_write_since(back), RECOVERY_BOUND_S, "recovery")  # noqa: B023
            )
        time.sleep(1.0)
    finally:
        load.finish()

    calls = ledger.calls
    in_outage = [c for c in calls if any(b <= c.started < e for b, e in outages)]
    statuses = sorted({c.status for c in calls}, key=str)
    stored = stored_numbers(mariadb.url, "vk_faults")
    lost = [why for name in ledger.sent if (why := ledger.check_stored(name, stored.get(name)))]
    acked = sum(c.kind == "write" and c.status in (200, 201) for c in calls)
    # A kill may lose a commit that readers already saw but whose client never heard back
    # (InnoDB shows a commit before its log is on disk): the checker is told when.
    crashes = [back for _, back in outages] if fault is kill_and_restart else []
    history = check(ledger.history.ops, crashes)
    print(f"\n{fault.__name__}: {history.summary()}", *history.violations[:20], sep="\n")
    print(
        f"\n{fault.__name__} x2: {len(calls)} requests, {acked} acknowledged writes, "
        f"{sum(c.status == 503 for c in calls)} answered 503 "
        f"({len(in_outage)} requests during outages), {len(lost)} lost writes; "
        f"max duration {max(c.duration for c in calls):.3f}s overall, "
        f"{max(c.duration for c in in_outage):.3f}s during outages; "
        f"recovery {', '.join(f'{r:.2f}s' for r in recoveries)} after the database was back; "
        f"statuses {statuses}"
    )
    assert ledger.violations == []
    assert history.violations == []
    assert lost == []
    assert set(statuses) <= {200, 201, 404, 503}
    assert any(c.status == 503 for c in in_outage), "the outage was never noticed"
    assert max(c.duration for c in calls) < REQUEST_BOUND_S
    assert acked > 0
    for server in servers:
        assert "Traceback" not in server.log()


# --- The database is slow: a lock held by someone else ------------------------------------


@pytest.fixture
def mysql_url(mysql_server: str) -> Iterator[str]:
    with scratch_database(mysql_server) as url:
        yield url


def timed_request(method: str, url: str, **kwargs: object) -> tuple[int | None, float, str]:
    started = time.monotonic()
    try:
        response = requests.request(method, url, timeout=CLIENT_TIMEOUT_S, **kwargs)
    except requests.RequestException as exc:
        return None, time.monotonic() - started, str(exc)
    return response.status_code, time.monotonic() - started, response.text


def hammer(
    method: str, url: str, until: float, out: list[tuple[int | None, float, str]], **kw: object
) -> None:
    for _ in range(1000):
        if time.monotonic() >= until:
            return
        out.append(timed_request(method, url, **kw))


def lingering_statements(server_url: str, database: str, older_than_s: int) -> list[str]:
    """Statements of the app still running on the server after their client gave up."""
    conn = server_connection(server_url)
    try:
        cur = conn.cursor()
        cur.execute(
            "SELECT INFO FROM information_schema.PROCESSLIST "
            "WHERE DB = %s AND COMMAND = 'Query' AND TIME > %s AND ID <> CONNECTION_ID()",
            (database, older_than_s),
        )
        return [str(row[0]) for row in cur.fetchall()]
    finally:
        conn.close()


def test_row_lock_makes_its_name_503_in_bounded_time_while_others_are_served(
    mysql_url: str, gunicorn: Callable[..., Gunicorn]
) -> None:
    server = gunicorn({**APP_ENV, "DATABASE_URL": mysql_url})
    for name in ("locked", "free-0", "free-1", "free-2"):
        assert requests.put(
            server.url(f"/var/{name}"), data=b"before", headers=TEXT, timeout=CLIENT_TIMEOUT_S
        ).ok
    server_url, _, database = mysql_url.rpartition("/")
    holder = server_connection(server_url, database=database)
    holder.autocommit = False
    cur = holder.cursor()
    cur.execute("SELECT value FROM vars WHERE name = %s FOR UPDATE", (b"locked",))
    cur.fetchall()
    locked_writes: list[tuple[int | None, float, str]] = []
    locked_reads: list[tuple[int | None, float, str]] = []
    others: list[tuple[int | None, float, str]] = []
    until = time.monotonic() + 2 * STATEMENT_TIMEOUT_S + 1
    threads = [
        threading.Thread(
            target=hammer,
            args=("PUT", server.url("/var/locked"), until, locked_writes),
            kwargs={"data": f"during-{i}".encode(), "headers": TEXT},
        )
        for i in range(3)
    ]
    threads.append(
        threading.Thread(
            target=hammer, args=("GET", server.url("/var/locked"), until, locked_reads)
        )
    )
    threads += [
        threading.Thread(
            target=hammer,
            args=("PUT", server.url(f"/var/free-{i}"), until, others),
            kwargs={"data": b"during", "headers": TEXT},
        )
        for i in range(3)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=CLIENT_TIMEOUT_S + 10)
        lingering = lingering_statements(server_url, database, STATEMENT_TIMEOUT_S + 1)
    finally:
        holder.rollback()
        holder.close()
    time.sleep(0.3)  # long enough for a statement still queued on the lock to run
    after_release = requests.get(server.url("/var/locked"), timeout=CLIENT_TIMEOUT_S).text
    released = time.monotonic()
    status, _, _ = timed_request("PUT", server.url("/var/locked"), data=b"after", headers=TEXT)
    recovery = time.monotonic() - released
    print(
        f"\nrow lock: {len(locked_writes)} writes to the locked name "
        f"(statuses {sorted({s for s, _, _ in locked_writes}, key=str)}, "
        f"max {max(d for _, d, _ in locked_writes):.2f}s); "
        f"{len(locked_reads)} reads of it (max {max(d for _, d, _ in locked_reads):.2f}s); "
        f"{len(others)} writes to other names (max {max(d for _, d, _ in others):.2f}s); "
        f"first write after release {recovery:.2f}s"
    )
    assert locked_writes
    assert {s for s, _, _ in locked_writes} == {503}
    assert max(d for _, d, _ in locked_writes) < STATEMENT_TIMEOUT_S + 1.5
    # InnoDB reads do not wait for row locks: the last committed value is served.
    assert {(s, body) for s, _, body in locked_reads} == {(200, "before")}
    # Other names are not stuck behind the lock: served all along (the slack is for a busy CI
    # machine; a request stuck behind the lock would end in a 503, not a 200).
    assert len(others) >= 2 * len(locked_writes)
    assert {s for s, _, _ in others} == {200}
    assert max(d for _, d, _ in others) < STATEMENT_TIMEOUT_S + 1.0
    # No write answered 503 stayed queued at the server to take effect once the lock went away.
    assert after_release == "before"
    assert lingering == []
    assert status == 200
    assert recovery < RELEASE_RECOVERY_S
    assert requests.get(server.url("/var/locked"), timeout=CLIENT_TIMEOUT_S).text == "after"


def test_table_lock_gives_bounded_503s_and_recovers_at_once_when_released(
    mysql_url: str, gunicorn: Callable[..., Gunicorn]
) -> None:
    server = gunicorn({**APP_ENV, "DATABASE_URL": mysql_url})
    for name in ("t", "t0", "t1", "t2"):
        assert requests.put(
            server.url(f"/var/{name}"), data=b"before", headers=TEXT, timeout=CLIENT_TIMEOUT_S
        ).ok
    server_url, _, database = mysql_url.rpartition("/")
    holder = server_connection(server_url, database=database)
    holder.cursor().execute("LOCK TABLES vars WRITE")
    results: list[tuple[int | None, float, str]] = []
    until = time.monotonic() + 2 * STATEMENT_TIMEOUT_S + 1
    threads = [
        threading.Thread(
            target=hammer,
            args=("PUT", server.url(f"/var/t{i}"), until, results),
            kwargs={"data": b"during", "headers": TEXT},
        )
        for i in range(3)
    ] + [
        threading.Thread(target=hammer, args=("GET", server.url("/var/t"), until, results))
        for _ in range(3)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=CLIENT_TIMEOUT_S + 10)
        lingering = lingering_statements(server_url, database, STATEMENT_TIMEOUT_S + 1)
    finally:
        holder.cursor().execute("UNLOCK TABLES")
        holder.close()
    recovery = wait_until(
        lambda: timed_request("GET", server.url("/var/t"))[0] == 200, 5, "recovery"
    )
    print(
        f"\ntable lock: {len(results)} requests, statuses "
        f"{sorted({s for s, _, _ in results}, key=str)}, "
        f"max {max(d for _, d, _ in results):.2f}s; recovered {recovery:.2f}s after release"
    )
    assert results
    assert {s for s, _, _ in results} == {503}
    assert max(d for _, d, _ in results) < REQUEST_BOUND_S
    time.sleep(0.3)
    # None of the writes answered 503 took effect after the lock was released.
    for name in ("t0", "t1", "t2"):
        assert requests.get(server.url(f"/var/{name}"), timeout=CLIENT_TIMEOUT_S).text == "before"
    assert lingering == []
    assert recovery < RELEASE_RECOVERY_S


# --- Concurrency on one name --------------------------------------------------------------


@pytest.fixture(params=["sqlite", "mysql"])
def any_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'vars.db'}"
        return
    with scratch_database(request.getfixturevalue("mysql_server")) as url:
        yield url


VALUE_CHARS = 10 * 1024


@pytest.mark.parametrize("instances", [1, 2])
def test_concurrent_writers_to_one_name_leave_one_whole_value(
    any_store_url: str,
    gunicorn: Callable[..., Gunicorn],
    new_session: Callable[[], requests.Session],
    instances: int,
) -> None:
    servers = [
        gunicorn({**APP_ENV, "DATABASE_URL": any_store_url}, workers=4 // instances, threads=4)
        for _ in range(instances)
    ]
    letters = "ABCDEFGH"
    statuses: list[int] = []
    mixed: list[str] = []
    lock = threading.Lock()

    def writer(i: int, letter: str) -> None:
        session = new_session()
        base = servers[i % len(servers)].base
        for _ in range(8):
            response = session.put(
                f"{base}/var/shared",
                data=(letter * VALUE_CHARS).encode(),
                headers=TEXT,
                timeout=CLIENT_TIMEOUT_S,
            )
            with lock:
                statuses.append(response.status_code)

    def reader(i: int) -> None:
        session = new_session()
        base = servers[i % len(servers)].base
        for _ in range(15):
            response = session.get(f"{base}/var/shared", timeout=CLIENT_TIMEOUT_S)
            body = response.text
            if response.status_code == 200 and (
                len(body) != VALUE_CHARS or set(body) - set(letters) or len(set(body)) != 1
            ):
                with lock:
                    mixed.append(body[:40])

    threads = [threading.Thread(target=writer, args=(i, c)) for i, c in enumerate(letters)]
    threads += [threading.Thread(target=reader, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    final = requests.get(servers[0].url("/var/shared"), timeout=CLIENT_TIMEOUT_S).text
    assert set(statuses) <= {200, 201}
    assert statuses.count(201) == 1
    assert mixed == []
    assert len(final) == VALUE_CHARS
    assert len(set(final)) == 1
    assert final[0] in letters


@pytest.mark.parametrize("instances", [1, 2])
def test_if_match_increments_lose_no_update(
    any_store_url: str,
    gunicorn: Callable[..., Gunicorn],
    new_session: Callable[[], requests.Session],
    instances: int,
) -> None:
    servers = [
        gunicorn({**APP_ENV, "DATABASE_URL": any_store_url}, workers=4 // instances, threads=4)
        for _ in range(instances)
    ]
    clients, increments = 4, 10
    assert (
        requests.put(
            servers[0].url("/var/counter"), data=b"0", headers=TEXT, timeout=CLIENT_TIMEOUT_S
        ).status_code
        == 201
    )
    conflicts: list[int] = []
    unexpected: list[int] = []

    def incrementer(i: int) -> None:
        session = new_session()
        base = servers[i % len(servers)].base
        done = retries = 0
        while done < increments and retries < 2000:
            current = session.get(f"{base}/var/counter", timeout=CLIENT_TIMEOUT_S)
            if current.status_code != 200:
                unexpected.append(current.status_code)
                return
            put = session.put(
                f"{base}/var/counter",
                data=str(int(current.text) + 1).encode(),
                headers={**TEXT, "If-Match": current.headers["ETag"]},
                timeout=CLIENT_TIMEOUT_S,
            )
            if put.status_code == 200:
                done += 1
            elif put.status_code == 412:
                retries += 1
            else:
                unexpected.append(put.status_code)
                return
        conflicts.append(retries)

    threads = [threading.Thread(target=incrementer, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    final = requests.get(servers[0].url("/var/counter"), timeout=CLIENT_TIMEOUT_S).text
    print(f"\nIf-Match counter x{instances} instance(s): {sum(conflicts)} 412 retries")
    assert unexpected == []
    assert len(conflicts) == clients
    assert int(final) == clients * increments
