"""The soak (``bench/soak.py``, ``make soak``) in CI: 30 seconds of it, so that it cannot rot.

It starts its own private mariadbd (it restarts its database, so it never uses the session's
server or 127.0.0.1:3306), two gunicorn instances and the mixed load, and exits non-zero when
a verdict fails. Its checks are also shown to catch what they look for, on made-up data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.soak import SHARED_NAMES, Acked, EventWatcher, Tally, lost_writes
from tests.history_checker import Op
from tests.servers import ROOT, mariadb_binaries


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_thirty_seconds_of_soak_pass_every_verdict(tmp_path: Path) -> None:
    if mariadb_binaries() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the soak needs mariadbd and mariadb-install-db in CI")
        pytest.skip(
            "the soak needs mariadbd and mariadb-install-db (apt-get install mariadb-server)"
        )
    done = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--seconds", "30", "--results", str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "SOAK_SECONDS": ""},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    report = (tmp_path / "soak.md").read_text() if (tmp_path / "soak.md").exists() else ""
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + report
    result = json.loads((tmp_path / "soak.json").read_text())
    assert result["requests"] > 1000
    assert len(result["restarts"]) >= 1
    assert result["history"]["operations"] > 1000
    assert result["history"]["violations"] == []
    assert result["acknowledged_writes"] > 100
    assert result["lost_writes"] == []
    assert "**Verdict: PASS.**" in report


def write(name: str, version: int, value: str, outcome: str = "ok") -> Op:
    return Op("write", name, 1.0, 2.0, outcome, version if outcome == "ok" else None, value)


def test_the_lost_write_check_finds_an_older_version_in_the_database() -> None:
    name = SHARED_NAMES[0]
    ops = [write(name, 1, "a"), write(name, 2, "b")]
    assert lost_writes(ops, [], {name: (2, "b")}) == ([], 2)
    lost, _ = lost_writes(ops, [], {name: (1, "a")})
    assert lost == [f"{name}: v2 acknowledged, the database holds v1"]


def test_the_lost_write_check_allows_a_newer_write_of_unknown_outcome() -> None:
    name = SHARED_NAMES[0]
    ops = [write(name, 1, "a"), write(name, 0, "maybe", outcome="unknown")]
    assert lost_writes(ops, [], {name: (2, "maybe")})[0] == []
    assert lost_writes(ops, [], {name: (2, "never sent")})[0] != []


def test_an_event_stream_that_skipped_an_acknowledged_write_is_reported() -> None:
    watcher = EventWatcher(0, "http://127.0.0.1:9", Tally())
    watcher.since = 1.0
    for seq, (name, version) in enumerate([("soak/h/00", 2), ("soak/h/01", 5)], 1):
        data = json.dumps({"name": name, "version": version, "value": f"v{version}"})
        watcher.dispatch({"id": str(seq), "data": data})
    acked = [Acked("soak/h/00", 2, "v2", 1.5), Acked("soak/h/01", 4, "v4", 1.5)]
    assert watcher.missed(acked) == ["events-0: soak/h/01 v4 never delivered"]
    assert watcher.missed([Acked("soak/h/01", 4, "v4", 0.5)]) == []  # before it opened
