"""Values the MySQL driver once rewrote: text that reads like a DELIMITER command
(storage/mysql/driver.py). Every path that carries a value: write, read, history, batch read,
transaction, and the one-round-trip write with its fallback."""

from __future__ import annotations

import pytest

# Odd and even numbers of quotes after "delimiter": with an odd number the driver's pattern
# took the text for a command outside any string.
TRICKY = [
    "x' delimiter $$ y'",
    "a delimiter ; b'",
    "a DELIMITER ; b'''",
    "it's' delimiter // z'",
    "'delimiter x'",
    "delimiter\n;\n'",
    'q" delimiter | r"',
    "back\\slash' delimiter ;; end'",
]


@pytest.mark.parametrize("value", TRICKY)
def test_a_value_that_reads_like_a_delimiter_command_is_stored_exactly(client, value):
    assert client.put("/var/tricky", data={"value": value}).status_code in (200, 201)
    assert client.get("/var/tricky").get_data(as_text=True) == value
    assert client.post("/var/tricky", data={"value": value + "2"}).get_data(as_text=True) == "OK"
    assert client.get("/var/tricky").get_data(as_text=True) == value + "2"
    history = client.get("/var/tricky?history&values=1", headers={"Accept": "application/json"})
    assert [entry["value"] for entry in history.get_json()["changes"]][:2] == [value + "2", value]


def test_tricky_values_survive_a_batch_read_and_a_transaction(client):
    ops = [{"op": "set", "name": f"t{i}", "value": value} for i, value in enumerate(TRICKY)]
    response = client.post("/txn", json={"operations": ops})
    assert response.status_code == 200, response.get_data(as_text=True)
    query = "&".join(f"name=t{i}" for i in range(len(TRICKY)))
    listing = client.get(f"/var?{query}&values=1", headers={"Accept": "application/json"})
    values = {item["name"]: item["value"] for item in listing.get_json()["variables"]}
    assert values == {f"t{i}": value for i, value in enumerate(TRICKY)}
