"""gunicorn settings for var_keeper (``gunicorn app:app`` and ``python app.py`` read this file).

Every value can be overridden from the environment: HOST, PORT, WEB_CONCURRENCY (worker
processes), GUNICORN_WORKER_CLASS, GUNICORN_WORKER_CONNECTIONS, GUNICORN_THREADS. The defaults
come from measurements on 2 cores against MariaDB (see README, "Serving").
"""

import gc
import json
import logging
import logging.handlers
import os
import secrets
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime

from gunicorn.glogging import Logger

# Prometheus multiprocess mode: every worker writes its samples under this directory and
# GET /metrics sums them. It must be set before any worker imports prometheus_client.
_own_metrics_dir = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="var_keeper-metrics-"))
# Where the workers keep the access policy in force, so that a worker restarted while the policy
# file does not parse starts with it (policy.PolicySource): in a directory only we can read.
# (gunicorn reads this file again on SIGHUP: the directory is made once.)
if "VAR_KEEPER_POLICY_LAST_GOOD" not in os.environ:
    _runtime_dir = tempfile.mkdtemp(prefix="var_keeper-run-")
    os.environ["VAR_KEEPER_POLICY_LAST_GOOD"] = os.path.join(_runtime_dir, "policy-in-force")

# The page's sessions are signed with SECRET_KEY. Without one, a key made here, before the fork,
# is shared by every worker (and by workers restarted later): sessions then last until this
# server stops and do not reach other instances (signin.py logs a warning when it matters).
if not os.environ.get("SECRET_KEY") and not os.environ.get("SECRET_KEY_FILE"):
    os.environ.setdefault("VAR_KEEPER_GENERATED_SECRET_KEY", secrets.token_hex(32))

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '5000')}"
# workers.BufferedThreadWorker: gunicorn's gthread, whose threads serve a request only once it
# has all arrived and never wait for a client's bytes, so slow clients cannot hold the threads
# (300 connections that send half a request header leave the server answering, as with
# gevent), with gthread's latency tail: under gevent, p99 was 4-10x (workers.py, README
# "Serving"). Long-polls and event streams are served by a pool of their own
# (GUNICORN_WATCH_THREADS). GUNICORN_WORKER_CLASS=gthread and =gevent still work. The
# database pool (DATABASE_POOL_SIZE per worker) bounds the connections to the database.
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "workers.BufferedThreadWorker")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "8"))  # gthread and ours
# Connections per worker (all worker classes but sync): beyond, a worker accepts no more.
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", "1000"))
# Short: an idle kept-alive connection holds a stopping worker until it expires.
keepalive = 2
timeout = 30
# Under Docker's default stop timeout (10 s), so that `docker stop` always ends in a clean exit.
graceful_timeout = 8


