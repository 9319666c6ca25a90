"""HTTP behaviour through Flask's test client, once per store (SQLite and MySQL)."""

from __future__ import annotations

import json
import re
from urllib.parse import quote

import pytest
from flask.testing import FlaskClient

JSON = {"Accept": "application/json"}


def url(name: str) -> str:
    return "/var/" + quote(name, safe="/")


def post(client: FlaskClient, name: str, value: str, **kwargs):
    return client.post(url(name), data={"value": value}, **kwargs)


# --- The tutorial's contract ----------------------------------------------------------------


def test_post_answers_ok_and_get_returns_the_value(client):
    response = post(client, "a", "hello")
    assert (response.status_code, response.data) == (200, b"OK")
    response = client.get("/var/a")
    assert (response.status_code, response.data) == (200, b"hello")
    assert response.content_type == "text/plain; charset=utf-8"


def test_post_of_an_existing_name_replaces_the_value(client):
    post(client, "a", "one")
    assert post(client, "a", "two").data == b"OK"
    assert client.get("/var/a").data == b"two"


def test_curl_style_urlencoded_body_is_decoded_like_a_form(client):
    response = client.post(
        "/var/a",
        data="value=a+b%26c%3D%F0%9F%98%80",
        content_type="application/x-www-form-urlencoded",
    )
    assert response.data == b"OK"
    assert client.get("/var/a").get_data(as_text=True) == "a b&c=😀"


def test_raw_utf8_in_a_urlencoded_body_is_kept(client):
    # curl -d 'value=é' sends the bytes unencoded
    client.post("/var/a", data="value=é".encode(), content_type="application/x-www-form-urlencoded")
    assert client.get("/var/a").get_data(as_text=True) == "é"


# --- Errors -----------------------------------------------------------------------------------


def test_unknown_name_is_404_with_a_one_line_message(client):
    response = client.get("/var/nothing-here")
    assert response.status_code == 404
    assert response.get_data(as_text=True) == "no variable named 'nothing-here'\n"


def test_post_without_value_is_400_and_stores_nothing(client):
    response = client.post("/var/a", data={"other": "x"})
    assert response.status_code == 400
    assert "value" in response.get_data(as_text=True)
    assert client.get("/var/a").status_code == 404


def test_post_with_empty_body_is_400(client):
    assert client.post("/var/a").status_code == 400


def test_unsupported_method_is_405_with_allow(client):
    response = client.patch("/var/a")
    assert response.status_code == 405
    assert "GET" in response.headers["Allow"]
    assert response.get_data(as_text=True).count("\n") == 1


def test_unknown_path_is_404(client):
    assert client.get("/nope").status_code == 404


def test_errors_are_json_when_json_is_asked_for(client):
    response = client.get("/var/missing", headers=JSON)
    assert response.status_code == 404
    assert response.get_json() == {"error": "not_found", "message": "no variable named 'missing'"}


def test_invalid_utf8_in_a_form_value_is_400_and_stores_nothing(client):
    response = client.post(
        "/var/a", data=b"value=%FF%FE", content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 400
    assert client.get("/var/a").status_code == 404


def test_invalid_utf8_in_the_name_is_400(client):
    response = client.post("/var/%FF", data={"value": "x"})
    assert response.status_code == 400
    assert "UTF-8" in response.get_data(as_text=True)


def test_wrong_content_type_is_415(client):
    response = client.put("/var/a", data=b"<x/>", content_type="application/xml")
    assert response.status_code == 415
    assert client.get("/var/a").status_code == 404


def test_malformed_json_is_400(client):
    response = client.put("/var/a", data=b'{"value": ', content_type="application/json")
    assert response.status_code == 400
    assert "malformed JSON" in response.get_data(as_text=True)


def test_json_value_must_be_a_string(client):
    assert client.put("/var/a", json={"value": 3}).status_code == 400
    assert client.put("/var/a", json=["value"]).status_code == 400


def test_control_characters_in_a_name_are_400(client):
    assert post(client, "a\x00b", "x").status_code == 400
    assert post(client, "a\nb", "x").status_code == 400


def test_no_response_ever_carries_a_traceback(client):
    for response in (
        client.get("/var/%FF"),
        client.put("/var/a", data=b"{", content_type="application/json"),
        client.post("/var/" + "x" * 300, data={"value": "v"}),
    ):
        assert "Traceback" not in response.get_data(as_text=True)
        assert response.status_code < 500


# --- Names are exact strings ------------------------------------------------------------------


def test_names_differing_in_case_space_or_normal_form_are_distinct(client):
    names = ["case", "Case", "case ", "caf\u00e9", "cafe\u0301"]
    for index, name in enumerate(names):
        assert post(client, name, str(index)).data == b"OK"
    for index, name in enumerate(names):
        assert client.get(url(name)).get_data(as_text=True) == str(index)


def test_a_name_of_255_characters_works_and_256_is_400(client):
    longest = "é" * 255
    assert post(client, longest, "v").status_code == 200
    assert client.get(url(longest)).data == b"v"
    too_long = "é" * 256
    response = post(client, too_long, "v")
    assert response.status_code == 400
    assert client.get(url(too_long)).status_code == 400


def test_names_may_contain_slashes_and_url_special_characters(client):
    for name in ["app/db/host", "a b", "100%", "what?", "#tag", "a//b", "a/"]:
        assert post(client, name, name).status_code == 200, name
        assert (
            client.get(url(name).replace("?", "%3F").replace("#", "%23")).get_data(as_text=True)
            == name
        )


def test_sql_in_a_name_or_value_is_stored_literally(client):
    name = "x'; DROP TABLE vars; --"
    value = "' OR '1'='1"
    assert post(client, name, value).status_code == 200
    assert client.get(url(name)).get_data(as_text=True) == value
    assert client.get("/var/x").status_code == 404


# --- Values are stored whole ------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["", "😀🎉 emoji", "line 1\nline 2\r\n", "nul\x00inside", "   padded   ", "x" * 1000],
    ids=["empty", "emoji", "newlines", "nul", "spaces", "long"],
)
def test_values_round_trip_exactly(client, value):
    assert post(client, "v", value).status_code == 200
    assert client.get("/var/v").get_data(as_text=True) == value


