"""The web page in a real browser: Debian's headless Chromium driven by Playwright, against a real
gunicorn on 127.0.0.1, once per store.

Nothing is downloaded: Playwright's own browser builds are never installed, it starts
/usr/bin/chromium (apt-get install chromium; .ci/run does). Without it the module is skipped on
a developer's machine and fails in CI.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Dialog,
    Locator,
    Page,
    expect,
    sync_playwright,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]

pytestmark = pytest.mark.slow


# --- Browser and server ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing (apt-get install chromium chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        # Playwright gives each launch a fresh temporary --user-data-dir and deletes it after.
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        yield browser
        browser.close()


@pytest.fixture
def server(gunicorn, store_url: str):
    return gunicorn({"DATABASE_URL": store_url}, workers=1, threads=4)


def _open_page(browser: Browser, javascript: bool) -> BrowserContext:
    context = browser.new_context(
        java_script_enabled=javascript, viewport={"width": 1100, "height": 800}
    )
    context.set_default_timeout(10_000)
    return context


# Each test gets a context of its own, closed before its server stops: an idle keep-alive
# connection from the browser would otherwise hold up gunicorn's graceful shutdown.
@pytest.fixture
def page(browser: Browser, server) -> Iterator[Page]:
    context = _open_page(browser, javascript=True)
    yield context.new_page()
    context.close()


@pytest.fixture
def page_without_js(browser: Browser, server) -> Iterator[Page]:
    context = _open_page(browser, javascript=False)
    yield context.new_page()
    context.close()


def put(server, name: str, value: str) -> None:
    response = requests.put(
        server.url("/var/" + quote(name)),
        data=value.encode(),
        timeout=5,
        headers={"Content-Type": "text/plain; charset=utf-8"},
    )
    response.raise_for_status()


def stored(server, name: str) -> str | None:
    response = requests.get(server.url("/var/" + quote(name)), timeout=5)
    if response.status_code == 404:
        return None
    response.raise_for_status()
    return response.content.decode()


def rows(page: Page) -> Locator:
    return page.locator("table.vars td.name")


# Checks on the page go through expect(), which waits until the page after a click has loaded.


# --- The tutorial's browser workflow --------------------------------------------------------


def test_tutorial_data_url_form_posts_a_value_that_the_var_url_shows(page, server):
    form = f"<form action={server.url('/var/a')} method=post><input name=value></form>"
    page.goto("data:text/html," + form)
    page.fill("input[name=value]", "set from the address bar")
    with page.expect_navigation() as navigation:
        page.press("input[name=value]", "Enter")
    assert navigation.value.status == 200
    assert page.inner_text("body") == "OK"
    page.goto(server.url("/var/a"))
    assert page.inner_text("body") == "set from the address bar"


# --- Create, edit, delete -------------------------------------------------------------------


def test_create_edit_and_delete_through_the_page(page, server):
    page.goto(server.url("/"))
    page.fill("form.new input[name=name]", "team/on call")
    page.fill("form.new textarea[name=value]", "Ada\nLovelace")
    page.click("form.new button")
    page.wait_for_url(server.url("/view?name=team/on+call&saved=1"))
    expect(page.locator("p.notice")).to_have_text("Saved version 1.")
    assert stored(server, "team/on call") == "Ada\nLovelace"

    page.click("text=Edit")
    expect(page.locator("textarea[name=value]")).to_have_value("Ada\nLovelace")
    page.fill("textarea[name=value]", "Grace\nHopper\n")
    page.click("button:text('Save')")
    expect(page.locator("p.notice")).to_have_text("Saved version 2.")
    assert page.inner_text("pre.value") == "Grace\nHopper\n"
    assert stored(server, "team/on call") == "Grace\nHopper\n"

    dialogs: list[str] = []

    def accept(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    page.click("button:text('Delete')")
    page.wait_for_url(server.url("/?deleted=team/on+call"))
    expect(page.locator("p.notice")).to_have_text("Deleted team/on call.")
    assert dialogs == ["Delete the variable “team/on call”?"]
    assert stored(server, "team/on call") is None


def test_dismissing_the_delete_dialog_keeps_the_variable(page, server):
    put(server, "keep", "me")
    page.goto(server.url("/"))
    dialogs: list[str] = []

    def dismiss(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.once("dialog", dismiss)
    page.click("form.delete button")
    assert dialogs == ["Delete the variable “keep”?"]
    assert page.url == server.url("/")
    page.reload()
    expect(rows(page)).to_have_text(["keep"])
    assert stored(server, "keep") == "me"


def test_delete_without_javascript_asks_on_a_confirmation_page(page_without_js, server):
    page = page_without_js
    put(server, "old", "remove me")
    page.goto(server.url("/"))
    page.click("form.delete button")
    expect(page.locator("h1")).to_have_text("Delete old?")
    assert page.inner_text("pre.value") == "remove me"
    assert stored(server, "old") == "remove me"
    page.click("button:text('Delete version 1')")
    expect(page.locator("p.notice")).to_have_text("Deleted old.")
    expect(rows(page)).to_have_count(0)
    assert stored(server, "old") is None


def test_create_and_edit_work_without_javascript(page_without_js, server):
    page = page_without_js
    page.goto(server.url("/"))
    page.fill("form.new input[name=name]", "plain")
    page.fill("form.new textarea[name=value]", "html forms")
    page.click("form.new button")
    expect(page.locator("p.notice")).to_have_text("Saved version 1.")
    page.click("text=Edit")
    page.fill("textarea[name=value]", "still html forms")
    page.click("button:text('Save')")
    expect(page.locator("p.notice")).to_have_text("Saved version 2.")
    assert stored(server, "plain") == "still html forms"


# --- Search and pagination ------------------------------------------------------------------


def test_search_by_prefix_and_page_through_the_results(page, server):
    for name in ("fruit/apple", "fruit/banana", "fruit/cherry", "fruit/date", "veg/kale"):
        put(server, name, name.split("/")[1])
    page.goto(server.url("/?limit=2&prefix=veg/"))
    expect(rows(page)).to_have_text(["veg/kale"])
    page.fill("input[name=prefix]", "fruit/")
    page.click("button:text('Search')")
    expect(rows(page)).to_have_text(["fruit/apple", "fruit/banana"])
    page.click("a[rel=next]")
    expect(rows(page)).to_have_text(["fruit/cherry", "fruit/date"])
    expect(page.locator("a[rel=next]")).to_have_count(0)
    page.click("text=First page")
    expect(rows(page)).to_have_text(["fruit/apple", "fruit/banana"])
    page.click("text=Show all")
    expect(page.locator("input[name=prefix]")).to_have_value("")
    expect(rows(page)).to_have_text(["fruit/", "veg/"])  # the top level is two folders


def test_browse_folders_with_the_breadcrumb_and_search_inside_one(page, server):
    for name in ("app/prod/db/host", "app/prod/db/port", "app/prod/mode", "app/dev/x", "top"):
        put(server, name, "v")
    page.goto(server.url("/"))
    expect(rows(page)).to_have_text(["app/", "top"])
    page.click("td.name a:text-is('app/')")
    expect(rows(page)).to_have_text(["app/dev/", "app/prod/"])
    page.click("td.name a:text-is('app/prod/')")
    page.click("td.name a:text-is('app/prod/db/')")
    expect(rows(page)).to_have_text(["app/prod/db/host", "app/prod/db/port"])
    breadcrumb = page.locator("nav.breadcrumb a")
    expect(breadcrumb).to_have_text(["All", "app", "prod", "db"])
    page.click("nav.breadcrumb a:text-is('prod')")
    expect(rows(page)).to_have_text(["app/prod/db/", "app/prod/mode"])
    page.fill("input[name=prefix]", "app/prod/m")
    page.click("button:text('Search')")
    expect(rows(page)).to_have_text(["app/prod/mode"])
    expect(breadcrumb).to_have_text(["All", "app", "prod"])
    page.click("nav.breadcrumb a:text-is('All')")
    expect(rows(page)).to_have_text(["app/", "top"])


# --- Safety ---------------------------------------------------------------------------------


def test_stored_script_stays_inert_text(page, server):
    value = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'
    name = "<svg onload=window.pwned=3>"
    put(server, name, value)
    for path in ("/", "/view?name=" + quote(name), "/edit?name=" + quote(name)):
        page.goto(server.url(path))
        assert page.evaluate("window.pwned") is None
        assert page.locator("script:not([src]), img, svg").count() == 0
    assert page.input_value("textarea[name=value]") == value
    page.goto(server.url("/view?name=" + quote(name)))
    assert page.inner_text("pre.value") == value
    assert page.inner_text("h1") == name


def test_concurrent_edit_is_reported_and_nothing_is_overwritten(page, server):
    put(server, "motd", "original")
    page.goto(server.url("/edit?name=motd"))
    put(server, "motd", "theirs")  # another user saves while this form is open
    page.fill("textarea[name=value]", "mine")
    with page.expect_navigation() as navigation:
        page.click("button:text('Save')")
    assert navigation.value.status == 409
    expect(page.locator("p.error")).to_contain_text("Someone saved version 2")
    assert page.inner_text("pre.value") == "theirs"
    assert page.input_value("textarea[name=value]") == "mine"
    assert stored(server, "motd") == "theirs"

    page.click("button:text('Save mine over version 2')")
    expect(page.locator("p.notice")).to_have_text("Saved version 3.")
    assert stored(server, "motd") == "mine"


def test_page_loads_only_from_its_own_origin_without_policy_violations(page, server):
    put(server, "a", "v")
    requested: list[str] = []
    console: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    for path in ("/", "/view?name=a", "/edit?name=a"):
        page.goto(server.url(path), wait_until="networkidle")
    assert server.url("/static/style.css") in requested
    assert server.url("/static/web.js") in requested
    assert all(url.startswith(server.base + "/") for url in requested), requested
    assert [m for m in console if m.startswith("error")] == []
    # The stylesheet applied: the CSP let it through.
    assert page.evaluate("getComputedStyle(document.body).marginTop") == "0px"


def test_page_fits_a_phone_width_screen(page, server):
    put(server, "n" * 255, "v" * 3000)
    put(server, "lines", "\n".join(f"line {i} " + "word " * 30 for i in range(50)))
    page.set_viewport_size({"width": 360, "height": 740})
    for path in ("/", "/view?name=" + "n" * 255, "/view?name=lines", "/edit?name=lines"):
        page.goto(server.url(path))
        assert page.evaluate("document.documentElement.scrollWidth") <= 360, path
