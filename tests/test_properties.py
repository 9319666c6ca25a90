"""Property-based tests: any valid name and any value survive every representation exactly.

A valid name is 1 to 255 characters, none of them a C0/C1 control character, not starting with
"/" (the route's path converter cannot match that); a value is any Unicode text. Both are
written through each write representation (form POST, PUT JSON, PUT text/plain) and read back
through each read representation (GET text, GET JSON, listing, batch read), on both stores.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.test import TestResponse

MAX_NAME_CHARS = 255
CONTROL_CHARACTERS = "".join(map(chr, [*range(0x20), *range(0x7F, 0xA0)]))
# Characters that need care in a URL or a form body, drawn often on purpose.
AWKWARD = " /%?#+&=;.~\\\"'<>\u00a0\u00e9\u00df\u2028\ufeff\U0001f600"

name_characters = st.one_of(
    st.sampled_from(AWKWARD),
    st.characters(codec="utf-8", exclude_characters=CONTROL_CHARACTERS),
)
names = st.text(name_characters, min_size=1, max_size=MAX_NAME_CHARS).filter(
    lambda name: not name.startswith("/")
)
# Any text at all: control characters, NUL, CR/LF, astral planes (lone surrogates are not text).
values = st.text(st.one_of(st.sampled_from(AWKWARD + "\r\n\t\x00"), st.characters(codec="utf-8")))

property_settings = settings(
    max_examples=40,
    deadline=None,
    # One app and one database per test; each example deletes what it wrote.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def url(name: str) -> str:
    return "/var/" + quote(name, safe="/")


def write_form_post(client: FlaskClient, name: str, value: str) -> TestResponse:
    return client.post(url(name), data={"value": value})


def write_put_json(client: FlaskClient, name: str, value: str) -> TestResponse:
    return client.put(url(name), json={"value": value})


def write_put_text(client: FlaskClient, name: str, value: str) -> TestResponse:
    return client.put(
        url(name), data=value.encode("utf-8"), content_type="text/plain; charset=utf-8"
    )


WRITERS: dict[str, Callable[[FlaskClient, str, str], TestResponse]] = {
    "form POST": write_form_post,
    "PUT JSON": write_put_json,
    "PUT text/plain": write_put_text,
}


def read_everywhere(client: FlaskClient, name: str) -> dict[str, Any]:
    """The variable as each read representation shows it."""
    text = client.get(url(name))
    as_json = client.get(url(name), headers={"Accept": "application/json"})
    listing = client.get("/var", query_string={"prefix": name, "values": "true"})
    batch = client.get("/var", query_string={"name": name})
    assert (text.status_code, as_json.status_code) == (200, 200)
    assert (listing.status_code, batch.status_code) == (200, 200)
    assert text.mimetype == "text/plain"
    return {
        "text": text.get_data().decode("utf-8"),
        "json": as_json.get_json(),
        "listing": listing.get_json()["variables"],
        "batch": batch.get_json(),
        "etag": text.headers["ETag"],
    }


@pytest.mark.parametrize("how", list(WRITERS))
@property_settings
@given(name=names, value=values)
def test_any_name_and_value_round_trip_through_every_representation(
    client: FlaskClient, how: str, name: str, value: str
) -> None:
    written = WRITERS[how](client, name, value)
    assert written.status_code in (200, 201), written.get_data(as_text=True)

    seen = read_everywhere(client, name)
    assert seen["text"] == value
    assert (seen["json"]["name"], seen["json"]["value"]) == (name, value)
    assert [(v["name"], v["value"]) for v in seen["listing"]] == [(name, value)]
    assert [(v["name"], v["value"]) for v in seen["batch"]["variables"]] == [(name, value)]
    assert seen["batch"]["missing"] == []
    assert seen["etag"] == f'"{seen["json"]["version"]}"' == written.headers["ETag"]

    assert client.delete(url(name)).status_code == 204


@property_settings
@given(
    entries=st.dictionaries(names, values, min_size=2, max_size=6),
    how=st.sampled_from(list(WRITERS)),
)
def test_distinct_names_stay_distinct_and_list_in_code_point_order(
    client: FlaskClient, entries: dict[str, str], how: str
) -> None:
    for name, value in entries.items():
        assert WRITERS[how](client, name, value).status_code in (200, 201)

    listing = client.get("/var", query_string={"values": "true", "limit": "1000"}).get_json()
    batch = client.get("/var", query_string={"name": list(entries)}).get_json()

    expected = [(name, entries[name]) for name in sorted(entries)]
    assert [(v["name"], v["value"]) for v in listing["variables"]] == expected
    assert [(v["name"], v["value"]) for v in batch["variables"]] == expected
    for name in entries:
        assert client.delete(url(name)).status_code == 204
