"""The variables API: ``/var/<name>`` (GET, HEAD, PUT, POST, DELETE), ``/var`` (listing, one
folder level, env/shell export, batch read; DELETE: a subtree), the probes ``/healthz`` and
``/readyz``, and ``/openapi.json``, the contract.

Views are short: ``inputs`` parses the request, the store does the work, ``responses`` shapes
the answer. Watching (``?wait=`` and ``/events``) is in ``events.py``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from urllib.parse import quote, urlencode

from flask import Blueprint, Response, current_app, g, request, send_file
from werkzeug.routing import PathConverter

import access
import db
import events
import exports
import inputs
from errors import ApiError, error_response
from responses import (
    change_dict,
    etag,
    json_response,
    no_cache,
    no_content,
    text_response,
    variable_dict,
    wants_json,
)

bp = Blueprint("api", __name__)
log = logging.getLogger("var_keeper")


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
    """200 once the database answers and the schema is ready. Open to anyone, so the reason
    it is not goes to the server log only: a database's error names its accounts and hosts."""
    try:
        db.ready_store().ping()
    except db.StoreUnavailable as exc:
        log.warning("GET /readyz: not ready: %s", exc)
        message = "not ready: the database is unavailable (the server log says why)"
        return error_response(503, "not_ready", message)
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
    if wants_json():
        var = db.ready_store().get(name)
        if var is None:
            raise _not_found(name)
        return _read_of(var.version, lambda: json_response(variable_dict(var)))
    found = db.ready_store().get_value(name)  # as text: its value and version are all it takes
    if found is None:
        raise _not_found(name)
    value, version = found
    return _read_of(version, lambda: text_response(value))


def _not_found(name: str) -> ApiError:
    return ApiError(404, "not_found", f"no variable named {name!r}")


def _read_of(version: int, respond: Callable[[], Response]) -> Response:
    """A read of ``version``: 304 if the client holds it already (If-None-Match), else
    ``respond()``; either way with its ETag."""
    if request.if_none_match and request.if_none_match.contains_weak(str(version)):
        return no_cache(Response(status=304), version)
    return no_cache(respond(), version)


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
    return no_content()


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
    if query.export_format:
        return _export(query.prefix, query.export_format)
    store = db.ready_store()
    # One entry more than a page tells whether there is a next page.
    entries: Sequence[db.Variable | str]
    if query.delimiter:
        entries = store.list_folder(
            query.prefix, query.delimiter, query.after, query.limit + 1, query.with_values
        )
    else:
        entries = store.list(query.prefix, query.after, query.limit + 1, query.with_values)
    next_url = None
    if len(entries) > query.limit:
        entries = entries[: query.limit]
        next_url = _next_page(query, entries[-1])
    entries = access.visible(entries)  # after the cut: the next page goes on from the last read
    body: dict[str, object] = {
        "variables": [variable_dict(e) for e in entries if not isinstance(e, str)]
    }
    if query.delimiter:
        body["prefixes"] = [e for e in entries if isinstance(e, str)]
    response = json_response({**body, "next": next_url})
    if next_url:
        response.headers["Link"] = f'<{next_url}>; rel="next"'
    return response


def _next_page(query: inputs.ListQuery, last: db.Variable | str) -> str:
    """The URL of the page after ``last`` (a name, or a folder's sub-prefix)."""
    page = {
        "prefix": query.prefix,
        "delimiter": query.delimiter or "",
        "limit": query.limit,
        "after": last if isinstance(last, str) else last.name,
    }
    if query.with_values:
        page["values"] = "true"
    return "/var?" + urlencode({k: v for k, v in page.items() if v != ""}, quote_via=quote)


@bp.delete("/var")
def delete_subtree() -> Response:
    """Delete every variable under a prefix, in one transaction, up to MAX_SUBTREE_VARIABLES;
    above it nothing (409: the request is fine, there is too much under it right now)."""
    prefix = inputs.subtree_prefix()
    access.require_everything_under(prefix, "write")
    limit = inputs.MAX_SUBTREE_VARIABLES
    try:
        count = db.ready_store().delete_prefix(prefix, limit=limit, actor=g.get("actor"))
    except db.TooMany as exc:
        raise ApiError(
            409,
            "too_many_variables",
            f"{exc.count} variables start with {prefix!r}, more than the {exc.limit} one "
            "request may delete: nothing was deleted; delete narrower prefixes",
            details={"count": exc.count, "limit": exc.limit},
        ) from exc
    return json_response({"prefix": prefix, "deleted": count})


def _export(prefix: str, export_format: str) -> Response:
    """Every variable under ``prefix`` as an env or shell file (exports.py), read in one
    statement (one snapshot); 409 listing every variable that cannot be written. An export is
    all or nothing: 403 unless the token may read everything under the prefix."""
    access.require_everything_under(prefix, "read")
    limit = inputs.MAX_SUBTREE_VARIABLES
    variables = db.ready_store().list(prefix, None, limit + 1, True)
    if len(variables) > limit:
        raise ApiError(
            409,
            "too_many_variables",
            f"more than {limit} variables start with {prefix!r}: export narrower prefixes",
            details={"limit": limit},
        )
    try:
        body = exports.render(variables, prefix, export_format)
    except exports.NotExportable as exc:
        listed = "; ".join(f"{o.name!r}: {' and '.join(o.reasons)}" for o in exc.offenders)
        raise ApiError(
            409,
            "not_exportable",
            f"{len(exc.offenders)} variables cannot be written as {export_format} "
            f"(nothing was): {listed}",
            details={"offenders": [{"name": o.name, "reasons": o.reasons} for o in exc.offenders]},
        ) from exc
    response = text_response(body)
    response.headers["Cache-Control"] = "no-store"  # configuration, often secrets
    return response


def _batch(names: list[str]) -> Response:
    """The names asked for: found, missing, and (access control on) those the token may not
    read, in ``denied`` (neither read nor said to exist)."""
    readable, denied = access.split_readable(sorted(set(names)))
    found = db.ready_store().get_many(readable)
    missing = sorted(set(readable) - {v.name for v in found})
    body = {"variables": [variable_dict(v) for v in found], "missing": missing}
    if denied:
        body["denied"] = denied
    return json_response(body)
