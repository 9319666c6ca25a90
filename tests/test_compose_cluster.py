"""compose.cluster.yaml: load balancer, app replicas and a 3-node Galera cluster.

No image registry can be reached here, so the stack itself cannot run: its structure is checked
as data, and the first node's bootstrap decision (a shell snippet) runs for real on fake data
directories. tests/test_galera.py runs the same topology on 127.0.0.1 without containers.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

import db
from tests.servers import ROOT

GALERA = ("galera1", "galera2", "galera3")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.cluster.yaml").read_text())


def options(service: dict[str, Any]) -> dict[str, str]:
    """``--name=value`` options of a service's command, as a dict."""
    pairs = (arg.removeprefix("--").partition("=") for arg in service["command"][1:])
    return {name: value for name, _, value in pairs}


def test_three_galera_nodes_run_the_official_image_with_one_set_of_wsrep_options(
    compose: dict[str, Any],
) -> None:
    nodes = [compose["services"][name] for name in GALERA]

    for node in nodes:
        assert node["image"].startswith("mariadb:")
        assert node["command"][0] == "mariadbd"
        assert options(node) == options(nodes[0])
    wsrep = options(nodes[0])
    assert wsrep["wsrep-on"] == "ON"
    assert wsrep["wsrep-provider"] == "/usr/lib/galera/libgalera_smm.so"
    assert wsrep["wsrep-cluster-address"] == "gcomm://" + ",".join(GALERA)
    assert (wsrep["binlog-format"], wsrep["innodb-autoinc-lock-mode"]) == ("ROW", "2")
    assert "wsrep-sst-auth" not in wsrep


def test_each_node_has_its_own_volume_and_is_healthy_only_when_synced(
    compose: dict[str, Any],
) -> None:
    volumes = [compose["services"][name]["volumes"] for name in GALERA]

    assert volumes == [[f"{name}-data:/var/lib/mysql"] for name in GALERA]
    assert {f"{name}-data" for name in GALERA} <= set(compose["volumes"])
    for name in GALERA:
        check = compose["services"][name]["healthcheck"]["test"]
        assert check[:2] == ["CMD", "healthcheck.sh"]
        assert "--galera_online" in check


def test_nodes_join_one_at_a_time_after_a_synced_donor(compose: dict[str, Any]) -> None:
    services = compose["services"]

    assert "depends_on" not in services["galera1"]
    assert services["galera2"]["depends_on"] == {"galera1": {"condition": "service_healthy"}}
    assert services["galera3"]["depends_on"] == {"galera2": {"condition": "service_healthy"}}


def bootstrap_arguments(compose: dict[str, Any], datadir: Path) -> list[str]:
    """What galera1's entrypoint hands to docker-entrypoint.sh, with ``datadir`` as its data."""
    entrypoint = compose["services"]["galera1"]["entrypoint"]
    assert entrypoint[:2] == ["bash", "-c"]
    script = (
        entrypoint[2]
        .replace("$$", "$")
        .replace("/var/lib/mysql", str(datadir))
        .replace("exec docker-entrypoint.sh", "printf '%s\\n'")
    )
    command = compose["services"]["galera1"]["command"]
    done = subprocess.run(
        ["bash", "-c", script, entrypoint[3], *command],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.splitlines()


@pytest.mark.parametrize(
    ("grastate", "bootstraps"),
    [
        (None, True),  # first start: a new cluster
        ("seqno: 42\nsafe_to_bootstrap: 1\n", True),  # stopped last, cleanly
        ("seqno: 42\nsafe_to_bootstrap: 0\n", False),  # others hold newer data: join them
        ("seqno: -1\nsafe_to_bootstrap: 0\n", False),  # crashed: join and catch up
    ],
)
def test_the_first_node_starts_a_new_cluster_only_when_that_is_safe(
    compose: dict[str, Any], tmp_path: Path, grastate: str | None, bootstraps: bool
) -> None:
    if grastate is not None:
        (tmp_path / "grastate.dat").write_text(grastate)

    arguments = bootstrap_arguments(compose, tmp_path)

    assert (
        arguments[: len(compose["services"]["galera1"]["command"])]
        == (compose["services"]["galera1"]["command"])
    )
    assert ("--wsrep-new-cluster" in arguments) is bootstraps


def test_only_the_first_node_may_bootstrap(compose: dict[str, Any]) -> None:
    for name in GALERA[1:]:
        service = compose["services"][name]
        assert "entrypoint" not in service
        assert "--wsrep-new-cluster" not in service["command"]


def test_app_replicas_reach_all_three_nodes_with_the_password_from_a_secret(
    compose: dict[str, Any],
) -> None:
    app = compose["services"]["app"]
    url = db.DatabaseURL.parse(app["environment"]["DATABASE_URL"])

    assert app["deploy"]["replicas"] >= 2
    assert url.hosts == tuple((name, 3306) for name in GALERA)
    assert (url.user, url.password, url.database) == ("var_keeper", "", "vars")
    assert app["environment"]["DATABASE_PASSWORD_FILE"] == "/run/secrets/db_password"
    # One session key for every replica: a page session reaches whichever one answers.
    assert app["environment"]["SECRET_KEY_FILE"] == "/run/secrets/session_key"
    assert app["depends_on"] == {"galera1": {"condition": "service_healthy"}}
    assert "ports" not in app


def test_only_the_load_balancer_publishes_a_port_and_it_routes_by_readiness(
    compose: dict[str, Any],
) -> None:
    published = {name: s["ports"] for name, s in compose["services"].items() if "ports" in s}
    config = compose["configs"]["haproxy"]["content"]

    assert published == {"lb": ["5000:5000"]}
    assert "option httpchk GET /readyz" in config
    assert "http-check expect status 200" in config
    assert "app:5000" in config
    assert "retry-on conn-failure\n" in config  # never a 503: a write may have taken effect


def test_every_service_shares_one_user_defined_network(compose: dict[str, Any]) -> None:
    networks = {name: s["networks"] for name, s in compose["services"].items()}

    assert all(n == ["cluster"] for n in networks.values())
    assert "cluster" in compose["networks"]


def test_galera_passwords_come_only_from_secret_files(compose: dict[str, Any]) -> None:
    galera1 = compose["services"]["galera1"]["environment"]
    every_value = [
        str(value)
        for service in compose["services"].values()
        for value in service.get("environment", {}).values()
    ]

    assert galera1["MARIADB_ROOT_PASSWORD_FILE"] == "/run/secrets/db_root_password"
    assert galera1["MARIADB_PASSWORD_FILE"] == "/run/secrets/db_password"
    assert not [v for v in every_value if "PASSWORD" in v.upper() and "/run/secrets/" not in v]
    assert not [
        k
        for s in compose["services"].values()
        for k in s.get("environment", {})
        if k.endswith("PASSWORD")
    ]
    for secret in compose["secrets"].values():
        assert secret["file"].startswith("./secrets/")
