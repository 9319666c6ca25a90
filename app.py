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
import os
import re
import sys
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, unquote_to_bytes, urlencode, urlsplit

from flask import Flask, Response, request, send_file
from werkzeug.exceptions import HTTPException
from werkzeug.routing import PathConverter

import db
import observability
import web

log = logging.getLogger("var_keeper")

_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
MAX_LIMIT = 1000
MAX_BATCH = 1000
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
        "READ_TOKENS": _tokens("READ_TOKENS"),
        "WRITE_TOKENS": _tokens("WRITE_TOKENS"),
    }


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


def _form_value(body: bytes) -> str | None:
    """The first ``value`` field of an urlencoded body, decoded strictly.

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
    return next((v for k, v in fields if k == "value"), None)


def read_value(max_bytes: int) -> str:
    """The value a write carries: form field, JSON ``{"value": ...}`` or a text/plain body."""
    mimetype = request.mimetype
    if mimetype == "application/x-www-form-urlencoded":
        value = _form_value(request.get_data(cache=False))
    elif mimetype == "multipart/form-data":
        value = request.form.get("value")
    elif mimetype == "application/json":
        try:
            payload = json.loads(_decode_utf8(request.get_data(cache=False), "JSON body"))
        except json.JSONDecodeError as exc:
            raise ApiError(
                400, "invalid_json", f"malformed JSON: {exc.msg} at position {exc.pos}"
            ) from exc
        if not isinstance(payload, dict) or "value" not in payload:
            raise ApiError(
                400, "missing_value", 'the JSON body must be an object like {"value": "..."}'
            )
        value = payload["value"]
        if not isinstance(value, str):
            raise ApiError(400, "invalid_value", "the JSON field value must be a string")
    elif mimetype == "text/plain":
        charset = request.mimetype_params.get("charset", "utf-8").lower()
        if charset not in ("utf-8", "utf8", "us-ascii"):
            raise ApiError(415, "unsupported_charset", "a text/plain body must be UTF-8")
        value = _decode_utf8(request.get_data(cache=False), "body")
    elif not mimetype and not request.content_length and not request.get_data(cache=False):
        value = None
    else:
        raise ApiError(
            415,
            "unsupported_media_type",
            'send the value as form field "value", as JSON {"value": ...} or as a text/plain body',
        )
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
    return value


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
        var = ready_store().get(_check_name(name))
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
        value = read_value(app.config["MAX_VALUE_BYTES"])
        try:
            return ready_store().put(name, value, **conditions)
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
            deleted = ready_store().delete(name, **conditions)
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
