"""Backup and restore: ``flask --app app export`` and ``import``, between SQLite and MySQL."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from app import create_app
from tests.servers import ROOT, scratch_database


def flask_cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``flask --app app ...`` as a user would, in its own process."""
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", *args],
        cwd=ROOT,
        env={"DATABASE_URL": database_url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_export_writes_plain_utf8_json_and_import_restores_it(runner, client, tmp_path: Path):
    values = {"a": "1", "app/db/host": "db", "emoji 😀": "ünïcödé\n<b>", "empty": ""}
    for name, value in values.items():
        client.post("/var/" + name.replace(" ", "%20"), data={"value": value})
    dump = tmp_path / "dump.json"
    result = runner.invoke(args=["export", str(dump)])
    assert result.exit_code == 0, result.output
    text = dump.read_text(encoding="utf-8")
    assert "ünïcödé" in text  # plain UTF-8, not escaped or base64
    data = json.loads(text)
    assert data["format"] == "var_keeper/1"
    assert {v["name"]: v["value"] for v in data["variables"]} == values

    for name in values:
        client.delete("/var/" + name.replace(" ", "%20"))
    result = runner.invoke(args=["import", str(dump)])
    assert result.exit_code == 0, result.output
    assert "4 created, 0 updated, 0 unchanged" in result.output
    for name, value in values.items():
        assert client.get("/var/" + name.replace(" ", "%20")).get_data(as_text=True) == value


def test_import_is_idempotent_and_only_changes_what_differs(runner, client, tmp_path: Path):
    dump = tmp_path / "dump.json"
    dump.write_text(
        json.dumps({"variables": [{"name": "x", "value": "1"}, {"name": "y", "value": "2"}]})
    )
    assert runner.invoke(args=["import", str(dump)]).exit_code == 0
    result = runner.invoke(args=["import", str(dump)])
    assert "0 created, 0 updated, 2 unchanged" in result.output
    assert client.get("/var/x", headers={"Accept": "application/json"}).get_json()["version"] == 1
    client.post("/var/y", data={"value": "changed"})
    result = runner.invoke(args=["import", str(dump)])
    assert "0 created, 1 updated, 1 unchanged" in result.output
    assert client.get("/var/y").data == b"2"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "not a var_keeper export"),
        ('{"variables": [{"name": "x"}]}', "needs a string name and value"),
        ('{"variables": [{"name": "a\\u0000b", "value": "v"}]}', "control characters"),
    ],
)
def test_a_bad_import_file_is_refused_and_stores_nothing(
    runner, client, tmp_path, content, message
):
    dump = tmp_path / "bad.json"
    dump.write_text(content)
    result = runner.invoke(args=["import", str(dump)])
    assert result.exit_code != 0
    assert message in result.output
    assert client.get("/var?limit=10").get_json()["variables"] == []


@pytest.mark.slow
def test_100000_variables_round_trip_between_sqlite_and_mysql(mysql_server, tmp_path: Path):
    count = 100_000
    source = tmp_path / "source.json"
    variables = [
        {"name": f"app{i % 97}/key-{i:06d}-é", "value": f"value {i} 😀 " + "x" * (i % 50)}
        for i in range(count)
    ]
    source.write_text(json.dumps({"variables": variables}, ensure_ascii=False), encoding="utf-8")
    sqlite_url = f"sqlite:///{tmp_path / 'vars.db'}"

    loaded = flask_cli(sqlite_url, "import", str(source))
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert f"{count} created" in loaded.stderr
    from_sqlite = tmp_path / "from-sqlite.json"
    exported = flask_cli(sqlite_url, "export", str(from_sqlite))
    assert exported.returncode == 0, exported.stderr[-2000:]

    with scratch_database(mysql_server) as mysql_url:
        loaded = flask_cli(mysql_url, "import", str(from_sqlite))
        assert loaded.returncode == 0, loaded.stderr[-2000:]
        assert f"imported {count} variables" in loaded.stderr
        from_mysql = tmp_path / "from-mysql.json"
        exported = flask_cli(mysql_url, "export", str(from_mysql))
        assert exported.returncode == 0, exported.stderr[-2000:]
        again = flask_cli(mysql_url, "import", str(from_mysql))
        assert f"0 created, 0 updated, {count} unchanged" in again.stderr

    assert from_mysql.read_bytes() == from_sqlite.read_bytes()
    restored = json.loads(from_mysql.read_text(encoding="utf-8"))["variables"]
    assert sorted(variables, key=lambda v: v["name"].encode()) == restored


def test_the_export_of_an_empty_store_is_valid_json(tmp_path: Path):
    app = create_app({"TESTING": True, "DATABASE_URL": f"sqlite:///{tmp_path / 'e.db'}"})
    result = app.test_cli_runner().invoke(args=["export", str(tmp_path / "e.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "e.json").read_text())["variables"] == []


@pytest.mark.parametrize("count", [1000, 2001])
def test_an_export_across_its_page_boundaries_has_every_variable_once(runner, tmp_path, count):
    # The export reads 1,000 variables a page: exactly one page, and two full pages and one.
    variables = [{"name": f"k{i:05d}", "value": str(i)} for i in range(count)]
    source = tmp_path / "source.json"
    source.write_text(json.dumps({"variables": variables}))
    assert runner.invoke(args=["import", str(source)]).exit_code == 0
    dump = tmp_path / "dump.json"
    result = runner.invoke(args=["export", str(dump)])
    assert result.exit_code == 0, result.output
    exported = json.loads(dump.read_text())["variables"]
    assert [(v["name"], v["value"]) for v in exported] == [
        (v["name"], v["value"]) for v in variables
    ]