def utc_time(seconds: float) -> str:
    """The time of every log line, gunicorn's, the app's and the access log's: RFC 3339 in UTC
    with milliseconds (``2026-11-28T06:51:43.644Z``)."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class UtcFormatter(logging.Formatter):
    """A log line's ``%(asctime)s`` as ``utc_time`` (gunicorn's own is ``[%Y-%m-%d ...]``)."""

    def formatTime(self, record, datefmt=None):
        return utc_time(record.created)


# Gunicorn's messages and the app's: time [pid] [LEVEL] (logger:) message.
ERROR_FORMAT = "%(asctime)s [%(process)d] [%(levelname)s] %(message)s"
APP_FORMAT = "%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s"


class JsonAccessLogger(Logger):
    """gunicorn's logger, with one JSON object a line for each request and the time of its
    other lines as ``utc_time``."""

    def setup(self, cfg):
        super().setup(cfg)
        for handler in self.error_log.handlers:
            if not isinstance(handler, logging.handlers.SysLogHandler):
                handler.setFormatter(UtcFormatter(ERROR_FORMAT))

    def access(self, resp, req, environ, request_time):
        if not self.cfg.accesslog:
            return
        request_id = None
        for name, value in resp.headers:
            if name.lower() == "x-request-id":
                request_id = value
                break
        record = {
            "time": utc_time(time.time()),
            "remote": environ.get("REMOTE_ADDR"),
            "method": environ.get("REQUEST_METHOD"),
            "path": environ.get("RAW_URI") or environ.get("PATH_INFO"),
            # gunicorn's own error answers (a malformed request: 400) carry only ``status``
            "status": getattr(resp, "status_code", None) or _status_code(resp.status),
            "bytes": getattr(resp, "sent", None),
            "duration_ms": round(request_time.total_seconds() * 1000, 3),
            "request_id": request_id,
            "user_agent": environ.get("HTTP_USER_AGENT"),
            "pid": os.getpid(),  # the worker that answered, as the other lines' [pid]
        }
        self.access_log.info(_json_line(record))


def _status_code(status: object) -> int | None:
    code = str(status).split(" ", 1)[0]
    return int(code) if code.isdigit() else None


# One encoder for every line (json.dumps with options builds a new one per call).
_json_line = json.JSONEncoder(ensure_ascii=False).encode


accesslog = "-"
errorlog = "-"
loglevel = "info"
# One JSON object a line: time, remote, method, path, status, bytes, duration_ms, request_id,
# user_agent, pid.
logger_class = JsonAccessLogger
# No preload: each worker imports the app after the fork, so no connection crosses a fork and
# each worker starts its own background work (schema preparation, sweeper: watch.py).
preload_app = False
# gunicorn's control socket (for gunicornc) defaults to one path per user, ~/.gunicorn: a second
# instance on the host took it over from the first (seen in the soak). Nothing here uses it.
control_socket_disable = True
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190


_LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
_TOKEN_SETTINGS = (
    "READ_TOKENS",
    "WRITE_TOKENS",
    "READ_TOKENS_FILE",
    "WRITE_TOKENS_FILE",
    "ACCESS_POLICY_FILE",
)


# The files the app reads secrets from (app.py, storage/url.py, policy.py). The master checks
# them before it starts any worker: a missing one then ends start-up with one line, where each
# worker would fail to boot (the app reports any other unusable setting in one line too, but
# once per worker).
_SETTING_FILES = (
    "DATABASE_PASSWORD_FILE",
    "READ_TOKENS_FILE",
    "WRITE_TOKENS_FILE",
    "SECRET_KEY_FILE",
    "ACCESS_POLICY_FILE",
)


def _check_setting_files():
    for setting in _SETTING_FILES:
        path = os.environ.get(setting)
        if not path:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            sys.exit(f"var_keeper cannot start: {setting}={path}: {exc.strerror or exc}")


def _policy_refusal() -> str | None:
    """Why the access policy file cannot be used now (None if it can, or if there is none)."""
    path = os.environ.get("ACCESS_POLICY_FILE")
    if not path:
        return None
    import policy  # standard library only: nothing of the app's starts in the master

    try:
        policy.load(path)
    except policy.PolicyError as exc:
        return str(exc)
    return None


def _refuse_reload_with_a_broken_policy(server):
    """A SIGHUP replaces every worker, and a worker cannot start with a policy file that does
    not parse (gunicorn then stops altogether): while it does not, a SIGHUP is refused with one
    line and the workers keep the policy they hold. gunicorn has no hook that can veto a
    reload (on_reload runs once the new configuration is in place), hence the wrapper."""
    reload = server.reload

    def reload_unless_the_policy_is_broken():
        refusal = _policy_refusal()
        if refusal is not None:
            server.log.error("SIGHUP refused: %s; the workers keep the policy in force", refusal)
            return
        reload()

    server.reload = reload_unless_the_policy_is_broken


def on_starting(server):
    _check_setting_files()
    _refuse_reload_with_a_broken_policy(server)
    # A directory we did not create may hold samples of an earlier run: start empty.
    metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    if not _own_metrics_dir:
        shutil.rmtree(metrics_dir, ignore_errors=True)
        os.makedirs(metrics_dir, exist_ok=True)
    # The app's own loggers ("var_keeper", "var_keeper.db") go where gunicorn's go.
    logging.getLogger("mysql.connector").setLevel(logging.WARNING)  # its INFO is per connection
    handler = logging.StreamHandler()
    handler.setFormatter(UtcFormatter(APP_FORMAT))
    logging.basicConfig(level=logging.INFO, handlers=[handler])


def when_ready(server):
    host = bind.rsplit(":", 1)[0]
    if host not in _LOOPBACK and not any(os.environ.get(name) for name in _TOKEN_SETTINGS):
        server.log.warning(
            "access control is off and the service listens on %s: anyone who reaches it can "
            "read and change every variable (set WRITE_TOKENS and READ_TOKENS to require tokens)",
            bind,
        )


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _own_metrics_dir:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
    runtime_dir = os.path.dirname(os.environ["VAR_KEEPER_POLICY_LAST_GOOD"])
    if os.path.basename(runtime_dir).startswith("var_keeper-run-"):  # ours, not a user's
        shutil.rmtree(runtime_dir, ignore_errors=True)


def post_worker_init(worker):
    # The app (built in this worker after the fork) has started its background work already.
    # Long-polls and event streams end once the worker is told to stop (SIGTERM), instead of
    # holding it for graceful_timeout.
    import watch

    watch.get_feed(worker.wsgi).stopping = lambda: not worker.alive
    # What exists now (modules, the app, its pools: about 38,000 objects) lives as long as the
    # worker: the cyclic garbage collector stops scanning it. Its full collections, which hold
    # the GIL and so stall every thread of the worker, took 22 and 35 ms at worst over 20,000
    # GETs and POSTs in-process, 5.7 and 7.5 ms with it (the figures: the commit that added it).
    gc.freeze()
