"""Request ids and Prometheus metrics (the JSON access log is gunicorn's: gunicorn.conf.py).

Metrics are correct under gunicorn's several worker processes: gunicorn.conf.py points
``PROMETHEUS_MULTIPROC_DIR`` at an empty directory before any worker starts, every worker
writes its samples there, and ``GET /metrics`` sums them (prometheus_client's multiprocess mode).
Without that variable (tests, ``flask run``) the process's own registry is served.
"""

from __future__ import annotations

import os
import random
import re
import time
from typing import Any

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

import db

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

REQUESTS = Counter(
    "var_keeper_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
LATENCY = Histogram(
    "var_keeper_request_duration_seconds",
    "Time from the request reaching the app to its response",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
DATABASE_ERRORS = Counter(
    "var_keeper_database_errors_total", "Requests answered 503 because of the database", ["store"]
)
CONNECTIONS = Gauge(
    "var_keeper_database_connections",
    "Open database connections, summed over worker processes",
    multiprocess_mode="livesum",
)


bp = Blueprint("observability", __name__)


def init_app(app: Flask) -> None:
    """Give every request an id and count it; serve ``GET /metrics``; count connections."""
    app.register_blueprint(bp)
    db.get_store(app).on_connections = CONNECTIONS.set


@bp.before_app_request
def start_request() -> None:
    here = g._get_current_object()  # type: ignore[attr-defined]  # one proxy lookup
    here.started = time.perf_counter()
    incoming = request.environ.get("HTTP_X_REQUEST_ID", "")
    # 128 random bits name a request uniquely; an id is for tracing, not a secret, so it comes
    # from ``random`` (reseeded in each forked worker), not ``os.urandom``: a system call,
    # which lets another thread take the GIL mid-request (it showed in loaded workers' profiles).
    here.request_id = incoming if _REQUEST_ID.match(incoming) else f"{random.getrandbits(128):032x}"


@bp.after_app_request
def finish_request(response: Response) -> Response:
    here = g._get_current_object()  # type: ignore[attr-defined]  # one proxy lookup each
    current = request._get_current_object()  # type: ignore[attr-defined]
    # Set nowhere else: added without a search for an earlier one (as app.security_headers).
    response.headers.add("X-Request-ID", getattr(here, "request_id", ""))
    rule = current.url_rule
    count, timer = _series(current.method, rule.rule if rule else "unmatched", response.status_code)
    count.inc()
    started = getattr(here, "started", None)
    if started is not None:
        timer.observe(time.perf_counter() - started)
    return response


# The labelled series of each (method, route, status), looked up once: ``labels()`` validates
# its values and takes a lock on every call, which showed in every request's profile.
_SERIES: dict[tuple[str, str, int], tuple[Any, Any]] = {}
_MAX_SERIES = 1000


def _series(method: str, route: str, status: int) -> tuple[Any, Any]:
    key = (method, route, status)
    found = _SERIES.get(key)
    if found is None:
        found = (REQUESTS.labels(method, route, str(status)), LATENCY.labels(method, route))
        if len(_SERIES) < _MAX_SERIES:  # a client inventing methods cannot grow it for ever
            _SERIES[key] = found
    return found


@bp.get("/metrics")
def metrics() -> Response:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
