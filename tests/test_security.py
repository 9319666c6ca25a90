"""Access control, request ids, metrics and what the logs never show."""

from __future__ import annotations

import functools
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

import watch
from app import create_app
from tests.sse import EventReader

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


# --- The near misses around each rule (mutation testing found these untested) ---------------

READ_METHODS = ["GET", "HEAD", "OPTIONS"]
WRITE_METHODS = ["PUT", "POST", "DELETE"]


@pytest.mark.parametrize("method", READ_METHODS + WRITE_METHODS)
def test_a_read_token_may_use_only_the_reading_methods(guarded, method):
    guarded.put("/var/a", data={"value": "x"}, headers=bearer(WRITE))
    response = guarded.open("/var/a", method=method, data={"value": "y"}, headers=bearer(READ))
    assert response.status_code == (403 if method in WRITE_METHODS else 200)
    current = guarded.get("/var/a", headers={**bearer(READ), "Accept": "application/json"})
    assert (current.get_json()["value"], current.get_json()["version"]) == ("x", 1)


@pytest.mark.parametrize("method", WRITE_METHODS)
def test_a_write_token_may_use_every_method(guarded, method):
    guarded.put("/var/a", data={"value": "x"}, headers=bearer(WRITE))
    response = guarded.open("/var/a", method=method, data={"value": "y"}, headers=bearer(WRITE))
    assert response.status_code in (200, 204)


def test_a_read_token_may_not_write_through_a_transaction(guarded):
    operations = {"operations": [{"op": "set", "name": "a", "value": "x"}]}
    assert guarded.post("/txn", json=operations, headers=bearer(READ)).status_code == 403
    assert guarded.get("/var/a", headers=bearer(READ)).status_code == 404


def near_misses(token: str) -> list[str]:
    """Strings a careless comparison could take for ``token``: its prefixes and suffixes, one
    character more or changed, its case changed."""
    changed_last = token[:-1] + chr(ord(token[-1]) ^ 1)
    return sorted(
        {
            *(token[:n] for n in range(1, len(token))),
            *(token[n:] for n in range(1, len(token))),
            token + "0",
            "0" + token,
            token + token,
            changed_last,
            token.upper(),
            token.title(),
            token.swapcase(),
        }
        - {token}
    )


@pytest.mark.parametrize("token", [READ, WRITE])
def test_no_near_miss_of_a_token_is_accepted(guarded, token):
    assert guarded.get("/var/a", headers=bearer(token)).status_code == 404  # the token works
    for guess in near_misses(token):
        for response in (
            guarded.get("/var/a", headers=bearer(guess)),
            guarded.put("/var/a", data={"value": guess}, headers=bearer(guess)),
        ):
            assert response.status_code == 401, guess
    assert guarded.get("/var/a", headers=bearer(WRITE)).status_code == 404


@pytest.mark.parametrize(
    "header", ["Bearer", "Bearer ", "Basic " + WRITE, WRITE, "Bearer" + WRITE, "Token " + WRITE]
)
def test_an_authorization_header_without_a_bearer_token_is_401(guarded, header):
    response = guarded.put("/var/a", data={"value": "x"}, headers={"Authorization": header})
    assert response.status_code == 401


# A policy-file token without /metrics, next to the shorthand ones (which have it).
SCOPED = "scoped-token-0123456789"


@pytest.fixture
def scoped(store_url: str, tmp_path: Path):
    path = tmp_path / "policy.toml"
    path.write_text(
        f'[[tokens]]\nname = "scoped"\nsecret = "{SCOPED}"\n'
        'rules = { "app/" = "write", "app/keys/" = "read", "app/keys/root/" = "deny" }\n'
    )
    app = create_app(
        {
            "TESTING": True,
            "DATABASE_URL": store_url,
            "WRITE_TOKENS": [WRITE],
            "ACCESS_POLICY_FILE": str(path),
        }
    )
    yield app.test_client()
    watch.stop_background(app)


