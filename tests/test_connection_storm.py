"""A connection storm through a real gunicorn (the shipped configuration): 2,000 client
connections opened at once and held, then normal traffic. The service must keep answering
/healthz and ordinary requests, crash nothing and run out of no file descriptors.

The limits that apply (README, Guarantees): gunicorn's listen ``backlog`` (2048), the
workers' ``worker_connections`` (GUNICORN_WORKER_CONNECTIONS, 1000 each) and each process's
RLIMIT_NOFILE (``ulimit -n``).
"""

from __future__ import annotations

import resource
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from tests.servers import Gunicorn

pytestmark = pytest.mark.slow

STORM = 2000
NORMAL_REQUESTS = 40
TEXT = {"Content-Type": "text/plain; charset=utf-8"}


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"needs {needed} file descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def test_two_thousand_connections_at_once_leave_the_service_answering(
    gunicorn: Callable[..., Gunicorn], tmp_path: Path
) -> None:
    raise_fd_limit(STORM + 512)
    server = gunicorn({"DATABASE_URL": f"sqlite:///{tmp_path / 'vars.db'}"})
    assert (
        requests.put(server.url("/var/storm"), data=b"calm", headers=TEXT, timeout=10).status_code
        == 201
    )
    sockets: list[socket.socket] = []
    refused = 0
    began = time.monotonic()
    try:
        for _ in range(STORM):
            sock = socket.socket()
            sock.settimeout(5)
            try:
                sock.connect(("127.0.0.1", server.port))
            except OSError:
                refused += 1
                sock.close()
                continue
            sockets.append(sock)
        opened = time.monotonic() - began
        durations, statuses = [], []
        for i in range(NORMAL_REQUESTS):
            path = "/healthz" if i % 2 else "/var/storm"
            started = time.monotonic()
            response = requests.get(server.url(path), timeout=10)
            durations.append(time.monotonic() - started)
            statuses.append(response.status_code)
        write = requests.put(
            server.url("/var/storm"), data=b"after", headers=TEXT, timeout=10
        ).status_code
    finally:
        for sock in sockets:
            sock.close()
    after = requests.get(server.url("/var/storm"), timeout=10)
    log = server.log()
    print(
        f"\n{len(sockets)} connections held ({refused} refused) in {opened:.2f}s; "
        f"{NORMAL_REQUESTS} requests meanwhile: statuses {sorted(set(statuses))}, "
        f"max {max(durations):.3f}s; a write: {write}; after closing them: {after.status_code}"
    )
    assert refused == 0
    assert set(statuses) == {200}
    assert max(durations) < 5
    assert write == 200
    assert after.text == "after"
    assert server.proc is not None
    assert server.proc.poll() is None
    assert "Traceback" not in log
    assert "Too many open files" not in log
