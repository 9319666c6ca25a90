"""compose.yaml: the tutorial's topology, secrets from files, and a database healthcheck that works.

No registry can be reached here, so ``docker compose up`` itself cannot run; the file's structure
is checked as data, and the db healthcheck command runs for real against a private MariaDB.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.servers import ROOT, PrivateMariaDB, server_connection


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_app_and_db_share_a_user_defined_network(compose: dict[str, Any]) -> None:
    services = compose["services"]

    assert services["db"]["networks"] == services["app"]["networks"] == ["tutorial"]
    assert "tutorial" in compose["networks"]


def test_db_is_mysql_8_4_with_its_data_in_a_named_volume(compose: dict[str, Any]) -> None:
    db = compose["services"]["db"]

    assert db["image"] == "mysql:8.4"
    assert "db-data:/var/lib/mysql" in db["volumes"]
    assert "db-data" in compose["volumes"]


def test_app_waits_for_a_healthy_db_and_publishes_port_5000(compose: dict[str, Any]) -> None:
    app = compose["services"]["app"]

    assert app["depends_on"] == {"db": {"condition": "service_healthy"}}
    assert app["ports"] == ["5000:5000"]
    assert app["environment"]["DATABASE_URL"].startswith("mysql://var_keeper@db:3306/")


def test_passwords_come_only_from_secret_files(compose: dict[str, Any]) -> None:
    db_env = compose["services"]["db"]["environment"]
    app_env = compose["services"]["app"]["environment"]
    every_value = [str(v) for s in compose["services"].values() for v in s["environment"].values()]

    assert db_env["MYSQL_ROOT_PASSWORD_FILE"] == "/run/secrets/db_root_password"
    assert db_env["MYSQL_PASSWORD_FILE"] == app_env["DATABASE_PASSWORD_FILE"]
    assert "MYSQL_ROOT_PASSWORD" not in db_env
    assert "MYSQL_PASSWORD" not in db_env
    assert not [v for v in every_value if ":" in v.split("@")[0].removeprefix("mysql://")]
    for secret in compose["secrets"].values():
        assert secret["file"].startswith("./secrets/")
    ignored = (ROOT / "secrets" / ".gitignore").read_text().splitlines()
    assert {"*", "!.gitignore"} <= set(ignored)


def healthcheck_command(compose: dict[str, Any], password_file: Path, port: int) -> str:
    """The db healthcheck as the container's shell runs it, pointed at a local server."""
    kind, command = compose["services"]["db"]["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    assert "--protocol=tcp" in command
    return (
        command.replace("$$", "$")
        .replace("/run/secrets/db_password", str(password_file))
        .replace("--port=3306", f"--port={port}")
    )


@pytest.mark.slow
def test_db_healthcheck_fails_until_the_app_account_can_log_in_over_tcp(
    compose: dict[str, Any], private_mariadb: PrivateMariaDB, tmp_path: Path
) -> None:
    if shutil.which("mysql") is None:
        pytest.fail("needs the mysql client (apt-get install mariadb-client)")
    server = private_mariadb.start()
    password_file = tmp_path / "db_password"
    password_file.write_text("s3cret-pw\n")
    command = healthcheck_command(compose, password_file, server.port)

    def healthy() -> bool:
        done = subprocess.run(["sh", "-c", command], capture_output=True, check=False)
        return done.returncode == 0

    before_account = healthy()
    conn = server_connection(server.url)
    try:
        cur = conn.cursor()
        cur.execute("CREATE DATABASE vars")
        cur.execute("CREATE USER 'var_keeper'@'%' IDENTIFIED BY 's3cret-pw'")
        cur.execute("GRANT ALL ON vars.* TO 'var_keeper'@'%'")
    finally:
        conn.close()
    with_account = healthy()
    password_file.write_text("wrong\n")
    with_wrong_password = healthy()

    assert (before_account, with_account, with_wrong_password) == (False, True, False)