def test_metrics_need_a_token_with_metrics(scoped):
    assert scoped.get("/metrics").status_code == 401
    assert scoped.get("/metrics", headers=bearer(WRITE)).status_code == 200
    refused = scoped.get("/metrics", headers={**bearer(SCOPED), "Accept": "application/json"})
    assert (refused.status_code, refused.get_json()["error"]) == (403, "forbidden")
    # Without metrics, the token still does what its rules allow.
    assert scoped.put("/var/app/x", data={"value": "1"}, headers=bearer(SCOPED)).status_code == 201
    assert scoped.get("/var/app/x", headers=bearer(SCOPED)).data == b"1"


def test_a_scoped_token_is_refused_outside_its_rules_with_the_rule_named(scoped):
    headers = {**bearer(SCOPED), "Accept": "application/json"}
    for method in ("GET", "PUT", "DELETE"):
        response = scoped.open("/var/other", method=method, data={"value": "v"}, headers=headers)
        assert response.status_code == 403
        body = response.get_json()
        assert body["error"] == "forbidden"
        assert "no rule covers it" in body["message"]
        assert body["name"] == "other"


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "unauthorized"),
        ({"Authorization": "Basic abc"}, "unauthorized"),
        (bearer("not-a-token"), "invalid_token"),
    ],
)
def test_a_refused_request_says_why_in_its_code_and_its_challenge(guarded, headers, code):
    response = guarded.get("/var/a", headers={**headers, "Accept": "application/json"})
    assert (response.status_code, response.get_json()["error"]) == (401, code)
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="var_keeper"')
    assert ('error="invalid_token"' in challenge) is (code == "invalid_token")


def test_a_read_token_trying_to_write_gets_forbidden_naming_the_write(guarded):
    response = guarded.put(
        "/var/a", data={"value": "x"}, headers={**bearer(READ), "Accept": "application/json"}
    )
    assert response.status_code == 403
    assert response.get_json()["error"] == "forbidden"
    assert "may not write" in response.get_json()["message"]


def test_spaces_around_the_token_are_not_part_of_it(guarded):
    assert guarded.get("/var/a", headers={"Authorization": f"Bearer  {WRITE}"}).status_code == 404
    assert guarded.get("/var/a", headers={"Authorization": f"bearer {WRITE} "}).status_code == 404


def test_a_batch_read_answers_a_scoped_token_only_what_it_may_read(scoped):
    for name in ("app/x", "other"):
        scoped.put(f"/var/{name}", data={"value": "v"}, headers=bearer(WRITE))
    query = "/var?name=app/x&name=other&name=app/none&name=gone"
    body = scoped.get(query, headers=bearer(SCOPED)).get_json()
    assert [v["name"] for v in body["variables"]] == ["app/x"]
    assert (body["missing"], body["denied"]) == (["app/none"], ["gone", "other"])
    assert "denied" not in scoped.get(query, headers=bearer(WRITE)).get_json()


def test_an_event_stream_carries_a_scoped_token_only_what_it_may_read(scoped):
    response = scoped.get("/events", headers=bearer(SCOPED), buffered=False)
    assert response.status_code == 200
    reader = EventReader(scoped.application, response)
    for name in ("other", "app/x", "apple", "app/y"):
        scoped.put(f"/var/{name}", data={"value": "v"}, headers=bearer(WRITE))
    try:
        assert [e["data"]["name"] for e in reader.take(2)] == ["app/x", "app/y"]
        assert reader.nothing_more()
    finally:
        reader.close()


@pytest.mark.parametrize(
    ("prefix", "read", "write"),
    [
        ("app/", False, False),  # app/keys/root/ is denied, app/keys/ read only
        ("app/keys/", False, False),
        ("app/keys/r", False, False),
        ("app/db/", True, True),
        ("app/keys/x", True, False),
        ("", False, False),
        ("other/", False, False),
    ],
)
def test_a_subtree_delete_or_export_needs_the_right_to_every_name_under_it(
    scoped, prefix, read, write
):
    headers = {**bearer(SCOPED), "Accept": "application/json"}
    query = f"prefix={prefix}&all=true"
    exported = scoped.get(f"/var?{query}&format=shell", headers=headers)
    deleted = scoped.delete(f"/var?{query}", headers=headers)
    for response, allowed in ((exported, read), (deleted, write)):
        assert response.status_code == (200 if allowed else 403), response.get_json()
        if not allowed:
            assert response.get_json()["prefix"] == prefix
            assert "may not" in response.get_json()["message"]
