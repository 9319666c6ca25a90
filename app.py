"""The app factory: named text variables over HTTP.

``create_app()`` reads the settings from the environment into ``app.config`` and assembles the
parts, one module each:

- ``api.py``: the variables API (``/var``, probes, ``/openapi.json``); ``txn.py``: transactions
  (``/txn``); ``exports.py``: env and shell files; ``events.py``: watching (long-poll,
  ``/events``); ``web.py``: the web page at ``/``.
- ``inputs.py``: what a request may carry; ``responses.py``: what an answer looks like;
  ``errors.py``: errors as the client sees them; ``access.py``: who may do what (the policy
  itself: ``policy.py``); ``signin.py``: the page's sessions and forms.
- ``db.py``: the store; ``watch.py``: background work (schema, sweeper, change feed);
  ``observability.py``: request ids and metrics; ``cli.py``: init-db, export, import.

``app`` (for ``gunicorn app:app`` and ``flask --app app``) is built on first use, so importing
this module starts nothing; ``python app.py`` runs gunicorn with ``gunicorn.conf.py``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
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
import signin
import txn
import watch
import web


class VarKeeper(Flask):
    """Flask, answering ``ensure_sync`` once per function: Flask asks it of every hook and view
    on every request (``inspect.iscoroutinefunction``, 8 times a GET here), which showed in
    every request's profile (``python -m bench.inprocess URL --profile``). None of ours is async."""

    # Hooks, views, handlers. Past this many, a new function is checked every time (none of ours
    # is made per request: they would stay recorded until then).
    _MAX_FUNCTIONS = 1000

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sync: dict[Callable[..., Any], Callable[..., Any]] = {}

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        found = self._sync.get(func)
        if found is None:
            found = super().ensure_sync(func)
            if len(self._sync) < self._MAX_FUNCTIONS:
                self._sync[func] = found
        return found


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app. ``test_config`` overrides the settings read from the environment."""
    app = VarKeeper(__name__)
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
    signin.init_app(app)
    access.init_app(app)
    app.before_request(strict_path)
    app.after_request(security_headers)
    errors.init_app(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(txn.bp)
    app.register_blueprint(events.bp)
    app.register_blueprint(web.bp)
    app.register_blueprint(signin.bp)
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
        # The largest POST /txn body: its values together, plus their JSON escapes.
        "MAX_TXN_BYTES": _env_int("MAX_TXN_BYTES", 16 * 1024 * 1024),
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
        "ACCESS_POLICY_FILE": os.environ.get("ACCESS_POLICY_FILE") or None,
        # Signs the page's session cookies: every worker and instance must share it.
        "SECRET_KEY": _secret_key(),
        "SESSION_LIFETIME": _env_int("SESSION_LIFETIME", 12 * 3600),
        # Failed sign-ins a client may make a minute (per worker) before it has to wait.
        "SIGNIN_MAX_FAILURES": _env_int("SIGNIN_MAX_FAILURES", 5),
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
        tokens += read_setting_file(f"{name}_FILE", path).splitlines()
    return [token.strip() for token in tokens if token.strip()]


def read_setting_file(setting: str, path: str) -> str:
    """The text of the file a ``*_FILE`` setting names. One that cannot be read is a
    ValueError naming the setting and the file: one line at start-up, not a traceback."""
    try:
        with open(path, encoding="utf-8") as secret:
            return secret.read()
    except OSError as exc:
        raise ValueError(f"{setting}={path}: {exc.strerror or exc}") from exc


def _secret_key() -> str | None:
    """SECRET_KEY, else the file SECRET_KEY_FILE names, else the one gunicorn.conf.py made for
    this server's workers (signin.py warns about it), else None (signin.py makes one)."""
    if os.environ.get("SECRET_KEY"):
        return os.environ["SECRET_KEY"]
    path = os.environ.get("SECRET_KEY_FILE")
    if path:
        key = read_setting_file("SECRET_KEY_FILE", path).strip()
        if not key:
            raise ValueError(f"SECRET_KEY_FILE {path} is empty")
        return key
    return os.environ.get(signin.GENERATED_SECRET_KEY) or None


# --- App-wide hooks


def strict_path() -> None:
    """400 for a path that is not valid UTF-8, on every route (see ``inputs.check_raw_path``)."""
    inputs.check_raw_path(request.environ)


def security_headers(response: Response) -> Response:
    headers = response.headers
    # Set nowhere else, so added without a search for an earlier value (``[...] =`` searches
    # and validates each: they showed in every request's profile).
    headers.add("X-Content-Type-Options", "nosniff")
    headers.add("X-Frame-Options", "DENY")  # CSP's frame-ancestors 'none', for older browsers
    if not headers.getlist("Content-Security-Policy"):  # a page sets its own (no KeyError made)
        headers.add("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'")
    return response


def main() -> None:
    """``python app.py``: serve with gunicorn and ``gunicorn.conf.py``, never Flask's dev server.

    The process becomes ``python -m gunicorn`` (exec: same PID, so it stays PID 1 in a
    container): as ``__main__`` this module has imported prometheus_client already, before
    gunicorn.conf.py could set PROMETHEUS_MULTIPROC_DIR, and workers forked from it would count
    into their own memory while ``/metrics`` reads the shared directory (and finds nothing).
    Its environment lets the MySQL driver's C extension load where the system's OpenSSL is too
    old for it (``storage.mysql.driver.environ_for_c_extension``).
    """
    from storage.mysql.driver import environ_for_c_extension

    here = os.path.dirname(os.path.abspath(__file__))
    os.chdir(here)
    config = os.path.join(here, "gunicorn.conf.py")
    args = [sys.executable, "-m", "gunicorn", "--config", config, "app:app"]
    # our own interpreter, fixed arguments
    os.execve(sys.executable, args, environ_for_c_extension(os.environ))  # noqa: S606


def __getattr__(name: str) -> Flask:
    """``app``, built on first use: by ``gunicorn app:app`` in each worker after the fork (no
    preload), or by ``flask --app app``. Building it starts its background work (watch.py), so
    a test or a benchmark that imports ``create_app`` does not build one against the default
    database."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        built = create_app()
    except ValueError as exc:
        # A setting that cannot be used (a missing secret file, a bad DATABASE_URL): gunicorn
        # prints an AppImportError as one line and stops, instead of a traceback per worker
        # and "Worker failed to boot" (the traceback: --log-level debug).
        from gunicorn.errors import AppImportError

        raise AppImportError(f"var_keeper cannot start: {exc}") from exc
    globals()["app"] = built
    return built


if __name__ == "__main__":
    main()
