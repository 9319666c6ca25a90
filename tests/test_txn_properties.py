"""Property: a random batch of operations does what a model says, all or nothing, on both stores.

The model is a dict of name -> (value, version) plus each name's last version (versions keep
counting across a delete). A batch applies in order against a copy of it; the first failed
check makes the whole batch a 409 with that index and leaves the model (and the store) as it
was; otherwise the results are the model's, and so is the store afterwards.
"""

from __future__ import annotations

import itertools
from typing import Any

from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

NAMES = ["a", "b", "c/d"]
COUNTER = itertools.count()

set_ops = st.builds(
    lambda name, value: {"op": "set", "name": name, "value": value},
    st.sampled_from(NAMES),
    st.text(max_size=5),
)
delete_ops = st.builds(lambda name: {"op": "delete", "name": name}, st.sampled_from(NAMES))
get_ops = st.builds(lambda name: {"op": "get", "name": name}, st.sampled_from(NAMES))
version_checks = st.builds(
    lambda name, version: {"op": "check", "name": name, "version": version},
    st.sampled_from(NAMES),
    st.integers(1, 4),
)
exists_checks = st.builds(
    lambda name, exists: {"op": "check", "name": name, "exists": exists},
    st.sampled_from(NAMES),
    st.booleans(),
)
operations = st.one_of(set_ops, delete_ops, get_ops, version_checks, exists_checks)
batches = st.lists(st.lists(operations, min_size=1, max_size=8), min_size=1, max_size=5)


class Model:
    def __init__(self) -> None:
        self.current: dict[str, tuple[str, int]] = {}
        self.last: dict[str, int] = {}

    def apply(self, batch: list[dict[str, Any]]) -> tuple[int | None, list[dict[str, Any]]]:
        """(index of the failed check, []) or (None, the results); the model changes only
        when the batch applies."""
        current, last = dict(self.current), dict(self.last)
        results = []
        for index, op in enumerate(batch):
            name = op["name"]
            found = current.get(name)
            version = found[1] if found else None
            result: dict[str, Any] = {"op": op["op"], "name": name, "version": version}
            if op["op"] == "check":
                ok = (
                    version == op["version"]
                    if "version" in op
                    else (found is not None) == op["exists"]
                )
                if not ok:
                    return index, []
            elif op["op"] == "get" and found:
                result["value"] = found[0]
            elif op["op"] == "set":
                last[name] = last.get(name, 0) + 1
                current[name] = (op["value"], last[name])
                result.update(version=last[name], created=found is None)
            elif op["op"] == "delete" and found:
                last[name] += 1
                del current[name]
                result["version"] = last[name]
            results.append(result)
        self.current, self.last = current, last
        return None, results


def stored(client: FlaskClient, prefix: str) -> dict[str, tuple[str, int]]:
    listing = client.get(f"/var?prefix={prefix}&values=true&limit=1000").get_json()["variables"]
    return {v["name"][len(prefix) :]: (v["value"], v["version"]) for v in listing}


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batches=batches)
def test_random_batches_do_what_the_model_says_all_or_nothing(client, batches):
    # Fresh names for each example: the store's versions go on across examples.
    prefix = f"p{next(COUNTER)}/"
    model = Model()
    for batch in batches:
        sent = [{**op, "name": prefix + op["name"]} for op in batch]
        response = client.post(
            "/txn", json={"operations": sent}, headers={"Accept": "application/json"}
        )
        failed, results = model.apply(batch)
        if failed is not None:
            assert response.status_code == 409, response.get_json()
            assert response.get_json()["index"] == failed
        else:
            assert response.status_code == 200, response.get_json()
            got = response.get_json()["results"]
            assert [{**r, "name": r["name"][len(prefix) :]} for r in got] == results
        assert stored(client, prefix) == model.current
