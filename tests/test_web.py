"""The web page at ``/`` through Flask's test client, once per store (SQLite and MySQL).

What only a real browser can show (JavaScript, dialogs, layout) is in test_browser.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient

import db
from app import create_app
from tests.forms import with_csrf

FORM = "application/x-www-form-urlencoded"


def put(client: FlaskClient, name: str, value: str) -> None:
    response = client.put("/var/" + quote(name), data=value.encode(), content_type="text/plain")
    assert response.status_code in (200, 201)


def stored(client: FlaskClient, name: str) -> str | None:
    response = client.get("/var/" + quote(name))
    return response.get_data(as_text=True) if response.status_code == 200 else None


def version_of(client: FlaskClient, name: str) -> int:
    return int(client.get("/var/" + quote(name)).headers["ETag"].strip('"'))


def hidden(page: str, field: str) -> str:
    """The value of the first hidden input called ``field`` on ``page``."""
    match = re.search(rf'<input type="hidden" name="{field}" value="([^"]*)">', page)
    assert match, f"no hidden field {field!r}"
    return match.group(1)


def textarea(page: str) -> str:
    match = re.search(r"<textarea[^>]*>\n(.*?)</textarea>", page, re.S)
    assert match, "no textarea"
    return match.group(1)


@pytest.fixture
def small_app(store_url: str) -> Iterator[Flask]:
    app = create_app({"TESTING": True, "DATABASE_URL": store_url, "MAX_VALUE_BYTES": 16})
    yield app
    db.get_store(app).close()


# --- The listing ----------------------------------------------------------------------------


def test_page_lists_name_preview_version_and_update_time(client):
    put(client, "greeting", "hello")
    put(client, "greeting", "hello again")
    page = client.get("/").get_data(as_text=True)
    assert '<a href="/view?name=greeting">greeting</a>' in page
    assert "hello again</pre>" in page
    assert re.search(r'<td class="version">.*?2</td>', page)
    assert re.search(r'<time datetime="\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ">', page)


def test_page_without_variables_says_there_are_none(client):
    response = client.get("/")
    assert response.status_code == 200
    assert "No variables yet" in response.get_data(as_text=True)


def test_search_lists_only_names_with_the_prefix(client):
    for name in ("app/a", "app/b", "apple", "other"):
        put(client, name, "v")
    page = client.get("/?prefix=app/").get_data(as_text=True)
    assert "app/a</a>" in page
    assert "app/b</a>" in page
    assert "apple</a>" not in page
    assert "other</a>" not in page
    assert 'name="prefix" value="app/"' in page


def test_search_without_matches_says_so(client):
    put(client, "a", "v")
    page = client.get("/?prefix=zz").get_data(as_text=True)
    assert "No variable names start with <code>zz</code>" in page


def test_pages_follow_the_listing_api_keyset_pagination(client):
    for name in ("a", "b", "c", "d", "e"):
        put(client, name, "v")
    first = client.get("/?limit=2").get_data(as_text=True)
    assert re.findall(r'<td class="name"><a [^>]*>(\w)</a>', first) == ["a", "b"]
    next_url = re.search(r'<a href="([^"]*)" rel="next">', first).group(1).replace("&amp;", "&")
    assert parse_qs(urlsplit(next_url).query) == {"after": ["b"], "limit": ["2"]}
    second = client.get(next_url).get_data(as_text=True)
    assert re.findall(r'<td class="name"><a [^>]*>(\w)</a>', second) == ["c", "d"]
    assert "First page" in second
    last = client.get("/?limit=2&after=d").get_data(as_text=True)
    assert re.findall(r'<td class="name"><a [^>]*>(\w)</a>', last) == ["e"]
    assert 'rel="next"' not in last


def test_pagination_keeps_the_search_prefix(client):
    for name in ("p/1", "p/2", "p/3", "q"):
        put(client, name, "v")
    page = client.get("/?prefix=p/&limit=1").get_data(as_text=True)
    next_url = re.search(r'<a href="([^"]*)" rel="next">', page).group(1).replace("&amp;", "&")
    assert parse_qs(urlsplit(next_url).query) == {
        "prefix": ["p/"],
        "after": ["p/1"],
        "limit": ["1"],
    }


@pytest.mark.parametrize("limit", ["0", "201", "ten", "-1"])
def test_invalid_page_size_is_400(client, limit):
    response = client.get(f"/?limit={limit}")
    assert response.status_code == 400
    assert "limit must be a whole number" in response.get_data(as_text=True)


def test_long_value_preview_is_cut_and_links_to_the_full_value(client):
    value = "x" * 5000
    put(client, "big", value)
    page = client.get("/").get_data(as_text=True)
    assert value not in page
    assert "x" * 160 + "…</pre>" in page
    assert '<a href="/view?name=big" class="more">full value (5000 characters)</a>' in page
    assert value in client.get("/view?name=big").get_data(as_text=True)


def test_multiline_preview_shows_only_the_first_lines(client):
    put(client, "poem", "one\ntwo\nthree\nfour\nfive")
    page = client.get("/").get_data(as_text=True)
    assert "one\ntwo\nthree…</pre>" in page
    assert "four" not in page


def test_view_page_shows_the_full_value_and_its_metadata(client):
    put(client, "poem", "one\ntwo\n")
    page = client.get("/view?name=poem").get_data(as_text=True)
    # The newline after <pre> is the one the HTML parser drops; the value follows verbatim.
    assert '<pre class="value">\none\ntwo\n</pre>' in page
    assert "8 characters, 8 bytes" in page
    assert '<a href="/var/poem">Plain text</a>' in page


def test_missing_variable_page_is_404_and_offers_to_create_it(client):
    response = client.get("/view?name=nope")
    assert response.status_code == 404
    assert '<a href="/?new=nope">Create it</a>' in response.get_data(as_text=True)
    assert 'name="name" value="nope"' in client.get("/?new=nope").get_data(as_text=True)


def test_names_a_browser_would_rewrite_in_a_path_reach_their_pages(client):
    name = "a/../b?c=1&d#e %"
    response = client.post("/save", data=with_csrf(client, {"name": name, "value": "v"}))
    assert response.status_code == 303
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert '<h1 class="name">a/../b?c=1&amp;d#e %</h1>' in page
    assert stored(client, name) == "v"


# --- Escaping and the page's security headers ------------------------------------------------


def test_stored_markup_is_shown_as_text_on_every_page(client):
    name, value = "<b>n</b>", "<script>alert(1)</script>\"'&"
    client.post("/save", data=with_csrf(client, {"name": name, "value": value}))
    # The listing is by folder: "<b>n</b>" is in the folder "<b>n</" (and the breadcrumb).
    for path in ("/?prefix=", "/view?name=", "/edit?name="):
        path += quote(name)
        page = client.get(path).get_data(as_text=True)
        assert "<script>alert" not in page
        assert "<b>n</b>" not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;&#34;&#39;&amp;" in page
        assert "&lt;b&gt;n&lt;/b&gt;" in page


def test_page_has_a_strict_content_security_policy(client):
    response = client.get("/")
    policy = dict(
        part.strip().split(" ", 1)
        for part in response.headers["Content-Security-Policy"].split(";")
    )
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == "'self'"
    assert policy["style-src"] == "'self'"
    assert policy["form-action"] == "'self'"
    assert policy["frame-ancestors"] == "'none'"
    assert "unsafe" not in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"


def test_page_refers_only_to_its_own_origin(client):
    put(client, "a", "https://example.org/ stays text")
    page = client.get("/").get_data(as_text=True)
    targets = re.findall(r'(?:src|href|action)="([^"]*)"', page)
    assert targets
    assert all(t.startswith("/") and not t.startswith("//") for t in targets), targets


def test_stylesheet_and_script_are_served_from_our_origin(client):
    css = client.get("/static/style.css")
    js = client.get("/static/web.js")
    assert css.status_code == js.status_code == 200
    assert css.mimetype == "text/css"
    assert js.mimetype in ("text/javascript", "application/javascript")


def test_api_responses_keep_their_own_policy(client):
    put(client, "a", "v")
    policy = client.get("/var/a").headers["Content-Security-Policy"]
    assert policy == "default-src 'none'; frame-ancestors 'none'"


# --- Creating -------------------------------------------------------------------------------


def test_create_form_stores_the_value_and_redirects_to_its_page(client):
    response = client.post("/save", data=with_csrf(client, {"name": "a", "value": "hello"}))
    assert response.status_code == 303
    assert response.headers["Location"] == "/view?name=a&saved=1"
    assert stored(client, "a") == "hello"
    assert "Saved version 1." in client.get("/view?name=a&saved=1").get_data(as_text=True)


def test_create_never_overwrites_an_existing_variable(client):
    put(client, "a", "theirs")
    response = client.post("/save", data=with_csrf(client, {"name": "a", "value": "mine"}))
    page = response.get_data(as_text=True)
    assert response.status_code == 409
    assert "already exists (version 1)" in page
    assert '<pre class="value">\ntheirs</pre>' in page
    assert textarea(page) == "mine"
    assert hidden(page, "version") == "1"
    assert stored(client, "a") == "theirs"


def test_textarea_line_breaks_become_lf_in_a_new_value(client):
    client.post("/save", data=with_csrf(client, {"name": "a", "value": "one\r\ntwo\r\n"}))
    assert stored(client, "a") == "one\ntwo\n"


def test_empty_value_can_be_stored(client):
    assert (
        client.post("/save", data=with_csrf(client, {"name": "a", "value": ""})).status_code == 303
    )
    assert stored(client, "a") == ""
    assert "(empty)" in client.get("/").get_data(as_text=True)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "may not be empty"),
        ("/lead", "may not start with /"),
        ("a\x01b", "control characters"),
        ("n" * 256, "at most 255 characters"),
    ],
)
def test_invalid_name_is_refused_and_the_form_keeps_the_input(client, name, message):
    response = client.post("/save", data=with_csrf(client, {"name": name, "value": "kept"}))
    page = response.get_data(as_text=True)
    assert response.status_code == 400
    assert message in page
    assert textarea(page) == "kept"
    assert client.get("/var", headers={"Accept": "application/json"}).json["variables"] == []


def test_value_over_the_size_limit_is_413_and_not_stored(small_app):
    client = small_app.test_client()
    response = client.post("/save", data=with_csrf(client, {"name": "a", "value": "é" * 9}))
    assert response.status_code == 413
    assert "the value is 18 bytes; the limit is 16" in response.get_data(as_text=True)
    assert stored(client, "a") is None


def test_form_that_is_not_utf8_is_refused(client):
    csrf = with_csrf(client, {})["csrf"]
    body = f"csrf={csrf}&name=a&value=%FF".encode()
    response = client.post("/save", data=body, content_type=FORM)
    assert response.status_code == 400
    assert stored(client, "a") is None


# --- Editing --------------------------------------------------------------------------------


def test_edit_form_carries_the_loaded_version_and_value(client):
    put(client, "a", "one")
    put(client, "a", "two")
    page = client.get("/edit?name=a").get_data(as_text=True)
    assert hidden(page, "name") == "a"
    assert hidden(page, "version") == "2"
    assert hidden(page, "newline") == "lf"
    assert textarea(page) == "two"


def test_edit_at_the_loaded_version_saves_a_new_version(client):
    put(client, "a", "one")
    response = client.post(
        "/save", data=with_csrf(client, {"name": "a", "version": "1", "value": "two"})
    )
    assert response.status_code == 303
    assert response.headers["Location"] == "/view?name=a&saved=2"
    assert stored(client, "a") == "two"
    assert version_of(client, "a") == 2


def test_concurrent_edit_is_409_with_both_values_and_nothing_overwritten(client):
    put(client, "a", "original")
    form = client.get("/edit?name=a").get_data(as_text=True)
    put(client, "a", "theirs")  # someone else saves version 2 meanwhile
    response = client.post(
        "/save",
        data=with_csrf(client, {"name": "a", "version": hidden(form, "version"), "value": "mine"}),
    )
    page = response.get_data(as_text=True)
    assert response.status_code == 409
    assert "Someone saved version 2 of <code>a</code> after you\nloaded version 1" in page
    assert '<pre class="value">\ntheirs</pre>' in page
    assert textarea(page) == "mine"
    assert stored(client, "a") == "theirs"


def test_saving_mine_from_the_conflict_page_replaces_the_current_version(client):
    put(client, "a", "original")
    put(client, "a", "theirs")
    conflict = client.post(
        "/save", data=with_csrf(client, {"name": "a", "version": "1", "value": "mine"})
    )
    form = conflict.get_data(as_text=True)
    response = client.post(
        "/save",
        data=with_csrf(
            client, {"name": "a", "version": hidden(form, "version"), "value": textarea(form)}
        ),
    )
    assert response.status_code == 303
    assert stored(client, "a") == "mine"


def test_edit_of_a_variable_deleted_meanwhile_offers_to_create_it_again(client):
    put(client, "a", "original")
    client.delete("/var/a")
    response = client.post(
        "/save", data=with_csrf(client, {"name": "a", "version": "1", "value": "mine"})
    )
    page = response.get_data(as_text=True)
    assert response.status_code == 409
    assert "Someone deleted <code>a</code>" in page
    assert 'name="version"' not in page  # posting this form creates, only if still absent
    assert "Create it again with my value" in page
    assert stored(client, "a") is None


def test_crlf_value_keeps_its_line_endings_through_an_edit(client):
    put(client, "a", "one\r\ntwo")
    page = client.get("/edit?name=a").get_data(as_text=True)
    assert hidden(page, "newline") == "crlf"
    client.post(
        "/save",
        data=with_csrf(
            client, {"name": "a", "version": "1", "newline": "crlf", "value": "one\r\nthree"}
        ),
    )
    assert stored(client, "a") == "one\r\nthree"


def test_lf_value_keeps_its_line_endings_through_an_edit(client):
    put(client, "a", "one\ntwo")
    client.post(
        "/save",
        data=with_csrf(
            client, {"name": "a", "version": "1", "newline": "lf", "value": "one\r\nthree"}
        ),
    )
    assert stored(client, "a") == "one\nthree"


def test_leading_newline_of_a_value_survives_the_textarea(client):
    put(client, "a", "\nindented")
    page = client.get("/edit?name=a").get_data(as_text=True)
    # The first newline after <textarea> is dropped by the HTML parser; the value's own stays.
    assert '<textarea name="value" rows="12">\n\nindented</textarea>' in page


def test_value_with_mixed_line_endings_is_not_editable_in_the_page(client):
    put(client, "a", "one\ntwo\r\nthree")
    page = client.get("/edit?name=a").get_data(as_text=True)
    assert "cannot be edited here" in page
    assert 'action="/save"' not in page


def test_invalid_version_is_400_and_changes_nothing(client):
    put(client, "a", "one")
    response = client.post(
        "/save", data=with_csrf(client, {"name": "a", "version": "1x", "value": "two"})
    )
    assert response.status_code == 400
    assert stored(client, "a") == "one"


def test_edit_page_of_a_missing_variable_is_404(client):
    assert client.get("/edit?name=nope").status_code == 404


# --- Deleting -------------------------------------------------------------------------------


def test_unconfirmed_delete_shows_a_confirmation_page_and_keeps_the_variable(client):
    put(client, "a", "keep me")
    response = client.post("/delete", data=with_csrf(client, {"name": "a", "version": "1"}))
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert 'Delete <span class="name">a</span>?' in page
    assert hidden(page, "confirmed") == "yes"
    assert hidden(page, "version") == "1"
    assert stored(client, "a") == "keep me"


def test_confirmed_delete_removes_the_variable_and_returns_to_the_list(client):
    put(client, "a", "v")
    response = client.post(
        "/delete", data=with_csrf(client, {"name": "a", "version": "1", "confirmed": "yes"})
    )
    assert response.status_code == 303
    assert response.headers["Location"] == "/?deleted=a"
    assert stored(client, "a") is None
    assert "Deleted <code>a</code>." in client.get("/?deleted=a").get_data(as_text=True)


def test_delete_after_a_concurrent_change_is_409_and_keeps_the_variable(client):
    put(client, "a", "one")
    put(client, "a", "two")
    response = client.post(
        "/delete", data=with_csrf(client, {"name": "a", "version": "1", "confirmed": "yes"})
    )
    page = response.get_data(as_text=True)
    assert response.status_code == 409
    assert "someone saved version 2 after you chose to\ndelete version 1" in page
    assert hidden(page, "version") == "2"
    assert stored(client, "a") == "two"


def test_delete_of_a_variable_already_deleted_says_so(client):
    put(client, "a", "v")
    client.delete("/var/a")
    response = client.post(
        "/delete", data=with_csrf(client, {"name": "a", "version": "1", "confirmed": "yes"})
    )
    assert response.status_code == 409
    assert "Someone else deleted <code>a</code> first." in response.get_data(as_text=True)


def test_delete_without_a_version_is_400(client):
    put(client, "a", "v")
    response = client.post("/delete", data=with_csrf(client, {"name": "a", "confirmed": "yes"}))
    assert response.status_code == 400
    assert stored(client, "a") == "v"


# --- The tutorial's workflow and failures ---------------------------------------------------


def test_value_posted_by_the_tutorial_form_shows_on_the_page(client):
    assert client.post("/var/a", data={"value": "from the tutorial"}).data == b"OK"
    assert "from the tutorial</pre>" in client.get("/").get_data(as_text=True)


def test_page_is_503_while_the_database_is_unreachable():
    app = create_app(
        {
            "TESTING": True,
            "DATABASE_URL": "mysql://root@127.0.0.1:1/vars",
            "DATABASE_CONNECT_TIMEOUT": 1,
        }
    )
    response = app.test_client().get("/")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
