"""var_keeper's HTTP layer: named text variables over HTTP.

``create_app()`` builds the Flask app; ``app`` at module level exists for ``gunicorn app:app``;
``python app.py`` runs gunicorn with ``gunicorn.conf.py``. Storage lives in ``db.py``: the views
here speak HTTP and nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote, unquote_to_bytes, urlencode, urlsplit

from flask import Flask, Response, g, request, send_file
from werkzeug.exceptions import HTTPException
from werkzeug.routing import PathConverter

import db
import observability
import watch
import web

log = logging.getLogger("var_keeper")

_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
MAX_LIMIT = 1000
MAX_BATCH = 1000
MAX_TTL_SECONDS = 999_999_999  # nine digits: about 31 years
MAX_WAIT_SECONDS = 60  # a long-poll's wait; longer is a 400
EVENTS_HEARTBEAT_SECONDS = 15  # a comment line keeps proxies from closing a quiet stream
EVENTS_RETRY_MS = 2000  # EventSource's reconnection delay
EVENTS_PAGE = 100
TEXT = "text/plain; charset=utf-8"


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    if not raw.strip().isdigit():
        raise ValueError(f"{name} must be a whole number, not {raw!r}")
    return int(raw)


def settings_from_env(instance_path: str) -> dict[str, Any]:
    """Every setting the service reads from its environment, with its default (README table)."""
    default_db = "sqlite:///" + os.path.join(instance_path, "var_keeper.db")
    return {
        "DATABASE_URL": os.environ.get("DATABASE_URL") or default_db,
        "DATABASE_PASSWORD_FILE": os.environ.get("DATABASE_PASSWORD_FILE") or None,
        "DATABASE_CONNECT_TIMEOUT": _env_int("DATABASE_CONNECT_TIMEOUT", 3),
        "DATABASE_TIMEOUT": _env_int("DATABASE_TIMEOUT", 10),
        "DATABASE_POOL_SIZE": _env_int("DATABASE_POOL_SIZE", 16),
        "MAX_VALUE_BYTES": _env_int("MAX_VALUE_BYTES", 1024 * 1024),
        # Change-log retention: a change goes once it is more than this many versions behind
        # its name's newest, or older than this many days, whichever comes first.
        "HISTORY_KEEP_VERSIONS": _env_int("HISTORY_KEEP_VERSIONS", 100),
        "HISTORY_KEEP_DAYS": _env_float("HISTORY_KEEP_DAYS", 30.0),
        # Seconds between two passes of each worker's sweeper (expiry, retention), jittered.
        "SWEEP_INTERVAL": _env_float("SWEEP_INTERVAL", 5.0),
        # While anybody waits for a change, each worker reads the change log this often.
        "WATCH_POLL_INTERVAL": _env_float("WATCH_POLL_INTERVAL", 0.2),
        "READ_TOKENS": _tokens("READ_TOKENS"),
        "WRITE_TOKENS": _tokens("WRITE_TOKENS"),
    }


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw else default


def _tokens(name: str) -> list[str]:
    """Comma-separated tokens from ``NAME``, plus one a line from the file ``NAME_FILE``."""
    tokens = os.environ.get(name, "").split(",")
    path = os.environ.get(f"{name}_FILE")
    if path:
        with open(path, encoding="utf-8") as secret:
            tokens += secret.read().splitlines()
    return [token.strip() for token in tokens if token.strip()]


class NameConverter(PathConverter):
    """Werkzeug's ``path`` converter, but matching every character, newlines included, so that
    a name with a control character gets a clear 400 from ``_check_name`` instead of a 404."""

    regex = r"[^/][\s\S]*?"


class ApiError(Exception):
    """An error the client caused or must be told about, with its status and a stable code."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = dict(headers or {})


# --- Representations


def _wants_json(default_json: bool = False) -> bool:
    offered = ["application/json", TEXT] if default_json else [TEXT, "application/json"]
    best = request.accept_mimetypes.best_match(offered, default=offered[0])
    return best == "application/json"


