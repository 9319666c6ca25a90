"""Errors as the client sees them: ``ApiError`` and the app's error handlers.

Every error is one line of text, or ``{"error": "<stable code>", "message": "..."}`` when the
client prefers JSON, with the error's ``details`` as more members where it has some (a failed
check's ``index``, an export's ``offenders``); the codes are listed in openapi.json. Whatever a
view or the database raises ends here, so no traceback ever reaches a client.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

import db
import observability
from responses import json_response, text_response, wants_json

log = logging.getLogger("var_keeper")


class ApiError(Exception):
    """An error the client caused or must be told about, with its status and a stable code.

    The API answers it with ``error_response``; the web page shows ``message`` on a page.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: Mapping[str, str] | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = dict(headers or {})
        # More members of the JSON body, for a program (a failed check's index, ...).
        self.details = dict(details or {})


def error_response(
    status: int, code: str, message: str, details: Mapping[str, Any] | None = None
) -> Response:
    if wants_json():
        return json_response({"error": code, "message": message, **(details or {})}, status)
    return text_response(message + "\n", status)


def init_app(app: Flask) -> None:
    app.register_error_handler(ApiError, handle_api_error)
    app.register_error_handler(db.StoreUnavailable, handle_unavailable)
    app.register_error_handler(HTTPException, handle_http_error)
    app.register_error_handler(Exception, handle_unexpected)


def handle_api_error(exc: ApiError) -> Response:
    response = error_response(exc.status, exc.code, exc.message, exc.details)
    response.headers.update(exc.headers)
    return response


def handle_unavailable(exc: db.StoreUnavailable) -> Response:
    log.warning("database unavailable: %s", exc)
    observability.DATABASE_ERRORS.labels(db.get_store().kind).inc()
    if isinstance(exc, db.OutOfSpace):
        # 507 Insufficient Storage: nothing was written; reads go on, and writes succeed
        # again once space is freed. Not Retry-After: freeing space takes an operator.
        message = "the database is out of disk space: nothing was written; reads still work"
        return error_response(507, "insufficient_storage", message)
    response = error_response(503, "database_unavailable", f"the database is unavailable: {exc}")
    response.headers["Retry-After"] = "1"
    return response


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


def handle_http_error(exc: HTTPException) -> Response:
    """Werkzeug's own errors (no route, wrong method, body too large) in our format."""
    messages = {
        404: "not found: variables live under /var/<name>",
        405: f"method {request.method} is not allowed here",
        # request.max_content_length: the app's, or the one a view set (POST /txn).
        413: f"the request body is larger than {request.max_content_length} bytes",
    }
    status = exc.code or 500
    code = _HTTP_CODES.get(status, exc.name.lower().replace(" ", "_"))
    response = error_response(status, code, messages.get(status, exc.description or exc.name))
    original = exc.get_response().headers
    for header in ("Allow", "Retry-After"):
        if header in original:
            response.headers[header] = original[header]
    return response


def handle_unexpected(exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.path)
    return error_response(500, "internal_error", "internal error; the server log has the details")
