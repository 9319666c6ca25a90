"""The worker var_keeper is served by (workers.py): a slow client costs a buffer, not a waiting
thread, and HTTP/1.1 still works as it does under gthread (keep-alive, pipelining, limits).

Against real gunicorns on SQLite. The bounds are loose on purpose (a noisy 2-core CI machine):
"answered within 5 s" where a starved server would not answer at all.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest
import requests

from tests.servers import Gunicorn
from workers import _WATCH_REQUEST, CLIENT_IO_TIMEOUT, MAX_BUFFERED_BODY, body_to_buffer

pytestmark = pytest.mark.slow

FORM = "application/x-www-form-urlencoded"


def start(base: Path, env: dict[str, str], workers: int = 2, threads: int = 2) -> Gunicorn:
    env = {"DATABASE_URL": f"sqlite:///{base / 'v.db'}", **env}
    return Gunicorn(env, base / "gunicorn.log", workers, threads).start()


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gunicorn]:
    """2 workers x 2 threads: four stuck threads would starve it."""
    server = start(tmp_path_factory.mktemp("small"), {})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gunicorn]:
    """gunicorn.conf.py's own defaults: no WEB_CONCURRENCY, GUNICORN_THREADS or worker class."""
    base = tmp_path_factory.mktemp("shipped")
    server = Gunicorn({"DATABASE_URL": f"sqlite:///{base / 'v.db'}"}, base / "log")
    for name in ("WEB_CONCURRENCY", "GUNICORN_THREADS", "GUNICORN_WORKER_CLASS"):
        server.env.pop(name, None)
    server.start()
    yield server
    server.stop()


def connect(server: Gunicorn) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=30)