def test_a_value_at_the_limit_is_stored_whole(client, app):
    limit = app.config["MAX_VALUE_BYTES"]
    value = "😀" * (limit // 4)
    assert post(client, "big", value).status_code == 200
    assert client.get("/var/big").get_data(as_text=True) == value


def test_a_value_over_the_limit_is_413_and_stores_nothing(client, app):
    limit = app.config["MAX_VALUE_BYTES"]
    response = post(client, "big", "x" * (limit + 1))
    assert response.status_code == 413
    assert str(limit) in response.get_data(as_text=True)
    assert client.get("/var/big").status_code == 404


def test_an_absurdly_large_body_is_413(client, app):
    body = b"value=" + b"x" * (4 * app.config["MAX_VALUE_BYTES"])
    response = client.post("/var/a", data=body, content_type="application/x-www-form-urlencoded")
    assert response.status_code == 413


# --- Safe output ------------------------------------------------------------------------------


def test_stored_html_is_served_as_plain_text_with_nosniff(client):
    post(client, "xss", "<script>alert(1)</script>")
    response = client.get("/var/xss")
    assert response.content_type == "text/plain; charset=utf-8"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.data == b"<script>alert(1)</script>"


def test_every_response_carries_nosniff(client):
    for response in (client.get("/var/none"), client.post("/var/a"), client.get("/healthz")):
        assert response.headers["X-Content-Type-Options"] == "nosniff"


# --- Full API: representations, writes, preconditions ------------------------------------------


def test_json_representation_has_name_value_version_and_timestamps(client):
    post(client, "a", "one")
    post(client, "a", "two")
    body = client.get("/var/a", headers=JSON).get_json()
    assert body["name"] == "a"
    assert body["value"] == "two"
    assert body["version"] == 2
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", body["created_at"])
    assert body["updated_at"] >= body["created_at"]


def test_put_creates_with_201_then_updates_with_200(client):
    response = client.put("/var/p", data="one", content_type="text/plain")
    assert (response.status_code, response.headers["ETag"]) == (201, '"1"')
    assert response.headers["Location"] == "/var/p"
    response = client.put("/var/p", json={"value": "two"})
    assert (response.status_code, response.headers["ETag"]) == (200, '"2"')
    assert client.get("/var/p").data == b"two"


def test_post_answers_ok_even_when_it_creates(client):
    response = post(client, "new", "v")
    assert (response.status_code, response.data, response.headers["ETag"]) == (200, b"OK", '"1"')


def test_delete_answers_204_then_404(client):
    post(client, "d", "v")
    assert client.delete("/var/d").status_code == 204
    assert client.get("/var/d").status_code == 404
    assert client.delete("/var/d").status_code == 404


def test_head_works_where_get_does(client):
    post(client, "h", "value")
    response = client.head("/var/h")
    assert response.status_code == 200
    assert response.headers["ETag"] == '"1"'
    assert response.data == b""
    assert client.head("/var/missing").status_code == 404


def test_get_carries_an_etag_and_if_none_match_gives_304(client):
    post(client, "e", "v")
    etag = client.get("/var/e").headers["ETag"]
    assert client.get("/var/e", headers={"If-None-Match": etag}).status_code == 304
    post(client, "e", "w")
    assert client.get("/var/e", headers={"If-None-Match": etag}).status_code == 200


def test_if_match_applies_the_write_only_at_that_version(client):
    post(client, "c", "v1")
    assert (
        client.put("/var/c", json={"value": "v2"}, headers={"If-Match": '"1"'}).status_code == 200
    )
    response = client.put("/var/c", json={"value": "v3"}, headers={"If-Match": '"1"'})
    assert response.status_code == 412
    assert client.get("/var/c").data == b"v2"
    assert post(client, "c", "v3", headers={"If-Match": '"2"'}).data == b"OK"


def test_if_match_on_a_missing_variable_is_412(client):
    assert client.put("/var/m", json={"value": "x"}, headers={"If-Match": '"1"'}).status_code == 412
    assert client.put("/var/m", json={"value": "x"}, headers={"If-Match": "*"}).status_code == 412
    assert client.get("/var/m").status_code == 404


def test_a_weak_or_foreign_etag_never_matches(client):
    post(client, "w", "x")
    assert post(client, "w", "y", headers={"If-Match": 'W/"1"'}).status_code == 412
    assert post(client, "w", "y", headers={"If-Match": '"abc"'}).status_code == 412


def test_if_none_match_star_creates_only_if_absent(client):
    headers = {"If-None-Match": "*"}
    assert client.put("/var/once", json={"value": "1"}, headers=headers).status_code == 201
    assert client.put("/var/once", json={"value": "2"}, headers=headers).status_code == 412
    assert client.get("/var/once").data == b"1"


def test_delete_with_if_match(client):
    post(client, "dm", "x")
    post(client, "dm", "y")
    assert client.delete("/var/dm", headers={"If-Match": '"1"'}).status_code == 412
    assert client.delete("/var/dm", headers={"If-Match": '"2"'}).status_code == 204
    assert client.delete("/var/dm", headers={"If-Match": '"2"'}).status_code == 412


def test_several_etags_in_if_match_are_400(client):
    post(client, "x", "1")
    assert post(client, "x", "2", headers={"If-Match": '"1", "2"'}).status_code == 400


# --- Listing ----------------------------------------------------------------------------------


def test_listing_is_json_in_name_order_without_values_by_default(client):
    for name in ["b", "a", "c/1"]:
        post(client, name, name.upper())
    body = client.get("/var").get_json()
    assert [v["name"] for v in body["variables"]] == ["a", "b", "c/1"]
    assert all("value" not in v for v in body["variables"])
    assert body["next"] is None
    assert client.get("/var/").get_json() == body


def test_listing_by_prefix_with_values(client):
    for name in ["app/db/host", "app/db/port", "app/web", "apple", "b"]:
        post(client, name, name)
    body = client.get("/var?prefix=app/db/&values=true").get_json()
    assert [(v["name"], v["value"]) for v in body["variables"]] == [
        ("app/db/host", "app/db/host"),
        ("app/db/port", "app/db/port"),
    ]


def test_listing_pages_with_after_and_a_link_header(client):
    names = [f"k{i:02d}" for i in range(7)]
    for name in names:
        post(client, name, "v")
    seen: list[str] = []
    next_url: str | None = "/var?limit=3"
    pages = 0
    while next_url:
        response = client.get(next_url)
        body = response.get_json()
        seen += [v["name"] for v in body["variables"]]
        next_url = body["next"]
        if next_url:
            assert response.headers["Link"] == f'<{next_url}>; rel="next"'
        pages += 1
    assert seen == names
    assert pages == 3


def test_listing_prefix_with_non_ascii_and_percent(client):
    for name in ["é/1", "é/2", "ê", "50%/a"]:
        post(client, name, "v")
    assert [
        v["name"] for v in client.get("/var?prefix=" + quote("é/")).get_json()["variables"]
    ] == [
        "é/1",
        "é/2",
    ]
    assert [v["name"] for v in client.get("/var?prefix=50%25").get_json()["variables"]] == ["50%/a"]


@pytest.mark.parametrize(
    "query", ["limit=0", "limit=1001", "limit=abc", "limit=-1", "values=maybe"]
)
def test_invalid_listing_parameters_are_400(client, query):
    response = client.get("/var?" + query)
    assert response.status_code == 400


def test_batch_read_returns_found_and_missing(client):
    post(client, "a", "1")
    post(client, "b/c", "2")
    body = client.get("/var?name=a&name=b/c&name=zz").get_json()
    assert [(v["name"], v["value"]) for v in body["variables"]] == [("a", "1"), ("b/c", "2")]
    assert body["missing"] == ["zz"]


# --- Health -----------------------------------------------------------------------------------


def test_healthz_and_readyz(client):
    assert client.get("/healthz").data == b"ok\n"
    response = client.get("/readyz")
    assert (response.status_code, response.data) == (200, b"ready\n")


def test_openapi_document_is_served(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert json.loads(response.data)["openapi"].startswith("3.1")


def test_init_db_command_prepares_the_schema(runner):
    result = runner.invoke(args=["init-db"])
    assert result.exit_code == 0, result.output
    assert "schema ready" in result.output


def test_the_app_checks_each_function_for_async_once_and_keeps_a_bounded_record(app):
    """``VarKeeper.ensure_sync`` (app.py): Flask asks it of every hook on every request."""

    def sync_view() -> str:
        return "x"

    assert app.ensure_sync(sync_view) is sync_view
    assert sync_view in app._sync  # answered from the record from now on
    assert app.ensure_sync(sync_view) is sync_view
    for number in range(2 * app._MAX_FUNCTIONS):
        app.ensure_sync(lambda number=number: number)
    assert len(app._sync) <= app._MAX_FUNCTIONS
