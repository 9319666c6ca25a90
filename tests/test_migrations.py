"""Schema steps: numbered, recorded in the database, applied once, each idempotent."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

import db
from storage import migrations
from storage.mysql import MySQLStore, schema
from storage.sqlite import STEPS as SQLITE_STEPS
from tests.servers import create_database, scratch_database, server_connection


def open_store(url: str) -> db.Store:
    return db.open_store(
        {
            "DATABASE_URL": url,
            "DATABASE_CONNECT_TIMEOUT": 2,
            "DATABASE_TIMEOUT": 2,
            "DATABASE_POOL_SIZE": 2,
        }
    )


@pytest.fixture
def mysql_store(mysql_server: str) -> Iterator[MySQLStore]:
    with scratch_database(mysql_server) as url:
        store = open_store(url)
        assert isinstance(store, MySQLStore)
        yield store
        store.close()


def test_the_steps_are_numbered_one_by_one():
    for steps in (SQLITE_STEPS, schema.STEPS):
        assert [step.number for step in steps] == list(range(1, len(steps) + 1))


def test_a_new_mysql_database_records_the_latest_step(mysql_store: MySQLStore):
    assert mysql_store.prepare_schema() == "created"
    [(version,)] = mysql_store.connections.query("SELECT version FROM var_schema")
    assert version == migrations.latest(schema.STEPS)
    assert mysql_store.prepare_schema() == "up to date"


def test_a_mysql_database_at_the_latest_step_is_not_sniffed_again(mysql_store: MySQLStore):
    mysql_store.prepare_schema()
    # A column the steps would add back if they ran: they do not, the record says all is done.
    mysql_store.connections.execute("ALTER TABLE vars DROP COLUMN expires_at")
    assert mysql_store.prepare_schema() == "up to date"
    assert "expires_at" not in {
        row[0] for row in mysql_store.connections.query("SHOW COLUMNS FROM vars")
    }


def test_a_mysql_database_runs_only_the_steps_after_its_record(mysql_store: MySQLStore):
    mysql_store.prepare_schema()
    mysql_store.connections.execute("ALTER TABLE vars DROP COLUMN expires_at")
    mysql_store.connections.execute("UPDATE var_schema SET version = 1")
    assert mysql_store.prepare_schema() == "migrated"
    columns = {row[0] for row in mysql_store.connections.query("SHOW COLUMNS FROM vars")}
    assert "expires_at" in columns
    assert mysql_store.connections.query("SELECT version FROM var_schema") == [
        (migrations.latest(schema.STEPS),)
    ]


def test_a_mysql_database_of_a_release_before_the_steps_gets_a_record(mysql_server: str):
    with scratch_database(mysql_server) as url:
        store = open_store(url)
        store.ensure_ready()
        store.put("a", "kept")
        store.close()
        server, _, database = url.rpartition("/")
        conn = server_connection(server)
        conn.cursor().execute(f"DROP TABLE `{database}`.var_schema")
        conn.close()

        assert store.prepare_schema() == "up to date"  # every step found done
        assert store.get("a").value == "kept"
        assert store.prepare_schema() == "up to date"
        store.close()


def test_a_new_sqlite_file_records_the_latest_step(tmp_path: Path):
    store = open_store(f"sqlite:///{tmp_path / 'v.db'}")
    assert store.prepare_schema() == "created"
    store.close()
    conn = sqlite3.connect(tmp_path / "v.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == migrations.latest(SQLITE_STEPS)
    conn.close()
    assert store.prepare_schema() == "up to date"
    store.close()


def test_a_sqlite_file_of_a_release_before_the_steps_is_upgraded_and_recorded(tmp_path: Path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE vars (name TEXT NOT NULL PRIMARY KEY, value TEXT NOT NULL, "
        "version INTEGER NOT NULL DEFAULT 1, created_at TEXT NOT NULL DEFAULT (datetime()), "
        "updated_at TEXT NOT NULL DEFAULT (datetime())) WITHOUT ROWID"
    )
    conn.commit()
    conn.close()
    store = open_store(f"sqlite:///{path}")
    assert store.prepare_schema() == "migrated"
    assert store.prepare_schema() == "up to date"
    store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == migrations.latest(SQLITE_STEPS)
    conn.close()


def test_a_tutorial_table_with_a_nameless_row_is_not_rekeyed_until_the_row_is_dealt_with(
    mysql_server: str,
):
    """Step 7 makes name the primary key; a row without a name (which the tutorial's table
    allowed) stops it with a message saying what to do, and nothing is deleted."""
    with scratch_database(mysql_server) as url:
        create_database(
            url,
            "CREATE TABLE vars (id INT AUTO_INCREMENT PRIMARY KEY, "
            "name VARCHAR(100), value VARCHAR(100), UNIQUE (name))",
            "INSERT INTO vars (name, value) VALUES ('a', '1'), (NULL, 'x')",
        )
        server, _, database = url.rpartition("/")
        conn = server_connection(server)
        cur = conn.cursor()
        store = open_store(url)
        with pytest.raises(db.StoreUnavailable, match=r"1 row\(s\) without a name"):
            store.ensure_ready()
        cur.execute(f"SELECT COUNT(*) FROM `{database}`.vars")
        assert cur.fetchall()[0][0] == 2
        cur.execute(f"DELETE FROM `{database}`.vars WHERE name IS NULL")
        store.ensure_ready()
        assert store.get("a").value == "1"
        assert store.put("b", "2").version == 1
        store.close()
        conn.close()
