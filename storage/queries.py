"""The statements both stores run, built once over a ``Dialect``, and the row mappers.

Every statement is parameterized: the builders only join fixed column lists, the dialect's
fixed expressions and placeholders. Names go in through ``Dialect.encode_name``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from storage.dialect import Dialect
from storage.model import Change, Variable, next_prefix

COLUMNS = "name, value, version, created_at, updated_at, expires_at"
META_COLUMNS = "name, NULL, version, created_at, updated_at, expires_at"
CHANGE_COLUMNS = "seq, name, version, op, value, changed_at, actor, txn"
CHANGE_META_COLUMNS = "seq, name, version, op, NULL, changed_at, actor, txn"

Statement = tuple[str, list[Any]]


# --- Variables


def get_variable(d: Dialect) -> str:
    return f"SELECT {COLUMNS} FROM vars WHERE name = {d.mark} AND {d.live}"


def get_value(d: Dialect) -> str:
    return f"SELECT value, version FROM vars WHERE name = {d.mark} AND {d.live}"


def get_variables(d: Dialect, count: int) -> str:
    return f"SELECT {COLUMNS} FROM vars WHERE name IN ({d.marks(count)}) AND {d.live} ORDER BY name"


def count_variables(d: Dialect) -> str:
    return f"SELECT COUNT(*) FROM vars WHERE {d.live}"


def list_variables(
    d: Dialect,
    prefix: str,
    after: str | None,
    limit: int,
    with_values: bool,
    value_chars: int | None = None,
) -> Statement:
    """A keyset-paginated range scan over the name index."""
    # Expired rows are filtered after the range scan: the plan stays the name index's.
    columns, params = _listed_columns(d, with_values, value_chars)
    where = [d.live]
    where_params = _name_range(d, prefix, where)
    if after is not None:
        where.append(f"name > {d.mark}")
        where_params.append(d.encode_name(after))
    sql = f"SELECT {columns} FROM vars WHERE {' AND '.join(where)} ORDER BY name LIMIT {d.mark}"
    return sql, [*params, *where_params, limit]


def _listed_columns(
    d: Dialect, with_values: bool, value_chars: int | None
) -> tuple[str, list[Any]]:
    """A listing's columns: without values, with them, or with their first ``value_chars``
    characters and their whole length (previews)."""
    if not with_values:
        return META_COLUMNS, []
    if value_chars is None:
        return COLUMNS, []
    # SUBSTR counts characters in both dialects: a page of previews never reads megabytes.
    columns = (
        f"name, SUBSTR(value, 1, {d.mark}), version, created_at, updated_at, expires_at, "
        f"{d.char_length}(value)"
    )
    return columns, [value_chars]


def _name_range(d: Dialect, prefix: str, where: list[str]) -> list[Any]:
    """Conditions (appended to ``where``) and their parameters for names under ``prefix``."""
    params: list[Any] = []
    if prefix:
        where.append(f"name >= {d.mark}")
        params.append(d.encode_name(prefix))
        upper = next_prefix(prefix)
        if upper is not None:
            where.append(f"name < {d.mark}")
            params.append(d.encode_name(upper))
    return params


def due_for_expiry(d: Dialect) -> str:
    return (
        f"SELECT name, version FROM vars WHERE expires_at <= {d.now} "
        f"ORDER BY expires_at LIMIT {d.mark}"
    )


# --- The change log


def log_set(d: Dialect) -> str:
    """(actor, txn, name): the change-log entry of a write, copied from the row just
    written."""
    return (
        "INSERT INTO var_changes (name, version, op, value, changed_at, actor, txn) "
        f"SELECT name, version, 'set', value, updated_at, {d.mark}, {d.mark} FROM vars "
        f"WHERE name = {d.mark}"
    )


def log_gone(d: Dialect, count: int = 1) -> str:
    """(name, version, op, actor, txn) for each of ``count`` entries: the change-log entries
    of deletes or expiries."""
    entry = f"({d.mark}, {d.mark}, {d.mark}, NULL, {d.now}, {d.mark}, {d.mark})"
    return (
        "INSERT INTO var_changes (name, version, op, value, changed_at, actor, txn) "
        f"VALUES {', '.join([entry] * count)}"
    )


def history(
    d: Dialect, name: str, before_version: int | None, limit: int, with_values: bool
) -> Statement:
    columns = CHANGE_COLUMNS if with_values else CHANGE_META_COLUMNS
    sql = f"SELECT {columns} FROM var_changes WHERE name = {d.mark}"
    params: list[Any] = [d.encode_name(name)]
    if before_version is not None:
        sql += f" AND version < {d.mark}"
        params.append(before_version)
    return f"{sql} ORDER BY version DESC LIMIT {d.mark}", [*params, limit]


def one_change(d: Dialect) -> str:
    """(name, version): one change, with its value."""
    return f"SELECT {CHANGE_COLUMNS} FROM var_changes WHERE name = {d.mark} AND version = {d.mark}"


def latest_change(d: Dialect) -> str:
    """(name): the version and op of a name's newest change."""
    return (
        f"SELECT version, op FROM var_changes WHERE name = {d.mark} ORDER BY version DESC LIMIT 1"
    )


def changes_window(
    d: Dialect,
    after_seq: int,
    upto_seq: int,
    prefix: str,
    limit: int,
    columns: str = CHANGE_COLUMNS,
) -> Statement:
    """Changes in a seq window under a prefix: a range scan of the seq index, the prefix
    filtered."""
    where = [f"seq > {d.mark}", f"seq <= {d.mark}"]
    params = [after_seq, upto_seq, *_name_range(d, prefix, where)]
    sql = f"SELECT {columns} FROM var_changes WHERE {' AND '.join(where)}"
    return f"{sql} ORDER BY seq LIMIT {d.mark}", [*params, limit]


