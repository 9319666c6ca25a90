"""What the API accepts at the edges of each parameter (inputs.py): the spellings of a flag,
the first and last allowed number of each range, the delimiters that may and may not split a
listing, the shapes a JSON ``restore`` or ``ttl`` may take.

tests/test_error_messages.py pins what a refusal says; here, that the values just inside each
limit are taken and those just outside are not.
"""

from __future__ import annotations

import time

import pytest
from flask.testing import FlaskClient

JSON = {"Accept": "application/json"}


def listed_with_values(client: FlaskClient, query: str) -> bool:
    response = client.get(f"/var?{query}", headers=JSON)
    assert response.status_code == 200, response.get_json()
    return "value" in response.get_json()["variables"][0]


# --- Flags


@pytest.mark.parametrize(
    "spelling", ["values=true", "values=1", "values=yes", "values", "values=TRUE"]
)
def test_a_flag_is_true_spelled_true_1_yes_or_empty(client: FlaskClient, spelling: str):
    client.put("/var/a", data={"value": "v"})
    assert listed_with_values(client, spelling)


@pytest.mark.parametrize("spelling", ["values=false", "values=0", "values=no", "values=No", ""])
def test_a_flag_is_false_spelled_false_0_no_or_left_out(client: FlaskClient, spelling: str):
    client.put("/var/a", data={"value": "v"})
    assert not listed_with_values(client, spelling)


def test_a_history_page_without_values_leaves_them_out(client: FlaskClient):
    client.put("/var/a", data={"value": "v"})
    changes = client.get("/var/a?history", headers=JSON).get_json()["changes"]
    assert "value" not in changes[0]


def test_a_subtree_delete_of_everything_needs_all_true(client: FlaskClient):
    client.put("/var/a", data={"value": "v"})
    assert client.delete("/var?prefix=&all=false").status_code == 400
    response = client.delete("/var?prefix=&all=true", headers=JSON)
    assert response.get_json() == {"prefix": "", "deleted": 1}


# --- Numbers at their limits


@pytest.mark.parametrize(("limit", "status"), [("1", 200), ("1000", 200), ("1001", 400)])
def test_a_listing_limit_goes_from_1_to_1000(client: FlaskClient, limit: str, status: int):
    assert client.get(f"/var?limit={limit}").status_code == status


def test_a_limit_of_more_than_nine_digits_is_refused_even_with_leading_zeros(client: FlaskClient):
    assert client.get("/var?limit=000000001").status_code == 200
    assert client.get("/var?limit=0000000001").status_code == 400


def test_a_batch_read_takes_up_to_1000_names(client: FlaskClient):
    names = "&".join(f"name=n{index}" for index in range(1000))
    response = client.get(f"/var?{names}", headers=JSON)
    assert response.status_code == 200
    assert len(response.get_json()["missing"]) == 1000


def test_a_listing_goes_on_after_the_name_given(client: FlaskClient):
    for name in ("a", "b", "c"):
        client.put(f"/var/{name}", data={"value": "v"})
    listed = client.get("/var?after=a", headers=JSON).get_json()["variables"]
    assert [var["name"] for var in listed] == ["b", "c"]


def test_version_1_is_the_first_version_a_read_may_name(client: FlaskClient):
    client.put("/var/a", data={"value": "first"})
    client.put("/var/a", data={"value": "second"})
    assert client.get("/var/a?version=1").data == b"first"
    assert client.get("/var/a?history&before=1", headers=JSON).get_json()["changes"] == []


@pytest.mark.parametrize("wait", ["60", "60s", "0060"])
def test_a_long_poll_may_wait_up_to_60_seconds_after_version_0(client: FlaskClient, wait: str):
    client.put("/var/a", data={"value": "v"})
    response = client.get(f"/var/a?wait={wait}&after_version=0")  # already newer: at once
    assert (response.status_code, response.data) == (200, b"v")


def test_a_wait_of_more_than_four_digits_is_refused(client: FlaskClient):
    assert client.get("/var/a?wait=00001").status_code == 400


def test_a_wait_of_0_seconds_answers_at_once(client: FlaskClient):
    started = time.monotonic()
    assert client.get("/var/never?wait=0s").status_code == 304
    assert time.monotonic() - started < 0.8


# --- Delimiters


