"""The page's sign-in, sessions and CSRF protection (signin.py), through Flask's test client,
once per store. Real browsers and real gunicorn workers: test_browser_signin.py."""

from __future__ import annotations

import html
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

import db
import policy
from app import create_app
from tests.forms import csrf_of, with_csrf

WRITER, READER = "writer-secret-0123456789", "reader-secret-0123456789"
POLICY = f"""
[[tokens]]
name = "writer"
secret = "{WRITER}"
rules = {{ "" = "write" }}

[[tokens]]
name = "reader"
secret = "{READER}"
rules = {{ "" = "read", "team/" = "write" }}
"""


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    return path


@pytest.fixture
def guarded_app(store_url: str, policy_file: Path) -> Iterator[Flask]:
    app = create_app(
        {
            "TESTING": True,
            "DATABASE_URL": store_url,
            "ACCESS_POLICY_FILE": str(policy_file),
            "SECRET_KEY": "test-secret-key",
            "POLICY_CHECK_INTERVAL": 0,
            "SIGNIN_MAX_FAILURES": 3,
        }
    )
    yield app
    db.get_store(app).close()


@pytest.fixture
def browser(guarded_app: Flask) -> FlaskClient:
    return guarded_app.test_client()


def sign_in(client: FlaskClient, token: str) -> None:
    response = client.post("/signin", data={"token": token})
    assert response.status_code == 303, response.get_data(as_text=True)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def stored(client: FlaskClient, name: str) -> str | None:
    response = client.get(f"/var/{name}", headers=bearer(WRITER))
    return response.get_data(as_text=True) if response.status_code == 200 else None


# --- Signing in and out ---------------------------------------------------------------------


def test_without_a_session_the_page_shows_the_sign_in_form(browser):
    response = browser.get("/")
    page = response.get_data(as_text=True)
    assert response.status_code == 401
    assert '<input type="password" name="token"' in page
    assert 'action="/signin"' in page
    assert browser.get("/view?name=a").status_code == 401


def test_a_valid_token_starts_a_session_in_a_strict_http_only_cookie(browser):
    response = browser.post("/signin", data={"token": WRITER})
    assert (response.status_code, response.headers["Location"]) == (303, "/")
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("vk_session=")
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Expires=" in cookie
    assert "Secure" not in cookie  # plain HTTP
    assert WRITER not in cookie
    page = browser.get("/").get_data(as_text=True)
    assert "Sign out" in page
    assert WRITER not in page


def test_over_https_the_cookie_is_secure(guarded_app):
    client = guarded_app.test_client()
    response = client.post("/signin", data={"token": WRITER}, base_url="https://localhost")
    assert "Secure" in response.headers["Set-Cookie"]


def test_a_wrong_token_is_refused_slowly_logged_without_it_and_then_limited(browser, caplog):
    with caplog.at_level(logging.WARNING, logger="var_keeper.signin"):
        began = time.monotonic()
        statuses = [browser.post("/signin", data={"token": f"guess-{i}"}) for i in range(4)]
    assert [r.status_code for r in statuses] == [401, 401, 401, 429]
    assert time.monotonic() - began >= 3 * 0.5
    assert int(statuses[-1].headers["Retry-After"]) > 0
    assert "failed sign-in from" in caplog.text
    assert "guess-" not in caplog.text
    # Even the right token waits its turn once the client is over the limit.
    assert browser.post("/signin", data={"token": WRITER}).status_code == 429


def test_an_empty_token_is_a_clear_400(browser):
    response = browser.post("/signin", data={"token": "  "})
    assert response.status_code == 400
    assert "enter your token" in response.get_data(as_text=True)


def test_sign_out_ends_the_session(browser):
    sign_in(browser, WRITER)
    response = browser.post("/signout", data=with_csrf(browser, {}))
    assert (response.status_code, response.headers["Location"]) == (303, "/signin")
    assert browser.get("/").status_code == 401


