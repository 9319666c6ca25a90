"""Every error a client can cause, word for word: its status, its stable code and the message a
user reads (inputs.py's parsing, access.py's refusals), as a table of request -> JSON body.

The messages are part of the product: they say what was wrong and how to send it right. The
other tests check statuses and codes; here a changed word is a failing test, so that a change
of wording is a decision (and openapi.json's codes stay what they say).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

import inputs
from app import create_app
from errors import ApiError

JSON = {"Accept": "application/json"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
JSON_BODY = {"Content-Type": "application/json"}
TTL_RANGE = (
    "ttl must be a number of seconds from 0 to 999999999, with at most 6 decimals "
    "(such as 30 or 0.25)"
)
DELIMITER_RULE = (
    "delimiter must be exactly one character, and not a control character "
    "(U+0000-U+001F, U+007F-U+009F), U+D7FF or U+10FFFF"
)
MEDIA_TYPES = 'send the value as form field "value", as JSON {"value": ...} or as a text/plain body'
ESCAPE_RULE = "% must start an escape %XX (send a literal % as %25)"


def error(code: str, message: str, **details: Any) -> dict[str, Any]:
    return {"error": code, "message": message, **details}


def case(
    method: str, path: str, status: int, body: dict[str, Any], *, id: str, **request: Any
) -> Any:
    return pytest.param(method, path, request, status, body, id=id)


BAD_REQUESTS = [
    # The path and query string as the client sent them (gunicorn's RAW_URI).
    case(
        "GET",
        "/var/a",
        400,
        error("invalid_escape", f"malformed percent-escape in the path: {ESCAPE_RULE}"),
        environ_overrides={"RAW_URI": "/var/100%"},
        id="path-bad-escape",
    ),
    case(
        "GET",
        "/var/a",
        400,
        error("invalid_escape", f"malformed percent-escape in the query string: {ESCAPE_RULE}"),
        environ_overrides={"RAW_URI": "/var/a?limit=%zz"},
        id="query-bad-escape",
    ),
    case(
        "GET",
        "/var/a",
        400,
        error("invalid_utf8", "the path is not valid UTF-8"),
        environ_overrides={"RAW_URI": "/var/%ff"},
        id="path-not-utf8",
    ),
    # Names.
    case(
        "GET",
        "/var/" + "n" * 256,
        400,
        error("name_too_long", "a name may have at most 255 characters"),
        id="name-too-long",
    ),
    case(
        "PUT",
        "/var/a%01b",
        400,
        error("invalid_name", "a name may not contain control characters"),
        data={"value": "v"},
        id="name-with-control-character",
    ),
    case(
        "GET",
        "/var/" + "n" * 254 + "%01",
        400,
        error("invalid_name", "a name may not contain control characters"),
        id="name-of-255-with-control-character",
    ),
    # Reads of one variable.
    case(
        "GET",
        "/var/a?values=maybe",
        400,
        error("invalid_parameter", "values must be true or false"),
        id="values-not-a-flag",
    ),
    case(
        "GET",
        "/var/a?history&before=0",
        400,
        error("invalid_parameter", "before must be a version number (1 or more)"),
        id="before-zero",
    ),
    case(
        "GET",
        "/var/a?version=x",
        400,
        error("invalid_parameter", "version must be a version number (1 or more)"),
        id="version-not-a-number",
    ),
    case(
        "GET",
        "/var/a?wait=61",
        400,
        error("invalid_wait", "wait must be whole seconds from 0 to 60"),
        id="wait-too-long",
    ),
    case(
        "GET",
        "/var/a?wait=1&after_version=-1",
        400,
        error("invalid_parameter", "after_version must be a whole number >= 0"),
        id="after-version-negative",
    ),
    case(
        "GET",
        "/var/a?limit=0",
        400,
        error("invalid_parameter", "limit must be a whole number from 1 to 1000"),
        id="limit-zero",
    ),
    # Listings, batch reads, exports, subtree deletes.
    case(
        "GET",
        "/var?" + "&".join(f"name=n{index}" for index in range(1001)),
        400,
        error("too_many_names", "ask for at most 1000 names at once"),
        id="too-many-names",
    ),
    case(
        "GET",
        "/var?name=ok&name=a%01",
        400,
        error("invalid_name", "a name may not contain control characters"),
        id="batch-name-invalid",
    ),
    case(
        "GET",
        "/var?delimiter=ab",
        400,
        error("invalid_delimiter", DELIMITER_RULE),
        id="delimiter-two-characters",
    ),
    case(
        "GET",
        "/var?format=xml",
        400,
        error("invalid_parameter", "format must be env or shell"),
        id="unknown-export-format",
    ),
    case(
        "DELETE",
        "/var",
        400,
        error("prefix_required", "say what to delete: DELETE /var?prefix=<names starting with>"),
        id="subtree-delete-without-prefix",
    ),
    case(
        "DELETE",
        "/var?prefix=",
        400,
        error(
            "prefix_required",
            "an empty prefix would delete every variable: send ?prefix=&all=true to mean it",
        ),
        id="subtree-delete-of-everything-without-all",
    ),
    case(
        "DELETE",
        "/var?prefix=&all=maybe",
        400,
        error("invalid_parameter", "all must be true or false"),
        id="all-not-a-flag",
    ),
    # Event streams.
    case(
        "GET",
        "/events",
        400,
        error("invalid_parameter", "Last-Event-ID must be an event's id"),
        headers={"Last-Event-ID": "x"},
        id="last-event-id-not-a-number",
    ),
    case(
        "GET",
        "/events?after_seq=-1",
        400,
        error("invalid_parameter", "after_seq must be an event's id"),
        id="after-seq-not-a-number",
    ),
    # Writes: conditions.
    case(
        "DELETE",
        "/var/a",
        400,
        error("invalid_precondition", "If-None-Match: * makes no sense on DELETE"),
        headers={"If-None-Match": "*"},
        id="delete-if-none-match",
    ),
    case(
        "PUT",
        "/var/a",
        400,
        error("invalid_precondition", "on a write, If-None-Match supports only *"),
        headers={"If-None-Match": '"1"'},
        data={"value": "v"},
        id="write-if-none-match-etag",
    ),
    case(
        "PUT",
        "/var/a",
        400,
        error("invalid_precondition", "send If-Match or If-None-Match, not both"),
        headers={"If-Match": '"1"', "If-None-Match": "*"},
        data={"value": "v"},
        id="write-both-conditions",
    ),
    case(
        "PUT",
        "/var/a",
        400,
        error("invalid_precondition", "If-Match takes one ETag or *"),
        headers={"If-Match": '"1", "2"'},
        data={"value": "v"},
        id="if-match-two-etags",
    ),
    case(
        "DELETE",
        "/var/a",
        400,
        error("invalid_precondition", "If-None-Match takes one ETag or *"),
        headers={"If-None-Match": '"1", "2"'},
        id="if-none-match-two-etags",
    ),
    # Writes: bodies.
    case(
        "PUT",
        "/var/a",
        400,
        error("missing_value", "missing form field 'value'"),
        data={"val": "v"},
        id="form-without-value",
    ),
    case(
        "PUT",
        "/var/a",
        400,
        error("invalid_restore", "send value or restore, not both"),
        data={"value": "v", "restore": "1"},
        id="value-and-restore",
    ),
    case(
        "PUT",
        "/var/a",
        400,
        error("invalid_restore", "restore must be a version number (1 or more)"),
        data={"restore": "0"},
        id="restore-zero",
    ),
    case(
        "PUT",
        "/var/a",
        400,
        error("invalid_form", "malformed form encoding: % must start an escape %XX"),
        data=b"value=%zz",
        headers=FORM,
        id="form-bad-escape",
    ),
    case(
        "PUT",
        "/var/a",
        400,
        error("invalid_utf8", "a form field is not valid percent-encoded UTF-8"),
        data=b"value=%ff",
        headers=FORM,
        id="form-escape-not-utf8",
    ),
    case(
        "PUT",
        "/var/a",
        400,
        error("invalid_utf8", "the form body is not valid UTF-8"),
        data=b"value=\xff",
        headers=FORM,
        id="form-body-not-utf8",
    ),
    case(
        "PUT",
        "/var/a",
        400,
        error("invalid_utf8", "the body is not valid UTF-8"),
        data=b"\xff",
        headers={"Content-Type": "text/plain"},
        id="text-body-not-utf8",
    ),
    case(
        "PUT",
        "/var/a",
        415,
        error("unsupported_charset", "a text/plain body must be UTF-8"),
        data=b"v",
        headers={"Content-Type": "text/plain; charset=latin-1"},
        id="text-body-latin-1",
    ),
    case(
        "PUT",
        "/var/a",
        415,
        error("unsupported_media_type", MEDIA_TYPES),
        data=b"<value/>",
        headers={"Content-Type": "application/xml"},
        id="xml-body",
    ),
    case(
        "PUT",
        "/var/a",
        415,
        error("unsupported_media_type", MEDIA_TYPES),
        data=b"value=v",
        id="body-without-a-type",
    ),
    case(
        "PUT",
        "/var/a",
        415,
        error("unsupported_media_type", MEDIA_TYPES),
        headers={"Content-Type": "application/xml"},
        id="empty-xml-body",
    ),
    case(
        "PUT",
        "/var/a",
        400,
        error(
            "invalid_json",
            "malformed JSON: Expecting property name enclosed in double quotes at position 1",
        ),
        data=b"{",
        headers=JSON_BODY,
        id="json-malformed",
    ),
    case(
        "PUT",
        "/var/a",
        400,
        error("invalid_utf8", "the JSON body is not valid UTF-8"),
        data=b'{"value": "\xff"}',
        headers=JSON_BODY,
        id="json-not-utf8",
    ),
    case(
        "PUT",
        "/var/a",
        400,
        error("missing_value", 'the JSON body must be an object like {"value": "..."}'),
        data=b'["v"]',
        headers=JSON_BODY,
        id="json-not-an-object",
    ),
    case(
        "PUT",
        "/var/a",
        400,
        error("missing_value", 'the JSON body must be an object like {"value": "..."}'),
        data=b'{"ttl": 5}',
        headers=JSON_BODY,
        id="json-without-value",
    ),
    case(
        "PUT",
        "/var/a",
        400,
        error("invalid_ttl", "the JSON field ttl must be a number of seconds"),
        data=b'{"value": "v", "ttl": null}',
        headers=JSON_BODY,
        id="json-ttl-null",
    ),
    case(
        "PUT",
        "/var/a",
        400,
        error("invalid_value", "the JSON field value must be a string"),
        data=b'{"value": 1}',
        headers=JSON_BODY,
        id="json-value-a-number",
    ),
    case(
        "PUT",
        "/var/a",
        400,
        error("invalid_value", "the value is not valid Unicode text"),
        data=b'{"value": "\\ud800"}',
        headers=JSON_BODY,
        id="json-value-lone-surrogate",
    ),
    case(
        "PUT",
        "/var/a",
        413,
        error("value_too_large", "the value is 1048577 bytes; the limit is 1048576"),
        data={"value": "x" * (1024 * 1024 + 1)},
        id="value-too-large",
    ),
    case(
        "PUT",
        "/var/a",
        400,
        error("invalid_ttl", TTL_RANGE),
        data={"value": "v", "ttl": "-1"},
        id="ttl-negative",
    ),
    case(
        "PUT",
        "/var/a?ttl=soon",
        400,
        error("invalid_ttl", TTL_RANGE),
        data={"value": "v"},
        id="ttl-in-query-not-a-number",
    ),
]


@pytest.mark.parametrize(("method", "path", "request_args", "status", "body"), BAD_REQUESTS)
def test_a_bad_request_is_answered_with_its_status_code_and_message(
    client: FlaskClient, method: str, path: str, request_args: dict, status: int, body: dict
):
    headers = {**JSON, **request_args.get("headers", {})}
    kwargs = {key: value for key, value in request_args.items() if key != "headers"}
    response = client.open(path, method=method, headers=headers, **kwargs)
    assert (response.status_code, response.get_json()) == (status, body)


def test_an_error_in_text_is_its_message_on_one_line(client: FlaskClient):
    response = client.get("/var/a?limit=1001", headers={"Accept": "text/plain"})
    assert response.status_code == 400
    assert response.data == b"limit must be a whole number from 1 to 1000\n"


def test_a_path_not_valid_utf8_without_a_raw_uri_is_400():
    # Servers other than gunicorn: the path as WSGI gives it (PATH_INFO, latin-1).
    with pytest.raises(ApiError) as refused:
        inputs.check_raw_path({"PATH_INFO": "/var/\xff"})
    assert (refused.value.status, refused.value.code, refused.value.message) == (
        400,
        "invalid_utf8",
        "the path is not valid UTF-8",
    )


# --- Access control ---------------------------------------------------------------------------

POLICY = """
[[tokens]]
name = "ci"
secret = "ci-secret"
rules = { "ci/" = "write", "ci/keys/" = "deny" }

