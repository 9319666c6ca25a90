"""MySQL's schema: the tables, and the numbered steps that create or upgrade them.

Applied steps are recorded in the one-row table ``var_schema`` (``storage.migrations``). Several
workers and replicas start together: the first to find a step missing takes ``GET_LOCK`` and
applies it while the others wait. ``GET_LOCK`` is local to one server, so on a Galera cluster
instances on two nodes may apply the same step at once: every step is idempotent, DDL is
replicated in total order, and a step that loses certification (1213) runs again as a whole.
"""

from __future__ import annotations

import logging
from typing import Any

from mysql.connector import errors

from storage import migrations
from storage.migrations import CREATED, MIGRATED, UP_TO_DATE, Step
from storage.model import NAME_COLUMN_BYTES, StoreUnavailable
from storage.mysql.connections import MYSQL_CHARSET, MYSQL_COLLATION, MySQLConnections
from storage.mysql.errors import CONFLICT, NotApplied, describe, retrying

log = logging.getLogger("var_keeper.db")

_LOCK_NAME = "var_keeper.schema"
_UNKNOWN_DATABASE = 1049
_NO_SUCH_TABLE = 1146

VARS_TABLE = f"""
CREATE TABLE IF NOT EXISTS vars (
    name VARBINARY({NAME_COLUMN_BYTES}) NOT NULL,
    value LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    version BIGINT UNSIGNED NOT NULL DEFAULT 1,
    created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    expires_at DATETIME(6) NULL,
    PRIMARY KEY (name),
    KEY expires_at (expires_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
"""
# The change log (numbered after the commit: storage.mysql.numbering).
CHANGES_TABLE = f"""
CREATE TABLE IF NOT EXISTS var_changes (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    seq BIGINT UNSIGNED NULL,
    name VARBINARY({NAME_COLUMN_BYTES}) NOT NULL,
    version BIGINT UNSIGNED NOT NULL,
    op VARCHAR(6) CHARACTER SET ascii NOT NULL,
    value LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    changed_at DATETIME(6) NOT NULL,
    actor VARCHAR(16) CHARACTER SET ascii NULL,
    txn CHAR(16) CHARACTER SET ascii NULL,
    PRIMARY KEY (id),
    UNIQUE KEY seq (seq),
    UNIQUE KEY name_version (name, version)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
"""
_SEQ_TABLE = """
CREATE TABLE IF NOT EXISTS var_seq (
    id TINYINT UNSIGNED NOT NULL PRIMARY KEY,
    n BIGINT UNSIGNED NOT NULL
) ENGINE=InnoDB
"""
# One row: the highest seq retention has removed (``Store.pruned_through``).
_PRUNED_TABLE = """
CREATE TABLE IF NOT EXISTS var_pruned (
    id TINYINT UNSIGNED NOT NULL PRIMARY KEY,
    seq BIGINT UNSIGNED NOT NULL
) ENGINE=InnoDB
"""
_SCHEMA_TABLE = """
CREATE TABLE IF NOT EXISTS var_schema (
    id TINYINT UNSIGNED NOT NULL PRIMARY KEY,
    version INT UNSIGNED NOT NULL
) ENGINE=InnoDB
"""
# The tutorial's table: vars(id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(100),
# value VARCHAR(100), UNIQUE (name)), in the server's default character set (latin1 on older
# MariaDB). CONVERT re-encodes both columns to utf8mb4 before the name becomes bytes, so every
# existing row stays readable. Its id column goes in step 7 (``_drop_tutorial_id``).
_TUTORIAL_MIGRATION = (
    "ALTER TABLE vars CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
    "UPDATE vars SET value = '' WHERE value IS NULL",
    f"""ALTER TABLE vars
        MODIFY name VARBINARY({NAME_COLUMN_BYTES}) NULL,
        MODIFY value LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
        ADD COLUMN version BIGINT UNSIGNED NOT NULL DEFAULT 1,
        ADD COLUMN created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        ADD COLUMN updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)""",
)


def _columns(cur: Any, table: str) -> set[str]:
    """The lower-case column names of ``table`` in the current database (none: no table)."""
    cur.execute(
        "SELECT COLUMN_NAME FROM information_schema.COLUMNS "
        "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s",
        (table,),
    )
    return {str(row[0]).lower() for row in cur.fetchall()}


def _alter(cur: Any, statement: str, table: str, column: str) -> str:
    """Run an ALTER that adds ``column``, unless it is there; one that fails because another
    instance (on another Galera node, past GET_LOCK) added it meanwhile is fine."""
    if column in _columns(cur, table):
        return UP_TO_DATE
    try:
        cur.execute(statement)
    except errors.Error:
        if column not in _columns(cur, table):
            raise
    return MIGRATED