def test_the_cookie_never_authenticates_the_api(browser):
    sign_in(browser, WRITER)
    assert browser.get("/").status_code == 200
    assert browser.get("/var").status_code == 401
    assert browser.post("/var/a", data={"value": "x"}).status_code == 401
    assert browser.get("/metrics").status_code == 401


@pytest.mark.parametrize(
    "cookie",
    ["forged", "eyJjc3JmIjoieCIsInJlZiI6InkifQ.Z3yPxA.invalidsignature", "%FF%FE"],
)
def test_a_forged_or_garbled_session_is_signed_out_never_a_500(browser, cookie):
    browser.set_cookie("vk_session", cookie)
    response = browser.get("/")
    assert response.status_code == 401
    assert "Sign in" in response.get_data(as_text=True)


def test_a_non_utf8_cookie_header_is_signed_out(browser):
    response = browser.get("/", headers={"Cookie": b"vk_session=\xff\xfe\xfd".decode("latin-1")})
    assert response.status_code == 401


def test_a_session_signed_with_another_key_is_refused(browser, store_url, policy_file):
    other = create_app(
        {
            "TESTING": True,
            "DATABASE_URL": store_url,
            "ACCESS_POLICY_FILE": str(policy_file),
            "SECRET_KEY": "another-key",
        }
    ).test_client()
    sign_in(other, WRITER)
    browser.set_cookie("vk_session", other.get_cookie("vk_session").value)
    assert browser.get("/").status_code == 401


def test_an_expired_session_is_signed_out(store_url, policy_file):
    app = create_app(
        {
            "TESTING": True,
            "DATABASE_URL": store_url,
            "ACCESS_POLICY_FILE": str(policy_file),
            "SECRET_KEY": "k",
            "SESSION_LIFETIME": 1,
        }
    )
    client = app.test_client()
    sign_in(client, WRITER)
    assert client.get("/").status_code == 200
    time.sleep(2.1)
    cookie = client.get_cookie("vk_session")
    if cookie is not None:  # the browser would have dropped it: replay it anyway
        client.set_cookie("vk_session", cookie.value)
    assert client.get("/").status_code == 401


def test_a_token_removed_from_the_policy_ends_its_sessions(browser, policy_file):
    sign_in(browser, READER)
    assert browser.get("/").status_code == 200
    policy_file.write_text(
        POLICY.split("[[tokens]]", 2)[0] + "[[tokens]]" + POLICY.split("[[tokens]]")[1]
    )
    assert browser.get("/").status_code == 401


# --- Forms: CSRF and origin -----------------------------------------------------------------


def test_a_signed_in_form_with_its_token_saves(browser):
    sign_in(browser, WRITER)
    response = browser.post("/save", data=with_csrf(browser, {"name": "a", "value": "v"}))
    assert response.status_code == 303
    assert stored(browser, "a") == "v"
    history = browser.get("/var/a?history", headers=bearer(WRITER)).get_json()["changes"]
    assert history[0]["actor"] == "writer"


def test_a_form_without_its_csrf_token_changes_nothing(browser):
    sign_in(browser, WRITER)
    response = browser.post("/save", data={"name": "a", "value": "v"})
    assert response.status_code == 403
    assert "reload the page" in response.get_data(as_text=True)
    assert stored(browser, "a") is None


def test_a_csrf_token_of_another_session_is_refused(guarded_app, browser):
    other = guarded_app.test_client()
    sign_in(other, WRITER)
    foreign = csrf_of(other.get("/").get_data(as_text=True))
    sign_in(browser, WRITER)
    response = browser.post("/save", data={"csrf": foreign, "name": "a", "value": "v"})
    assert response.status_code == 403
    assert stored(browser, "a") is None


