"""The OpenAPI contract (openapi.json) holds against a live gunicorn, checked by schemathesis.

Every operation in the document is fuzzed with valid and invalid requests (schemathesis' examples,
coverage and fuzzing phases), each response checked for server errors, undocumented status codes,
undocumented content types, missing or malformed headers, bodies that do not match their schema,
invalid data accepted and valid data rejected. A stateful run then follows the document's links
(PUT -> GET / conditional PUT / conditional DELETE with the ETag) so that existing variables and
If-Match are exercised too. Runs once per store.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import hypothesis
import pytest
import requests
import schemathesis
from schemathesis.config import SchemathesisConfig

from tests.servers import ROOT, Gunicorn

OPENAPI = ROOT / "openapi.json"
# Access control on, as in a deployment with an access policy; every request carries a scoped
# token that may write everything but one prefix (which the fuzzer is most unlikely to name), so
# that the policy's checks and the listings' filtering run on every request.
WRITE_TOKEN = "openapi-test-write-token"
POLICY = f"""
[[tokens]]
name = "fuzzer"
secret = "{WRITE_TOKEN}"
metrics = true
rules = {{ "" = "write", "private/" = "deny" }}
"""
AUTHORIZATION = {"Authorization": f"Bearer {WRITE_TOKEN}"}
ACCEPT = ["*/*", "application/json", "text/plain", "application/json;q=0.5, text/plain;q=0.9"]

CONFIG = SchemathesisConfig.from_dict(
    {
        # The token is ours to send (AUTHORIZATION), not one for schemathesis to make up.
        "generation": {"mode": "all", "with-security-parameters": False},
        "checks": {
            # A valid If-Match naming an old or unknown version is a 412, a valid name that is
            # not stored a 404, a transaction's failed check or a variable an export cannot
            # write a 409, and the scoped token's 403 where its policy denies (an export or a
            # subtree delete of everything, "private/" included): the contract working, not
            # valid data rejected.
            "positive_data_acceptance": {
                "expected-statuses": ["2xx", "304", "403", "404", "409", "412"]
            },
            # Invalid requests are rejected with 400, or 413/414/415 when too big or of the wrong
            # media type: all of them documented.
            "negative_data_rejection": {"expected-statuses": ["400", "404", "413", "414", "415"]},
            # "Deleted resource still available" takes any GET of a deleted variable's path for
            # the variable: ?history and ?version read what the change log keeps of it after
            # the delete, by design (README, History). GET of a deleted variable itself is a
            # 404 (tests/test_api.py).
            "use_after_free": {"enabled": False},
        },
    }
)
# The event stream never ends by itself: tests/test_watch.py checks it against the document.
schema = schemathesis.openapi.from_path(OPENAPI, config=CONFIG).exclude(path="/events")
# A valid long-poll waits its whole wait when nothing changes: a second is enough to check it.
MAX_FUZZ_WAIT = 1

fuzz_settings = hypothesis.settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)


@pytest.fixture
def live_server(gunicorn: Callable[..., Gunicorn], store_url: str, tmp_path: Path) -> Gunicorn:
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(POLICY)
    return gunicorn(
        {
            "DATABASE_URL": store_url,
            "ACCESS_POLICY_FILE": str(policy_file),
            "READ_TOKENS": "read-only",
        },
        workers=1,
        threads=4,
    )


def test_served_document_is_the_file(live_server: Gunicorn) -> None:
    response = requests.get(live_server.url("/openapi.json"), timeout=5)

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json() == json.loads(OPENAPI.read_text(encoding="utf-8"))


@pytest.mark.slow
@schema.parametrize()
@fuzz_settings
def test_every_operation_conforms_to_the_document(
    case: schemathesis.Case, live_server: Gunicorn
) -> None:
    drop_contradicting_preconditions(case)
    case.call_and_validate(base_url=live_server.base, headers=request_headers(case))


@pytest.mark.slow
def test_linked_operations_conform_to_the_document(live_server: Gunicorn) -> None:
    """Sequences that follow the document's links: write, then read, replace or delete the same
    name with the ETag the write returned (so If-Match succeeds and then goes stale)."""

    class Machine(schema.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            # Every scenario starts from an empty store, so that replaying one (to shrink it)
            # meets the same responses.
            delete_every_variable(live_server)

        def before_call(self, case: schemathesis.Case) -> None:
            drop_contradicting_preconditions(case)

        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            return {"base_url": live_server.base, "headers": request_headers(case)}

    Machine.run(
        settings=hypothesis.settings(
            max_examples=25,
            stateful_step_count=6,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
    )


def delete_every_variable(server: Gunicorn) -> None:
    listing = requests.get(server.url("/var?limit=1000"), headers=AUTHORIZATION, timeout=5)
    for variable in listing.json()["variables"]:
        # "." would be resolved away as a path segment: %2E keeps "." and ".." names reachable.
        path = "/var/" + quote(variable["name"], safe="").replace(".", "%2E")
        deleted = requests.delete(server.url(path), headers=AUTHORIZATION, timeout=5)
        assert deleted.status_code == 204, deleted.text


def drop_contradicting_preconditions(case: schemathesis.Case) -> None:
    """If-Match together with If-None-Match: * is a 400 (documented) that no schema can express;
    sending only If-Match keeps "valid data is accepted" a meaningful check. Also shortens a
    valid long-poll's wait (it stays valid) so that the run takes seconds, not hours."""
    if case.headers and case.headers.get("If-None-Match") == "*" and "If-Match" in case.headers:
        del case.headers["If-None-Match"]
    wait = case.query.get("wait") if case.query else None
    if isinstance(wait, int) and not isinstance(wait, bool) and 0 <= wait <= 60:
        case.query["wait"] = min(wait, MAX_FUZZ_WAIT)
    # DELETE /var with an empty prefix is a 400 unless all=true: two parameters that depend on
    # each other, which no schema can express. A prefix of its own keeps such a case valid.
    if case.method.upper() == "DELETE" and case.operation.path == "/var" and case.query:
        all_flag = str(case.query.get("all", "false")).lower()
        if case.query.get("prefix") == "" and all_flag in ("false", "0", "no"):
            case.query["prefix"] = "fuzz/"


def request_headers(case: schemathesis.Case) -> dict[str, str]:
    return {**AUTHORIZATION, "Accept": accept_for(case)}


def accept_for(case: schemathesis.Case) -> str:
    """An Accept header picked from the case itself: both representations get checked, and a
    failing case replays (and shrinks) with the same header."""
    key = repr((case.method, case.path_parameters, case.query, case.headers, case.body))
    return ACCEPT[zlib.crc32(key.encode("utf-8", "surrogatepass")) % len(ACCEPT)]
