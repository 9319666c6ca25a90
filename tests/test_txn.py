"""POST /txn through Flask's test client, once per store: results, all or nothing, limits, bad
input, and each write as an ordinary change (history, ETags, events)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

import db
from app import create_app
from tests.test_watch import read_events

JSON = {"Accept": "application/json"}
JSON_TYPE = "application/json"


def txn(client: FlaskClient, *operations: dict[str, Any], **kwargs: Any):
    return client.post("/txn", json={"operations": list(operations)}, **kwargs)


def value_of(client: FlaskClient, name: str) -> str | None:
    response = client.get("/var/" + name)
    return response.get_data(as_text=True) if response.status_code == 200 else None


def every_variable(client: FlaskClient) -> dict[str, tuple[str, int]]:
    listing = client.get("/var?values=true&limit=1000").get_json()["variables"]
    return {v["name"]: (v["value"], v["version"]) for v in listing}


@pytest.fixture
def small_app(store_url: str) -> Iterator[Flask]:
    """Values of at most 16 bytes, transaction bodies of at most 4 KiB."""
    config = {"TESTING": True, "DATABASE_URL": store_url, "MAX_VALUE_BYTES": 16}
    app = create_app({**config, "MAX_TXN_BYTES": 4096})
    yield app
    db.get_store(app).close()


# --- Results ----------------------------------------------------------------------------------


def test_every_kind_of_operation_answers_its_result(client):
    client.put("/var/a", data={"value": "one"})
    client.put("/var/b", data={"value": "bee"})
    response = txn(
        client,
        {"op": "get", "name": "a"},
        {"op": "check", "name": "a", "version": 1},
        {"op": "check", "name": "b", "exists": True},
        {"op": "check", "name": "c", "exists": False},
        {"op": "set", "name": "a", "value": "two"},
        {"op": "set", "name": "c", "value": "new", "ttl": 3600},
        {"op": "delete", "name": "b"},
        {"op": "delete", "name": "nothing"},
        {"op": "get", "name": "nothing"},
    )
    assert response.status_code == 200
    body = response.get_json()
    assert isinstance(body["txn"], str)
    assert body["txn"]
    assert body["results"] == [
        {"op": "get", "name": "a", "version": 1, "value": "one"},
        {"op": "check", "name": "a", "version": 1},
        {"op": "check", "name": "b", "version": 1},
        {"op": "check", "name": "c", "version": None},
        {"op": "set", "name": "a", "version": 2, "created": False},
        {"op": "set", "name": "c", "version": 1, "created": True},
        {"op": "delete", "name": "b", "version": 2},
        {"op": "delete", "name": "nothing", "version": None},
        {"op": "get", "name": "nothing", "version": None},
    ]
    assert (value_of(client, "a"), value_of(client, "b"), value_of(client, "c")) == (
        "two",
        None,
        "new",
    )
    assert "expires_at" in client.get("/var/c", headers=JSON).get_json()


def test_operations_apply_in_order_each_seeing_the_ones_before(client):
    # A name may appear several times: it means "in this order".
    response = txn(
        client,
        {"op": "check", "name": "n", "exists": False},
        {"op": "set", "name": "n", "value": "x"},
        {"op": "get", "name": "n"},
        {"op": "check", "name": "n", "version": 1},
        {"op": "set", "name": "n", "value": "y"},
        {"op": "get", "name": "n"},
        {"op": "delete", "name": "n"},
        {"op": "check", "name": "n", "exists": False},
        {"op": "set", "name": "n", "value": "z"},
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    results = response.get_json()["results"]
    assert [r["version"] for r in results] == [None, 1, 1, 1, 2, 2, 3, None, 4]
    assert [r.get("value") for r in results if r["op"] == "get"] == ["x", "y"]
    assert value_of(client, "n") == "z"


def test_the_answer_is_json_whatever_the_accept_header(client):
    response = txn(client, {"op": "get", "name": "a"}, headers={"Accept": "text/plain"})
    assert response.mimetype == "application/json"


# --- All or nothing -------------------------------------------------------------------------


def test_a_failed_version_check_is_409_with_index_and_reason_and_changes_nothing(client):
    client.put("/var/a", data={"value": "old"})
    before = client.get("/var/a?history").get_json()["changes"]
    response = txn(
        client,
        {"op": "set", "name": "a", "value": "new"},
        {"op": "set", "name": "fresh", "value": "x"},
        {"op": "delete", "name": "a"},
        {"op": "check", "name": "a", "version": 7},
        {"op": "set", "name": "later", "value": "y"},
        headers=JSON,
    )
    assert response.status_code == 409
    body = response.get_json()
    assert (body["error"], body["index"]) == ("check_failed", 3)
    assert body["reason"]
    assert body["message"].startswith("operation 3 failed: ")
    assert every_variable(client) == {"a": ("old", 1)}
    assert client.get("/var/a?history").get_json()["changes"] == before
    assert client.get("/var/fresh?history").status_code == 404


@pytest.mark.parametrize(
    ("check", "index"),
    [
        ({"op": "check", "name": "a", "exists": False}, 1),
        ({"op": "check", "name": "nope", "exists": True}, 1),
        ({"op": "check", "name": "nope", "version": 1}, 1),
    ],
)
def test_a_failed_existence_check_is_409_and_changes_nothing(client, check, index):
    client.put("/var/a", data={"value": "v"})
    response = txn(client, {"op": "set", "name": "b", "value": "x"}, check, headers=JSON)
    assert (response.status_code, response.get_json()["index"]) == (409, index)
    assert every_variable(client) == {"a": ("v", 1)}


def test_a_check_sees_the_earlier_operations_of_its_transaction(client):
    client.put("/var/a", data={"value": "v"})
    response = txn(
        client,
        {"op": "delete", "name": "a"},
        {"op": "check", "name": "a", "version": 1},  # a was at 1, but is deleted by now
    )
    assert response.status_code == 409
    assert value_of(client, "a") == "v"


def test_a_409_in_text_is_one_line_naming_the_operation(client):
    response = txn(client, {"op": "check", "name": "x", "exists": True})
    assert response.status_code == 409
    text = response.get_data(as_text=True)
    assert text.startswith("operation 0 failed: ")
    assert text.count("\n") == 1


# --- Each write is an ordinary change -------------------------------------------------------


def test_history_etags_and_versions_after_a_transaction(client):
    client.put("/var/a", data={"value": "1"})
    body = txn(
        client,
        {"op": "set", "name": "a", "value": "2"},
        {"op": "set", "name": "b", "value": "3"},
        {"op": "delete", "name": "a"},
        {"op": "set", "name": "a", "value": "4"},
    ).get_json()
    assert client.get("/var/a").headers["ETag"] == '"4"'
    assert client.get("/var/b").headers["ETag"] == '"1"'
    history = client.get("/var/a?history&values=true").get_json()["changes"]
    assert [(c["version"], c["op"], c.get("value"), c.get("txn")) for c in history] == [
        (4, "set", "4", body["txn"]),
        (3, "delete", None, body["txn"]),
        (2, "set", "2", body["txn"]),
        (1, "set", "1", None),
    ]
    old = client.get("/var/a?version=2", headers=JSON).get_json()
    assert old["txn"] == body["txn"]
    # A later If-Match write works against the version the transaction left.
    assert client.put("/var/a", data={"value": "5"}, headers={"If-Match": '"4"'}).status_code == 200


def test_two_transactions_have_different_ids(client):
    first = txn(client, {"op": "set", "name": "a", "value": "1"}).get_json()["txn"]
    second = txn(client, {"op": "set", "name": "a", "value": "2"}).get_json()["txn"]
    assert first != second


def test_the_event_stream_has_every_change_of_a_transaction_in_order_with_its_id(client):
    client.put("/var/w/marker", data={"value": "m"})
    seq = client.get("/var/w/marker?history").get_json()["changes"][0]["seq"]
    body = txn(
        client,
        {"op": "set", "name": "w/b", "value": "1"},
        {"op": "set", "name": "w/a", "value": "2"},
        {"op": "get", "name": "w/a"},
        {"op": "delete", "name": "w/marker"},
    ).get_json()
    client.put("/var/w/after", data={"value": "alone"})
    response = client.get("/events?prefix=w/", headers={"Last-Event-ID": str(seq)}, buffered=False)
    lines = (line.decode() for chunk in response.response for line in chunk.splitlines())
    events = read_events(lines, 4)
    response.close()
    assert [(e["data"]["name"], e["data"]["op"], e["data"].get("txn")) for e in events] == [
        ("w/b", "set", body["txn"]),
        ("w/a", "set", body["txn"]),
        ("w/marker", "delete", body["txn"]),
        ("w/after", "set", None),
    ]
    seqs = [e["data"]["seq"] for e in events]
    assert seqs == sorted(seqs)


# --- Limits ---------------------------------------------------------------------------------


def test_a_thousand_operations_are_one_transaction(client):
    operations = [{"op": "set", "name": f"n/{i:04d}", "value": str(i)} for i in range(1000)]
    response = client.post("/txn", json={"operations": operations})
    assert response.status_code == 200
    assert len(response.get_json()["results"]) == 1000
    assert len(client.get("/var?prefix=n/&limit=1000").get_json()["variables"]) == 1000


def test_more_than_a_thousand_operations_is_413_with_the_limit(client):
    operations = [{"op": "set", "name": f"n/{i}", "value": "x"} for i in range(1001)]
    response = client.post("/txn", json={"operations": operations}, headers=JSON)
    assert response.status_code == 413
    body = response.get_json()
    assert body["error"] == "too_many_operations"
    assert "1000" in body["message"]
    assert every_variable(client) == {}


def test_a_value_over_the_cap_is_413_with_the_limit_and_nothing_changes(small_app):
    client = small_app.test_client()
    response = txn(
        client,
        {"op": "set", "name": "ok", "value": "fits"},
        {"op": "set", "name": "big", "value": "x" * 17},
        headers=JSON,
    )
    assert response.status_code == 413
    body = response.get_json()
    assert (body["error"], body["index"]) == ("value_too_large", 1)
    assert "the limit is 16" in body["message"]
    assert every_variable(client) == {}


def test_a_body_over_max_txn_bytes_is_413_with_the_limit(small_app):
    client = small_app.test_client()
    operations = [{"op": "get", "name": f"n{i}"} for i in range(200)]
    response = client.post("/txn", json={"operations": operations}, headers=JSON)
    assert response.status_code == 413
    assert response.get_json()["error"] == "request_too_large"
    assert "4096" in response.get_json()["message"]


def test_the_txn_body_limit_is_not_the_single_write_limit(small_app):
    # A single write's body may be at most about 3 x 16 bytes + 64 KiB; /txn's is MAX_TXN_BYTES.
    client = small_app.test_client()
    assert small_app.config["MAX_CONTENT_LENGTH"] > 4096
    operations = [{"op": "set", "name": f"n{i}", "value": "0123456789abcdef"} for i in range(60)]
    assert len(json.dumps({"operations": operations})) < 4096
    assert client.post("/txn", json={"operations": operations}).status_code == 200


# --- Bad input: a clear 4xx, nothing changed --------------------------------------------------

SET = {"op": "set", "name": "a", "value": "x"}
CHECK = {"op": "check", "name": "a"}
BAD_SHAPES = [
    ({"operations": []}, "empty_transaction"),
    ([], "invalid_transaction"),
    ({}, "invalid_transaction"),
    ({"operations": {"op": "get"}}, "invalid_transaction"),
    ({"operations": [{"op": "get", "name": "a"}], "atomic": True}, "invalid_transaction"),
]
BAD_OPERATIONS = [
    ("get a", "invalid_operation"),
    ({"op": "put", "name": "a", "value": "x"}, "invalid_operation"),
    ({"name": "a"}, "invalid_operation"),
    ({"op": "get"}, "invalid_name"),
    ({"op": "get", "name": 3}, "invalid_name"),
    ({"op": "get", "name": ""}, "invalid_name"),
    ({"op": "get", "name": "/lead"}, "invalid_name"),
    ({"op": "get", "name": "a\nb"}, "invalid_name"),
    ({"op": "get", "name": "x" * 256}, "name_too_long"),
    ({"op": "set", "name": "a"}, "missing_value"),
    ({**SET, "value": 5}, "missing_value"),
    ({**SET, "value": None}, "missing_value"),
    ({**SET, "ttl": -1}, "invalid_ttl"),
    ({**SET, "ttl": "5"}, "invalid_ttl"),
    ({**SET, "ttl": None}, "invalid_ttl"),
    ({**SET, "version": 1}, "invalid_operation"),
    ({"op": "get", "name": "a", "value": "x"}, "invalid_operation"),
    (CHECK, "invalid_operation"),
    ({**CHECK, "version": 1, "exists": True}, "invalid_operation"),
    ({**CHECK, "version": 0}, "invalid_operation"),
    ({**CHECK, "version": "1"}, "invalid_operation"),
    ({**CHECK, "version": True}, "invalid_operation"),
    ({**CHECK, "version": 1.5}, "invalid_operation"),
    ({**CHECK, "version": 10**19}, "invalid_operation"),
    ({**CHECK, "exists": "yes"}, "invalid_operation"),
]


@pytest.mark.parametrize(("body", "code"), BAD_SHAPES)
def test_a_badly_shaped_transaction_is_400_and_changes_nothing(client, body, code):
    client.put("/var/a", data={"value": "kept"})
    response = client.post("/txn", json=body, headers=JSON)
    assert (response.status_code, response.get_json()["error"]) == (400, code)
    assert every_variable(client) == {"a": ("kept", 1)}


@pytest.mark.parametrize(("operation", "code"), BAD_OPERATIONS)
def test_a_bad_operation_is_400_naming_it_and_changes_nothing(client, operation, code):
    client.put("/var/a", data={"value": "kept"})
    # A good operation first: the whole transaction is refused, not only the bad part.
    response = txn(client, {"op": "set", "name": "a", "value": "no"}, operation, headers=JSON)
    assert response.status_code == 400
    error = response.get_json()
    assert (error["error"], error["index"]) == (code, 1)
    assert error["message"].startswith("operation 1: ")
    assert every_variable(client) == {"a": ("kept", 1)}


@pytest.mark.parametrize(
    ("data", "content_type", "status", "words"),
    [
        (b'{"operations": [', JSON_TYPE, 400, "malformed JSON"),
        (b"", JSON_TYPE, 400, "malformed JSON"),
        (b'{"operations": [{"op": "get", "name": "\\ud800"}]}', JSON_TYPE, 400, "Unicode"),
        (b'{"operations":[{"op":"set","name":"v","value":"\\udfff"}]}', JSON_TYPE, 400, "Unicode"),
        (b'{"operations": [{"op": "get", "name": "\xff"}]}', JSON_TYPE, 400, "UTF-8"),
        (b"op=get&name=a", "application/x-www-form-urlencoded", 415, "JSON"),
        (b"", None, 415, "JSON"),
    ],
)  # fmt: skip
def test_malformed_bodies_are_refused_with_a_message(client, data, content_type, status, words):
    response = client.post("/txn", data=data, content_type=content_type)
    assert response.status_code == status
    text = response.get_data(as_text=True)
    assert words in text
    assert text.count("\n") == 1
    assert every_variable(client) == {}


def test_only_post_is_allowed(client):
    response = client.get("/txn")
    assert response.status_code == 405
    assert "POST" in response.headers["Allow"]


def test_each_operation_needs_its_access_a_read_token_may_only_check_and_get(store_url):
    app = create_app(
        {"TESTING": True, "DATABASE_URL": store_url, "READ_TOKENS": ["r"], "WRITE_TOKENS": ["w"]}
    )
    try:
        client = app.test_client()
        read = {"Authorization": "Bearer r", **JSON}
        reads = [{"op": "get", "name": "a"}, {"op": "check", "name": "a", "exists": False}]
        assert txn(client, *reads, headers=read).status_code == 200
        response = txn(client, *reads, {"op": "set", "name": "a", "value": "x"}, headers=read)
        assert (response.status_code, response.get_json()["index"]) == (403, 2)
        assert client.get("/var/a", headers={"Authorization": "Bearer w"}).status_code == 404
        write = {"Authorization": "Bearer w"}
        assert (
            txn(client, {"op": "set", "name": "a", "value": "x"}, headers=write).status_code == 200
        )
    finally:
        db.get_store(app).close()