@pytest.mark.parametrize(
    "headers",
    [{"Origin": "null"}, {"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}],
)
def test_a_form_from_another_origin_changes_nothing(browser, headers):
    sign_in(browser, WRITER)
    fields = with_csrf(browser, {"name": "a", "value": "v"})
    response = browser.post("/save", data=fields, headers=headers)
    assert response.status_code == 403
    assert stored(browser, "a") is None


def test_sign_in_from_another_site_is_refused(browser):
    response = browser.post("/signin", data={"token": WRITER}, headers={"Origin": "null"})
    assert response.status_code == 403
    assert "vk_session" not in response.headers.get("Set-Cookie", "")


# --- What a scoped token sees ----------------------------------------------------------------


def test_a_read_scoped_token_sees_no_edit_controls_and_a_forged_write_is_refused(browser):
    browser.put("/var/a", data="v", content_type="text/plain", headers=bearer(WRITER))
    browser.put("/var/team/x", data="v", content_type="text/plain", headers=bearer(WRITER))
    sign_in(browser, READER)
    index = browser.get("/?prefix=a").get_data(as_text=True)
    assert ">a</a>" in index
    assert 'action="/delete"' not in index
    view = browser.get("/view?name=a").get_data(as_text=True)
    assert "Edit" not in view
    assert 'action="/delete"' not in view
    assert browser.get("/edit?name=a").status_code == 403
    forged = browser.post(
        "/save", data=with_csrf(browser, {"name": "a", "version": "1", "value": "w"})
    )
    assert forged.status_code == 403
    assert 'rule "" = "read"' in html.unescape(forged.get_data(as_text=True))
    assert stored(browser, "a") == "v"
    # Where it may write, it gets the controls.
    assert 'action="/delete"' in browser.get("/view?name=team/x").get_data(as_text=True)


def test_a_token_that_may_read_nothing_there_sees_nothing(store_url, tmp_path):
    path = tmp_path / "p.json"
    path.write_text('{"tokens": [{"name": "ci", "secret": "ci-s", "rules": {"ci/": "write"}}]}')
    app = create_app(
        {
            "TESTING": True,
            "DATABASE_URL": store_url,
            "ACCESS_POLICY_FILE": str(path),
            "SECRET_KEY": "k",
        }
    )
    client = app.test_client()
    client.put("/var/ci/a", data="1", content_type="text/plain", headers=bearer("ci-s"))
    sign_in(client, "ci-s")
    assert client.get("/view?name=app/x").status_code == 403
    page = client.get("/?prefix=ci/").get_data(as_text=True)
    assert ">ci/a</a>" in page


# --- Start-up and every mode -----------------------------------------------------------------


def test_a_policy_that_does_not_parse_stops_the_start_with_a_clear_message(store_url, tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('[[tokens]]\nname = "a"\nsecret = "s"\nrules = { "" = "everything" }')
    with pytest.raises(policy.PolicyError, match='unknown rule "everything"'):
        create_app({"TESTING": True, "DATABASE_URL": store_url, "ACCESS_POLICY_FILE": str(path)})


def test_every_response_forbids_framing(client):
    assert client.get("/").headers["X-Frame-Options"] == "DENY"
    assert client.get("/var/a").headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in client.get("/").headers["Content-Security-Policy"]


def test_without_access_control_a_cross_site_page_form_changes_nothing(client):
    fields = with_csrf(client, {"name": "a", "value": "v"})
    response = client.post("/save", data=fields, headers={"Origin": "null"})
    assert response.status_code == 403
    assert client.post("/save", data={"name": "a", "value": "v"}).status_code == 403
    assert client.get("/var/a").status_code == 404


def test_without_access_control_the_csrf_cookie_is_strict_and_http_only(client):
    response = client.get("/")
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("vk_csrf=")
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert re.search(r'name="csrf" value="[^"]{32,}"', response.get_data(as_text=True))


def test_the_tutorial_cross_origin_form_still_writes(client):
    response = client.post(
        "/var/a", data={"value": "x"}, headers={"Origin": "null", "Sec-Fetch-Site": "cross-site"}
    )
    assert (response.status_code, response.data) == (200, b"OK")
