"""What a scoped token may reach (access.py over policy.py): a read rule lets a batch read
and an export through, a nested read rule under a write rule does not block an export, and
the regions a token may read are found from the rule that decides for the prefix itself."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask.testing import FlaskClient

import policy
from app import create_app
from tests.sse import EventReader

POLICY = """
[[tokens]]
name = "admin"
secret = "admin-secret"
rules = { "" = "write" }

[[tokens]]
name = "reader"
secret = "reader-secret"
rules = { "app/" = "read" }

[[tokens]]
name = "ops"
secret = "ops-secret"
rules = { "app/" = "write", "app/ro/" = "read", "app/keys/" = "deny" }
"""
ADMIN = {"Authorization": "Bearer admin-secret", "Accept": "application/json"}
READER = {"Authorization": "Bearer reader-secret", "Accept": "application/json"}
OPS = {"Authorization": "Bearer ops-secret", "Accept": "application/json"}


@pytest.fixture
def guarded(store_url: str, tmp_path: Path) -> FlaskClient:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    app = create_app({"TESTING": True, "DATABASE_URL": store_url, "ACCESS_POLICY_FILE": str(path)})
    client = app.test_client()
    for name in ("app/a", "app/ro/b", "other"):
        client.put(f"/var/{name}", data={"value": name}, headers=ADMIN)
    return client


def test_a_read_rule_lets_a_batch_read_through_and_denies_the_rest(guarded: FlaskClient):
    response = guarded.get("/var?name=app/a&name=other", headers=READER)
    body = response.get_json()
    assert [var["value"] for var in body["variables"]] == ["app/a"]
    assert body["denied"] == ["other"]


def test_a_read_rule_inside_a_write_rule_lets_its_subtree_be_exported(guarded: FlaskClient):
    response = guarded.get("/var?prefix=app/ro/&format=env", headers=OPS)
    assert response.status_code == 200


# --- The regions a token may read (policy.Token)


def scoped(rules: dict[str, str]) -> policy.Token:
    ordered = sorted(rules.items(), key=lambda item: len(item[0]), reverse=True)
    return policy.Token("t", b"", tuple(policy.Rule(prefix, level) for prefix, level in ordered))


def test_a_prefix_inside_a_read_rule_is_its_own_region():
    assert scoped({"app/": "read"}).read_regions("app/x") == ["app/x"]


def test_a_prefix_inside_a_deny_rule_has_only_the_read_rules_under_it():
    token = scoped({"app/": "deny", "app/x/ok/": "read", "app/y/": "write"})
    assert token.read_regions("app/") == ["app/x/ok/", "app/y/"]


def test_everything_under_a_prefix_is_readable_only_if_no_rule_inside_forbids_it():
    token = scoped({"app/": "read", "app/ro/": "read", "app/keys/": "deny", "ci/": "write"})
    assert token.reads_all_under("app/ro/")
    assert token.reads_all_under("ci/")
    assert not token.reads_all_under("app/")  # app/keys/ inside
    assert not token.reads_all_under("app/keys/x")  # decided by the deny
    assert not token.reads_all_under("zzz")  # no rule at all


def test_everything_under_a_prefix_is_readable_when_the_rules_inside_all_read():
    assert scoped({"app/": "write", "app/ro/": "read"}).reads_all_under("app/")


def test_a_policy_finds_a_token_by_name_or_says_none():
    tokens = policy.Policy([scoped({"": "read"})])
    assert tokens.by_name("t") is tokens.tokens[0]
    assert tokens.by_name("nobody") is None


def test_a_rule_is_described_with_its_prefix_as_written():
    assert policy.Rule("é/", "deny").describe() == 'rule "é/" = "deny"'


def test_a_token_may_write_somewhere_only_with_a_write_rule():
    assert not scoped({"app/": "read", "app/x/": "deny"}).may_write_somewhere()
    assert scoped({"app/": "read", "ci/": "write"}).may_write_somewhere()


def test_a_refusal_shows_the_name_as_written():
    refusal = scoped({"app/": "read"}).refusal("app/é", "write")
    assert refusal == 'token \'t\' may not write "app/é": rule "app/" = "read"'


def test_the_page_offers_a_new_variable_only_to_a_token_that_may_write(guarded: FlaskClient):
    as_reader = guarded.get("/", headers={"Authorization": "Bearer reader-secret"})
    as_ops = guarded.get("/", headers={"Authorization": "Bearer ops-secret"})
    assert (as_reader.status_code, as_ops.status_code) == (200, 200)
    assert b'id="new-heading"' not in as_reader.data
    assert b'id="new-heading"' in as_ops.data


def test_a_listing_shows_a_scoped_token_only_what_it_may_read(guarded: FlaskClient):
    listed = guarded.get("/var", headers=READER).get_json()["variables"]
    assert [var["name"] for var in listed] == ["app/a", "app/ro/b"]


def test_a_folder_listing_shows_a_scoped_token_only_folders_it_may_read_in(guarded: FlaskClient):
    body = guarded.get("/var?delimiter=/", headers=READER).get_json()
    assert (body["prefixes"], body["variables"]) == (["app/"], [])


def test_an_event_stream_sends_a_scoped_token_the_changes_it_may_read(guarded: FlaskClient):
    app = guarded.application
    headers = {"Authorization": "Bearer reader-secret"}
    stream = EventReader(app, app.test_client().get("/events", headers=headers, buffered=False))
    assert stream.started.wait(5)
    guarded.put("/var/other", data={"value": "hidden"}, headers=ADMIN)
    guarded.put("/var/app/new", data={"value": "seen"}, headers=ADMIN)
    event = stream.next()
    stream.close()
    assert (event["data"]["name"], event["data"]["value"]) == ("app/new", "seen")