def _create_vars(cur: Any) -> str:
    """Step 1: the vars table, or the tutorial's table migrated in place."""
    columns = _columns(cur, "vars")
    if not columns:
        cur.execute(VARS_TABLE)  # IF NOT EXISTS: another node may have created it
        return CREATED
    if "version" in columns:
        return UP_TO_DATE
    log.info("migrating the tutorial's vars table in place")
    try:
        for statement in _TUTORIAL_MIGRATION:
            cur.execute(statement)
    except errors.Error:
        # Another node's ALTER makes ours fail with 1060 "Duplicate column name", or aborts
        # our UPDATE: what counts is that the table ends up migrated.
        if "version" not in _columns(cur, "vars"):
            raise
        log.info("another instance migrated the vars table meanwhile")
        return UP_TO_DATE
    return MIGRATED


def _add_expiry(cur: Any) -> str:
    """Step 2: vars.expires_at and its index."""
    statement = (
        "ALTER TABLE vars ADD COLUMN expires_at DATETIME(6) NULL, ADD KEY expires_at (expires_at)"
    )
    return _alter(cur, statement, "vars", "expires_at")


def _add_change_log(cur: Any) -> str:
    """Step 3: the change log and its counter, counting on from any seqs already given."""
    cur.execute(
        "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
        "AND TABLE_NAME IN ('var_changes', 'var_seq')"
    )
    if cur.fetchall()[0][0] == 2:
        return UP_TO_DATE
    cur.execute(CHANGES_TABLE)
    cur.execute(_SEQ_TABLE)
    cur.execute(
        "INSERT IGNORE INTO var_seq (id, n) SELECT 1, COALESCE(MAX(seq), 0) FROM var_changes"
    )
    return MIGRATED


def _add_change_ids(cur: Any) -> str:
    """Step 4: a log whose seqs were given inside the writes (seq the primary key) lets
    entries wait for their seq. Every entry keeps its seq; id numbers them in seq order. One
    statement: ALTER is atomic."""
    statement = (
        "ALTER TABLE var_changes DROP PRIMARY KEY, "
        "ADD COLUMN id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT FIRST, ADD PRIMARY KEY (id), "
        "MODIFY seq BIGINT UNSIGNED NULL, ADD UNIQUE KEY seq (seq)"
    )
    return _alter(cur, statement, "var_changes", "id")


def _add_change_txn(cur: Any) -> str:
    """Step 5: the transaction a change was part of (``Store.transact``)."""
    statement = "ALTER TABLE var_changes ADD COLUMN txn CHAR(16) CHARACTER SET ascii NULL"
    return _alter(cur, statement, "var_changes", "txn")


def _add_pruned_through(cur: Any) -> str:
    """Step 6: the retention watermark. A log of an earlier release may have lost any entry
    so far: its watermark starts at the last seq given. INSERT IGNORE: another instance may
    have added the row meanwhile."""
    cur.execute(_PRUNED_TABLE)
    cur.execute("INSERT IGNORE INTO var_pruned (id, seq) SELECT 1, n FROM var_seq WHERE id = 1")
    return MIGRATED if cur.rowcount else UP_TO_DATE


def _drop_tutorial_id(cur: Any) -> str:
    """Step 7: the tutorial's ``id INT AUTO_INCREMENT`` primary key goes and ``name`` becomes
    the primary key, as in a table created here. While it stayed, every INSERT that made a
    name generated an id, and the server answered that id where the write reads the version
    it set with LAST_INSERT_ID(expr): a new name's version and ETag were a row number. Rows
    without a name (the tutorial's column allowed NULL; its app never wrote one, and no request
    can read one) stop the step with a message, not a deletion."""
    if "id" not in _columns(cur, "vars"):
        return UP_TO_DATE
    cur.execute("SELECT COUNT(*) FROM vars WHERE name IS NULL")
    nameless = int(cur.fetchall()[0][0])
    if nameless:
        raise StoreUnavailable(
            f"the vars table has {nameless} row(s) without a name (the tutorial's table allowed "
            "them; no request can read them): delete them or give them names, and the schema "
            "is upgraded on the next try"
        )
    # The tutorial's UNIQUE (name) would only duplicate the new primary key.
    cur.execute(
        "SELECT DISTINCT INDEX_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = "
        "DATABASE() AND TABLE_NAME = 'vars' AND INDEX_NAME <> 'PRIMARY' AND NON_UNIQUE = 0 "
        "AND INDEX_NAME NOT IN (SELECT INDEX_NAME FROM information_schema.STATISTICS WHERE "
        "TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'vars' AND COLUMN_NAME <> 'name')"
    )
    drops = [f"DROP INDEX `{str(row[0]).replace('`', '``')}`" for row in cur.fetchall()]
    statement = ", ".join(
        [
            "ALTER TABLE vars DROP COLUMN id",
            *drops,
            f"MODIFY name VARBINARY({NAME_COLUMN_BYTES}) NOT NULL",
            "ADD PRIMARY KEY (name)",
        ]
    )
    try:
        cur.execute(statement)  # one ALTER: atomic
    except errors.Error:
        if "id" in _columns(cur, "vars"):  # not another instance's doing
            raise
        return UP_TO_DATE
    return MIGRATED


