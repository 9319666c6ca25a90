"""The env and shell exports round-trip through a real ``docker run``: ``GET /var?prefix=P&
format=env`` from a gunicorn, written to a file and given to ``docker run --env-file``; and
``format=shell`` evaluated by the ``sh`` of a container. A Python inside the container prints
its environment's bytes, which must be the stored values, byte for byte.

The container engine is test_container.py's: ``../shared/container-engine/up`` where it exists
(``--network host`` on every run), else a normal Docker engine; without one the module is
skipped, with the reason in pytest's summary. The image is the Dockerfile's base image (the
engine's stand-in in the sandbox): no build is needed.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

import exports
from tests import test_container
from tests.servers import ROOT, Gunicorn
from tests.test_exports import AWKWARD, SHELL_ONLY

# Its first test may start the engine (bounded at 900 s, as in test_container.py).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

engine = test_container.engine  # the same session fixture: `up` once, `down` at the end

PREFIX = "app/prod/"
# More values that need care in an env file: a leading "=", "=" and "==" inside, spaces at both
# ends, only spaces, a "#" first, a backslash at the end, and non-ASCII of every width.
MORE = {
    "equals": "=a=b==c=",
    "spaces": "   ",
    "hash": "# not a comment",
    "backslash": "ends with \\",
    "unicode": "café ñ ü ß € 中文 🎉 \u200b",
    "dollar_quote": "$'x' \"$(echo no)\"",
}
# Prints the environment's names and values as hex: bytes, whatever the locale.
PRINT_ENVIRONMENT = (
    "import json, os, sys; "
    "json.dump({k.hex(): v.hex() for k, v in os.environb.items()}, sys.stdout)"
)


EVAL_THEN_PRINT = 'eval "$(cat)" && exec python3 -c "$1"'


def base_image() -> str:
    """The image the Dockerfile's last stage starts from (the engine provides it)."""
    froms = re.findall(r"^FROM\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    return froms[-1]


def environment_in_container(args: list[str], stdin: bytes | None = None) -> dict[bytes, bytes]:
    """``docker run --rm --network host <args> python3 -c PRINT_ENVIRONMENT``'s environment."""
    done = subprocess.run(
        ["docker", "run", "--rm", "--network", "host", *args],
        input=stdin,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    printed = json.loads(done.stdout)
    return {bytes.fromhex(k): bytes.fromhex(v) for k, v in printed.items()}


@pytest.fixture
def server(
    engine: test_container.Engine, tmp_path: Path, gunicorn: Callable[..., Gunicorn]
) -> Gunicorn:
    """A gunicorn on 127.0.0.1 over a fresh SQLite file (the export does not depend on the
    store: test_exports.py runs it on both); once the engine is known to be there."""
    return gunicorn({"DATABASE_URL": f"sqlite:///{tmp_path / 'vars.db'}"}, workers=1)


def store_all(server: Gunicorn, values: dict[str, str]) -> None:
    operations = [{"op": "set", "name": PREFIX + n, "value": v} for n, v in values.items()]
    response = requests.post(server.url("/txn"), json={"operations": operations}, timeout=30)
    assert response.status_code == 200, response.text


def expected(values: dict[str, str]) -> dict[bytes, bytes]:
    return {
        exports.env_name(PREFIX + n, PREFIX).encode(): v.encode("utf-8")  # type: ignore[union-attr]
        for n, v in values.items()
    }


def test_env_export_round_trips_through_docker_run_env_file(server: Gunicorn, tmp_path: Path):
    values = {**AWKWARD, **MORE}
    store_all(server, values)
    store_all(server, {"z_not_exported": "x"})  # under the prefix too: shows the file is whole
    response = requests.get(server.url(f"/var?prefix={PREFIX}&format=env"), timeout=30)
    assert response.status_code == 200, response.text
    env_file = tmp_path / "vars.env"
    env_file.write_bytes(response.content)
    values["z_not_exported"] = "x"

    began = time.monotonic()
    environment = environment_in_container(
        ["--env-file", str(env_file), base_image(), "python3", "-c", PRINT_ENVIRONMENT]
    )
    print(
        f"\n{len(values)} variables through docker run --env-file "
        f"in {time.monotonic() - began:.1f}s"
    )

    want = expected(values)
    assert {k: environment.get(k) for k in want} == want


def test_shell_export_round_trips_through_the_containers_sh(server: Gunicorn):
    values = {**AWKWARD, **MORE, **SHELL_ONLY}
    store_all(server, values)
    response = requests.get(server.url(f"/var?prefix={PREFIX}&format=shell"), timeout=30)
    assert response.status_code == 200, response.text

    began = time.monotonic()
    # sh (dash in a Debian image) evaluates the file read from stdin, then runs Python, which
    # inherits the exported variables.
    environment = environment_in_container(
        ["-i", base_image(), "sh", "-c", EVAL_THEN_PRINT, "sh", PRINT_ENVIRONMENT],
        stdin=response.content,
    )
    print(
        f"\n{len(values)} variables through the container's sh in {time.monotonic() - began:.1f}s"
    )

    want = expected(values)
    assert {k: environment.get(k) for k in want} == want
