"""Access control, request ids, metrics and what the logs never show."""

from __future__ import annotations

import functools
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from app import create_app

get = functools.partial(requests.get, timeout=15)
post = functools.partial(requests.post, timeout=15)

READ, WRITE = "read-token-0123456789", "write-token-9876543210"


@pytest.fixture
def guarded(store_url: str, tmp_path: Path):
    tokens = tmp_path / "write_tokens"
    tokens.write_text(f"{WRITE}\n")
    app = create_app(
        {
            "TESTING": True,
            "DATABASE_URL": store_url,
            "READ_TOKENS": [READ],
            "WRITE_TOKENS": [WRITE],
        }
    )
    return app.test_client()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_without_a_token_the_api_answers_401_with_a_challenge(guarded):
    response = guarded.get("/var/a")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="var_keeper"'
    assert guarded.post("/var/a", data={"value": "x"}).status_code == 401
    assert guarded.get("/var").status_code == 401


def test_a_wrong_token_is_401_invalid_token(guarded):
    response = guarded.get("/var/a", headers=bearer("guess"))
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_a_read_token_reads_but_may_not_write(guarded):
    assert guarded.post("/var/a", data={"value": "x"}, headers=bearer(WRITE)).data == b"OK"
    assert guarded.get("/var/a", headers=bearer(READ)).data == b"x"
    response = guarded.post("/var/a", data={"value": "y"}, headers=bearer(READ))
    assert response.status_code == 403
    assert guarded.delete("/var/a", headers=bearer(READ)).status_code == 403
    assert guarded.get("/var/a", headers=bearer(WRITE)).data == b"x"


def test_probes_and_the_api_description_stay_open(guarded):
    assert guarded.get("/healthz").status_code == 200
    assert guarded.get("/readyz").status_code == 200
    assert guarded.get("/openapi.json").status_code == 200


def test_a_cookie_never_authenticates(guarded):
    guarded.set_cookie("Authorization", f"Bearer {WRITE}")
    assert guarded.post("/var/a", data={"value": "x"}).status_code == 401


def test_tokens_can_come_from_files(tmp_path: Path, monkeypatch):
    secret = tmp_path / "tokens"
    secret.write_text("one\n\ntwo\n")
    monkeypatch.setenv("WRITE_TOKENS_FILE", str(secret))
    app = create_app({"TESTING": True, "DATABASE_URL": f"sqlite:///{tmp_path / 'v.db'}"})
    assert app.config["WRITE_TOKENS"] == ["one", "two"]


def test_request_ids_are_kept_or_made(client):
    response = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert response.headers["X-Request-ID"] == "abc-123"
    made = client.get("/healthz").headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    unsafe = client.get("/healthz", headers={"X-Request-ID": "x" * 500}).headers["X-Request-ID"]
    assert unsafe != "x" * 500


def test_error_pages_carry_security_headers(client):
    response = client.get("/var/missing")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]


@pytest.mark.slow
def test_gunicorn_logs_json_lines_with_request_ids_and_never_a_token(gunicorn, tmp_path: Path):
    server = gunicorn(
        {"DATABASE_URL": f"sqlite:///{tmp_path / 'v.db'}", "WRITE_TOKENS": WRITE}, workers=2
    )
    post(server.url("/var/a"), data={"value": "x"}, headers={**bearer(WRITE), "X-Request-ID": "r1"})
    get(server.url("/var/a"), headers=bearer("wrong-token-value"))
    server.stop()
    log = server.log()
    assert WRITE not in log
    assert "wrong-token-value" not in log
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    first = next(r for r in records if r["request_id"] == "r1")
    assert (first["method"], first["path"], first["status"]) == ("POST", "/var/a", 200)
    assert any(r["status"] == 401 for r in records)


@pytest.mark.slow
def test_listening_beyond_localhost_without_tokens_logs_a_warning(gunicorn, tmp_path: Path):
    database = {"DATABASE_URL": f"sqlite:///{tmp_path / 'v.db'}"}
    local = gunicorn(database)
    local.stop()
    assert "access control is off" not in local.log()
    everywhere = gunicorn({**database, "HOST": "0.0.0.0"})
    everywhere.stop()
    assert "access control is off and the service listens on 0.0.0.0" in everywhere.log()
    guarded = gunicorn({**database, "HOST": "0.0.0.0", "WRITE_TOKENS": WRITE})
    guarded.stop()
    assert "access control is off" not in guarded.log()


@pytest.mark.slow
def test_metrics_add_up_over_several_worker_processes(gunicorn, tmp_path: Path):
    server = gunicorn({"DATABASE_URL": f"sqlite:///{tmp_path / 'v.db'}"}, workers=3, threads=2)
    post(server.url("/var/m"), data={"value": "1"})

    def read(_: int) -> int:
        with requests.Session() as http:
            return http.get(server.url("/var/m"), timeout=15).status_code

    with ThreadPoolExecutor(max_workers=12) as pool:
        assert set(pool.map(read, range(300))) == {200}
    text = get(server.url("/metrics")).text
    served = re.search(
        r'var_keeper_requests_total\{method="GET",route="/var/<name:name>",status="200"\} (\S+)',
        text,
    )
    assert served is not None, text[:2000]
    assert float(served.group(1)) == 300
    assert "var_keeper_request_duration_seconds_bucket" in text
    assert re.search(r"var_keeper_database_connections (\d+)", text)