def _json(data: Any, status: int = 200) -> Response:
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n"
    return Response(body, status=status, mimetype="application/json")


def _text(body: str, status: int = 200) -> Response:
    return Response(body, status=status, content_type=TEXT)


def _timestamp(moment: Any) -> str:
    return f"{moment:%Y-%m-%dT%H:%M:%S.%f}Z"  # every stored time is UTC (a listing's hot spot)


def _as_dict(var: db.Variable) -> dict[str, Any]:
    data: dict[str, Any] = {"name": var.name}
    if var.value is not None:
        data["value"] = var.value
    data.update(
        version=var.version,
        created_at=_timestamp(var.created_at),
        updated_at=_timestamp(var.updated_at),
    )
    if var.expires_at is not None:
        data["expires_at"] = _timestamp(var.expires_at)
    return data


def _change_dict(change: db.Change) -> dict[str, Any]:
    data: dict[str, Any] = {"name": change.name, "version": change.version, "op": change.op}
    if change.value is not None:
        data["value"] = change.value
    data.update(seq=change.seq, changed_at=_timestamp(change.changed_at))
    if change.actor is not None:
        data["actor"] = change.actor
    return data


def _etag(version: int) -> str:
    return f'"{version}"'


def error_response(status: int, code: str, message: str) -> Response:
    if _wants_json():
        return _json({"error": code, "message": message}, status)
    return _text(message + "\n", status)


# --- Request parsing


def _check_name(name: str) -> str:
    problem = db.name_problem(name)
    if problem:
        code = "name_too_long" if len(name) > db.MAX_NAME_CHARS else "invalid_name"
        raise ApiError(400, code, problem)
    return name


def _decode_utf8(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "invalid_utf8", f"the {what} is not valid UTF-8") from exc


def _form_fields(body: bytes) -> dict[str, str]:
    """The first of each field of an urlencoded body, decoded strictly.

    Werkzeug's form parser keeps undecodable percent-escapes as literal text; a value must never
    be silently altered, so the body is parsed here instead.
    """
    text = _decode_utf8(body, "form body")
    if _BAD_PERCENT.search(text):
        raise ApiError(400, "invalid_form", "malformed form encoding: % must start an escape %XX")
    try:
        fields = parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise ApiError(
            400, "invalid_utf8", "a form field is not valid percent-encoded UTF-8"
        ) from exc
    first: dict[str, str] = {}
    for key, field in fields:
        first.setdefault(key, field)
    return first


@dataclass(frozen=True, slots=True)
class WriteBody:
    """What a write's body asks for: a value, or the version whose value to restore; and the
    time to live in seconds (None: permanent)."""

    value: str | None
    restore: int | None
    ttl: float | None


