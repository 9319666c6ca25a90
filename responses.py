"""How the API answers: Accept negotiation, the JSON and text representations of a variable and
of a change, and the headers every versioned read carries.

Views build their responses from these helpers, so a representation or a caching rule exists
once, whichever view serves it.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Response, request

import db

TEXT = "text/plain; charset=utf-8"


def wants_json(default_json: bool = False) -> bool:
    """Whether the client prefers JSON to text (its Accept header; text when it does not say)."""
    offered = ["application/json", TEXT] if default_json else [TEXT, "application/json"]
    best = request.accept_mimetypes.best_match(offered, default=offered[0])
    return best == "application/json"


# One encoder for every answer (json.dumps with options builds a new one per call).
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def json_response(data: Any, status: int = 200) -> Response:
    return Response(_encode(data) + "\n", status=status, mimetype="application/json")


def text_response(body: str, status: int = 200) -> Response:
    return Response(body, status=status, content_type=TEXT)


def variable_dict(var: db.Variable) -> dict[str, Any]:
    """A variable as JSON; ``value`` only when it was read (listings may leave it out)."""
    data: dict[str, Any] = {"name": var.name}
    if var.value is not None:
        data["value"] = var.value
    data.update(
        version=var.version,
        created_at=db.utc_text(var.created_at),
        updated_at=db.utc_text(var.updated_at),
    )
    if var.expires_at is not None:
        data["expires_at"] = db.utc_text(var.expires_at)
    return data


def change_dict(change: db.Change) -> dict[str, Any]:
    """A change-log entry as JSON (history pages, old versions, event data)."""
    data: dict[str, Any] = {"name": change.name, "version": change.version, "op": change.op}
    if change.value is not None:
        data["value"] = change.value
    data.update(seq=change.seq, changed_at=db.utc_text(change.changed_at))
    if change.actor is not None:
        data["actor"] = change.actor
    if change.txn is not None:
        data["txn"] = change.txn
    return data


def operation_result_dict(operation: db.Operation, result: db.OperationResult) -> dict[str, Any]:
    """What one operation of ``POST /txn`` did: ``version`` (None: absent, or nothing to
    delete), a get's ``value`` when there is one, a set's ``created``."""
    data: dict[str, Any] = {"op": operation.kind, "name": result.name, "version": result.version}
    if operation.kind == "get" and result.value is not None:
        data["value"] = result.value
    if operation.kind == "set":
        data["created"] = bool(result.created)
    return data


def variable_response(var: db.Variable) -> Response:
    """The variable as the client asked: JSON, or its value as plain text."""
    return json_response(variable_dict(var)) if wants_json() else text_response(var.value or "")


def no_content() -> Response:
    """204: no body, and so no Content-Type (Werkzeug would otherwise say text/html)."""
    response = Response(status=204)
    del response.headers["Content-Type"]  # pragma: no mutate (header names ignore case)
    return response


def etag(version: int) -> str:
    """The strong ETag of a version: ``"<version>"``."""
    return f'"{version}"'


def no_cache(response: Response, version: int | None = None) -> Response:
    """Make clients revalidate ``response`` before reusing it; with ``version``, tag it with
    that version's ETag so that the revalidation is a cheap If-None-Match."""
    if version is not None:
        response.headers["ETag"] = etag(version)
    response.headers["Cache-Control"] = "no-cache"
    return response