def post_head(path: str, length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: h\r\nContent-Type: {FORM}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def read_response(stream: BinaryIO) -> tuple[int, bytes]:
    """One response (status, body) from ``stream``; the body by its Content-Length."""
    status = int(stream.readline().split(b" ", 2)[1])
    length = 0
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, stream.read(length)


def raw_request(server: Gunicorn, data: bytes) -> bytes:
    with connect(server) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def assert_the_server_answers(server: Gunicorn, within: float = 5.0, count: int = 10) -> None:
    """Health checks and writes answer, each within ``within`` seconds."""
    with requests.Session() as http:
        for index in range(count):
            started = time.monotonic()
            assert http.get(server.url("/healthz"), timeout=30).text == "ok\n"
            response = http.post(server.url(f"/var/check{index}"), data={"value": "v"}, timeout=30)
            assert response.text == "OK"
            assert time.monotonic() - started < within


# --- Which worker ---------------------------------------------------------------------------


def test_the_shipped_worker_is_the_buffered_thread_worker(shipped):
    log = shipped.log()
    assert "Using worker: workers.BufferedThreadWorker" in log
    assert log.count("Booting worker with pid") == 2
    assert_the_server_answers(shipped)


@pytest.mark.parametrize("worker_class", ["gthread", "gevent"])
def test_gunicorns_own_worker_classes_still_serve(tmp_path, worker_class):
    server = start(tmp_path, {"GUNICORN_WORKER_CLASS": worker_class}, workers=1)
    try:
        assert f"Using worker: {worker_class}" in server.log()
        assert_the_server_answers(server, count=2)
    finally:
        server.stop()


# --- Slow clients ---------------------------------------------------------------------------


@pytest.mark.parametrize("config", ["shipped", "small"])
def test_slow_headers_do_not_starve_the_threads(request, config):
    server = request.getfixturevalue(config)
    slow = []
    try:
        for _ in range(300):
            sock = connect(server)
            sock.sendall(b"POST /var/a HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            slow.append(sock)
        time.sleep(0.5)
        assert_the_server_answers(server)
    finally:
        for sock in slow:
            sock.close()


def test_slow_small_bodies_do_not_starve_the_threads(small):
    slow = []
    try:
        for index in range(100):
            sock = connect(small)
            sock.sendall(post_head(f"/var/slow{index}", 1000) + b"value=" + b"x" * 500)
            slow.append(sock)
        time.sleep(0.5)
        assert_the_server_answers(small)
        # The rest of the body arrives: each is answered and stored.
        for sock in slow:
            sock.sendall(b"x" * 494)
        for index, sock in enumerate(slow):
            assert read_response(sock.makefile("rb")) == (200, b"OK")
            assert requests.get(small.url(f"/var/slow{index}"), timeout=10).text == "x" * 994
    finally:
        for sock in slow:
            sock.close()


def send_stalled_bodies(server: Gunicorn, count: int) -> list[socket.socket]:
    """``count`` POSTs whose body is too large to collect first and stops after a few bytes."""
    stalled = []
    for index in range(count):
        sock = connect(server)
        sock.sendall(post_head(f"/var/stalled{index}", MAX_BUFFERED_BODY * 4) + b"value=x")
        stalled.append(sock)
    time.sleep(0.5)
    return stalled


def test_stalled_large_bodies_hold_a_thread_each_for_the_timeout_at_most(tmp_path):
    server = start(tmp_path, {}, workers=1, threads=2)
    try:
        # Fewer than the threads: the others serve as usual.
        stalled = send_stalled_bodies(server, 1)
        assert_the_server_answers(server)
        # Two more than the threads: the queue drains in two rounds of CLIENT_IO_TIMEOUT.
        stalled += send_stalled_bodies(server, 3)
        started = time.monotonic()
        assert_the_server_answers(server, within=2 * CLIENT_IO_TIMEOUT + 10, count=1)
        assert_the_server_answers(server, count=3)
        assert time.monotonic() - started < 2 * CLIENT_IO_TIMEOUT + 10
        for sock in stalled:  # each got an answer (400: its body never came) or a close
            assert sock.recv(100)[:12] in (b"HTTP/1.1 400", b"")
            sock.close()
        assert "Traceback" not in server.log()
    finally:
        server.stop()


def test_a_client_that_stops_reading_costs_a_log_line_not_a_traceback(tmp_path):
    server = start(tmp_path, {}, workers=1, threads=2)
    try:
        value = "v" * (1024 * 1024 - 16)
        names = [f"big{i}" for i in range(8)]
        with requests.Session() as http:
            for name in names:
                text = {"Content-Type": "text/plain; charset=utf-8"}
                assert http.put(server.url(f"/var/{name}"), data=value.encode(), headers=text).ok
        # 8 MiB of JSON asked for, none of it read: the server's writes block, then time out.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        query = "&".join(f"name={name}" for name in names)
        sock.sendall(f"GET /var?{query} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
        deadline = time.monotonic() + CLIENT_IO_TIMEOUT + 20
        while "sent or read nothing" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.5)
        sock.close()
        log = server.log()
        assert f"sent or read nothing for {CLIENT_IO_TIMEOUT:.0f} s: connection closed" in log
        assert "Traceback" not in log
        assert "Socket error" not in log
        assert_the_server_answers(server, count=2)
    finally:
        server.stop()


def test_a_silent_connection_is_closed_after_the_keepalive_timeout(small):
    with connect(small) as sock:
        started = time.monotonic()
        assert sock.recv(100) == b""
        assert time.monotonic() - started < 5  # keepalive: 2 s


def test_sigterm_stops_promptly_with_requests_half_sent(tmp_path):
    server = start(tmp_path, {})
    slow = []
    for _ in range(50):
        slow.append(connect(server))
        slow[-1].sendall(b"GET /healthz HTTP/1.1\r\nHost: h\r\nX-Slow: ")
    time.sleep(0.5)
    started = time.monotonic()
    try:
        assert server.stop() == 0
        assert time.monotonic() - started < 8  # graceful_timeout: kept for none of them
    finally:
        for sock in slow:
            sock.close()


# --- HTTP/1.1 as before ---------------------------------------------------------------------


def test_pipelined_requests_are_answered_in_order(small):
    requests.post(small.url("/var/pipe"), data={"value": "first"}, timeout=10)
    body = b"value=second"
    with connect(small) as sock:
        sock.sendall(
            b"GET /var/pipe HTTP/1.1\r\nHost: h\r\n\r\n"
            + post_head("/var/pipe", len(body))
            + body
            + b"GET /var/pipe HTTP/1.1\r\nHost: h\r\n\r\nGET /healthz HTTP/1.1\r\nHost: h\r\n\r\n"
        )
        stream = sock.makefile("rb")
        answers = [read_response(stream) for _ in range(4)]
    assert answers == [(200, b"first"), (200, b"OK"), (200, b"second"), (200, b"ok\n")]


def test_a_kept_alive_connection_serves_request_after_request(small):
    with connect(small) as sock:
        stream = sock.makefile("rb")
        for index in range(5):
            body = f"value=v{index}".encode()
            sock.sendall(post_head("/var/kept", len(body)) + body)
            assert read_response(stream) == (200, b"OK")
            time.sleep(0.3)  # back on the poller meanwhile
            sock.sendall(b"GET /var/kept HTTP/1.1\r\nHost: h\r\n\r\n")
            assert read_response(stream) == (200, f"v{index}".encode())


def test_a_request_in_tiny_pieces_is_answered(small):
    body = b"value=" + "piece by piece: é".encode()
    data = post_head("/var/tiny", len(body)) + body
    with connect(small) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for offset in range(0, len(data), 3):
            sock.sendall(data[offset : offset + 3])
            time.sleep(0.01)
        assert read_response(sock.makefile("rb")) == (200, b"OK")
    assert requests.get(small.url("/var/tiny"), timeout=10).text == "piece by piece: é"


def test_a_large_post_is_stored_intact(small):
    value = "".join(chr(0x20 + i % 90) for i in range(1024 * 1024))
    response = requests.post(small.url("/var/large"), data={"value": value}, timeout=30)
    assert response.text == "OK"
    assert requests.get(small.url("/var/large"), timeout=30).text == value


def test_gunicorns_limits_still_answer_414_431_and_400(small):
    long_line = b"GET /var/" + b"a" * 10000 + b" HTTP/1.1\r\nHost: h\r\n\r\n"
    assert status_of(raw_request(small, long_line)) == 414
    big_field = b"GET /var/a HTTP/1.1\r\nHost: h\r\nX-Big: " + b"x" * 20000 + b"\r\n\r\n"
    assert status_of(raw_request(small, big_field)) in (400, 431)
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(200))
    assert status_of(raw_request(small, b"GET /a HTTP/1.1\r\nHost: h\r\n" + many + b"\r\n")) in (
        400,
        431,
    )
    assert status_of(raw_request(small, b"GET /healthz HTTP/1.1\nHost: h\n\n")) == 400


def test_heads_that_cannot_end_within_the_limits_are_answered_without_waiting(small):
    started = time.monotonic()
    # A request line already over limit_request_line, its end not sent: 414 at once.
    with connect(small) as sock:
        sock.sendall(b"GET /var/" + b"a" * 9000)
        assert status_of(sock.recv(100)) == 414
    # Headers past everything gunicorn's limits allow, with no end: 431 without waiting.
    with connect(small) as sock:
        sock.sendall(b"GET /var/a HTTP/1.1\r\n")
        try:
            for _ in range(200):
                sock.sendall(b"X-Filler: " + b"x" * 8000 + b"\r\n")
        except OSError:
            pass  # closed by the server once refused
        assert sock.recv(100)[:12] in (b"HTTP/1.1 431", b"")
    assert time.monotonic() - started < 5
    assert_the_server_answers(small, count=2)


# --- What is collected first ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "buffered"),
    [
        (b"GET / HTTP/1.1\r\nHost: h", 0),
        (b"POST / HTTP/1.1\r\ncontent-length: 1000", 1000),
        (b"POST / HTTP/1.1\r\nContent-Length: %d" % MAX_BUFFERED_BODY, MAX_BUFFERED_BODY),
        (b"POST / HTTP/1.1\r\nContent-Length: %d" % (MAX_BUFFERED_BODY + 1), 0),
        (b"POST / HTTP/1.1\r\nContent-Length: 10\r\nExpect: 100-continue", 0),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked", 0),
        (b"POST / HTTP/1.1\r\nContent-Length: ten", 0),
    ],
)
def test_only_small_bodies_of_known_length_are_collected_before_serving(head, buffered):
    assert body_to_buffer(head) == buffered


