"""The variables API: ``/var/<name>`` (GET, HEAD, PUT, POST, DELETE), ``/var`` (listing and
batch read), the probes ``/healthz`` and ``/readyz``, and ``/openapi.json``, the contract.

Views are short: ``inputs`` parses the request, the store does the work, ``responses`` shapes
the answer. Watching (``?wait=`` and ``/events``) is in ``events.py``.
"""

from __future__ import annotations

import os
from urllib.parse import quote, urlencode

from flask import Blueprint, Response, current_app, g, request, send_file
from werkzeug.routing import PathConverter

import db
import events
import inputs
from errors import ApiError, error_response
from responses import (
    change_dict,
    etag,
    json_response,
    no_cache,
    text_response,
    variable_dict,
    variable_response,
    wants_json,
)

bp = Blueprint("api", __name__)


class NameConverter(PathConverter):
    """Werkzeug's ``path`` converter, but matching every character, newlines included, so that
    a name with a control character gets a clear 400 from ``inputs.check_name`` instead of a
    404. create_app registers it as ``<name:...>``."""

    regex = r"[^/][\s\S]*?"


# --- Probes and the contract


@bp.get("/healthz")
def healthz() -> Response:
    return text_response("ok\n")


@bp.get("/readyz")
def readyz() -> Response:
    try:
        db.ready_store().ping()
    except db.StoreUnavailable as exc:
        return error_response(503, "not_ready", f"not ready: {exc}")
    return text_response("ready\n")


@bp.get("/openapi.json")
def openapi() -> Response:
    path = os.path.join(current_app.root_path, "openapi.json")
    return send_file(path, mimetype="application/json")


# --- One variable


@bp.get("/var/<name:name>")
def get_var(name: str) -> Response:
    inputs.check_name(name)
    query = inputs.read_query()
    if query.history:
        return _history(name, query)
    if query.version is not None:
        return _old_version(name, query.version)
    if query.wait is not None:
        return events.long_poll(name, query.wait, query.wait_after)
    var = db.ready_store().get(name)
    if var is None:
        raise ApiError(404, "not_found", f"no variable named {name!r}")
    if request.if_none_match and request.if_none_match.contains_weak(str(var.version)):
        return no_cache(Response(status=304), var.version)
    return no_cache(variable_response(var), var.version)


@bp.post("/var/<name:name>")
def post_var(name: str) -> Response:
    # The tutorial's contract: 200 and body "OK", whether it created or updated.
    return _write(name, created_status=200)


@bp.put("/var/<name:name>")
def put_var(name: str) -> Response:
    return _write(name, created_status=201)


@bp.delete("/var/<name:name>")
def delete_var(name: str) -> Response:
    conditions = inputs.delete_conditions(name)
    try:
        deleted = db.ready_store().delete(name, actor=g.get("actor"), **conditions.as_kwargs())
    except db.PreconditionFailed as exc:
        raise ApiError(
            412, "precondition_failed", f"{name!r} has changed or does not exist"
        ) from exc
    if not deleted:
        raise ApiError(404, "not_found", f"no variable named {name!r}")
    return Response(status=204)


def _write(name: str, created_status: int) -> Response:
    """Store the value (or restore an old version's) and say so: 201 (PUT) or 200 if new."""
    write = inputs.write_request(name, current_app.config["MAX_VALUE_BYTES"])
    kwargs = {"ttl": write.ttl, "actor": g.get("actor"), **write.conditions.as_kwargs()}
    store = db.ready_store()
    try:
        if write.restore is not None:
            result = store.restore(name, write.restore, **kwargs)
        else:
            result = store.put(name, write.value, **kwargs)
    except db.VersionNotFound as exc:
        raise ApiError(
            404, "not_found", f"version {write.restore} of {name!r} has no value to restore"
        ) from exc
    except db.PreconditionFailed as exc:
        raise ApiError(
            412, "precondition_failed", f"{name!r} has changed or does not match"
        ) from exc
    status = created_status if result.created else 200
    if wants_json():
        data = {"name": name, "version": result.version, "created": result.created}
        response = json_response(data, status)
    else:
        response = text_response("Created" if status == 201 else "OK", status)
    response.headers["ETag"] = etag(result.version)
    if status == 201:
        response.headers["Location"] = "/var/" + quote(name)
    return response


def _history(name: str, query: inputs.ReadQuery) -> Response:
    """A name's retained changes, newest first, a page at a time (keyset on version)."""
    store = db.ready_store()
    current = store.state(name)[1]
    if current == 0:
        raise ApiError(404, "not_found", f"no variable and no history named {name!r}")
    changes = store.numbered_history(name, query.before, query.limit + 1, query.with_values)
    next_url = None
    if len(changes) > query.limit:
        changes = changes[: query.limit]
        page = {"history": "", "limit": query.limit, "before": changes[-1].version}
        if query.with_values:
            page["values"] = "true"
        next_url = f"/var/{quote(name)}?" + urlencode(page, quote_via=quote)
    response = json_response(
        {"name": name, "changes": [change_dict(c) for c in changes], "next": next_url}
    )
    no_cache(response, current)
    if next_url:
        response.headers["Link"] = f'<{next_url}>; rel="next"'
    return response


def _old_version(name: str, version: int) -> Response:
    change = db.ready_store().numbered_change(name, version)
    if change is None or change.value is None:
        what = "was not a write" if change else "is not in the retained history"
        raise ApiError(404, "not_found", f"version {version} of {name!r} {what}")
    response = json_response(change_dict(change)) if wants_json() else text_response(change.value)
    return no_cache(response, change.version)


# --- Many variables


@bp.get("/var")
def list_vars() -> Response:
    query = inputs.list_query()
    if query.names:
        return _batch(query.names)
    # One row more than a page tells whether there is a next page.
    items = db.ready_store().list(query.prefix, query.after, query.limit + 1, query.with_values)
    next_url = None
    if len(items) > query.limit:
        items = items[: query.limit]
        page = {"prefix": query.prefix, "limit": query.limit, "after": items[-1].name}
        if query.with_values:
            page["values"] = "true"
        next_url = "/var?" + urlencode({k: v for k, v in page.items() if v != ""}, quote_via=quote)
    response = json_response({"variables": [variable_dict(v) for v in items], "next": next_url})
    if next_url:
        response.headers["Link"] = f'<{next_url}>; rel="next"'
    return response


def _batch(names: list[str]) -> Response:
    found = db.ready_store().get_many(sorted(set(names)))
    missing = sorted(set(names) - {v.name for v in found})
    return json_response({"variables": [variable_dict(v) for v in found], "missing": missing})
