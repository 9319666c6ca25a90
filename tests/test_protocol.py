"""HTTP details a new user met following the README, once per store: malformed escapes in
the URL, what a 204 carries, a ttl's message, weak ETags, what /readyz tells whom."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from flask.testing import FlaskClient

from app import create_app


def post(client: FlaskClient, name: str, value: str):
    response = client.post("/var/" + quote(name), data={"value": value})
    assert response.status_code == 200


@pytest.mark.parametrize("path", ["/var/pct%zz", "/var/100%", "/var/a%2", "/var/%G0", "/var/a%"])
def test_a_malformed_percent_escape_in_the_path_is_400_and_stores_nothing(client, path):
    for response in (client.put(path, data={"value": "pz"}), client.get(path)):
        assert response.status_code == 400
        assert "%XX" in response.get_data(as_text=True)
    assert client.get("/var").get_json()["variables"] == []


def test_a_malformed_percent_escape_in_the_query_is_400(client):
    post(client, "100%", "v")
    assert client.get("/var?name=100%").status_code == 400
    assert client.get("/var?name=100%25").get_json()["variables"][0]["name"] == "100%"


def test_an_escaped_percent_sign_is_a_name_like_any_other(client):
    assert client.put("/var/100%25", data={"value": "v"}).status_code == 201
    assert client.get("/var/100%25").data == b"v"


def test_delete_answers_204_without_a_content_type(client):
    post(client, "d", "v")
    response = client.delete("/var/d")
    assert response.status_code == 204
    assert "Content-Type" not in response.headers
    assert response.data == b""


@pytest.mark.parametrize("ttl", ["1.1234567", "-1", "1e3", "1000000000"])
def test_an_invalid_ttl_is_400_and_the_message_gives_every_rule(client, ttl):
    response = client.put("/var/t", data={"value": "x", "ttl": ttl})
    assert response.status_code == 400
    message = response.get_data(as_text=True)
    assert "6 decimals" in message
    assert "999999999" in message


def test_a_weak_etag_matches_on_get_but_never_on_writes(client):
    post(client, "w", "x")
    assert client.get("/var/w", headers={"If-None-Match": 'W/"1"'}).status_code == 304
    weak = {"If-Match": 'W/"1"'}
    assert client.put("/var/w", data={"value": "y"}, headers=weak).status_code == 412
    assert client.delete("/var/w", headers=weak).status_code == 412


def test_readyz_keeps_the_database_error_in_the_server_log(caplog):
    app = create_app(
        {
            "TESTING": True,
            "DATABASE_URL": "mysql://someone:pw@127.0.0.1:1/vars",
            "DATABASE_CONNECT_TIMEOUT": 1,
        }
    )
    with caplog.at_level("WARNING", logger="var_keeper"):
        response = app.test_client().get("/readyz")
    assert response.status_code == 503
    text = response.get_data(as_text=True)
    assert text == "not ready: the database is unavailable (the server log says why)\n"
    # mysql-connector's "Can't connect" error, for the operator only.
    assert "/readyz: not ready: 2003" in caplog.text