STEPS = (
    Step(1, "the vars table", _create_vars),
    Step(2, "vars.expires_at", _add_expiry),
    Step(3, "the change log (var_changes, var_seq)", _add_change_log),
    Step(4, "var_changes.id: entries numbered after the commit", _add_change_ids),
    Step(5, "var_changes.txn", _add_change_txn),
    Step(6, "the retention watermark (var_pruned)", _add_pruned_through),
    Step(7, "vars keyed by name: the tutorial's id column dropped", _drop_tutorial_id),
)


def prepare(connections: MySQLConnections) -> str:
    """Create the database if it is missing and apply the steps it lacks; return "created",
    "migrated" or "up to date". A database at the latest step costs one query."""
    database = connections.url.database
    try:
        conn = connections.connect(database)
    except StoreUnavailable as exc:
        if getattr(exc.__cause__, "errno", None) != _UNKNOWN_DATABASE:
            raise
        _create_database(connections)
        conn = connections.connect(database)
    try:
        cur = conn.cursor()
        if _applied(cur) >= migrations.latest(STEPS):
            return UP_TO_DATE
        # Waiting less long than the client's read timeout, so it is the lock that times out.
        wait = max(1, connections.statement_timeout - 1)
        cur.execute("SELECT GET_LOCK(%s, %s)", (_LOCK_NAME, wait))
        if cur.fetchone()[0] != 1:
            raise StoreUnavailable("timed out waiting for another instance to prepare the schema")
        try:
            return retrying(lambda: _apply_retryable(cur))
        finally:
            cur.execute("SELECT RELEASE_LOCK(%s)", (_LOCK_NAME,))
            cur.fetchall()
    except errors.Error as exc:
        raise StoreUnavailable(describe(exc)) from exc
    finally:
        conn.close()


def _applied(cur: Any) -> int:
    """The last step recorded; 0 for a new database or one of a release before the steps."""
    try:
        cur.execute("SELECT version FROM var_schema WHERE id = 1")
    except errors.Error as exc:
        if exc.errno == _NO_SUCH_TABLE:
            return 0
        raise
    rows = cur.fetchall()
    return int(rows[0][0]) if rows else 0


def _apply_retryable(cur: Any) -> str:
    """The missing steps and their record, as a whole; a step that lost to the same step of an
    instance on another Galera node (1213: seen with six instances on three nodes starting
    together) makes it run again."""
    try:
        outcome = migrations.run(STEPS, _applied(cur), cur)
        cur.execute(_SCHEMA_TABLE)
        latest = migrations.latest(STEPS)
        cur.execute(
            "INSERT INTO var_schema (id, version) VALUES (1, %s) "
            "ON DUPLICATE KEY UPDATE version = GREATEST(version, %s)",
            (latest, latest),
        )
        return outcome
    except errors.Error as exc:
        if exc.errno == CONFLICT:
            raise NotApplied(describe(exc)) from exc
        raise


def _create_database(connections: MySQLConnections) -> None:
    database = connections.url.database
    conn = connections.connect(None)
    try:
        # Identifiers cannot be parameters; DatabaseURL.parse allowed only [A-Za-z0-9_].
        cur = conn.cursor()
        cur.execute(
            f"CREATE DATABASE IF NOT EXISTS `{database}` "
            f"CHARACTER SET {MYSQL_CHARSET} COLLATE {MYSQL_COLLATION}"
        )
        if cur.rowcount:  # 0 (and a note): another worker or instance made it meanwhile
            log.info("created database %s", database)
    except errors.Error as exc:
        raise StoreUnavailable(
            f"database {database!r} is missing and could not be created: {describe(exc)}"
        ) from exc
    finally:
        conn.close()