def read_write_body(max_bytes: int) -> WriteBody:
    """A write's body: form fields or JSON members ``value`` (or ``restore``, a version) and
    ``ttl``, or a text/plain value; ``ttl`` may also be in the query string."""
    mimetype = request.mimetype
    fields: dict[str, Any]
    if mimetype == "application/x-www-form-urlencoded":
        fields = _form_fields(request.get_data(cache=False))
    elif mimetype == "multipart/form-data":
        fields = {k: request.form[k] for k in ("value", "restore", "ttl") if k in request.form}
    elif mimetype == "application/json":
        try:
            payload = json.loads(_decode_utf8(request.get_data(cache=False), "JSON body"))
        except json.JSONDecodeError as exc:
            raise ApiError(
                400, "invalid_json", f"malformed JSON: {exc.msg} at position {exc.pos}"
            ) from exc
        if not isinstance(payload, dict) or ("value" not in payload and "restore" not in payload):
            raise ApiError(
                400, "missing_value", 'the JSON body must be an object like {"value": "..."}'
            )
        fields = payload
        if "ttl" in fields and fields["ttl"] is None:
            raise ApiError(400, "invalid_ttl", "the JSON field ttl must be a number of seconds")
        if "value" in fields and not isinstance(fields["value"], str):
            raise ApiError(400, "invalid_value", "the JSON field value must be a string")
    elif mimetype == "text/plain":
        charset = request.mimetype_params.get("charset", "utf-8").lower()
        if charset not in ("utf-8", "utf8", "us-ascii"):
            raise ApiError(415, "unsupported_charset", "a text/plain body must be UTF-8")
        fields = {"value": _decode_utf8(request.get_data(cache=False), "body")}
    elif not mimetype and not request.content_length and not request.get_data(cache=False):
        fields = {}
    else:
        raise ApiError(
            415,
            "unsupported_media_type",
            'send the value as form field "value", as JSON {"value": ...} or as a text/plain body',
        )
    ttl = read_ttl(fields.get("ttl"))
    if "restore" in fields:
        if "value" in fields:
            raise ApiError(400, "invalid_restore", "send value or restore, not both")
        return WriteBody(None, _restore_version(fields["restore"]), ttl)
    value = fields.get("value")
    if value is None:
        raise ApiError(400, "missing_value", "missing form field 'value'")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise ApiError(400, "invalid_value", "the value is not valid Unicode text") from exc
    if size > max_bytes:
        raise ApiError(
            413, "value_too_large", f"the value is {size} bytes; the limit is {max_bytes}"
        )
    return WriteBody(value, None, ttl)


def _restore_version(raw: Any) -> int:
    if isinstance(raw, float) and raw.is_integer():  # JSON's 3.0 is the integer 3
        raw = int(raw)
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    if not isinstance(raw, str) or not _VERSION_TEXT.fullmatch(raw):
        raise ApiError(400, "invalid_restore", "restore must be a version number (1 or more)")
    return int(raw)


_VERSION_TEXT = re.compile(r"[1-9][0-9]{0,17}")
_TTL_TEXT = re.compile(r"[0-9]{1,9}(\.[0-9]{1,6})?")


def read_ttl(in_body: Any = None) -> float | None:
    """A write's time to live: ``ttl`` in the body, else in the query string; seconds from 0
    (expired at once) to MAX_TTL_SECONDS, up to 6 decimals. None: permanent."""
    in_query = request.args.get("ttl")
    if in_query is not None and not _TTL_TEXT.fullmatch(in_query):
        in_body = "invalid"  # checked even where the body's ttl wins
    raw = in_body if in_body is not None else in_query
    if raw is None:
        return None
    if isinstance(raw, str) and _TTL_TEXT.fullmatch(raw):
        return float(raw)
    is_number = isinstance(raw, int | float) and not isinstance(raw, bool)
    if is_number and math.isfinite(raw) and 0 <= raw <= MAX_TTL_SECONDS:
        return float(raw)
    raise ApiError(
        400, "invalid_ttl", f"ttl must be a number of seconds from 0 to {MAX_TTL_SECONDS}"
    )


def _single_etag(header_name: str) -> str | None:
    """The one ETag (or ``*``) of a precondition header, or None if absent."""
    raw = request.headers.get(header_name)
    if raw is None:
        return None
    raw = raw.strip()
    if raw == "*":
        return raw
    if "," in raw:
        raise ApiError(400, "invalid_precondition", f"{header_name} takes one ETag or *")
    return raw


def _version_of(etag: str) -> int:
    """The version an ETag of ours names; 0 (matches nothing) for anything else, W/ included."""
    digits = etag[1:-1]
    # ASCII digits only (int() rejects "²", which isdigit() accepts), and few enough to fit the
    # databases' 64-bit integers: a longer number cannot be a version we issued.
    if len(etag) >= 3 and etag[0] == etag[-1] == '"' and _is_number(digits, max_digits=18):
        return int(digits)
    return 0


def _is_number(raw: str, max_digits: int) -> bool:
    return raw.isascii() and raw.isdigit() and len(raw) <= max_digits


