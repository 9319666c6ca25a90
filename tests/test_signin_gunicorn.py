"""Sessions, forms and the policy file through real gunicorn processes, without a browser:
CSRF as a scanner sees it (wapiti), the Secure cookie behind a trusted proxy, one session on
several instances, and a SIGHUP while the policy file does not parse."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import pytest
import requests

from tests.forms import csrf_of
from tests.servers import Gunicorn, empty_var_tables

pytestmark = pytest.mark.slow

ADMIN, READER = "admin-gunicorn-0123456789", "reader-gunicorn-0123456789"
POLICY = f"""
[[tokens]]
name = "admin"
secret = "{ADMIN}"
rules = {{ "" = "write" }}

[[tokens]]
name = "reader"
secret = "{READER}"
rules = {{ "" = "read" }}
"""
KEY = "a-secret-key-every-instance-shares-0123456789"


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    return path


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def sign_in(server: Gunicorn, token: str) -> requests.Response:
    response = requests.post(
        server.url("/signin"), data={"token": token}, allow_redirects=False, timeout=10
    )
    assert response.status_code == 303, response.text
    return response


def worker_pids(server: Gunicorn) -> set[int]:
    """The gunicorn workers: the master's children, from /proc."""
    assert server.proc is not None
    children = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == server.proc.pid:
                children.add(int(entry))
    return children


