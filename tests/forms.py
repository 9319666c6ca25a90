"""The page's forms as a browser sends them: with the CSRF token of a page it fetched."""

from __future__ import annotations

import re

from flask.testing import FlaskClient

_CSRF = re.compile(r'<input type="hidden" name="csrf" value="([^"]*)">')


def csrf_of(page: str) -> str:
    """The CSRF token the forms of ``page`` carry."""
    match = _CSRF.search(page)
    assert match, "no CSRF token on the page"
    return match.group(1)


def with_csrf(client: FlaskClient, fields: dict[str, str], page: str = "/") -> dict[str, str]:
    """``fields`` and the CSRF token of ``page`` as ``client`` fetched it (which also sets the
    cookie the token is checked against)."""
    return {"csrf": csrf_of(client.get(page).get_data(as_text=True)), **fields}
