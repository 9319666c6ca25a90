"""The command line: ``flask --app app init-db``, ``export`` and ``import``.

Each uses ``DATABASE_URL`` like the server. An export is one consistent snapshot as plain UTF-8
JSON (``backup``): the variables in name order and the change log's position, with
``--with-history`` the retained log too. An import loads the variables back, idempotently, in
batches; a file with history is restored whole (log, versions, times) into an empty database.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

import click
from flask import Flask
from flask.cli import with_appcontext

import backup
import db
from storage.snapshot import Image, NotEmpty

_BATCH_ITEMS = 500
_BATCH_BYTES = 4 * 1024 * 1024  # well under max_allowed_packet (16 MiB on MariaDB, 64 on MySQL)


def init_app(app: Flask) -> None:
    app.cli.add_command(init_db_command)
    app.cli.add_command(export_command)
    app.cli.add_command(import_command)


@click.command("init-db")
@with_appcontext
def init_db_command() -> None:
    """Create the database and table if missing, or migrate the tutorial's table."""
    started = time.monotonic()
    try:
        store = db.ready_store()
    except db.StoreUnavailable as exc:
        raise click.ClickException(f"cannot prepare {db.get_store().url}: {exc}") from exc
    click.echo(f"schema ready on {store.url} in {time.monotonic() - started:.2f}s")


def _ready_store() -> db.Store:
    try:
        return db.ready_store()
    except db.StoreUnavailable as exc:
        raise click.ClickException(f"cannot use {db.get_store().url}: {exc}") from exc


@click.command("export")
@click.argument("file", type=click.File("w", encoding="utf-8", lazy=True), default="-")
@click.option("--with-history", is_flag=True, help="Include the retained change log.")
@with_appcontext
def export_command(file: Any, with_history: bool) -> None:
    """Write every variable to FILE (default: standard output) as JSON.

    One consistent snapshot, however much is written meanwhile: {"format": "var_keeper/1",
    "seq": N, "variables": [{"name": ..., "value": ...}, ...]} in name order, values plain
    UTF-8 strings; N is the change log's position at that instant (a watcher that resumes
    from it, Last-Event-ID: N, gets every later change). --with-history adds each variable's
    version and times, and every retained change.
    """
    store = _ready_store()
    try:
        with store.snapshot() as view:
            length = view.count()
            with click.progressbar(length=length, label="exporting", file=sys.stderr) as bar:
                count, changes = backup.write(file, view, with_history, bar.update)
    except db.StoreUnavailable as exc:
        raise click.ClickException(f"export from {store.url} failed: {exc}") from exc
    history = f" and {changes} changes" if with_history else ""
    click.echo(f"exported {count} variables{history} from {store.url} at seq {view.seq}", err=True)


@click.command("import")
@click.argument("file", type=click.File("r", encoding="utf-8"), default="-")
@click.option(
    "--without-history", is_flag=True, help="Of a file with history, load the variables only."
)
@with_appcontext
def import_command(file: Any, without_history: bool) -> None:
    """Load variables from FILE (written by export). Idempotent: unchanged ones are untouched.

    A file exported --with-history is restored whole into an empty database: variables with
    their versions and times, the change log with its seqs, so that watchers and ETags carry
    on as they were at the export.
    """
    try:
        loaded = backup.read(file)
    except backup.BadExport as exc:
        raise click.ClickException(str(exc)) from exc
    if loaded.image is not None and not without_history:
        _restore(loaded.image)
        return
    items = loaded.items
    store = _ready_store()
    created = updated = 0
    with click.progressbar(length=len(items), label="importing", file=sys.stderr) as bar:
        for batch in _batches(items):
            done = store.import_batch(batch)
            created, updated = created + done[0], updated + done[1]
            bar.update(len(batch))
    unchanged = len(items) - created - updated
    click.echo(
        f"imported {len(items)} variables into {store.url}: {created} created, "
        f"{updated} updated, {unchanged} unchanged",
        err=True,
    )


def _restore(image: Image) -> None:
    store = _ready_store()
    try:
        store.load_image(image)
    except NotEmpty as exc:
        raise click.ClickException(
            f"cannot restore the history into {store.url}: {exc}. Import into an empty "
            "database, or load the variables only with --without-history"
        ) from exc
    except db.StoreUnavailable as exc:
        raise click.ClickException(f"restore into {store.url} failed: {exc}") from exc
    click.echo(
        f"restored {len(image.variables)} variables and {len(image.changes)} changes into "
        f"{store.url}; its change log continues from seq {image.seq}",
        err=True,
    )


def _batches(items: list[tuple[str, str]]) -> Iterator[list[tuple[str, str]]]:
    """Runs of at most _BATCH_ITEMS pairs and _BATCH_BYTES bytes (one item may exceed it)."""
    batch: list[tuple[str, str]] = []
    size = 0
    for name, value in items:
        entry_size = len(name.encode()) + len(value.encode())
        if batch and (len(batch) == _BATCH_ITEMS or size + entry_size > _BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append((name, value))
        size += entry_size
    if batch:
        yield batch