def wait_until(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


# --- CSRF, as a scanner sees it -------------------------------------------------------------

# wapiti3 cannot share the project's virtualenv: 3.2.3 (the last for Python 3.11) pins
# flask<3.1 and packaging 24 through mitmproxy, and 3.3 needs Python 3.12. `make test` installs
# it in a virtualenv of its own (.venv-wapiti) and points WAPITI at its bin/wapiti; elsewhere,
# put `wapiti` on PATH. In CI its absence is a failure, not a skip.
WAPITI = os.environ.get("WAPITI") or shutil.which("wapiti")
if WAPITI is None and os.environ.get("CI") == "true":
    raise RuntimeError("CI needs wapiti3: run the tests with `make test` (it sets WAPITI)")


def form_posts(access_log: str) -> dict[str, set[int]]:
    """The statuses of the POSTs to each path, from gunicorn's JSON access log."""
    statuses: dict[str, set[int]] = defaultdict(set)
    for line in access_log.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record["method"] == "POST":
                statuses[record["path"].split("?")[0]].add(record["status"])
    return statuses


@pytest.mark.skipif(WAPITI is None, reason="needs wapiti3 (see WAPITI in this module)")
def test_a_scanner_finds_every_page_form_protected_against_csrf(gunicorn, tmp_path):
    # Access control off: the forms must still refuse a post from another site.
    server = gunicorn({"DATABASE_URL": f"sqlite:///{tmp_path / 'vars.db'}"}, workers=1)
    for name in ("a", "b", "team/c", "a"):  # a second version of "a": a restore form
        written = requests.put(server.url(f"/var/{name}"), data={"value": name}, timeout=10)
        written.raise_for_status()
    report = tmp_path / "wapiti.json"
    home = tmp_path / "home"  # as a new user runs it: no earlier session or configuration
    command = [
        str(WAPITI),
        *("-u", server.url("/"), "-m", "csrf", "--flush-session", "--no-bugreport"),
        *("--store-session", str(home / "session"), "--store-config", str(home / "config")),
        # Only the target is ever contacted: the endpoints some modules use point at it too.
        *("--external-endpoint", server.url("/"), "--internal-endpoint", server.url("/")),
        *("--dns-endpoint", "127.0.0.1", "--max-scan-time", "150"),
        *("-f", "json", "-o", str(report), "-v", "0"),
    ]
    done = subprocess.run(
        command,
        env={**os.environ, "HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(report.read_text())
    assert result["infos"]["crawled_pages_nbr"] > 0
    assert result["vulnerabilities"]["Cross Site Request Forgery"] == []
    # It did submit every kind of page form, with the page's token (which works) and with a
    # changed one (which is refused, 403): the scan was not of nothing.
    posts = form_posts(server.log())
    for action in ("/save", "/delete", "/restore"):
        assert 403 in posts[action], (action, posts)
        assert posts[action] - {403}, (action, posts)


# --- The Secure cookie behind a proxy -------------------------------------------------------


def is_secure(set_cookie: str) -> bool:
    return any(part.strip().lower() == "secure" for part in set_cookie.split(";"))


def test_behind_a_trusted_proxy_https_makes_the_session_cookie_secure(
    gunicorn, tmp_path, policy_file
):
    env = {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'vars.db'}",
        "ACCESS_POLICY_FILE": str(policy_file),
        "SECRET_KEY": KEY,
        "FORWARDED_ALLOW_IPS": "127.0.0.1",  # the proxy: here, the test itself
    }
    server = gunicorn(env, workers=1)
    over_https = requests.post(
        server.url("/signin"),
        data={"token": ADMIN},
        headers={"X-Forwarded-Proto": "https"},
        allow_redirects=False,
        timeout=10,
    )
    assert over_https.status_code == 303
    assert over_https.headers["Set-Cookie"].startswith("vk_session=")
    assert is_secure(over_https.headers["Set-Cookie"])
    assert not is_secure(sign_in(server, ADMIN).headers["Set-Cookie"])  # plain HTTP


def test_x_forwarded_proto_from_an_untrusted_peer_is_ignored(gunicorn, tmp_path, policy_file):
    env = {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'vars.db'}",
        "ACCESS_POLICY_FILE": str(policy_file),
        "SECRET_KEY": KEY,
        "FORWARDED_ALLOW_IPS": "192.0.2.1",  # some proxy, not the test
    }
    server = gunicorn(env, workers=1)
    response = requests.post(
        server.url("/signin"),
        data={"token": ADMIN},
        headers={"X-Forwarded-Proto": "https"},
        allow_redirects=False,
        timeout=10,
    )
    assert response.status_code == 303
    assert response.headers["Set-Cookie"].startswith("vk_session=")
    assert not is_secure(response.headers["Set-Cookie"])


# --- One session, several instances ---------------------------------------------------------


def test_a_session_reaches_every_instance_with_the_same_key_and_no_other(
    gunicorn, mysql_database, policy_file, tmp_path
):
    empty_var_tables(mysql_database)
    key_file = tmp_path / "secret_key"
    key_file.write_text(KEY + "\n")
    env = {"DATABASE_URL": mysql_database, "ACCESS_POLICY_FILE": str(policy_file)}
    first = gunicorn({**env, "SECRET_KEY": KEY}, workers=1)
    second = gunicorn({**env, "SECRET_KEY": "", "SECRET_KEY_FILE": str(key_file)}, workers=1)
    another = gunicorn({**env, "SECRET_KEY": "another-key-0123456789abcdef"}, workers=1)
    cookies = {"vk_session": sign_in(first, ADMIN).cookies["vk_session"]}

    page = requests.get(second.url("/"), cookies=cookies, timeout=10)
    assert page.status_code == 200
    assert "Sign out" in page.text
    # The session's CSRF token works there too: a form saves.
    saved = requests.post(
        second.url("/save"),
        data={"csrf": csrf_of(page.text), "name": "shared", "value": "from the second"},
        cookies=cookies,
        allow_redirects=False,
        timeout=10,
    )
    assert saved.status_code == 303, saved.text
    stored = requests.get(first.url("/var/shared"), headers=bearer(ADMIN), timeout=10)
    assert stored.text == "from the second"

    assert requests.get(another.url("/"), cookies=cookies, timeout=10).status_code == 401


# --- SIGHUP and the policy file -------------------------------------------------------------

BROKEN = '[[tokens]]\nname = "admin"\nsecret = "s-0123456789"\nrules = { "" = "everything" }\n'
# The reader may write now; the admin token is gone.
NEXT_POLICY = f"""
[[tokens]]
name = "reader"
secret = "{READER}"
rules = {{ "" = "write" }}
"""


def test_sighup_with_a_broken_policy_is_refused_and_the_policy_in_force_stays(
    gunicorn, tmp_path, policy_file
):
    env = {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'vars.db'}",
        "ACCESS_POLICY_FILE": str(policy_file),
        "SECRET_KEY": KEY,
    }
    server = gunicorn(env, workers=2)
    assert server.proc is not None
    url = server.url("/var/a")
    requests.put(url, data={"value": "1"}, headers=bearer(ADMIN), timeout=10).raise_for_status()
    workers = worker_pids(server)
    assert len(workers) == 2
    # Both workers have built the app (so read the policy): a worker that starts while the
    # file does not parse fails to boot, and gunicorn then stops (a SIGHUP no longer starts any).
    wait_until(
        lambda: all(f"[{pid}] [INFO] var_keeper.db: store ready" in server.log() for pid in workers)
    )

    policy_file.write_text(BROKEN)
    os.kill(server.proc.pid, signal.SIGHUP)
    wait_until(lambda: "SIGHUP refused" in server.log())
    time.sleep(2)  # time enough for new workers, had any been started
    assert server.proc.poll() is None
    assert worker_pids(server) == workers
    refusals = [line for line in server.log().splitlines() if "SIGHUP refused" in line]
    assert len(refusals) == 1
    assert str(policy_file) in refusals[0]
    assert 'unknown rule "everything"' in refusals[0]
    for _ in range(6):  # both workers: the old policy, admin writes and the reader reads
        assert requests.get(url, headers=bearer(ADMIN), timeout=10).status_code == 200
        write = requests.put(url, data={"value": "2"}, headers=bearer(READER), timeout=10)
        assert write.status_code == 403

    policy_file.write_text(NEXT_POLICY)
    os.kill(server.proc.pid, signal.SIGHUP)
    wait_until(lambda: len(worker_pids(server)) == 2 and not worker_pids(server) & workers)
    assert len(re.findall("SIGHUP refused", server.log())) == 1
    for _ in range(6):
        assert requests.get(url, headers=bearer(ADMIN), timeout=10).status_code == 401
        write = requests.put(url, data={"value": "3"}, headers=bearer(READER), timeout=10)
        assert write.status_code == 200