def write_preconditions() -> dict[str, Any]:
    """``If-Match`` / ``If-None-Match: *`` as keyword arguments for ``Store.put``/``delete``."""
    if_match = _single_etag("If-Match")
    if_none_match = _single_etag("If-None-Match")
    if if_none_match not in (None, "*"):
        raise ApiError(400, "invalid_precondition", "on a write, If-None-Match supports only *")
    if if_match is not None and if_none_match is not None:
        raise ApiError(400, "invalid_precondition", "send If-Match or If-None-Match, not both")
    if if_match == "*":
        return {"if_exists": True}
    if if_match is not None:
        return {"if_version": _version_of(if_match)}
    return {"if_absent": True} if if_none_match == "*" else {}


def _flag(name: str) -> bool:
    raw = request.args.get(name, "false").lower()
    if raw in ("true", "1", "yes", ""):
        return True
    if raw in ("false", "0", "no"):
        return False
    raise ApiError(400, "invalid_parameter", f"{name} must be true or false")


def _version_param(name: str) -> int:
    raw = request.args.get(name, "")
    if not _is_number(raw, max_digits=18) or int(raw) < 1:
        raise ApiError(400, "invalid_parameter", f"{name} must be a version number (1 or more)")
    return int(raw)


def _check_read_parameters() -> None:
    """Every parameter a read may take is checked, whichever of them selects what it reads: an
    invalid one is a 400 even where it would not be used."""
    _limit()
    if "values" in request.args:
        _flag("values")
    for name in ("before", "version"):
        if name in request.args:
            _version_param(name)
    if "wait" in request.args:
        _wait_param()
    if "after_version" in request.args:
        _number_param("after_version", minimum=0)


def _number_param(name: str, minimum: int) -> int:
    raw = request.args.get(name, "")
    if not _is_number(raw, max_digits=18) or int(raw) < minimum:
        raise ApiError(400, "invalid_parameter", f"{name} must be a whole number >= {minimum}")
    return int(raw)


def _wait_param() -> float:
    """``wait``: seconds, ``30`` or ``30s``, from 0 to MAX_WAIT_SECONDS."""
    raw = request.args.get("wait", "").removesuffix("s")
    if not _is_number(raw, max_digits=4) or int(raw) > MAX_WAIT_SECONDS:
        raise ApiError(
            400, "invalid_wait", f"wait must be whole seconds from 0 to {MAX_WAIT_SECONDS}"
        )
    return float(raw)


def _state(store: db.Store, name: str) -> tuple[db.Variable | None, int]:
    """The variable (None if absent) and the version of its latest change. A variable past its
    deadline that the sweeper has not removed yet counts as expired already: one version more,
    the version its expiry will be logged with."""
    var = store.get(name)
    if var is not None:
        return var, var.version
    latest = store.history(name, None, 1, False)
    if not latest:
        return None, 0
    return None, latest[0].version + (1 if latest[0].op == "set" else 0)


def _sse(event: str | None, seq: int, data: dict[str, Any]) -> str:
    head = f"event: {event}\n" if event else ""
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"{head}id: {seq}\ndata: {body}\n\n"


def _event_stream(
    store: db.Store,
    feed: watch.ChangeFeed,
    prefix: str,
    last: int | None,
    head: int,
    first: int | None,
) -> Iterator[str]:
    """The events after ``last`` (or ``head``), forever; a ``resync`` event first when the
    changes since ``last`` are no longer all retained (or ``last`` is not a seq we issued)."""
    yield f"retry: {EVENTS_RETRY_MS}\n\n"
    after = head if last is None else last
    if last is not None and (last > head or (last < head and (first is None or first > last + 1))):
        reason = "the changes since that event are no longer retained: read the current state"
        yield _sse("resync", head, {"seq": head, "reason": reason})
        after = head
    upto = head

    def matches(name: str) -> bool:
        return name.startswith(prefix)

    while not feed.stopping():
        changes = store.changes_since(after, upto, prefix, EVENTS_PAGE)
        for change in changes:
            yield _sse(None, change.seq, _change_dict(change))
        if len(changes) == EVENTS_PAGE:
            after = changes[-1].seq
            continue
        after = upto
        top = feed.wait(after, matches, EVENTS_HEARTBEAT_SECONDS)
        if top is None:
            yield ": keepalive\n\n"
        else:
            upto = top


