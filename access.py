"""Access control on each request: who the caller is, and what the access policy lets it do.

Off unless ``READ_TOKENS``, ``WRITE_TOKENS`` or ``ACCESS_POLICY_FILE`` is set. The policy itself
(parsing, the longest-prefix decision, reloading) is ``policy.py``; here it is applied:

- the API authenticates with ``Authorization: Bearer <token>`` only, never a cookie, so that
  another site cannot make a browser call the API with a user's rights; the page (``web.py``)
  also accepts its signed session cookie (``signin.py``);
- ``/var/<name>`` (every method, history, ``?version``, restore, long-poll) needs read or write
  on the name, checked here before the view runs; ``/metrics`` needs a token's ``metrics``;
- views that touch many names filter (``visible``, ``split_readable``, ``read_filter``)
  or check each name (``require``: the page's forms, a transaction's operations).

Refusals: 401 without a valid token, 403 with a message naming the rule that refused. The
probes, the API description, the page's static files and its sign-in form stay open.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from flask import Flask, current_app, g, request

import db
import inputs
import policy
import signin
from errors import ApiError

# Open to anyone even with tokens on: probes, the API description, the page's files, sign-in.
PUBLIC_ENDPOINTS = {"api.healthz", "api.readyz", "api.openapi", "static", *signin.PUBLIC_ENDPOINTS}
PAGE_BLUEPRINTS = {"web", "signin"}
VARIABLE_ENDPOINTS = {"api.get_var", "api.put_var", "api.post_var", "api.delete_var"}
METRICS_ENDPOINT = "observability.metrics"
READ_METHODS = {"GET", "HEAD", "OPTIONS"}
_EXTENSION = "var_keeper.policy"
CHALLENGE = 'Bearer realm="var_keeper"'


def init_app(app: Flask) -> None:
    """Load the policy (a clear error at start-up if it cannot be used) and, when access
    control is on, authenticate every request but the public ones."""
    config = app.config
    fixed = policy.shorthand(config["READ_TOKENS"], config["WRITE_TOKENS"])
    path = config.get("ACCESS_POLICY_FILE")
    source = policy.PolicySource(
        path,
        fixed,
        config.get("POLICY_CHECK_INTERVAL", 1.0),
        last_good=os.environ.get(policy.LAST_GOOD_VARIABLE),
    )
    app.extensions[_EXTENSION] = source
    if enabled(app):
        app.before_request(authenticate)


def enabled(app: Flask | None = None) -> bool:
    """Whether access control is on: tokens configured, or a policy file (even an empty one)."""
    source: policy.PolicySource = (app or current_app).extensions[_EXTENSION]
    return bool(source.path) or bool(source.fixed)


def current_policy() -> policy.Policy:
    source: policy.PolicySource = current_app.extensions[_EXTENSION]
    return source.current()


def caller() -> policy.Token | None:
    """The authenticated token of this request; None with access control off."""
    return g.get("token")


# --- Authentication


def authenticate() -> None:
    """Who is calling (401 if nobody valid), then the checks that depend only on the route."""
    if request.endpoint in PUBLIC_ENDPOINTS:
        return
    token = _bearer()
    on_page = request.blueprint in PAGE_BLUEPRINTS
    if token is None and on_page:
        token = signin.session_token(current_policy())
    if token is None:
        message = "sign in with your token" if on_page else "send Authorization: Bearer <token>"
        raise ApiError(401, "unauthorized", message, {"WWW-Authenticate": CHALLENGE})
    g.token = token
    # Who made a change, in the change log: the token's public name, never the token.
    g.actor = token.name
    if request.endpoint in VARIABLE_ENDPOINTS:
        name = inputs.check_name((request.view_args or {}).get("name", ""))
        require(name, "read" if request.method in READ_METHODS else "write")
    elif request.endpoint == METRICS_ENDPOINT and not token.metrics:
        message = f"token {token.name!r} may not read /metrics: it has no metrics = true"
        raise ApiError(403, "forbidden", message)


def _bearer() -> policy.Token | None:
    """The token of the Authorization header; None without one; 401 for a bad or unknown one."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        message = "send Authorization: Bearer <token>"
        raise ApiError(401, "unauthorized", message, {"WWW-Authenticate": CHALLENGE})
    token = current_policy().find(policy.digest(secret.strip()))
    if token is None:
        challenge = {"WWW-Authenticate": CHALLENGE + ', error="invalid_token"'}
        raise ApiError(401, "invalid_token", "the token is not valid", challenge)
    return token


# --- Decisions for views


def may(name: str, operation: str) -> bool:
    """Whether this request may ``operation`` ("read" or "write") ``name``."""
    token = caller()
    return token is None or token.may(name, operation)


def require(name: str, operation: str, index: int | None = None) -> None:
    """403, naming the rule that refused, unless this request may ``operation`` ``name``.
    For views that act on names of their own (the page's forms, ``POST /txn``, whose
    operations give their ``index``)."""
    token = caller()
    refusal = token.refusal(name, operation) if token is not None else None
    if refusal is None:
        return
    if index is None:
        raise ApiError(403, "forbidden", refusal, details={"name": name})
    details = {"name": name, "index": index}
    raise ApiError(403, "forbidden", f"operation {index}: {refusal}", details=details)


# What each kind of a transaction's operations needs (a check reads the version).
TRANSACTION_NEEDS = {"set": "write", "delete": "write", "check": "read", "get": "read"}


def require_everything_under(prefix: str, operation: str) -> None:
    """403 unless this request may ``operation`` every name starting with ``prefix`` (a
    subtree delete, an export that must be complete)."""
    token = caller()
    if token is None:
        return
    refusal = token.refusal(prefix, operation)
    for rule in token.rules:
        if refusal is None and rule.prefix.startswith(prefix) and not rule.allows(operation):
            refusal = f"token {token.name!r} may not {operation} under {prefix!r}: "
            refusal += rule.describe()
    if refusal is not None:
        raise ApiError(403, "forbidden", refusal, details={"prefix": prefix})


def may_write_somewhere() -> bool:
    token = caller()
    return token is None or token.may_write_somewhere()


def split_readable(names: list[str]) -> tuple[list[str], list[str]]:
    """``names`` this request may read, and those it may not (a batch read's ``denied``)."""
    readable = [name for name in names if may(name, "read")]
    return readable, [name for name in names if not may(name, "read")]


def read_filter() -> Callable[[str], bool]:
    """For an event stream, which outlives the request: whether the caller's token may read a
    name, by the policy in force at each call (a token removed meanwhile reads nothing)."""
    token = caller()
    if token is None:
        return lambda name: True
    source: policy.PolicySource = current_app.extensions[_EXTENSION]
    hashed = token.digest

    def visible(name: str) -> bool:
        current = source.current().find(hashed)
        return current is not None and current.may(name, "read")

    return visible


def visible(entries: Sequence[db.Variable | str]) -> list[db.Variable | str]:
    """The entries of a listing page this request may see: the variables it may read, and the
    folders (sub-prefixes) under which it may read something. Applied after the page is cut,
    so that the next link goes on from the last entry read: a page may come out shorter."""
    token = caller()
    if token is None:
        return list(entries)
    return [
        entry
        for entry in entries
        if (token.read_regions(entry) if isinstance(entry, str) else token.may(entry.name, "read"))
    ]
