"""gunicorn settings for var_keeper (``gunicorn app:app`` and ``python app.py`` read this file).

Every value can be overridden from the environment: PORT, WEB_CONCURRENCY (worker processes),
GUNICORN_THREADS (threads per worker). The defaults come from a measurement on 2 cores against
MariaDB (see README, "Serving").
"""

import logging
import os

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '5000')}"
# gthread: a thread blocked on the database does not hold the whole worker, and slow clients
# are buffered by the main loop instead of tying up a worker (sync workers have neither).
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", "4"))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
keepalive = 5
timeout = 30
graceful_timeout = 20
accesslog = "-"
errorlog = "-"
loglevel = "info"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms'
# No preload: each worker imports the app after the fork, so no connection crosses a fork.
preload_app = False
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190


def on_starting(server):
    # The app's own loggers ("var_keeper", "var_keeper.db") go where gunicorn's go.
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s"
    )


def post_worker_init(worker):
    import db

    db.prepare_in_background(worker.wsgi)