def _limit() -> int:
    raw = request.args.get("limit", "100")
    if not _is_number(raw, max_digits=9) or not 1 <= int(raw) <= MAX_LIMIT:
        raise ApiError(
            400, "invalid_parameter", f"limit must be a whole number from 1 to {MAX_LIMIT}"
        )
    return int(raw)


# --- The app


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app. ``test_config`` overrides the settings read from the environment."""
    app = Flask(__name__)
    app.config.from_mapping(settings_from_env(app.instance_path))
    if test_config is not None:
        app.config.from_mapping(test_config)
    max_value = app.config["MAX_VALUE_BYTES"]
    # Percent-encoding can triple a value's size on the wire; the exact limit is checked on the
    # decoded value, these only stop absurd bodies early.
    app.config["MAX_CONTENT_LENGTH"] = 3 * max_value + 64 * 1024
    app.config["MAX_FORM_MEMORY_SIZE"] = 3 * max_value + 64 * 1024
    app.url_map.merge_slashes = False  # "a//b" is a name of its own, not a redirect to "a/b"
    app.url_map.strict_slashes = False
    app.url_map.converters["name"] = NameConverter

    db.init_app(app)
    app.extensions["var_keeper.feed"] = watch.ChangeFeed(
        app.extensions["var_keeper.store"], app.config["WATCH_POLL_INTERVAL"]
    )
    observability.init_app(app)
    _register_access_control(app)
    _register_errors(app)
    _register_routes(app)
    app.register_blueprint(web.bp)

    @app.after_request
    def security_headers(response: Response) -> Response:
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers.setdefault(
            "Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"
        )
        return response

    return app


# Open to anyone even with tokens on: probes, the API description, the page's stylesheet.
PUBLIC_ENDPOINTS = {"healthz", "readyz", "openapi", "static"}
READ_METHODS = {"GET", "HEAD", "OPTIONS"}


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _register_access_control(app: Flask) -> None:
    """Bearer tokens, off unless READ_TOKENS or WRITE_TOKENS is set.

    A write token may read and write, a read token only read. Tokens are compared as SHA-256
    digests with ``hmac.compare_digest`` against every configured token, so neither the
    comparison nor the number of tokens checked reveals how much of a guess was right. Only the
    Authorization header is read: no cookie ever authenticates, so a cross-site form or script
    cannot ride on a user's credentials.
    """
    read = [_digest(t) for t in app.config["READ_TOKENS"]]
    write = [_digest(t) for t in app.config["WRITE_TOKENS"]]
    if not read and not write:
        return

    def matches(candidate: bytes, digests: list[bytes]) -> bool:
        found = False
        for digest in digests:
            found |= hmac.compare_digest(candidate, digest)
        return found

    @app.before_request
    def require_token() -> None:
        if request.endpoint in PUBLIC_ENDPOINTS:
            return
        challenge = {"WWW-Authenticate": 'Bearer realm="var_keeper"'}
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "unauthorized", "send Authorization: Bearer <token>", challenge)
        candidate = _digest(token.strip())
        may_write = matches(candidate, write)
        if not may_write and not matches(candidate, read):
            challenge["WWW-Authenticate"] += ', error="invalid_token"'
            raise ApiError(401, "invalid_token", "the token is not valid", challenge)
        # Who made a change, in the change log: an identifier that reveals nothing of the token.
        g.actor = candidate.hex()[:8]
        if request.method not in READ_METHODS and not may_write:
            raise ApiError(403, "forbidden", "this token may read but not write")


def _register_errors(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def api_error(exc: ApiError) -> Response:
        response = error_response(exc.status, exc.code, exc.message)
        response.headers.update(exc.headers)
        return response

    @app.errorhandler(db.StoreUnavailable)
    def unavailable(exc: db.StoreUnavailable) -> Response:
        log.warning("database unavailable: %s", exc)
        observability.DATABASE_ERRORS.labels(app.extensions["var_keeper.store"].kind).inc()
        response = error_response(
            503, "database_unavailable", f"the database is unavailable: {exc}"
        )
        response.headers["Retry-After"] = "1"
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        codes = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
        messages = {
            404: "not found: variables live under /var/<name>",
            405: f"method {request.method} is not allowed here",
            413: f"the request body is larger than {app.config['MAX_CONTENT_LENGTH']} bytes",
        }
        status = exc.code or 500
        code = codes.get(status, exc.name.lower().replace(" ", "_"))
        response = error_response(status, code, messages.get(status, exc.description or exc.name))
        original = exc.get_response().headers
        for header in ("Allow", "Retry-After"):
            if header in original:
                response.headers[header] = original[header]
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error_response(
            500, "internal_error", "internal error; the server log has the details"
        )


def _register_routes(app: Flask) -> None:
    store = app.extensions["var_keeper.store"]

    @app.before_request
    def strict_path() -> None:
        # Werkzeug turns invalid UTF-8 in the path into U+FFFD, which would make a different
        # name out of it: check the path as the client sent it (gunicorn's RAW_URI).
        raw_uri = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI")
        if raw_uri is None:
            raw = request.environ.get("PATH_INFO", "").encode("latin-1", "replace")
        else:
            raw = unquote_to_bytes(urlsplit(raw_uri).path)
        _decode_utf8(raw, "path")

    def ready_store() -> db.Store:
        store.ensure_ready()
        return store

    @app.get("/openapi.json")
    def openapi() -> Response:
        return send_file(os.path.join(app.root_path, "openapi.json"), mimetype="application/json")

    @app.get("/healthz")
    def healthz() -> Response:
        return _text("ok\n")

    @app.get("/readyz")
    def readyz() -> Response:
        try:
            ready_store().ping()
        except db.StoreUnavailable as exc:
            return error_response(503, "not_ready", f"not ready: {exc}")
        return _text("ready\n")

    @app.get("/var/<name:name>")
    def get_var(name: str) -> Response:
        _check_name(name)
        _check_read_parameters()
        if "history" in request.args:
            return _history(name)
        if "version" in request.args:
            return _old_version(name, _version_param("version"))
        if "wait" in request.args:
            return _long_poll(name)
        var = ready_store().get(name)
        if var is None:
            raise ApiError(404, "not_found", f"no variable named {name!r}")
        etag = _etag(var.version)
        if_none_match = request.if_none_match
        if if_none_match and if_none_match.contains_weak(etag.strip('"')):
            response = Response(status=304)
        elif _wants_json():
            response = _json(_as_dict(var))
        else:
            response = _text(var.value or "")
        response.headers["ETag"] = etag
        response.headers["Cache-Control"] = "no-cache"
        return response

    @app.post("/var/<name:name>")
    def post_var(name: str) -> Response:
        # The tutorial's contract: 200 and body "OK", whether it created or updated.
        return _write_response(name, _write(name), created_status=200)

    @app.put("/var/<name:name>")
    def put_var(name: str) -> Response:
        return _write_response(name, _write(name), created_status=201)

    def _write(name: str) -> db.WriteResult:
        _check_name(name)
        conditions = write_preconditions()
        body = read_write_body(app.config["MAX_VALUE_BYTES"])
        value = body.value if body.restore is None else _restored_value(name, body.restore)
        try:
            return ready_store().put(name, value, ttl=body.ttl, actor=g.get("actor"), **conditions)
        except db.PreconditionFailed as exc:
            raise ApiError(
                412, "precondition_failed", f"{name!r} has changed or does not match"
            ) from exc

    def _write_response(name: str, result: db.WriteResult, created_status: int) -> Response:
        status = created_status if result.created else 200
        if _wants_json():
            response = _json(
                {"name": name, "version": result.version, "created": result.created}, status
            )
        else:
            response = _text("Created" if status == 201 else "OK", status)
        response.headers["ETag"] = _etag(result.version)
        if status == 201:
            response.headers["Location"] = "/var/" + quote(name)
        return response

    @app.delete("/var/<name:name>")
    def delete_var(name: str) -> Response:
        _check_name(name)
        conditions = write_preconditions()
        if conditions.get("if_absent"):
            raise ApiError(400, "invalid_precondition", "If-None-Match: * makes no sense on DELETE")
        try:
            deleted = ready_store().delete(name, actor=g.get("actor"), **conditions)
        except db.PreconditionFailed as exc:
            raise ApiError(
                412, "precondition_failed", f"{name!r} has changed or does not exist"
            ) from exc
        if not deleted:
            raise ApiError(404, "not_found", f"no variable named {name!r}")
        return Response(status=204)

    @app.get("/var")
    def list_vars() -> Response:
        # Checked before the batch branch too: an invalid parameter is a 400 whatever else is sent.
        limit = _limit()
        with_values = _flag("values") if "values" in request.args else False
        names = request.args.getlist("name")
        if names:
            return _batch(names)
        prefix = request.args.get("prefix", "")
        after = request.args.get("after")
        # One row more than a page tells whether there is a next page.
        items = ready_store().list(prefix, after, limit + 1, with_values)
        next_url = None
        if len(items) > limit:
            items = items[:limit]
            query = {"prefix": prefix, "limit": limit, "after": items[-1].name}
            if with_values:
                query["values"] = "true"
            next_url = "/var?" + urlencode(
                {k: v for k, v in query.items() if v != ""}, quote_via=quote
            )
        response = _json({"variables": [_as_dict(v) for v in items], "next": next_url})
        if next_url:
            response.headers["Link"] = f'<{next_url}>; rel="next"'
        return response

    def _long_poll(name: str) -> Response:
        """Answer as soon as ``name`` is at a version newer than ``after_version`` (or the
        If-None-Match ETag; by default the version it is at now), or 304 after ``wait``."""
        wait = _wait_param()
        if "after_version" in request.args:
            after = _number_param("after_version", minimum=0)
        elif request.if_none_match and len(request.if_none_match.as_set()) == 1:
            after = _version_of(f'"{next(iter(request.if_none_match.as_set()))}"')
        else:
            after = None
        store, feed = ready_store(), app.extensions["var_keeper.feed"]
        deadline = time.monotonic() + wait
        # The seq first, then the state: a change after the read has a seq above it.
        seen = store.last_seq()
        var, version = _state(store, name)
        after = version if after is None else after
        while version <= after:
            timeout = deadline - time.monotonic()
            if var is not None and var.expires_at is not None:  # wake at the deadline too
                timeout = min(timeout, (var.expires_at - datetime.now(UTC)).total_seconds())
            top = feed.wait(seen, lambda changed: changed == name, max(timeout, 0))
            if (top is None and time.monotonic() >= deadline) or feed.stopping():
                if var is None:  # still absent: a 404, with the ETag of its last change
                    headers = {"ETag": _etag(version)} if version else {}
                    raise ApiError(404, "not_found", f"no variable named {name!r}", headers)
                response = Response(status=304)
                response.headers["ETag"] = _etag(version)
                response.headers["Cache-Control"] = "no-cache"
                return response
            seen = top if top is not None else seen
            var, version = _state(store, name)
        if var is None:
            raise ApiError(
                404, "not_found", f"no variable named {name!r}", {"ETag": _etag(version)}
            )
        response = _json(_as_dict(var)) if _wants_json() else _text(var.value or "")
        response.headers["ETag"] = _etag(var.version)
        response.headers["Cache-Control"] = "no-cache"
        return response

    @app.get("/events")
    def events() -> Response:
        """Server-Sent Events: every change under ``prefix`` from now, or after the seq of
        ``Last-Event-ID`` (``after_seq`` in the query for clients that cannot set it)."""
        prefix = request.args.get("prefix", "")
        raw_last = request.headers.get("Last-Event-ID") or request.args.get("after_seq")
        last = None
        if raw_last is not None:
            if not _is_number(raw_last, max_digits=18):
                raise ApiError(400, "invalid_parameter", "Last-Event-ID must be an event's id")
            last = int(raw_last)
        store, feed = ready_store(), app.extensions["var_keeper.feed"]
        head = store.last_seq()
        first = store.first_seq() if last is not None and last < head else None
        stream = _event_stream(store, feed, prefix, last, head, first)
        response = Response(stream, mimetype="text/event-stream")
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Accel-Buffering"] = "no"  # nginx: pass events on at once
        return response

    def _history(name: str) -> Response:
        """A name's retained changes, newest first, a page at a time (keyset on version)."""
        limit = _limit()
        with_values = _flag("values") if "values" in request.args else False
        before = _version_param("before") if "before" in request.args else None
        store = ready_store()
        current = _state(store, name)[1]
        if current == 0:
            raise ApiError(404, "not_found", f"no variable and no history named {name!r}")
        changes = store.history(name, before, limit + 1, with_values)
        next_url = None
        if len(changes) > limit:
            changes = changes[:limit]
            query = {"history": "", "limit": limit, "before": changes[-1].version}
            if with_values:
                query["values"] = "true"
            next_url = f"/var/{quote(name)}?" + urlencode(query, quote_via=quote)
        response = _json(
            {"name": name, "changes": [_change_dict(c) for c in changes], "next": next_url}
        )
        response.headers["ETag"] = _etag(current)
        response.headers["Cache-Control"] = "no-cache"
        if next_url:
            response.headers["Link"] = f'<{next_url}>; rel="next"'
        return response

    def _old_version(name: str, version: int) -> Response:
        change = ready_store().change(name, version)
        if change is None or change.value is None:
            what = "was not a write" if change else "is not in the retained history"
            raise ApiError(404, "not_found", f"version {version} of {name!r} {what}")
        response = _json(_change_dict(change)) if _wants_json() else _text(change.value)
        response.headers["ETag"] = _etag(change.version)
        response.headers["Cache-Control"] = "no-cache"
        return response

    def _restored_value(name: str, version: int) -> str:
        change = ready_store().change(name, version)
        if change is None or change.value is None:
            raise ApiError(
                404, "not_found", f"version {version} of {name!r} has no value to restore"
            )
        return change.value

    def _batch(names: list[str]) -> Response:
        if len(names) > MAX_BATCH:
            raise ApiError(400, "too_many_names", f"ask for at most {MAX_BATCH} names at once")
        for name in names:
            _check_name(name)
        found = ready_store().get_many(sorted(set(names)))
        present = {v.name for v in found}
        missing = sorted(set(names) - present)
        return _json({"variables": [_as_dict(v) for v in found], "missing": missing})


def main() -> None:
    """``python app.py``: serve with gunicorn and ``gunicorn.conf.py``, never Flask's dev server."""
    from gunicorn.app.wsgiapp import WSGIApplication

    here = os.path.dirname(os.path.abspath(__file__))
    os.chdir(here)
    sys.argv = ["gunicorn", "--config", os.path.join(here, "gunicorn.conf.py"), "app:app"]
    WSGIApplication("%(prog)s [OPTIONS] [APP_MODULE]").run()


if __name__ == "__main__":
    main()
else:
    # For gunicorn app:app. Building the app reads settings and connects to nothing.
    app = create_app()
