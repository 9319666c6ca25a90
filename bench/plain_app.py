"""The benchmark's "same stack, no features" reference: a plain, correct Flask app.

One module; one mysql-connector connection and cursor per thread, opened once; one
parameterized statement per request; no logging, no hooks, no metrics. ``/constant`` is the
stack's ceiling (Flask and gunicorn answering without the database). bench/run.py serves it
with gunicorn (``plain_app:app``, started in bench/ so that our gunicorn.conf.py is not read).
"""

import os
import threading

import mysql.connector
from flask import Flask, request

app = Flask(__name__)
local = threading.local()
SETTINGS = {
    "host": "127.0.0.1",
    "port": int(os.environ["PLAIN_DB_PORT"]),
    "user": "root",
    "database": os.environ["PLAIN_DB_NAME"],
    "autocommit": True,
}
UPSERT = (
    "INSERT INTO vars (name, value, version, created_at, updated_at) "
    "VALUES (%s, %s, 1, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6)) "
    "ON DUPLICATE KEY UPDATE value = VALUES(value), version = version + 1, "
    "updated_at = UTC_TIMESTAMP(6)"
)


def cursor():
    if not hasattr(local, "cursor"):
        local.connection = mysql.connector.connect(**SETTINGS)  # the cursor holds a weak ref
        local.cursor = local.connection.cursor()
    return local.cursor


@app.get("/var/<path:name>")
def get_var(name: str):
    cur = cursor()
    cur.execute("SELECT value FROM vars WHERE name = %s", (name,))
    row = cur.fetchone()
    if row is None:
        return "Not found\n", 404, {"Content-Type": "text/plain"}
    return row[0], 200, {"Content-Type": "text/plain; charset=utf-8"}


@app.post("/var/<path:name>")
def post_var(name: str):
    value = request.form.get("value")
    if value is None:
        return "value is required\n", 400, {"Content-Type": "text/plain"}
    cursor().execute(UPSERT, (name, value))
    return "OK", 200, {"Content-Type": "text/plain"}


@app.get("/constant")
def constant():
    return "OK", 200, {"Content-Type": "text/plain"}