# The listing skips a sub-prefix by starting past delimiter + 1: control characters, and the
# two code points whose successor is no character (U+D7FF, U+10FFFF), cannot split it.
@pytest.mark.parametrize(
    ("delimiter", "status"),
    [
        ("\x1f", 400),
        (" ", 200),
        ("~", 200),
        ("\x7f", 400),
        ("\x9f", 400),
        ("\xa0", 200),
        ("\ud7fe", 200),
        ("\ud7ff", 400),
        ("\U0010fffe", 200),
        ("\U0010ffff", 400),
    ],
    ids=lambda value: f"U+{ord(value):04X}" if isinstance(value, str) else str(value),
)
def test_a_delimiter_is_one_character_that_can_split_a_listing(
    client: FlaskClient, delimiter: str, status: int
):
    response = client.get("/var", query_string={"delimiter": delimiter})
    assert response.status_code == status


# --- JSON bodies


@pytest.mark.parametrize("restore", [1, 1.0, "1"])
def test_a_json_restore_names_a_version_as_a_number_or_digits(client: FlaskClient, restore):
    client.put("/var/a", data={"value": "first"})
    client.put("/var/a", data={"value": "second"})
    response = client.put("/var/a", json={"restore": restore})
    assert response.status_code == 200
    assert client.get("/var/a").data == b"first"


@pytest.mark.parametrize("restore", [True, 1.5, "01", None])
def test_a_json_restore_that_is_no_version_number_is_400(client: FlaskClient, restore):
    client.put("/var/a", data={"value": "first"})
    assert client.put("/var/a", json={"restore": restore}).status_code == 400


@pytest.mark.parametrize(("ttl", "status"), [(0, 201), (999_999_999, 201), (1_000_000_000, 400)])
def test_a_json_ttl_goes_from_0_to_999999999_seconds(client: FlaskClient, ttl: int, status: int):
    assert client.put("/var/a", json={"value": "v", "ttl": ttl}).status_code == status


def test_a_ttl_of_0_expires_at_once(client: FlaskClient):
    client.put("/var/a", json={"value": "v", "ttl": 0})
    assert client.get("/var/a").status_code == 404


# --- Bodies and their time to live


def test_a_ttl_in_the_query_applies_to_a_form_body(client: FlaskClient):
    assert client.put("/var/a?ttl=30", data={"value": "v"}).status_code == 201
    assert "expires_at" in client.get("/var/a", headers=JSON).get_json()


def test_a_ttl_in_the_body_wins_over_the_query(client: FlaskClient):
    client.put("/var/a?ttl=30", json={"value": "v", "ttl": 0})
    assert client.get("/var/a").status_code == 404  # expired at once: the body's 0


def test_an_invalid_ttl_in_the_query_is_400_even_with_one_in_the_body(client: FlaskClient):
    assert client.put("/var/a?ttl=soon", json={"value": "v", "ttl": 5}).status_code == 400
    assert client.get("/var/a").status_code == 404


def test_a_multipart_body_carries_value_and_ttl(client: FlaskClient):
    response = client.put(
        "/var/a", data={"value": "v", "ttl": "30"}, content_type="multipart/form-data"
    )
    assert response.status_code == 201
    body = client.get("/var/a", headers=JSON).get_json()
    assert (body["value"], "expires_at" in body) == ("v", True)


def test_a_multipart_body_may_restore(client: FlaskClient):
    client.put("/var/a", data={"value": "first"})
    client.put("/var/a", data={"value": "second"})
    response = client.put("/var/a", data={"restore": "1"}, content_type="multipart/form-data")
    assert response.status_code == 200
    assert client.get("/var/a").data == b"first"


@pytest.mark.parametrize("charset", ["utf-8", "UTF8", "us-ascii"])
def test_a_text_body_may_say_utf8_or_ascii(client: FlaskClient, charset: str):
    response = client.put("/var/a", data=b"v", content_type=f"text/plain; charset={charset}")
    assert response.status_code == 201


def test_if_match_star_updates_a_variable_that_exists(client: FlaskClient):
    client.put("/var/a", data={"value": "1"})
    response = client.put("/var/a", data={"value": "2"}, headers={"If-Match": "*"})
    assert response.status_code == 200
    assert client.get("/var/a").data == b"2"