def first_seq() -> str:
    return "SELECT MIN(seq) FROM var_changes"


# The highest seq retention has ever removed (``var_pruned``, one row): a reader that finds an
# entry missing finds this past it, as retention raises it before it deletes.
PRUNED_THROUGH = "SELECT seq FROM var_pruned WHERE id = 1"


def changes_window_pruned(
    d: Dialect, after_seq: int, upto_seq: int, prefix: str, limit: int
) -> Statement:
    """``changes_window``, each row ending with ``PRUNED_THROUGH`` read by the same statement
    (one snapshot in both dialects): the window and the watermark agree."""
    columns = f"{CHANGE_COLUMNS}, ({PRUNED_THROUGH})"
    return changes_window(d, after_seq, upto_seq, prefix, limit, columns)


# --- Retention


def oldest_out_of_time(d: Dialect) -> str:
    """(batch, seconds): the newest seq among the oldest ``batch`` entries that is older than
    ``seconds``. seq order is time order, so only the oldest batch is looked at."""
    return (
        "SELECT MAX(seq) FROM (SELECT seq, changed_at FROM var_changes "
        f"WHERE seq IS NOT NULL ORDER BY seq LIMIT {d.mark}) AS oldest "
        f"WHERE changed_at < {d.seconds_ago}"
    )


def delete_through_seq(d: Dialect) -> str:
    return f"DELETE FROM var_changes WHERE seq <= {d.mark}"


def raise_pruned_through(d: Dialect) -> str:
    """(seq, seq): the watermark up to a seq; it never goes down."""
    return f"UPDATE var_pruned SET seq = {d.mark} WHERE id = 1 AND seq < {d.mark}"


def log_walk(d: Dialect) -> str:
    """(after seq, batch): the next entries of the log in seq order, without values."""
    return (
        f"SELECT seq, name, version FROM var_changes WHERE seq > {d.mark} "
        f"ORDER BY seq LIMIT {d.mark}"
    )


def prune_versions_top(d: Dialect, key: Any, through_version: int) -> Statement:
    """The highest seq ``prune_versions`` may remove (NULL: none)."""
    sql = (
        "SELECT MAX(seq) FROM var_changes "
        f"WHERE name = {d.mark} AND version <= {d.mark} AND seq IS NOT NULL"
    )
    return sql, [key, through_version]


def prune_versions(d: Dialect, key: Any, through_version: int, batch: int) -> Statement:
    """A name's numbered entries up to a version (at most ``batch`` where LIMIT is allowed)."""
    sql = (
        f"DELETE FROM var_changes WHERE name = {d.mark} AND version <= {d.mark} AND seq IS NOT NULL"
    )
    if d.delete_limit:
        return f"{sql} LIMIT {d.mark}", [key, through_version, batch]
    return sql, [key, through_version]


# --- Rows


def utc(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)


def _text(name: Any) -> str:
    return bytes(name).decode() if isinstance(name, bytes | bytearray) else name


def variable(row: Sequence[Any]) -> Variable:
    name, value, version, created_at, updated_at, expires_at, *length = row
    whole = int(length[0]) if length else (len(value) if value is not None else None)
    expires = utc(expires_at) if expires_at is not None else None
    return Variable(
        _text(name), value, int(version), utc(created_at), utc(updated_at), whole, expires
    )


def change(row: Sequence[Any]) -> Change:
    seq, name, version, op, value, changed_at, actor, txn = row
    seq = None if seq is None else int(seq)
    return Change(seq, _text(name), int(version), str(op), value, utc(changed_at), actor, txn)


# --- Groups of variables


def names_under(d: Dialect, prefix: str, limit: int) -> Statement:
    """The live names (and versions) under ``prefix``, in name order, at most ``limit``."""
    where = [d.live]
    params = _name_range(d, prefix, where)
    sql = f"SELECT name, version FROM vars WHERE {' AND '.join(where)} ORDER BY name LIMIT {d.mark}"
    return sql, [*params, limit]


def count_under(d: Dialect, prefix: str) -> Statement:
    where = [d.live]
    params = _name_range(d, prefix, where)
    return f"SELECT COUNT(*) FROM vars WHERE {' AND '.join(where)}", params


def delete_names(d: Dialect, count: int) -> str:
    return f"DELETE FROM vars WHERE name IN ({d.marks(count)})"


def folder_skip(prefix: str, delimiter: str, name: str) -> str:
    """The smallest name a folder listing may show after ``name`` (a variable's name or a
    sub-prefix): past the whole sub-prefix for a name in one, else past ``name`` itself. No name
    holds a control character, so ``name + " "`` is the smallest name above ``name``. The
    delimiter is one ASCII character, so the character after it bounds its sub-prefix."""
    cut = name.find(delimiter, len(prefix))
    if cut >= 0:
        return name[:cut] + chr(ord(delimiter) + 1)
    return name + " "


def list_from(
    d: Dialect,
    prefix: str,
    lower: str,
    limit: int,
    with_values: bool,
    value_chars: int | None = None,
) -> Statement:
    """Like ``list_variables``, from ``lower`` on (inclusive): a range scan over the name
    index."""
    columns, params = _listed_columns(d, with_values, value_chars)
    where = [d.live, f"name >= {d.mark}"]
    params.append(d.encode_name(lower))
    params += _name_range(d, prefix, where)
    sql = f"SELECT {columns} FROM vars WHERE {' AND '.join(where)} ORDER BY name LIMIT {d.mark}"
    return sql, [*params, limit]