[[tokens]]
name = "reader"
secret = "reader-secret"
rules = { "" = "read" }
"""
CHALLENGE = 'Bearer realm="var_keeper"'


@pytest.fixture
def guarded(store_url: str, tmp_path: Path) -> FlaskClient:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    app: Flask = create_app(
        {"TESTING": True, "DATABASE_URL": store_url, "ACCESS_POLICY_FILE": str(path)}
    )
    return app.test_client()


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


REFUSALS = [
    case(
        "GET",
        "/var/a",
        401,
        error("unauthorized", "send Authorization: Bearer <token>"),
        id="no-token",
    ),
    case(
        "GET",
        "/var/a",
        401,
        error("unauthorized", "send Authorization: Bearer <token>"),
        headers={"Authorization": "Basic Y2k6Y2ktc2VjcmV0"},
        id="not-bearer",
    ),
    case(
        "GET",
        "/var/a",
        401,
        error("unauthorized", "send Authorization: Bearer <token>"),
        headers={"Authorization": "Bearer  "},
        id="empty-bearer",
    ),
    case(
        "GET",
        "/var/a",
        401,
        error("invalid_token", "the token is not valid"),
        headers=bearer("guess"),
        id="unknown-token",
    ),
    case(
        "GET",
        "/var/ci/keys/deploy",
        403,
        error(
            "forbidden",
            'token \'ci\' may not read "ci/keys/deploy": rule "ci/keys/" = "deny"',
            name="ci/keys/deploy",
        ),
        headers=bearer("ci-secret"),
        id="denied-by-a-rule",
    ),
    case(
        "PUT",
        "/var/other",
        403,
        error(
            "forbidden",
            "token 'ci' may not write \"other\": no rule covers it",
            name="other",
        ),
        headers=bearer("ci-secret"),
        data={"value": "v"},
        id="no-rule-covers-it",
    ),
    case(
        "PUT",
        "/var/a",
        403,
        error("forbidden", 'token \'reader\' may not write "a": rule "" = "read"', name="a"),
        headers=bearer("reader-secret"),
        data={"value": "v"},
        id="read-rule-on-a-write",
    ),
    case(
        "GET",
        "/metrics",
        403,
        error("forbidden", "token 'ci' may not read /metrics: it has no metrics = true"),
        headers=bearer("ci-secret"),
        id="metrics-without-metrics",
    ),
    case(
        "DELETE",
        "/var?prefix=ci/",
        403,
        error(
            "forbidden",
            "token 'ci' may not write under 'ci/': rule \"ci/keys/\" = \"deny\"",
            prefix="ci/",
        ),
        headers=bearer("ci-secret"),
        id="subtree-delete-over-a-deny",
    ),
    case(
        "GET",
        "/var?prefix=ci/&format=env",
        403,
        error(
            "forbidden",
            "token 'ci' may not read under 'ci/': rule \"ci/keys/\" = \"deny\"",
            prefix="ci/",
        ),
        headers=bearer("ci-secret"),
        id="export-over-a-deny",
    ),
    case(
        "POST",
        "/txn",
        403,
        error(
            "forbidden",
            "operation 1: token 'ci' may not write \"x\": no rule covers it",
            name="x",
            index=1,
        ),
        headers=bearer("ci-secret"),
        json={
            "operations": [
                {"op": "get", "name": "ci/a"},
                {"op": "set", "name": "x", "value": "v"},
            ]
        },
        id="transaction-operation",
    ),
]


@pytest.mark.parametrize(("method", "path", "request_args", "status", "body"), REFUSALS)
def test_a_refusal_is_answered_with_its_status_code_and_message(
    guarded: FlaskClient, method: str, path: str, request_args: dict, status: int, body: dict
):
    headers = {**JSON, **request_args.get("headers", {})}
    kwargs = {key: value for key, value in request_args.items() if key != "headers"}
    response = guarded.open(path, method=method, headers=headers, **kwargs)
    assert (response.status_code, response.get_json()) == (status, body)


def test_a_401_challenges_for_a_bearer_token(guarded: FlaskClient):
    response = guarded.get("/var/a", headers=JSON)
    assert response.headers["WWW-Authenticate"] == CHALLENGE


def test_an_unknown_token_is_told_so_in_the_challenge(guarded: FlaskClient):
    response = guarded.get("/var/a", headers={**JSON, **bearer("guess")})
    assert response.headers["WWW-Authenticate"] == CHALLENGE + ', error="invalid_token"'


# --- Transactions whose checks fail -----------------------------------------------------------


@pytest.mark.parametrize(
    ("check", "reason"),
    [
        ({"name": "a", "version": 3}, "'a' is at version 1, not at version 3"),
        ({"name": "b", "version": 3}, "'b' is absent, not at version 3"),
        ({"name": "b", "exists": True}, "'b' does not exist"),
        ({"name": "a", "exists": False}, "'a' exists (version 1)"),
    ],
)
def test_a_failed_check_says_what_it_found(client: FlaskClient, check: dict, reason: str):
    client.put("/var/a", data={"value": "v"})
    response = client.post("/txn", json={"operations": [{"op": "check", **check}]}, headers=JSON)
    assert (response.status_code, response.get_json()) == (
        409,
        error(
            "check_failed",
            f"operation 0 failed: {reason}; nothing was changed",
            index=0,
            reason=reason,
        ),
    )


def test_an_error_in_json_is_one_compact_line_of_utf8(client: FlaskClient):
    response = client.get("/var/%C3%A9", headers=JSON)
    expected = '{"error":"not_found","message":"no variable named \'é\'"}\n'
    assert response.data == expected.encode()


def test_a_path_from_a_server_that_sets_request_uri_is_checked_as_sent():
    # Servers other than gunicorn that keep the raw path in REQUEST_URI (uWSGI, mod_wsgi).
    with pytest.raises(ApiError) as refused:
        inputs.check_raw_path({"REQUEST_URI": "/var/100%", "PATH_INFO": "/var/100%"})
    assert (refused.value.status, refused.value.code) == (400, "invalid_escape")


def test_a_request_without_a_path_info_passes_the_path_check():
    inputs.check_raw_path({})  # CGI leaves PATH_INFO out for the script's own URL
