"""Folders (``GET /var?prefix=&delimiter=``), the page's folder browsing and breadcrumb, and the
subtree delete (``DELETE /var?prefix=``), once per store."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from flask.testing import FlaskClient

import inputs
from tests.test_watch import read_events

JSON = {"Accept": "application/json"}
NAMES = [
    "app/a",
    "app/b/1",
    "app/b/2",
    "app/b/3",
    "app/c",
    "app/d/x/deep",
    "app/e",
    "app/f/",
    "app0",
    "apple",
    "other/z",
]


@pytest.fixture
def tree(client: FlaskClient) -> FlaskClient:
    response = client.post(
        "/txn", json={"operations": [{"op": "set", "name": n, "value": n} for n in NAMES]}
    )
    assert response.status_code == 200
    return client


def folder(client: FlaskClient, query: str) -> dict:
    response = client.get("/var?" + query)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def all_pages(client: FlaskClient, query: str) -> tuple[list[str], list[str], int]:
    """Every variable name and sub-prefix of a folder, following ``next``; and the pages."""
    names: list[str] = []
    prefixes: list[str] = []
    url, pages = "/var?" + query, 0
    while url:
        body = client.get(url).get_json()
        names += [v["name"] for v in body["variables"]]
        prefixes += body["prefixes"]
        url, pages = body["next"], pages + 1
    return names, prefixes, pages


# --- Listing one level ------------------------------------------------------------------------


def test_a_folder_lists_its_variables_and_each_sub_prefix_once(tree):
    body = folder(tree, "prefix=app/&delimiter=/")
    assert [v["name"] for v in body["variables"]] == ["app/a", "app/c", "app/e"]
    assert body["prefixes"] == ["app/b/", "app/d/", "app/f/"]
    assert body["next"] is None
    assert "value" not in body["variables"][0]


def test_the_top_level_is_the_folder_of_the_empty_prefix(tree):
    body = folder(tree, "delimiter=/")
    assert [v["name"] for v in body["variables"]] == ["app0", "apple"]
    assert body["prefixes"] == ["app/", "other/"]


def test_a_prefix_inside_a_level_filters_it(tree):
    body = folder(tree, "prefix=app/b&delimiter=/")
    assert (body["variables"], body["prefixes"]) == ([], ["app/b/"])
    body = folder(tree, "prefix=app&delimiter=/")
    assert [v["name"] for v in body["variables"]] == ["app0", "apple"]
    assert body["prefixes"] == ["app/"]


def test_values_come_with_values_true(tree):
    body = folder(tree, "prefix=app/&delimiter=/&values=true")
    assert [v["value"] for v in body["variables"]] == ["app/a", "app/c", "app/e"]


def test_another_delimiter(client):
    for name in ("cfg.db.host", "cfg.db.port", "cfg.name", "cfg/x"):
        client.put("/var/" + name, data={"value": "v"})
    body = folder(client, "prefix=cfg.&delimiter=.")
    assert [v["name"] for v in body["variables"]] == ["cfg.name"]
    assert body["prefixes"] == ["cfg.db."]


@pytest.mark.parametrize("limit", [1, 2, 3, 4])
def test_pages_cover_variables_and_sub_prefixes_together_exactly_once(tree, limit):
    names, prefixes, pages = all_pages(tree, f"prefix=app/&delimiter=/&limit={limit}")
    assert names == ["app/a", "app/c", "app/e"]
    assert prefixes == ["app/b/", "app/d/", "app/f/"]
    assert pages == -(-6 // limit)


def test_the_next_page_continues_after_a_sub_prefix(tree):
    body = folder(tree, "prefix=app/&delimiter=/&limit=2")
    assert [v["name"] for v in body["variables"]] == ["app/a"]
    assert body["prefixes"] == ["app/b/"]
    query = parse_qs(urlsplit(body["next"]).query)
    assert query == {"prefix": ["app/"], "delimiter": ["/"], "limit": ["2"], "after": ["app/b/"]}
    assert tree.get("/var?prefix=app/&delimiter=/&limit=2").headers["Link"] == (
        f'<{body["next"]}>; rel="next"'
    )
    second = tree.get(body["next"]).get_json()
    assert [v["name"] for v in second["variables"]] == ["app/c"]
    assert second["prefixes"] == ["app/d/"]


def test_a_big_sub_folder_is_still_one_entry(client):
    operations = [{"op": "set", "name": f"big/many/{i:04d}", "value": "v"} for i in range(300)]
    operations += [{"op": "set", "name": "big/z", "value": "v"}]
    assert client.post("/txn", json={"operations": operations}).status_code == 200
    names, prefixes, pages = all_pages(client, "prefix=big/&delimiter=/&limit=1")
    assert (names, prefixes, pages) == (["big/z"], ["big/many/"], 2)


@pytest.mark.parametrize("delimiter", ["", "//", "ab", "%0A", "%00", "%C2%85"])
def test_a_bad_delimiter_is_400_saying_what_a_delimiter_is(client, delimiter):
    response = client.get(f"/var?prefix=a/&delimiter={delimiter}", headers=JSON)
    assert response.status_code == 400
    body = response.get_json()
    assert body["error"] == "invalid_delimiter"
    assert "exactly one character" in body["message"]
    assert "control character" in body["message"]


def test_a_listing_without_delimiter_is_unchanged(tree):
    body = folder(tree, "prefix=app/")
    assert "prefixes" not in body
    assert len(body["variables"]) == 8


# --- The page browses by folder ---------------------------------------------------------------


def page_rows(page: str) -> list[str]:
    return re.findall(r'<td class="name"><a [^>]*>([^<]*)</a>', page)


def test_the_page_lists_one_folder_level_with_sub_folders(tree):
    page = tree.get("/?prefix=app/").get_data(as_text=True)
    assert page_rows(page) == ["app/a", "app/b/", "app/c", "app/d/", "app/e", "app/f/"]
    assert '<a href="/?prefix=app/b/">app/b/</a>' in page
    assert 'name="prefix" value="app/"' in page


def test_the_breadcrumb_links_every_folder_above(tree):
    page = tree.get("/?prefix=" + quote("app/d/x/")).get_data(as_text=True)
    crumbs = re.search(r'<nav class="breadcrumb"[^>]*>(.*?)</nav>', page, re.S).group(1)
    links = re.findall(r'<a href="([^"]*)"[^>]*>([^<]*)</a>', crumbs)
    assert links == [
        ("/", "All"),
        ("/?prefix=app/", "app"),
        ("/?prefix=app/d/", "d"),
        ("/?prefix=app/d/x/", "x"),
    ]
    assert 'aria-current="page">x</a>' in crumbs
    assert page_rows(page) == ["app/d/x/deep"]


def test_a_search_inside_a_folder_keeps_its_breadcrumb(tree):
    page = tree.get("/?prefix=app/b/2").get_data(as_text=True)
    assert page_rows(page) == ["app/b/2"]
    crumbs = re.search(r'<nav class="breadcrumb"[^>]*>(.*?)</nav>', page, re.S).group(1)
    assert [label for _, label in re.findall(r'<a href="([^"]*)"[^>]*>([^<]*)</a>', crumbs)] == [
        "All",
        "app",
        "b",
    ]


def test_the_top_page_shows_top_level_folders(tree):
    assert page_rows(tree.get("/").get_data(as_text=True)) == ["app/", "app0", "apple", "other/"]


def test_page_pagination_runs_over_folders_and_variables(tree):
    seen: list[str] = []
    url = "/?prefix=app/&limit=4"
    while url:
        page = tree.get(url).get_data(as_text=True)
        seen += page_rows(page)
        found = re.search(r'<a href="([^"]*)" rel="next">', page)
        url = found.group(1).replace("&amp;", "&") if found else None
    assert seen == ["app/a", "app/b/", "app/c", "app/d/", "app/e", "app/f/"]


# --- Subtree delete ---------------------------------------------------------------------------


def test_a_subtree_delete_answers_the_count_and_leaves_the_rest(tree):
    response = tree.delete("/var?prefix=app/b/")
    assert response.status_code == 200
    assert response.get_json() == {"prefix": "app/b/", "deleted": 3}
    left = [v["name"] for v in tree.get("/var?limit=1000").get_json()["variables"]]
    assert left == [n for n in NAMES if not n.startswith("app/b/")]


def test_a_prefix_is_a_string_prefix_not_a_folder(tree):
    assert tree.delete("/var?prefix=app").get_json()["deleted"] == 10
    assert [v["name"] for v in tree.get("/var").get_json()["variables"]] == ["other/z"]


def test_nothing_under_the_prefix_is_200_with_zero(tree):
    assert tree.delete("/var?prefix=nothing/").get_json() == {"prefix": "nothing/", "deleted": 0}


def test_each_delete_is_in_the_history_and_the_event_stream(tree):
    seq = tree.get("/var/other/z?history").get_json()["changes"][0]["seq"]
    tree.delete("/var?prefix=app/b/")
    for name in ("app/b/1", "app/b/2", "app/b/3"):
        changes = tree.get(f"/var/{name}?history").get_json()["changes"]
        assert [(c["op"], c["version"]) for c in changes] == [("delete", 2), ("set", 1)]
    response = tree.get("/events?prefix=app/", headers={"Last-Event-ID": str(seq)}, buffered=False)
    lines = (line.decode() for chunk in response.response for line in chunk.splitlines())
    events = read_events(lines, 3)
    response.close()
    assert sorted(e["data"]["name"] for e in events) == ["app/b/1", "app/b/2", "app/b/3"]
    assert {e["data"]["op"] for e in events} == {"delete"}


@pytest.mark.parametrize("query", ["", "?prefix=", "?prefix=&all=false", "?all=true"])
def test_an_empty_or_missing_prefix_is_refused(tree, query):
    response = tree.delete("/var" + query, headers=JSON)
    assert response.status_code == 400
    assert response.get_json()["error"] == "prefix_required"
    assert len(tree.get("/var").get_json()["variables"]) == len(NAMES)


def test_an_empty_prefix_with_all_true_deletes_everything(tree):
    assert tree.delete("/var?prefix=&all=true").get_json()["deleted"] == len(NAMES)
    assert tree.get("/var").get_json()["variables"] == []


def test_more_than_the_bound_is_409_with_the_count_and_nothing_is_deleted(tree, monkeypatch):
    monkeypatch.setattr(inputs, "MAX_SUBTREE_VARIABLES", 2)
    response = tree.delete("/var?prefix=app/b/", headers=JSON)
    assert response.status_code == 409
    body = response.get_json()
    assert (body["error"], body["count"], body["limit"]) == ("too_many_variables", 3, 2)
    assert "narrower" in body["message"]
    assert len(tree.get("/var").get_json()["variables"]) == len(NAMES)
    assert tree.delete("/var?prefix=app/b/1").get_json()["deleted"] == 1


@pytest.mark.parametrize("query", ["prefix=a&limit=0", "prefix=a&all=maybe", "prefix=a&name=%00"])
def test_invalid_parameters_of_a_subtree_delete_are_400(tree, query):
    assert tree.delete("/var?" + query).status_code == 400
