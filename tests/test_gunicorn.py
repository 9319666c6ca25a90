"""The service as it runs: a real gunicorn over HTTP, against real databases."""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from tests.servers import ROOT, free_port, scratch_database, server_connection, wait_for_http

pytestmark = pytest.mark.slow

# Every request is bounded: a hung server fails the test instead of hanging it.
get = functools.partial(requests.get, timeout=15)
post = functools.partial(requests.post, timeout=15)


@pytest.fixture(params=["sqlite", "mysql"])
def server_store(request: pytest.FixtureRequest, tmp_path: Path):
    """A fresh store URL: a SQLite file, or a scratch MySQL database dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'vars.db'}"
        return
    with scratch_database(request.getfixturevalue("mysql_server")) as url:
        yield url


def test_concurrent_writers_on_distinct_names_all_read_back_exactly(gunicorn, server_store):
    server = gunicorn({"DATABASE_URL": server_store}, workers=3, threads=4)
    names = [f"w{i:03d}/é ü" for i in range(400)]

    def write(name: str) -> int:
        with requests.Session() as http:
            value = f"{name}|" + "😀" * (len(name) * 7)
            return http.post(server.url("/var/" + quote(name)), data={"value": value}).status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(write, names))
    assert statuses == [200] * len(names)
    with requests.Session() as http:
        for name in names:
            response = http.get(server.url("/var/" + quote(name)))
            assert response.text == f"{name}|" + "😀" * (len(name) * 7)


def test_a_restart_keeps_the_data(gunicorn, server_store):
    server = gunicorn({"DATABASE_URL": server_store})
    assert post(server.url("/var/keep"), data={"value": "me"}).text == "OK"
    assert server.stop() == 0
    again = gunicorn({"DATABASE_URL": server_store})
    assert get(again.url("/var/keep")).text == "me"


def test_sigterm_stops_gracefully(gunicorn, server_store):
    server = gunicorn({"DATABASE_URL": server_store})
    started = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - started < 10


def test_it_starts_without_the_database_answers_503_then_recovers_by_itself(
    gunicorn, private_mariadb
):
    password = "s3cret-Pa55"
    url = f"mysql://keeper:{password}@127.0.0.1:{private_mariadb.port}/vars"
    server = gunicorn(
        {"DATABASE_URL": url, "DATABASE_CONNECT_TIMEOUT": "1"}, wait_ready=False, workers=2
    )

    assert get(server.url("/healthz")).status_code == 200
    response = get(server.url("/var/a"))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert "database is unavailable" in response.text
    assert post(server.url("/var/a"), data={"value": "x"}).status_code == 503
    assert get(server.url("/readyz")).status_code == 503

    # The database appears; the service must become ready without a restart.
    private_mariadb.start()
    root = server_connection(private_mariadb.url)
    root.cursor().execute(f"CREATE USER 'keeper'@'%' IDENTIFIED BY '{password}'")
    root.cursor().execute("GRANT ALL ON *.* TO 'keeper'@'%'")
    root.close()
    started = time.monotonic()
    while get(server.url("/readyz")).status_code != 200:
        assert time.monotonic() - started < 30, server.log()[-3000:]
        time.sleep(0.2)
    assert post(server.url("/var/a"), data={"value": "x"}).text == "OK"
    assert get(server.url("/var/a")).text == "x"

    log = server.log()
    assert "waiting for the database at mysql://keeper:***@127.0.0.1" in log
    assert "store ready" in log
    assert "connection class MySQLConnection (pure Python" in log
    assert password not in log
    assert "Traceback" not in log


@pytest.mark.parametrize("charset", ["latin1", "utf8mb4"])
def test_the_tutorials_table_is_upgraded_in_place(gunicorn, mysql_server, charset):
    with scratch_database(mysql_server) as url:
        database = url.rsplit("/", 1)[1]
        conn = server_connection(mysql_server)
        cur = conn.cursor()
        cur.execute(f"CREATE DATABASE `{database}` CHARACTER SET {charset}")
        cur.execute(f"USE `{database}`")
        # Exactly the tutorial's statements (section 6 of the seed document).
        cur.execute(
            """
        CREATE TABLE IF NOT EXISTS vars(
            id INT AUTO_INCREMENT PRIMARY KEY,
            name VARCHAR(100),
            value VARCHAR(100),
            UNIQUE (name)
            )
            """
        )
        old_rows = {"a": "1", "greeting": "hello world", "café": "crème", "None": "None"}
        for name, value in old_rows.items():
            cur.execute(
                "INSERT INTO vars (name, value) VALUES (%s, %s) ON DUPLICATE KEY UPDATE value=%s",
                (name, value, value),
            )
        conn.close()

        # Two servers start together on the old table: one migrates, neither breaks.
        servers = []
        threads = [
            threading.Thread(
                target=lambda: servers.append(gunicorn({"DATABASE_URL": url}, workers=2))
            )
            for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(servers) == 2
        for server in servers:
            for name, value in old_rows.items():
                assert get(server.url("/var/" + quote(name))).text == value
        first = servers[0]
        long_value = "no longer cut at 100 characters " * 100
        assert post(first.url("/var/a"), data={"value": long_value}).text == "OK"
        assert get(servers[1].url("/var/a")).text == long_value
        assert post(first.url("/var/A"), data={"value": "upper"}).text == "OK"
        assert get(first.url("/var/a")).text == long_value
        version = get(first.url("/var/greeting"), headers={"Accept": "application/json"})
        assert version.json()["version"] == 1
        # A new name's version is its own, not the number of a row (the tutorial's id is gone).
        json_accept = {"Accept": "application/json"}
        created = post(first.url("/var/new-name"), data={"value": "v"}, headers=json_accept)
        assert created.json()["version"] == 1
        assert get(first.url("/var/A"), headers=json_accept).json()["version"] == 1
        assert get(first.url("/var/new-name")).headers["ETag"] == '"1"'
        conn = server_connection(mysql_server)
        cur = conn.cursor()
        cur.execute(
            "SELECT COLUMN_NAME, COLUMN_KEY FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = 'vars' AND COLUMN_NAME IN ('id', 'name')",
            (database,),
        )
        assert cur.fetchall() == [("name", "PRI")]
        cur.execute(
            "SELECT COUNT(DISTINCT INDEX_NAME) FROM information_schema.STATISTICS "
            "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = 'vars'",
            (database,),
        )
        assert cur.fetchall()[0][0] == 2  # PRIMARY (name) and expires_at: no duplicate of name
        conn.close()
        logs = first.log() + servers[1].log()
        assert logs.count("schema migrated") == 1
        assert "Traceback" not in logs


def test_python_app_py_serves_with_gunicorn_not_the_debug_server(tmp_path: Path):
    port = free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "WEB_CONCURRENCY": "1",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'v.db'}",
    }
    log = tmp_path / "app.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "app.py"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/readyz", ok=lambda s: s == 200)
        assert post(f"http://127.0.0.1:{port}/var/a", data={"value": "v"}).text == "OK"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    text = log.read_text()
    assert "Starting gunicorn" in text
    assert "Debugger" not in text
    assert "development server" not in text


def start_python_app_py(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``python app.py`` as ``make run`` starts it, on a spare port of 127.0.0.1."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "app.py"],
            cwd=ROOT,
            env={**os.environ, "HOST": "127.0.0.1", **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def test_python_app_py_serves_the_metrics_of_its_workers(tmp_path: Path):
    port = free_port()
    env = {"PORT": str(port), "WEB_CONCURRENCY": "2", "DATABASE_URL": f"sqlite:///{tmp_path}/v"}
    proc = start_python_app_py(env, tmp_path / "app.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(base + "/readyz", ok=lambda s: s == 200)
        assert post(base + "/var/m", data={"value": "1"}).text == "OK"
        metrics = get(base + "/metrics")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert metrics.status_code == 200
    assert 'var_keeper_requests_total{method="POST",route="/var/<name:name>",status="200"} 1.0' in (
        metrics.text
    ), metrics.text[:2000]


def test_request_ids_made_by_two_workers_never_repeat(tmp_path: Path):
    """Ids come from ``random``, which each forked worker reseeds: no two workers share one."""
    port = free_port()
    env = {"PORT": str(port), "WEB_CONCURRENCY": "2", "DATABASE_URL": f"sqlite:///{tmp_path}/v"}
    log = tmp_path / "app.log"
    proc = start_python_app_py(env, log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(base + "/readyz", ok=lambda s: s == 200)
        # a new connection each time, so that both workers answer
        with ThreadPoolExecutor(8) as pool:
            ids = list(
                pool.map(lambda _: get(base + "/healthz").headers["X-Request-ID"], range(400))
            )
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", made) for made in ids)
    answered = [json.loads(line) for line in log.read_text().splitlines() if '"/healthz"' in line]
    by_worker = {line["pid"] for line in answered if line["request_id"] in ids}
    assert len(by_worker) == 2, f"one worker answered all {len(answered)} requests"


@pytest.mark.parametrize(
    "setting", ["DATABASE_PASSWORD_FILE", "READ_TOKENS_FILE", "WRITE_TOKENS_FILE"]
)
def test_a_missing_secret_file_stops_start_up_with_one_clear_line(tmp_path: Path, setting):
    missing = tmp_path / "no-such-secret"
    env = {
        "PORT": str(free_port()),
        "WEB_CONCURRENCY": "2",
        "DATABASE_URL": "mysql://keeper@127.0.0.1:1/vars",
        setting: str(missing),
    }
    log = tmp_path / "app.log"
    proc = start_python_app_py(env, log)
    assert proc.wait(timeout=60) != 0
    text = log.read_text()
    expected = f"var_keeper cannot start: {setting}={missing}: No such file or directory"
    assert expected in text.splitlines(), text
    assert "Traceback" not in text
    assert "Worker failed to boot" not in text


ISO_TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def test_every_log_line_starts_with_one_timestamp_format(gunicorn, tmp_path: Path):
    server = gunicorn({"DATABASE_URL": f"sqlite:///{tmp_path / 'v.db'}"})
    post(server.url("/var/a"), data={"value": "x"})
    server.stop()
    lines = [line for line in server.log().splitlines() if line.strip()]
    plain = [line for line in lines if not line.startswith("{")]
    # gunicorn's own lines and the app's ("var_keeper...: ") alike.
    assert any("Starting gunicorn" in line for line in plain)
    assert any("] var_keeper" in line for line in plain)
    for line in plain:
        assert re.match(rf"{ISO_TIME} \[\d+\] \[[A-Z]+\] ", line), line
    for line in lines:
        if line.startswith("{"):
            assert re.fullmatch(ISO_TIME, json.loads(line)["time"]), line


def test_an_unusable_setting_stops_a_worker_with_one_clear_line(tmp_path: Path):
    env = {"PORT": str(free_port()), "WEB_CONCURRENCY": "1", "DATABASE_URL": "ftp://host/vars"}
    log = tmp_path / "app.log"
    proc = start_python_app_py(env, log)
    assert proc.wait(timeout=60) != 0
    text = log.read_text()
    expected = "var_keeper cannot start: DATABASE_URL must start with mysql:// or sqlite:///"
    assert any(line.startswith(expected) for line in text.splitlines()), text
    assert "Traceback" not in text


def test_a_thousand_names_are_read_by_a_transaction_where_a_url_cannot_hold_them(
    gunicorn, tmp_path: Path
):
    server = gunicorn({"DATABASE_URL": f"sqlite:///{tmp_path / 'v.db'}"})
    names = [f"batch/n{i:03d}" for i in range(1000)]
    post(server.url("/var/batch/n007"), data={"value": "seven"})
    query = "&".join(f"name={quote(name, safe='')}" for name in names)
    assert get(server.url("/var?" + query)).status_code == 414  # gunicorn's request line limit
    operations = [{"op": "get", "name": name} for name in names]
    response = post(server.url("/txn"), json={"operations": operations})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["name"] for r in results] == names
    assert [r.get("value") for r in results if r["version"] is not None] == ["seven"]
    too_many = post(server.url("/txn"), json={"operations": [*operations, operations[0]]})
    assert too_many.status_code == 413


def test_a_worker_keeps_what_it_built_at_start_up_out_of_garbage_collection(tmp_path: Path):
    """gunicorn.conf.py's post_worker_init freezes the objects the worker has built (the app,
    its modules), so that full collections no longer scan them while holding the GIL. Run in
    a process of its own: the config file sets environment variables as it loads."""
    script = (
        "import gc, runpy, types\n"
        "config = runpy.run_path('gunicorn.conf.py')\n"
        "from app import create_app\n"
        f"app = create_app({{'DATABASE_URL': 'sqlite:///{tmp_path}/v.db'}})\n"
        "before = gc.get_freeze_count()\n"
        "config['post_worker_init'](types.SimpleNamespace(wsgi=app, alive=True))\n"
        "print(before, gc.get_freeze_count())\n"
    )
    env = {
        **os.environ,  # the directories the config file would otherwise make in /tmp
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        "VAR_KEEPER_POLICY_LAST_GOOD": str(tmp_path / "policy-in-force"),
    }
    argv = [sys.executable, "-c", script]
    run = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    before, after = map(int, run.stdout.split())
    assert before == 0
    assert after > 10_000
