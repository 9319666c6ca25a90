"""A request's deadline for its database work (``storage/deadline.py``), on both stores.

Over a real slow link (tests/test_slow_network.py) a transaction that took 21 s now ends in a
503 at ``DATABASE_TIMEOUT``. Here, the pieces: no statement starts past the deadline, what a
cut transaction began is rolled back and its connection kept, a pool wait ends at the deadline,
each request gets its own deadline, and a long-poll's read after its wait gets a fresh one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

import db
import watch
from app import create_app
from storage import deadline
from storage.mysql.store import MySQLStore


def test_no_statement_starts_past_the_deadline(app: Flask) -> None:
    store = db.get_store(app)
    store.ensure_ready()
    store.put("k", "v")
    with deadline.bounded(0.0), pytest.raises(deadline.DeadlineExceeded) as caught:
        store.get("k")
    assert "DATABASE_TIMEOUT" in str(caught.value)
    assert isinstance(caught.value, db.StoreUnavailable)  # a 503, with Retry-After
    assert store.get("k") is not None  # no deadline outside the block


def test_a_transaction_cut_at_the_deadline_is_rolled_back_and_its_connection_kept(
    mysql_database: str,
) -> None:
    app = create_app({"TESTING": True, "DATABASE_URL": mysql_database})
    store = db.get_store(app)
    assert isinstance(store, MySQLStore)
    try:
        store.ensure_ready()
        store.put("cut", "before")
        opened = _open_connections(store)

        def work(cur: Any) -> None:
            cur.execute("UPDATE vars SET value = 'half' WHERE name = %s", (b"cut",))
            time.sleep(0.3)  # the deadline passes between two statements
            cur.execute("UPDATE vars SET value = 'whole' WHERE name = %s", (b"cut",))

        with deadline.bounded(0.2), pytest.raises(deadline.DeadlineExceeded):
            store.connections.transaction(work)
        current = store.get("cut")
        assert current is not None
        assert current.value == "before"
        assert _open_connections(store) == opened  # in step: rolled back, not closed
    finally:
        watch.stop_background(app)
        store.close()


def _open_connections(store: MySQLStore) -> int:
    rows = store.connections.query(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = DATABASE()"
    )
    return int(rows[0][0])


@pytest.fixture
def one_connection_app(store_url: str) -> Iterator[Flask]:
    watch.stop_all()
    app = create_app(
        {
            "TESTING": True,
            "DATABASE_URL": store_url,
            "DATABASE_POOL_SIZE": 1,
            "DATABASE_TIMEOUT": 5,
        }
    )
    yield app
    watch.stop_background(app)
    db.get_store(app).close()


def test_a_pool_wait_ends_at_the_deadline(one_connection_app: Flask) -> None:
    store = db.get_store(one_connection_app)
    store.ensure_ready()
    held, release = threading.Event(), threading.Event()

    def hold_the_only_connection() -> None:
        # The pool: the SQLite store's own, the MySQL store's connections'.
        pool = getattr(store, "connections", store)._pool
        with pool.lease():
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold_the_only_connection)
    holder.start()
    try:
        assert held.wait(10)
        started = time.monotonic()
        with deadline.bounded(0.3), pytest.raises(deadline.DeadlineExceeded):
            store.get("k")
        waited = time.monotonic() - started
    finally:
        release.set()
        holder.join(10)
    # The pool alone would have waited DATABASE_TIMEOUT (5 s).
    assert waited < 2.5


def test_each_request_gets_a_deadline_and_none_is_left_after_it(client: Any) -> None:
    seen: list[float | None] = []
    app: Flask = client.application

    @app.get("/deadline-probe")
    def probe() -> str:
        seen.append(deadline.remaining())
        return "ok"

    assert client.get("/deadline-probe").status_code == 200
    left = seen[0]
    assert left is not None
    assert 0 < left <= app.config["DATABASE_TIMEOUT"]
    assert deadline.remaining() is None  # teardown took it away


def test_a_long_poll_outlasting_database_timeout_still_reads_the_change(store_url: str) -> None:
    watch.stop_all()
    app = create_app({"TESTING": True, "DATABASE_URL": store_url, "DATABASE_TIMEOUT": 1})
    try:
        client = app.test_client()
        assert client.put("/var/lp", data={"value": "one"}).status_code in (200, 201)

        def write_later() -> None:
            time.sleep(1.8)  # past the request's first deadline
            db.get_store(app).put("lp", "two")

        writer = threading.Thread(target=write_later)
        writer.start()
        response = client.get("/var/lp?wait=5&after_version=1")
        writer.join(10)
        assert response.status_code == 200, response.get_data(as_text=True)
        assert response.get_data(as_text=True) == "two"
    finally:
        watch.stop_background(app)
        db.get_store(app).close()
