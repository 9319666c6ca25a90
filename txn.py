"""Transactions: ``POST /txn``, several operations on several variables, all or nothing.

The body is ``{"operations": [...]}`` (``parse``, below, with ``inputs``' rules): sets,
deletes, checks and gets, applied in order, each seeing the ones before it, in one database
transaction (``Store.transact``). 200 answers ``{"txn": id, "results": [...]}``, one result
per operation; a failed check is a 409 naming the operation (``index``) and the ``reason``,
and nothing changed. Each write is an ordinary change (history, ETags, watchers) carrying the
``txn`` id.

The body may be larger than a single write's (``MAX_TXN_BYTES``, not ``MAX_CONTENT_LENGTH``):
up to MAX_TXN_OPERATIONS values, each within ``MAX_VALUE_BYTES``.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, g, request

import access
import db
import inputs
from errors import ApiError
from responses import json_response, operation_result_dict

bp = Blueprint("txn", __name__)


@bp.post("/txn")
def transact() -> Response:
    request.max_content_length = current_app.config["MAX_TXN_BYTES"]
    operations = parse(current_app.config["MAX_VALUE_BYTES"])
    for index, operation in enumerate(operations):  # every name by the policy, before any
        access.require(operation.name, access.TRANSACTION_NEEDS[operation.kind], index)
    try:
        txn_id, results = db.ready_store().transact(operations, actor=g.get("actor"))
    except db.TransactionFailed as exc:
        raise ApiError(
            409,
            "check_failed",
            f"operation {exc.index} failed: {exc.reason}; nothing was changed",
            details={"index": exc.index, "reason": exc.reason},
        ) from exc
    body = [
        operation_result_dict(op, result) for op, result in zip(operations, results, strict=True)
    ]
    return json_response({"txn": txn_id, "results": body})


# --- What a transaction may carry

# What each kind of operation takes besides "op" and "name".
_OPERATION_MEMBERS: dict[str, set[str]] = {
    "set": {"value", "ttl"},
    "delete": set(),
    "check": {"version", "exists"},
    "get": set(),
}


def parse(max_value_bytes: int) -> list[db.Operation]:
    """``POST /txn``: a JSON body ``{"operations": [...]}`` of 1 to inputs.MAX_TXN_OPERATIONS
    operations, each ``{"op": "set" | "delete" | "check" | "get", "name": ..., ...}``. The
    first problem, in order, is the answer (with the operation's ``index``)."""
    if request.mimetype != "application/json":
        raise ApiError(
            415, "unsupported_media_type", 'send the transaction as JSON {"operations": [...]}'
        )
    payload = inputs.json_body(request.get_data(cache=False))
    if not isinstance(payload, dict) or set(payload) != {"operations"}:
        raise ApiError(
            400, "invalid_transaction", 'the body must be {"operations": [...]} and nothing more'
        )
    items = payload["operations"]
    if not isinstance(items, list):
        raise ApiError(400, "invalid_transaction", "operations must be a list")
    if not items:
        raise ApiError(400, "empty_transaction", "a transaction needs at least one operation")
    if len(items) > inputs.MAX_TXN_OPERATIONS:
        raise ApiError(
            413,
            "too_many_operations",
            f"{len(items)} operations; the limit is {inputs.MAX_TXN_OPERATIONS} a transaction",
        )
    return [_operation_at(index, item, max_value_bytes) for index, item in enumerate(items)]


def _operation_at(index: int, item: Any, max_value_bytes: int) -> db.Operation:
    try:
        return _operation(item, max_value_bytes)
    except ApiError as exc:
        message = f"operation {index}: {exc.message}"
        raise ApiError(exc.status, exc.code, message, details={"index": index}) from exc


def _operation(item: Any, max_value_bytes: int) -> db.Operation:
    kind = item.get("op") if isinstance(item, dict) else None
    if not isinstance(kind, str) or kind not in _OPERATION_MEMBERS:
        raise ApiError(
            400,
            "invalid_operation",
            'an operation is an object {"op": "set", "delete", "check" or "get", "name": ...}',
        )
    unknown = sorted(set(item) - {"op", "name"} - _OPERATION_MEMBERS[kind])
    if unknown:
        raise ApiError(400, "invalid_operation", f"{kind} takes no member {unknown[0]!r}")
    name = item.get("name")
    if not isinstance(name, str) or not _is_text(name):
        raise ApiError(400, "invalid_name", "name must be a string of Unicode text")
    inputs.check_name(name)
    if kind == "set":
        value = item.get("value")
        if not isinstance(value, str):
            raise ApiError(400, "missing_value", 'set needs "value": a string')
        ttl = inputs.ttl_seconds(item["ttl"]) if "ttl" in item else None
        return db.Operation("set", name, inputs.check_value_size(value, max_value_bytes), ttl=ttl)
    if kind == "check":
        return _check(name, item)
    return db.Operation(kind, name)


def _check(name: str, item: dict[str, Any]) -> db.Operation:
    """A check: ``"version": N`` (at that version), or ``"exists": true/false``."""
    if ("version" in item) == ("exists" in item):
        raise ApiError(
            400, "invalid_operation", 'check takes one of "version": N or "exists": true/false'
        )
    if "exists" in item:
        if not isinstance(item["exists"], bool):
            raise ApiError(400, "invalid_operation", "exists must be true or false")
        return db.Operation("check", name, exists=item["exists"])
    version = item["version"]
    if isinstance(version, float) and version.is_integer():  # JSON's 3.0 is the integer 3
        version = int(version)
    if isinstance(version, bool) or not isinstance(version, int) or not _is_version(version):
        raise ApiError(400, "invalid_operation", "version must be a version number (1 or more)")
    return db.Operation("check", name, version=version)


def _is_version(number: int) -> bool:
    return 1 <= number < 10**inputs.MAX_VERSION_DIGITS


def _is_text(text: str) -> bool:
    """Whether ``text`` is Unicode text (JSON's escapes can spell a lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
