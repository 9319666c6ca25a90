"""The backup file that ``flask --app app export`` writes and ``import`` reads back.

Plain UTF-8 JSON, written as it is read (one page at a time, never the whole store in memory):

    {"format": "var_keeper/1", "seq": 1234, "variables": [{"name": ..., "value": ...}, ...]}

in name order, taken from one ``Store.snapshot()``: the state of one instant, and ``seq`` the
change log's position at that instant (a watcher that resumes after it misses nothing and sees
nothing twice). With history, each variable also has ``version``, ``created_at``,
``updated_at`` (and ``expires_at`` if it has one), and the file has the retained log,
``"changes": [{"seq", "name", "version", "op", "value", "changed_at", "actor", "txn"}, ...]``
in seq order, and ``pruned_through`` (``Store.pruned_through``). Files without ``seq`` (earlier
releases) or without history read back as variables only.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

import db
from storage.snapshot import Image, Snapshot

FORMAT = "var_keeper/1"
PAGE = 1000
_OPS = ("set", "delete", "expire")
_ID_CHARS = 16  # an actor's or a transaction's id (the columns' width)


class BadExport(ValueError):
    """The file is not a var_keeper export (the message says where and why)."""


@dataclass(frozen=True, slots=True)
class Backup:
    """A file read back: its (name, value) pairs, and with history the whole ``Image``."""

    items: list[tuple[str, str]]
    image: Image | None


def write(
    file: IO[str], view: Snapshot, with_history: bool, progress: Callable[[int], None]
) -> tuple[int, int]:
    """Write ``view`` to ``file``; return how many variables and changes it holds."""
    head: dict[str, Any] = {"format": FORMAT, "seq": view.seq}
    if with_history:
        head["pruned_through"] = view.pruned_through
    file.write(json.dumps(head)[:-1] + ', "variables": [')
    separator, after, count = "\n", None, 0
    while True:
        page = view.variables(after, PAGE)
        for var in page:
            file.write(separator + _dumps(_variable_dict(var, with_history)))
            separator = ",\n"
        progress(len(page))
        count += len(page)
        if len(page) < PAGE:
            break
        after = page[-1].name
    file.write("\n]")
    changes = 0
    if with_history:
        file.write(', "changes": [')
        separator, after_seq = "\n", 0
        while page := view.changes(after_seq, PAGE):
            for change in page:
                file.write(separator + _dumps(_change_dict(change)))
                separator = ",\n"
            changes += len(page)
            after_seq = page[-1].seq or after_seq
        file.write("\n]")
    file.write("}\n")
    return count, changes


def read(file: IO[str]) -> Backup:
    """Parse and check a whole file; BadExport on the first problem."""
    try:
        data = json.load(file)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadExport(f"not a var_keeper export: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("variables"), list):
        raise BadExport('not a var_keeper export: expected {"variables": [...]}')
    history = "changes" in data
    variables = [_variable(entry, i, history) for i, entry in enumerate(data["variables"])]
    items = [(var.name, var.value or "") for var in variables]
    if not history:
        return Backup(items, None)
    if not isinstance(data["changes"], list):
        raise BadExport('"changes" must be a list')
    changes = [_change(entry, i) for i, entry in enumerate(data["changes"])]
    seq = _number(data, "seq", "the file")
    pruned = _number(data, "pruned_through", "the file")
    seqs = [c.seq or 0 for c in changes]
    if pruned > seq or any(s > seq for s in seqs) or seqs != sorted(set(seqs)):
        raise BadExport("the changes must have distinct seqs, in order, up to the file's seq")
    return Backup(items, Image(seq, pruned, variables, changes))


def _dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False)


def _variable_dict(var: db.Variable, with_history: bool) -> dict[str, Any]:
    data: dict[str, Any] = {"name": var.name, "value": var.value}
    if with_history:
        data.update(
            version=var.version,
            created_at=db.utc_text(var.created_at),
            updated_at=db.utc_text(var.updated_at),
        )
        if var.expires_at is not None:
            data["expires_at"] = db.utc_text(var.expires_at)
    return data


def _change_dict(change: db.Change) -> dict[str, Any]:
    return {
        "seq": change.seq,
        "name": change.name,
        "version": change.version,
        "op": change.op,
        "value": change.value,
        "changed_at": db.utc_text(change.changed_at),
        "actor": change.actor,
        "txn": change.txn,
    }


def _variable(entry: Any, index: int, history: bool) -> db.Variable:
    where = f"variable #{index}"
    name = entry.get("name") if isinstance(entry, dict) else None
    value = entry.get("value") if isinstance(entry, dict) else None
    if not isinstance(name, str) or not isinstance(value, str):
        raise BadExport(f"{where}: needs a string name and value")
    problem = db.name_problem(name)
    if problem:
        raise BadExport(f"{where} ({name!r}): {problem}")
    if not history:
        epoch = datetime.fromtimestamp(0, UTC)  # not used: a state-only import writes anew
        return db.Variable(name, value, 1, epoch, epoch)
    expires = entry.get("expires_at")
    return db.Variable(
        name,
        value,
        _number(entry, "version", where, least=1),
        _parse_time(entry.get("created_at"), where),
        _parse_time(entry.get("updated_at"), where),
        expires_at=None if expires is None else _parse_time(expires, where),
    )


def _change(entry: Any, index: int) -> db.Change:
    where = f"change #{index}"
    if not isinstance(entry, dict):
        raise BadExport(f"{where}: expected an object")
    name, op, value = entry.get("name"), entry.get("op"), entry.get("value")
    if not isinstance(name, str) or db.name_problem(name):
        raise BadExport(f"{where}: needs a valid name")
    if op not in _OPS or (value is None) != (op != "set") or not isinstance(value, str | None):
        raise BadExport(f"{where}: op must be set (with a string value), delete or expire")
    actor, txn = entry.get("actor"), entry.get("txn")
    if any(not isinstance(v, str | None) or len(v or "") > _ID_CHARS for v in (actor, txn)):
        raise BadExport(f"{where}: actor and txn must be null or up to {_ID_CHARS} characters")
    return db.Change(
        _number(entry, "seq", where, least=1),
        name,
        _number(entry, "version", where, least=1),
        op,
        value,
        _parse_time(entry.get("changed_at"), where),
        actor,
        txn,
    )


def _number(data: dict[str, Any], key: str, where: str, least: int = 0) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise BadExport(f"{where}: {key} must be a whole number from {least}")
    return value


def _parse_time(raw: Any, where: str) -> datetime:
    try:
        moment = datetime.fromisoformat(raw)
    except (TypeError, ValueError) as exc:
        raise BadExport(f"{where}: times must be ISO 8601 in UTC") from exc
    if moment.tzinfo is None:
        raise BadExport(f"{where}: times must be ISO 8601 in UTC")
    return moment.astimezone(UTC)
