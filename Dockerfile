# var_keeper: named text variables over HTTP, served by gunicorn.
#
#   docker build -t varkeeper/var_keeper .
#   docker run -p 5000:5000 varkeeper/var_keeper          # embedded SQLite in the volume
#   docker run -e DATABASE_URL=mysql://user@db:3306/vars -e DATABASE_PASSWORD_FILE=... ...
#
# Base image: Debian trixie "slim" (glibc, as mysql-connector-python ships C wheels for glibc
# only; no Alpine). Trixie has OpenSSL 3.5: mysql-connector's C extension needs OpenSSL >= 3.2,
# and bookworm-based images (OpenSSL 3.0) silently fall back to the pure-Python protocol. The
# app logs at start-up which one it got ("connection class CMySQLConnection (C extension)").
# Classic-builder syntax only (no RUN --mount, COPY --chmod/--link or heredocs): the image must
# also build where BuildKit is not available.

# --- Build stage: a virtualenv with the pinned runtime dependencies (pip and its cache stay here)
FROM python:3.13-slim-trixie AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
# Only the requirements first, so that a code change does not reinstall the dependencies.
COPY requirement.txt /tmp/requirement.txt
RUN /opt/venv/bin/pip install --no-cache-dir --requirement /tmp/requirement.txt

# --- Runtime stage
FROM python:3.13-slim-trixie

ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="var_keeper" \
      org.opencontainers.image.description="Named text variables over HTTP, stored in MySQL or an embedded SQLite file" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="docker.io/library/python:3.13-slim-trixie"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH

# A fixed numeric UID/GID, so that `USER` needs no passwd lookup, Kubernetes' runAsNonRoot can
# verify it, and a bind-mounted data directory can be chowned to it on the host.
RUN groupadd --system --gid 10001 var_keeper \
 && useradd --system --no-log-init --uid 10001 --gid 10001 --home-dir /app \
      --shell /usr/sbin/nologin var_keeper

COPY --from=build /opt/venv /opt/venv

WORKDIR /app
# The code belongs to root and is read-only for the service; .dockerignore keeps tests, VCS
# data, virtualenvs, local databases and secrets out of the context.
COPY . /app/
# Flask's instance folder holds the embedded default database (/app/instance/var_keeper.db).
RUN mkdir /app/instance && chown 10001:10001 /app/instance
VOLUME ["/app/instance"]

USER 10001:10001
EXPOSE 5000

# Readiness, not mere liveness: healthy only when the store answers and the schema is ready.
# Python's urllib, so no curl in the image; urlopen raises (exit 1) on a 503 or no answer.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request as r; r.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('PORT', '5000'), timeout=4)"]

# Exec form: gunicorn is PID 1 and gets SIGTERM from `docker stop` itself (graceful shutdown).
# The heartbeat files go to /dev/shm (tmpfs), not to the container's overlay filesystem; the
# control socket (`docker exec ... gunicornc`) to /tmp, as $HOME (/app) is read-only here.
CMD ["gunicorn", "--config", "gunicorn.conf.py", "--worker-tmp-dir", "/dev/shm", \
     "--control-socket", "/tmp/gunicorn.ctl", "app:app"]
