"""The app factory: named text variables over HTTP.

``create_app()`` reads the settings from the environment into ``app.config`` and assembles the
parts, one module each:

- ``api.py``: the variables API (``/var``, probes, ``/openapi.json``); ``events.py``: watching
  (long-poll, ``/events``); ``web.py``: the web page at ``/``.
- ``inputs.py``: what a request may carry; ``responses.py``: what an answer looks like;
  ``errors.py``: errors as the client sees them; ``access.py``: bearer tokens.
- ``db.py``: the store; ``watch.py``: background work (schema, sweeper, change feed);
  ``observability.py``: request ids and metrics; ``cli.py``: init-db, export, import.

``app`` (for ``gunicorn app:app`` and ``flask --app app``) is built on first use, so importing
this module starts nothing; ``python app.py`` runs gunicorn with ``gunicorn.conf.py``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, request

import access
import api
import cli
import db
import errors
import events
import inputs
import observability
import watch
import web


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
    app.url_map.converters["name"] = api.NameConverter

    db.init_app(app)
    cli.init_app(app)
    # The order of the before-request hooks: request id and timer, then the token, then the path.
    observability.init_app(app)
    access.init_app(app)
    app.before_request(strict_path)
    app.after_request(security_headers)
    errors.init_app(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(events.bp)
    app.register_blueprint(web.bp)
    watch.init_app(app)
    return app


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


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    if not raw.strip().isdigit():
        raise ValueError(f"{name} must be a whole number, not {raw!r}")
    return int(raw)


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


# --- App-wide hooks


def strict_path() -> None:
    """400 for a path that is not valid UTF-8, on every route (see ``inputs.check_raw_path``)."""
    inputs.check_raw_path(request.environ)


def security_headers(response: Response) -> Response:
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers.setdefault(
        "Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"
    )
    return response


def main() -> None:
    """``python app.py``: serve with gunicorn and ``gunicorn.conf.py``, never Flask's dev server."""
    from gunicorn.app.wsgiapp import WSGIApplication

    here = os.path.dirname(os.path.abspath(__file__))
    os.chdir(here)
    sys.argv = ["gunicorn", "--config", os.path.join(here, "gunicorn.conf.py"), "app:app"]
    WSGIApplication("%(prog)s [OPTIONS] [APP_MODULE]").run()


def __getattr__(name: str) -> Flask:
    """``app``, built on first use: by ``gunicorn app:app`` in each worker after the fork (no
    preload), or by ``flask --app app``. Building it starts its background work (watch.py), so
    a test or a benchmark that imports ``create_app`` does not build one against the default
    database."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()["app"] = built = create_app()
    return built


if __name__ == "__main__":
    main()
