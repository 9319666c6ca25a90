"""The command line: ``flask --app app init-db``, ``export`` and ``import``.

Each uses ``DATABASE_URL`` like the server. An export is plain UTF-8 JSON,
``{"format": "var_keeper/1", "variables": [{"name", "value"}, ...]}`` in name order; an import
loads one back, idempotently, in batches.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import click
from flask import Flask
from flask.cli import with_appcontext

import db

EXPORT_FORMAT = "var_keeper/1"
_PAGE = 1000
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
@with_appcontext
def export_command(file: Any) -> None:
    """Write every variable to FILE (default: standard output) as JSON.

    Values are plain UTF-8 strings: {"format": "var_keeper/1", "variables": [{"name": ...,
    "value": ...}, ...]}, in name order. Without concurrent writes it is an exact snapshot;
    with them, each variable is exported as it was when its page was read.
    """
    store = _ready_store()
    file.write(f'{{"format": "{EXPORT_FORMAT}", "variables": [')
    separator, after, count = "\n", None, 0
    with click.progressbar(length=store.count(), label="exporting", file=sys.stderr) as bar:
        while True:
            page = store.list("", after, _PAGE, with_values=True)
            for var in page:
                entry = json.dumps({"name": var.name, "value": var.value}, ensure_ascii=False)
                file.write(separator + entry)
                separator = ",\n"
            bar.update(len(page))
            count += len(page)
            if len(page) < _PAGE:
                break
            after = page[-1].name
    file.write("\n]}\n")
    click.echo(f"exported {count} variables from {store.url}", err=True)


@click.command("import")
@click.argument("file", type=click.File("r", encoding="utf-8"), default="-")
@with_appcontext
def import_command(file: Any) -> None:
    """Load variables from FILE (written by export). Idempotent: unchanged ones are untouched."""
    items = _read_export(file)
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


def _read_export(file: Any) -> list[tuple[str, str]]:
    try:
        data = json.load(file)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"not a var_keeper export: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("variables"), list):
        raise click.ClickException('not a var_keeper export: expected {"variables": [...]}')
    items: list[tuple[str, str]] = []
    for index, entry in enumerate(data["variables"]):
        name = entry.get("name") if isinstance(entry, dict) else None
        value = entry.get("value") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not isinstance(value, str):
            raise click.ClickException(f"variable #{index}: needs a string name and value")
        problem = db.name_problem(name)
        if problem:
            raise click.ClickException(f"variable #{index} ({name!r}): {problem}")
        items.append((name, value))
    return items


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
