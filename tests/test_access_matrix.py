"""Scoped tokens through a real gunicorn, once per store: every token x every operation x names
under every prefix, against an oracle written out by hand (not computed by policy.py); then the
paths that filter (listing, folders, batch, event stream), /metrics, POST /txn, the history's
actor and reloading the policy file."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from tests.servers import Gunicorn

pytestmark = pytest.mark.slow

SECRETS = {"admin": "admin-0123456789", "ci": "ci-0123456789", "app": "app-0123456789"}
SECRETS["mixed"] = "mixed-0123456789"
POLICY = f"""
[[tokens]]
name = "admin"
secret = "{SECRETS["admin"]}"
metrics = true
rules = {{ "" = "write" }}

[[tokens]]
name = "ci"
secret = "{SECRETS["ci"]}"
rules = {{ "ci/" = "write", "ci/keys/" = "deny" }}

[[tokens]]
name = "app"
secret = "{SECRETS["app"]}"
rules = {{ "app/prod/" = "read" }}

[[tokens]]
name = "mixed"
secret = "{SECRETS["mixed"]}"
rules = {{ "" = "read", "secret/" = "deny", "team/" = "write" }}
"""
NAMES = ["app/dev/db", "app/prod/db", "ci/build", "ci/keys/k", "other", "secret/s", "team/t"]
# The oracle: what each token may do with each name (absent: nothing).
MAY = {
    "admin": dict.fromkeys(NAMES, "write"),
    "ci": {"ci/build": "write"},
    "app": {"app/prod/db": "read"},
    "mixed": {
        "app/dev/db": "read",
        "app/prod/db": "read",
        "ci/build": "read",
        "ci/keys/k": "read",
        "other": "read",
        "team/t": "write",
    },
}
READS = ["get", "head", "history", "version", "long-poll"]
WRITES = ["put", "post", "restore", "delete"]


@pytest.fixture
def server(gunicorn: Callable[..., Gunicorn], store_url: str, tmp_path: Path) -> Gunicorn:
    return _server(gunicorn, store_url, tmp_path, workers=2)


def _server(
    gunicorn: Callable[..., Gunicorn], store_url: str, tmp_path: Path, workers: int
) -> Gunicorn:
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(POLICY)
    server = gunicorn(
        {
            "DATABASE_URL": store_url,
            "ACCESS_POLICY_FILE": str(policy_file),
            "SECRET_KEY": "matrix-secret",
        },
        workers=workers,
    )
    server.policy_file = policy_file  # type: ignore[attr-defined]
    return server


def auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {SECRETS[token]}"} if token else {}


def call(server: Gunicorn, token: str | None, operation: str, name: str) -> requests.Response:
    url = server.url("/var/" + quote(name))
    headers = {**auth(token), "Accept": "application/json"}
    requests_by_operation = {
        "get": lambda: requests.get(url, headers=headers, timeout=10),
        "head": lambda: requests.head(url, headers=headers, timeout=10),
        "history": lambda: requests.get(url + "?history", headers=headers, timeout=10),
        "version": lambda: requests.get(url + "?version=1", headers=headers, timeout=10),
        "long-poll": lambda: requests.get(
            url + "?wait=5&after_version=0", headers=headers, timeout=10
        ),
        "put": lambda: requests.put(url, data={"value": "put"}, headers=headers, timeout=10),
        "post": lambda: requests.post(url, data={"value": "post"}, headers=headers, timeout=10),
        "restore": lambda: requests.put(url, data={"restore": "1"}, headers=headers, timeout=10),
        "delete": lambda: requests.delete(url, headers=headers, timeout=10),
    }
    return requests_by_operation[operation]()


def seed(server: Gunicorn, *names: str) -> None:
    for name in names:
        response = requests.put(
            server.url("/var/" + quote(name)),
            data={"value": "v"},
            headers=auth("admin"),
            timeout=10,
        )
        assert response.status_code in (200, 201), response.text


def allowed(token: str, name: str, operation: str) -> bool:
    level = MAY[token].get(name)
    return level == "write" or (level == "read" and operation in READS)


def test_every_token_every_operation_every_prefix(server):
    seed(server, *NAMES)
    wrong = []
    for token in [None, *MAY]:
        for name in NAMES:
            for operation in READS + WRITES:
                response = call(server, token, operation, name)
                if token is None:
                    expected_ok = False
                    ok = response.status_code == 401
                elif allowed(token, name, operation):
                    expected_ok = True
                    ok = response.status_code in (200, 201, 204)
                else:
                    expected_ok = False
                    ok = response.status_code == 403 and (
                        operation == "head" or response.json()["error"] == "forbidden"
                    )
                if not ok:
                    wrong.append((token, name, operation, expected_ok, response.status_code))
                if operation == "delete" and response.status_code == 204:
                    seed(server, name)
    assert wrong == []


def test_a_refusal_names_the_rule_and_a_missing_token_is_401(server):
    seed(server, "ci/keys/k")
    refused = requests.get(server.url("/var/ci/keys/k"), headers=auth("ci"), timeout=10)
    assert refused.status_code == 403
    assert refused.text == 'token \'ci\' may not read "ci/keys/k": rule "ci/keys/" = "deny"\n'
    unknown = requests.put(
        server.url("/var/zzz"), data={"value": "x"}, headers=auth("app"), timeout=10
    )
    assert "no rule covers it" in unknown.text
    anonymous = requests.get(server.url("/var/ci/build"), timeout=10)
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")


def listed(server: Gunicorn, token: str, query: str) -> tuple[list[str], list[str], int]:
    """Every name and folder of a listing, following next links; and the pages it took."""
    names, folders, pages = [], [], 0
    url: str | None = server.url("/var?" + query)
    while url:
        body = requests.get(url, headers=auth(token), timeout=10).json()
        names += [v["name"] for v in body["variables"]]
        folders += body.get("prefixes", [])
        pages += 1
        url = server.url(body["next"]) if body["next"] else None
    return names, folders, pages


def test_listing_shows_only_what_the_token_may_read_and_next_still_works(server):
    seed(server, *NAMES)
    for token in MAY:
        names, _, pages = listed(server, token, "limit=2")
        assert names == sorted(MAY[token]), token
        assert pages >= len(NAMES) // 2  # the pages of the listing, some shorter after filtering
    assert listed(server, "app", "prefix=app/&limit=1")[0] == ["app/prod/db"]


def test_a_folder_listing_shows_only_folders_with_something_readable(server):
    seed(server, *NAMES)
    assert listed(server, "app", "delimiter=/")[1] == ["app/"]
    assert listed(server, "ci", "delimiter=/")[1] == ["ci/"]
    names, folders, _ = listed(server, "mixed", "delimiter=/")
    assert (names, folders) == (["other"], ["app/", "ci/", "team/"])


def test_a_batch_read_denies_what_the_token_may_not_read(server):
    seed(server, "app/prod/db", "ci/build")
    query = "name=app/prod/db&name=ci/build&name=app/prod/none&name=secret/none"
    body = requests.get(server.url("/var?" + query), headers=auth("app"), timeout=10).json()
    assert [v["name"] for v in body["variables"]] == ["app/prod/db"]
    assert body["missing"] == ["app/prod/none"]
    assert body["denied"] == ["ci/build", "secret/none"]


def test_an_event_stream_carries_only_events_the_token_may_read(server):
    events: list[str] = []
    connected = threading.Event()

    def listen() -> None:
        with requests.get(
            server.url("/events"), headers=auth("app"), stream=True, timeout=(5, 30)
        ) as stream:
            for line in stream.iter_lines(decode_unicode=True):
                if line.startswith("retry:"):
                    connected.set()
                if line.startswith("data:"):
                    events.append(json.loads(line[5:])["name"])
                    if events[-1] == "app/prod/last":
                        return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert connected.wait(10)
    seed(server, "ci/build", "app/prod/db", "secret/s", "app/dev/db", "app/prod/last")
    listener.join(20)
    assert events == ["app/prod/db", "app/prod/last"]


def test_metrics_need_an_explicit_rule(server):
    assert requests.get(server.url("/metrics"), headers=auth("admin"), timeout=10).ok
    refused = requests.get(server.url("/metrics"), headers=auth("mixed"), timeout=10)
    assert refused.status_code == 403
    assert "metrics" in refused.text
    assert requests.get(server.url("/metrics"), timeout=10).status_code == 401


def test_a_transaction_is_checked_name_by_name_before_anything_is_done(server):
    seed(server, "app/prod/db")
    operations = [
        {"op": "set", "name": "ci/build", "value": "1"},
        {"op": "get", "name": "app/prod/db"},
    ]
    response = requests.post(
        server.url("/txn"),
        json={"operations": operations},
        headers={**auth("ci"), "Accept": "application/json"},
        timeout=10,
    )
    assert response.status_code == 403
    assert response.json()["index"] == 1
    assert "operation 1: token 'ci' may not read" in response.json()["message"]
    assert (
        requests.get(server.url("/var/ci/build"), headers=auth("admin"), timeout=10).status_code
        == 404
    )
    allowed_txn = requests.post(
        server.url("/txn"), json={"operations": operations[:1]}, headers=auth("ci"), timeout=10
    )
    assert allowed_txn.status_code == 200


def test_the_history_names_the_token_by_its_policy_name(server):
    requests.put(server.url("/var/ci/build"), data={"value": "1"}, headers=auth("ci"), timeout=10)
    requests.put(
        server.url("/var/ci/build"), data={"value": "2"}, headers=auth("admin"), timeout=10
    )
    history = requests.get(server.url("/var/ci/build?history"), headers=auth("ci"), timeout=10)
    assert [c["actor"] for c in history.json()["changes"]] == ["admin", "ci"]


def test_a_changed_policy_takes_effect_and_a_broken_one_is_refused(gunicorn, store_url, tmp_path):
    # One worker: each worker reloads on its own, at a request, and with two the test could not
    # tell which one answered (tests/test_signin_gunicorn.py covers SIGHUP with both).
    server = _server(gunicorn, store_url, tmp_path, workers=1)
    url = server.url("/var/app/prod/db")
    assert (
        requests.put(url, data={"value": "x"}, headers=auth("app"), timeout=10).status_code == 403
    )
    server.policy_file.write_text(POLICY.replace('"app/prod/" = "read"', '"app/prod/" = "write"'))
    deadline = time.monotonic() + 10
    status = 0
    while status not in (200, 201) and time.monotonic() < deadline:
        time.sleep(0.2)
        status = requests.put(url, data={"value": "x"}, headers=auth("app"), timeout=10).status_code
    assert status in (200, 201)
    server.policy_file.write_text("tokens = [ this does not parse")
    time.sleep(1.5)
    for _ in range(6):
        assert (
            requests.put(url, data={"value": "y"}, headers=auth("app"), timeout=10).status_code
            == 200
        )
    assert "is refused: not valid TOML" in server.log()
    assert SECRETS["app"] not in server.log()
