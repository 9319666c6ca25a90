"""gunicorn settings for var_keeper (``gunicorn app:app`` and ``python app.py`` read this file).

Every value can be overridden from the environment: HOST, PORT, WEB_CONCURRENCY (worker
processes), GUNICORN_WORKER_CLASS, GUNICORN_WORKER_CONNECTIONS, GUNICORN_THREADS. The defaults
come from measurements on 2 cores against MariaDB (see README, "Serving").
"""

import json
import logging
import os
import shutil
import tempfile
from datetime import UTC, datetime

from gunicorn.glogging import Logger

# Prometheus multiprocess mode: every worker writes its samples under this directory and
# GET /metrics sums them. It must be set before any worker imports prometheus_client.
_own_metrics_dir = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="var_keeper-metrics-"))

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '5000')}"
# gevent: every connection is a greenlet, so slow clients (slowloris) and long-lived requests
# cost a greenlet each instead of a worker thread. With gthread, 50 connections that send half
# a request header starved a 2x4-thread server for good (healthz timed out after 20 s); with
# gevent, 300 of them left healthz answering. The database pool (DATABASE_POOL_SIZE per
# worker) bounds the connections to the database. GUNICORN_WORKER_CLASS=gthread still works.
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gevent")
workers = int(os.environ.get("WEB_CONCURRENCY", "4"))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))  # gthread only
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", "1000"))  # gevent only
# Short: with gevent, an idle kept-alive connection holds a stopping worker until it expires.
keepalive = 2
timeout = 30
# Under Docker's default stop timeout (10 s), so that `docker stop` always ends in a clean exit.
graceful_timeout = 8


class JsonAccessLogger(Logger):
    """gunicorn's logger, with one JSON object a line for each request."""

    def access(self, resp, req, environ, request_time):
        if not self.cfg.accesslog:
            return
        headers = {name.lower(): value for name, value in resp.headers}
        record = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "remote": environ.get("REMOTE_ADDR"),
            "method": environ.get("REQUEST_METHOD"),
            "path": environ.get("RAW_URI") or environ.get("PATH_INFO"),
            "status": resp.status_code,
            "bytes": getattr(resp, "sent", None),
            "duration_ms": round(request_time.total_seconds() * 1000, 3),
            "request_id": headers.get("x-request-id"),
            "user_agent": environ.get("HTTP_USER_AGENT"),
        }
        self.access_log.info(json.dumps(record, ensure_ascii=False))


accesslog = "-"
errorlog = "-"
loglevel = "info"
# One JSON object a line: time, remote, method, path, status, bytes, duration_ms, request_id.
logger_class = JsonAccessLogger
# No preload: each worker imports the app after the fork, so no connection crosses a fork and
# each worker starts its own background work (schema preparation, sweeper: watch.py).
preload_app = False
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190


_LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
_TOKEN_SETTINGS = ("READ_TOKENS", "WRITE_TOKENS", "READ_TOKENS_FILE", "WRITE_TOKENS_FILE")


def on_starting(server):
    # A directory we did not create may hold samples of an earlier run: start empty.
    metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    if not _own_metrics_dir:
        shutil.rmtree(metrics_dir, ignore_errors=True)
        os.makedirs(metrics_dir, exist_ok=True)
    # The app's own loggers ("var_keeper", "var_keeper.db") go where gunicorn's go.
    logging.getLogger("mysql.connector").setLevel(logging.WARNING)  # its INFO is per connection
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s"
    )


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


def post_worker_init(worker):
    # The app (built in this worker after the fork) has started its background work already.
    # Long-polls and event streams end once the worker is told to stop (SIGTERM), instead of
    # holding it for graceful_timeout.
    import watch

    watch.get_feed(worker.wsgi).stopping = lambda: not worker.alive