def test_a_worker_restarted_while_the_policy_is_broken_starts_with_the_policy_in_force(
    gunicorn, tmp_path, policy_file
):
    env = {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'vars.db'}",
        "ACCESS_POLICY_FILE": str(policy_file),
        "SECRET_KEY": KEY,
    }
    server = gunicorn(env, workers=2)
    url = server.url("/var/a")
    requests.put(url, data={"value": "1"}, headers=bearer(ADMIN), timeout=10).raise_for_status()
    workers = worker_pids(server)
    wait_until(
        lambda: all(f"[{pid}] [INFO] var_keeper.db: store ready" in server.log() for pid in workers)
    )

    policy_file.write_text(BROKEN)
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)  # a crash: gunicorn starts another worker, file broken
    started: set[int] = set()

    def replacement_ready() -> int | None:
        """The worker gunicorn started for the victim, once it is ready (/proc is read once a
        try, and every child seen is remembered: a read can miss one mid-fork)."""
        started.update(worker_pids(server) - workers)
        log = server.log()
        ready = [pid for pid in started if f"[{pid}] [INFO] var_keeper.db: store ready" in log]
        return ready[0] if ready else None

    wait_until(lambda: replacement_ready() is not None)
    replacement = replacement_ready()
    assert server.proc is not None
    assert server.proc.poll() is None
    assert f"[{replacement}] [ERROR]" in server.log()
    assert "the policy in force in the other workers stays" in server.log()
    for _ in range(10):  # whichever worker answers: the policy in force before the break
        assert requests.get(url, headers=bearer(ADMIN), timeout=10).status_code == 200
        write = requests.put(url, data={"value": "2"}, headers=bearer(READER), timeout=10)
        assert write.status_code == 403
