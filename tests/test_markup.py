"""Every page that shows a name or a value shows stored markup as text, never as markup.

One test per page, the error and conflict pages included (a ``|safe`` on the 409 page once
went unnoticed because the escaping test skipped it). The values are set through the API, the
pages reached as a browser reaches them (forms carry the page's CSRF token).
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote

import pytest
from flask.testing import FlaskClient
from markupsafe import escape
from werkzeug.test import TestResponse

from tests.forms import with_csrf

NAME = "<img src=x onerror=alert(1)>"
OLD = "<script>alert('old')</script>&\""
CURRENT = "<script>alert('current')</script>&\""
MINE = "<script>alert('mine')</script>&\""


@pytest.fixture
def markup(client: FlaskClient) -> FlaskClient:
    """``NAME`` at version 2 (``CURRENT``), its version 1 (``OLD``) in the history."""
    for value in (OLD, CURRENT):
        response = client.put("/var/" + quote(NAME), data=value.encode(), content_type="text/plain")
        assert response.status_code in (200, 201)
    return client


def shows_as_text(response: TestResponse, *texts: str) -> None:
    page = response.get_data(as_text=True)
    assert response.mimetype == "text/html"
    for text in texts:
        assert text not in page, f"{text!r} is on the page unescaped"
        assert str(escape(text)) in page, f"{text!r} is not on the page"


def form(client: FlaskClient, path: str, **fields: str) -> TestResponse:
    return client.post(path, data=with_csrf(client, fields))


def deleted(client: FlaskClient) -> FlaskClient:
    assert client.delete("/var/" + quote(NAME)).status_code == 204
    return client


PAGES: dict[str, Callable[[FlaskClient], TestResponse]] = {
    "listing": lambda c: c.get("/"),
    "search": lambda c: c.get("/?prefix=" + quote("<img")),
    "view": lambda c: c.get("/view?name=" + quote(NAME)),
    "edit": lambda c: c.get("/edit?name=" + quote(NAME)),
    "delete confirmation": lambda c: form(c, "/delete", name=NAME, version="2"),
}


@pytest.mark.parametrize("page", PAGES)
def test_a_page_shows_the_name_and_value_as_text(markup, page):
    shows_as_text(PAGES[page](markup), NAME, CURRENT)


def test_the_history_on_the_view_page_shows_old_values_as_text(markup):
    shows_as_text(markup.get("/view?name=" + quote(NAME)), OLD)


def test_the_409_conflict_page_shows_both_values_as_text(markup):
    response = form(markup, "/save", name=NAME, version="1", value=MINE)
    assert response.status_code == 409
    shows_as_text(response, NAME, CURRENT, MINE)


def test_the_409_page_of_a_value_deleted_meanwhile_shows_yours_as_text(markup):
    response = form(deleted(markup), "/save", name=NAME, version="2", value=MINE)
    assert response.status_code == 409
    shows_as_text(response, NAME, MINE)


def test_the_409_page_of_a_name_taken_meanwhile_shows_both_values_as_text(markup):
    response = form(markup, "/save", name=NAME, value=MINE)  # no version: create it
    assert response.status_code == 409
    shows_as_text(response, NAME, CURRENT, MINE)


def test_the_409_page_of_a_delete_after_a_change_shows_the_value_as_text(markup):
    response = form(markup, "/delete", name=NAME, version="1", confirmed="yes")
    assert response.status_code == 409
    shows_as_text(response, NAME, CURRENT)


def test_a_refused_form_shows_the_value_it_keeps_as_text(markup):
    response = form(markup, "/save", name=NAME + "\x01", value=MINE)
    assert response.status_code == 400
    shows_as_text(response, MINE)


def test_the_page_of_a_deleted_variable_shows_its_history_as_text(markup):
    response = deleted(markup).get("/view?name=" + quote(NAME))
    assert response.status_code == 404
    shows_as_text(response, NAME, OLD, CURRENT)