def test_open_watchers_do_not_take_the_threads_requests_need(small):
    # 2 workers x 2 threads, and 24 watchers: 12 event streams and 12 long-polls, all idle.
    watchers = []
    try:
        for index in range(12):
            stream = connect(small)
            stream.sendall(b"GET /events HTTP/1.1\r\nHost: h\r\nAccept: text/event-stream\r\n\r\n")
            poll = connect(small)
            poll.sendall(f"GET /var/idle{index}?wait=30 HTTP/1.1\r\nHost: h\r\n\r\n".encode())
            watchers += [stream, poll]
        time.sleep(1.0)
        with requests.Session() as http:
            for index in range(10):
                started = time.monotonic()
                assert http.post(small.url(f"/var/w{index}"), data={"value": "v"}, timeout=10).ok
                assert http.get(small.url(f"/var/w{index}"), timeout=10).text == "v"
                assert time.monotonic() - started < 5
        # The watchers are still there, and still watching: a write wakes a long-poll.
        requests.post(small.url("/var/idle3"), data={"value": "now"}, timeout=10)
        woken = watchers[7].makefile("rb")
        assert read_response(woken) == (200, b"now")
    finally:
        for sock in watchers:
            sock.close()


@pytest.mark.parametrize(
    ("line", "watcher"),
    [
        (b"GET /events HTTP/1.1", True),
        (b"GET /events?prefix=app/ HTTP/1.1", True),
        (b"GET /var/a?wait=10 HTTP/1.1", True),
        (b"GET /var/a?after_version=3&wait=10 HTTP/1.1", True),
        (b"GET /var/a HTTP/1.1", False),
        (b"GET /var/eventsx HTTP/1.1", False),
        (b"POST /var/a?wait=10 HTTP/1.1", False),
        (b"GET /var/a?await=1 HTTP/1.1", False),
    ],
)
def test_watchers_are_told_from_their_request_line(line, watcher):
    assert bool(_WATCH_REQUEST.match(line + b"\r\nHost: h\r\n\r\n")) is watcher
