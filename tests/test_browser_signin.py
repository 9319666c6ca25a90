"""Sign-in, scoped tokens and cross-site forms in a real headless Chromium against a real
gunicorn (same browser set-up as test_browser.py: Debian's /usr/bin/chromium, nothing
downloaded), once per store."""

from __future__ import annotations

import http.server
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Browser, Page, expect

from tests.test_browser import (  # the module-scoped browser fixture and helpers
    _open_page,
    browser,  # noqa: F401
)
from tests.test_signin_gunicorn import ADMIN, POLICY, READER  # an admin and a reader token

pytestmark = pytest.mark.slow


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    return path


@pytest.fixture
def guarded(gunicorn, store_url: str, policy_file: Path):
    # No SECRET_KEY: the key gunicorn.conf.py makes must reach every worker, old and new.
    env = {"DATABASE_URL": store_url, "ACCESS_POLICY_FILE": str(policy_file)}
    return gunicorn({**env, "SECRET_KEY": ""}, workers=2)


@pytest.fixture
def open_server(gunicorn, store_url: str):
    return gunicorn({"DATABASE_URL": store_url}, workers=1)


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:  # noqa: F811
    context = _open_page(browser, javascript=True)
    yield context.new_page()
    context.close()


def put(server, name: str, value: str) -> None:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    response = requests.put(
        server.url(f"/var/{name}"), data={"value": value}, headers=headers, timeout=5
    )
    response.raise_for_status()


def value_of(server, name: str) -> str | None:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    response = requests.get(server.url(f"/var/{name}"), headers=headers, timeout=5)
    return response.text if response.status_code == 200 else None


def sign_in(page: Page, server, token: str) -> None:
    page.goto(server.url("/"))
    expect(page.locator("h1")).to_have_text("Sign in")
    page.fill("input[name=token]", token)
    page.click("button:text('Sign in')")
    expect(page.locator("form.signout")).to_be_visible()


def worker_pids(server) -> list[int]:
    """The gunicorn workers: the master's children, from /proc."""
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == server.proc.pid:
                children.append(int(entry))
    return children


def test_sign_in_browse_edit_and_sign_out(page, guarded):
    put(guarded, "team/motd", "hello")
    sign_in(page, guarded, ADMIN)
    assert ADMIN not in page.content()
    assert ADMIN not in page.url
    page.goto(guarded.url("/view?name=team/motd"))
    page.click("text=Edit")
    page.fill("textarea[name=value]", "edited in the browser")
    page.click("button:text('Save')")
    expect(page.locator("p.notice")).to_have_text("Saved version 2.")
    assert value_of(guarded, "team/motd") == "edited in the browser"
    history = requests.get(
        guarded.url("/var/team/motd?history"),
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=5,
    )
    assert history.json()["changes"][0]["actor"] == "admin"
    page.click("button:text('Sign out')")
    expect(page.locator("h1")).to_have_text("Sign in")
    page.goto(guarded.url("/view?name=team/motd"))
    expect(page.locator("h1")).to_have_text("Sign in")
    # The session cookie is HttpOnly and strict.
    page.goto(guarded.url("/"))
    page.fill("input[name=token]", ADMIN)
    page.click("button:text('Sign in')")
    cookie = next(c for c in page.context.cookies() if c["name"] == "vk_session")
    assert cookie["httpOnly"]
    assert cookie["sameSite"] == "Strict"


def test_a_read_scoped_token_sees_no_edit_controls_and_a_forged_write_is_refused(page, guarded):
    put(guarded, "a", "original")
    sign_in(page, guarded, READER)
    expect(page.locator("table.vars td.name")).to_have_text(["a"])
    assert page.locator("form.delete, form.new, a:text('Edit')").count() == 0
    page.goto(guarded.url("/view?name=a"))
    assert page.locator("form.delete, a:text('Edit')").count() == 0
    # A save form made up in the page (the CSP forbids fetch), with the session's CSRF token.
    with page.expect_navigation() as navigation:
        page.evaluate(
            """() => {
                const form = document.querySelector("form.signout");
                form.action = "/save";
                const fields = [["name", "a"], ["version", "1"], ["value", "forged"]];
                for (const [name, value] of fields) {
                    const input = document.createElement("input");
                    Object.assign(input, {type: "hidden", name, value});
                    form.append(input);
                }
                form.submit();
            }"""
        )
    assert navigation.value.status == 403
    expect(page.locator("p.error")).to_contain_text('may not write "a"')
    assert value_of(guarded, "a") == "original"


def test_a_form_from_a_data_page_changes_nothing(page, guarded, open_server):
    sign_in(page, guarded, ADMIN)
    for server in (guarded, open_server):
        form = (
            f"<form action={server.url('/save')} method=post>"
            "<input name=name value=planted><input name=value value=x>"
            "<input name=csrf value=guess></form><script>document.forms[0].submit()</script>"
        )
        page.goto("data:text/html," + form)
        page.wait_for_load_state()
        time.sleep(0.5)
        assert value_of(server, "planted") is None


def test_a_form_from_a_second_local_server_changes_nothing(page, guarded, open_server):
    sign_in(page, guarded, ADMIN)
    targets = [guarded, open_server]

    class Attacker(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            server = targets[int(self.path.strip("/"))]
            body = (
                f"<form action={server.url('/delete')} method=post><input name=name value=a>"
                "<input name=version value=1><input name=confirmed value=yes></form>"
                "<script>document.forms[0].submit()</script>"
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    attacker = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Attacker)
    threading.Thread(target=attacker.serve_forever, daemon=True).start()
    try:
        for index, server in enumerate(targets):
            put(server, "a", "keep me")  # the open server ignores the token
            page.goto(f"http://127.0.0.1:{attacker.server_address[1]}/{index}")
            page.wait_for_load_state()
            time.sleep(0.5)
            assert value_of(server, "a") == "keep me"
    finally:
        attacker.shutdown()


def test_the_session_survives_a_worker_restart_and_reaches_every_worker(page, guarded):
    sign_in(page, guarded, ADMIN)
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    before = worker_pids(guarded)
    assert len(before) == 2
    for pid in before:  # every worker replaced: the new ones must know the session's key
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = worker_pids(guarded)
        if len(now) == 2 and not set(now) & set(before):
            break
        time.sleep(0.2)
    assert not set(worker_pids(guarded)) & set(before)
    # Many requests on fresh connections: spread over both new workers, none signed out.
    statuses = {
        requests.get(guarded.url("/"), cookies=cookies, timeout=10).status_code for _ in range(20)
    }
    assert statuses == {200}
    page.goto(guarded.url("/"))
    expect(page.locator("form.signout")).to_be_visible()
