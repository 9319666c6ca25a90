"""Hostile and broken input against a real gunicorn: clear answers, nothing stored, no stall."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
import requests

from tests.servers import Gunicorn

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gunicorn]:
    """One server for the module: every test here leaves the store as it found it."""
    base = tmp_path_factory.mktemp("bad-input")
    server = Gunicorn({"DATABASE_URL": f"sqlite:///{base / 'v.db'}"}, base / "gunicorn.log", 2, 4)
    server.start()
    yield server
    server.stop()


def raw_request(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def test_slow_clients_do_not_starve_the_workers(server):
    # Slowloris: hundreds of connections that never finish their request headers.
    slow = []
    try:
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            sock.sendall(b"POST /var/a HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            slow.append(sock)
        time.sleep(0.5)
        with requests.Session() as http:
            for index in range(20):
                started = time.monotonic()
                response = http.post(server.url(f"/var/n{index}"), data={"value": "v"}, timeout=10)
                assert response.text == "OK"
                assert time.monotonic() - started < 5
                http.delete(server.url(f"/var/n{index}"), timeout=10)
    finally:
        for sock in slow:
            sock.close()


def test_oversized_headers_are_refused_by_the_server(server):
    big = b"x" * 20000
    response = raw_request(
        server.port, b"GET /var/a HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + big + b"\r\n\r\n"
    )
    assert status_of(response) in (400, 431)
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(200))
    response = raw_request(server.port, b"GET /var/a HTTP/1.1\r\nHost: h\r\n" + many + b"\r\n")
    assert status_of(response) in (400, 431)


def test_an_overlong_request_line_is_414(server):
    response = raw_request(
        server.port, b"GET /var/" + b"a" * 10000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    )
    assert status_of(response) == 414


def test_invalid_utf8_and_nul_in_a_raw_request_are_400_and_store_nothing(server):
    for path in (b"/var/%FF%FE", b"/var/a%00b"):
        response = raw_request(
            server.port,
            b"POST " + path + b" HTTP/1.1\r\nHost: h\r\nConnection: close\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 7\r\n\r\n"
            b"value=x",
        )
        assert status_of(response) == 400, response[:300]
        assert b"Traceback" not in response
    assert requests.get(server.url("/var"), timeout=10).json()["variables"] == []


def test_a_declared_body_larger_than_the_limit_is_413_without_reading_it(server):
    response = raw_request(
        server.port,
        b"POST /var/a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 900000000\r\n\r\n"
        b"value=x",
    )
    assert status_of(response) == 413
    assert requests.get(server.url("/var/a"), timeout=10).status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/static/..%2f..%2fapp.py",
        "/static/../app.py",
        "/var/..%2F..%2Fetc%2Fpasswd",
        "/..%2fapp.py",
    ],
)
def test_path_traversal_reaches_no_file(server, path):
    response = raw_request(
        server.port, f"GET {path} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".encode()
    )
    assert status_of(response) in (400, 404)
    assert b"import" not in response
    assert b"root:" not in response


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/x-www-form-urlencoded", b"value=%zz%"),
        ("application/json", b'{"value": "\\ud800"}'),
        ("application/json", b"\xff\xfe"),
        ("text/plain; charset=latin-1", b"caf\xe9"),
        ("application/octet-stream", b"\x00\x01"),
    ],
)
def test_malformed_bodies_are_4xx_and_store_nothing(server, content_type, body):
    response = requests.put(
        server.url("/var/bad"), data=body, headers={"Content-Type": content_type}, timeout=10
    )
    assert response.status_code in (400, 415), response.text
    assert "\n" not in response.text.rstrip("\n")
    assert requests.get(server.url("/var/bad"), timeout=10).status_code == 404


def test_a_malformed_header_is_400_and_logged_without_a_traceback(server):
    # Two Content-Type fields (a scanner re-sending a recorded request does this): gunicorn
    # refuses the request. The JSON access log must not fail on gunicorn's own error answer,
    # which once turned the 400 into a 500 (gevent) or a closed connection (threads).
    response = raw_request(
        server.port,
        b"POST /var/dup HTTP/1.1\r\nHost: h\r\nContent-Type: application/x-www-form-urlencoded"
        b"\r\ncontent-type: application/x-www-form-urlencoded\r\nContent-Length: 7\r\n"
        b"Connection: close\r\n\r\nvalue=1",
    )
    assert status_of(response) == 400
    log = server.log()
    assert "Traceback" not in log
    assert any('"status": 400' in line and "/var/dup" in line for line in log.splitlines())
