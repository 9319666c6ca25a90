"""Environment exports: ``GET /var?prefix=&format=env`` read back the way Docker's --env-file
parser reads it, and ``format=shell`` sourced by a real ``sh``, byte for byte; once per store.
The name mapping's properties are checked on its own (exports.py)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from hypothesis import given, settings
from hypothesis import strategies as st

import exports
import inputs
from storage.model import Variable

JSON = {"Accept": "application/json"}
PREFIX = "app/prod/"
# Values that need care somewhere: quotes, $, backslashes, backticks, spaces at both ends, #, =,
# non-ASCII and astral characters, and an empty one.
AWKWARD = {
    "db/host": "db1.internal",
    "log_level": "debug",
    "greeting": "  hello, wörld = é 😀 'q' \"dq\" $HOME ${X} \\ \\n `id` #no comment  ",
    "empty": "",
    "v2/url": "postgres://u:p@h/db?x=1&y=2",
    "quotes": "'''\"\"'",
    "tab": "a\tb",
}
# And for the shell only: line breaks, trailing newlines, a lone quote, CR, a here-doc marker.
SHELL_ONLY = {
    "multi": "line 1\nline 2\n\n",
    "cr": "a\r\nb\r",
    "lone": "'",
    "heredoc": "EOF\n$(rm -rf /)\n'; echo pwned; '",
}


def store_all(client: FlaskClient, values: dict[str, str]) -> None:
    operations = [{"op": "set", "name": n, "value": v} for n, v in values.items()]
    assert client.post("/txn", json={"operations": operations}).status_code == 200


def docker_env_file(data: bytes) -> dict[str, str]:
    """What ``docker run --env-file`` makes of ``data``: docker/cli's ParseKeyValueFile (Go's
    bufio.Scanner lines: split at "\\n", one trailing "\\r" dropped, at most 64 KiB a line;
    leading whitespace trimmed; empty and "#" lines skipped; KEY=value taken as it is)."""
    env: dict[str, str] = {}
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    for number, raw in enumerate(lines, 1):
        assert len(raw) + 1 <= 64 * 1024, "bufio.Scanner: token too long"
        line = raw.removesuffix(b"\r")
        if number == 1:
            line = line.removeprefix(b"\xef\xbb\xbf")
        text = line.decode("utf-8").lstrip()
        if not text or text.startswith("#"):
            continue
        key, has_value, value = text.partition("=")
        assert key, f"no variable name on line {text!r}"
        assert not re.search(r"[ \t]", key), f"variable {key!r} contains whitespaces"
        assert has_value, "a line without = takes the host's value: we never write one"
        env[key] = value
    return env


def source_in(shell: str, script: Path, environment_name: str, how: str = ".") -> bytes:
    """The bytes of ``$environment_name`` after ``script`` is sourced (or eval'ed) in ``shell``."""
    load = '. "$1"' if how == "." else 'eval "$(cat "$1")"'
    code = f'{load}; printf %s "${{{environment_name}}}"'
    done = subprocess.run(
        [shell, "-c", code, "sh", str(script)], capture_output=True, check=True, timeout=10
    )
    assert done.stderr == b""
    return done.stdout


SHELLS = [shell for shell in ("sh", "bash", "dash") if shutil.which(shell)]


# --- env ----------------------------------------------------------------------------------------


def test_env_export_reads_back_through_dockers_parser_exactly(client):
    store_all(client, {PREFIX + n: v for n, v in AWKWARD.items()})
    store_all(client, {"app/prodx": "not under the prefix", "app/dev/x": "nor this"})
    response = client.get("/var?prefix=app/prod/&format=env")
    assert response.status_code == 200
    assert response.content_type == "text/plain; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-store"
    env = docker_env_file(response.data)
    assert set(env) == {"DB__HOST", "LOG_LEVEL", "GREETING", "EMPTY", "V2__URL", "QUOTES", "TAB"}
    assert {exports.name_for(k, PREFIX): v for k, v in env.items()} == {
        PREFIX + n: v for n, v in AWKWARD.items()
    }


def test_env_lines_come_in_name_order(client):
    store_all(client, {"p/b": "2", "p/a": "1", "p/c/d": "3"})
    assert client.get("/var?prefix=p/&format=env").data == b"A=1\nB=2\nC__D=3\n"


def test_nothing_under_the_prefix_is_an_empty_file(client):
    response = client.get("/var?prefix=none/&format=env")
    assert (response.status_code, response.data) == (200, b"")


def test_env_export_refuses_and_lists_every_offender(client):
    offenders = {
        "Upper": "name",
        "has-dash": "name",
        "a__b": "name",
        "_lead": "name",
        "1digit": "name",
        "sub/": "name",
        "a//b": "name",
        "café": "name",
        "multi": "line 1\nline 2",
        "cr": "carriage\r",
        "nul": "a\0b",
        "long": "x" * (64 * 1024),
    }
    store_all(client, {PREFIX + n: v for n, v in offenders.items()})
    store_all(client, {PREFIX + "fine": "ok", PREFIX[:-1]: "the prefix itself, nothing after"})
    response = client.get("/var?prefix=app/prod/&format=env", headers=JSON)
    assert response.status_code == 409
    body = response.get_json()
    assert body["error"] == "not_exportable"
    listed = {o["name"] for o in body["offenders"]}
    assert listed == {PREFIX + n for n in offenders}
    assert all(o["reasons"] for o in body["offenders"])
    for name in listed:
        assert repr(name) in body["message"]
    text = client.get("/var?prefix=app/prod/&format=env").get_data(as_text=True)
    assert text.count("\n") == 1
    assert all(repr(name) in text for name in listed)


def test_a_name_with_both_problems_gives_both_reasons(client):
    store_all(client, {"p/Bad": "two\nlines"})
    offender = client.get("/var?prefix=p/&format=env", headers=JSON).get_json()["offenders"][0]
    assert len(offender["reasons"]) == 2


def test_the_prefix_itself_has_no_environment_name(client):
    store_all(client, {"p/": "v"})
    response = client.get("/var?prefix=p/&format=env", headers=JSON)
    assert response.status_code == 409
    assert "nothing follows the prefix" in response.get_json()["offenders"][0]["reasons"][0]


def test_more_variables_than_the_bound_is_409(client, monkeypatch):
    monkeypatch.setattr(inputs, "MAX_SUBTREE_VARIABLES", 2)
    store_all(client, {"p/a": "1", "p/b": "2", "p/c": "3"})
    response = client.get("/var?prefix=p/&format=shell", headers=JSON)
    assert response.status_code == 409
    assert (response.get_json()["error"], response.get_json()["limit"]) == ("too_many_variables", 2)


@pytest.mark.parametrize("query", ["format=xml", "format=", "format=ENV"])
def test_an_unknown_format_is_400(client, query):
    response = client.get("/var?" + query)
    assert response.status_code == 400
    assert "env or shell" in response.get_data(as_text=True)


# --- shell --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shell", SHELLS)
def test_shell_export_sourced_by_a_real_shell_gives_every_byte_back(client, tmp_path, shell):
    values = {**AWKWARD, **SHELL_ONLY}
    store_all(client, {PREFIX + n: v for n, v in values.items()})
    response = client.get("/var?prefix=app/prod/&format=shell")
    assert response.status_code == 200
    script = tmp_path / "exports.sh"
    script.write_bytes(response.data)
    for name, value in values.items():
        environment_name = exports.env_name(PREFIX + name, PREFIX)
        assert source_in(shell, script, environment_name) == value.encode("utf-8"), name
        assert source_in(shell, script, environment_name, how="eval") == value.encode("utf-8")


def test_shell_exports_reach_child_processes(client, tmp_path):
    store_all(client, {"p/x": "it's exported"})
    script = tmp_path / "exports.sh"
    script.write_bytes(client.get("/var?prefix=p/&format=shell").data)
    done = subprocess.run(
        ["sh", "-c", '. "$1"; env', "sh", str(script)], capture_output=True, check=True
    )
    assert b"X=it's exported\n" in done.stdout


def test_shell_export_refuses_nul_and_bad_names_but_not_line_breaks(client):
    store_all(client, {"p/nul": "a\0b", "p/Bad": "x", "p/multi": "a\nb\r\n"})
    response = client.get("/var?prefix=p/&format=shell", headers=JSON)
    assert response.status_code == 409
    assert [o["name"] for o in response.get_json()["offenders"]] == ["p/Bad", "p/nul"]


# --- The mapping, and quoting, on their own -----------------------------------------------------

segments = st.from_regex(r"[a-z0-9]+(_[a-z0-9]+)*", fullmatch=True)
exportable = (
    st.lists(segments, min_size=1, max_size=4)
    .map("/".join)
    .filter(lambda rest: not rest[0].isdigit())
)


@given(prefix=st.text(max_size=10), rest=exportable)
def test_an_exportable_name_maps_to_a_valid_environment_name_and_back(prefix, rest):
    environment_name = exports.env_name(prefix + rest, prefix)
    assert environment_name is not None
    assert re.fullmatch(r"[A-Z_][A-Z0-9_]*", environment_name)
    assert exports.name_for(environment_name, prefix) == prefix + rest


@given(rest=st.text(st.characters(codec="utf-8"), max_size=20))
def test_two_names_never_share_an_environment_name(rest):
    environment_name = exports.env_name("p/" + rest, "p/")
    if environment_name is not None:
        assert exports.name_for(environment_name, "p/") == "p/" + rest


@settings(max_examples=60, deadline=None)
@given(value=st.text(st.characters(codec="utf-8", exclude_characters="\0")))
def test_any_value_without_nul_survives_the_shell(tmp_path_factory, value):
    var = Variable("p/v", value, 1, None, None)  # type: ignore[arg-type]
    script = tmp_path_factory.mktemp("sh") / "exports.sh"
    script.write_bytes(exports.render([var], "p/", "shell").encode("utf-8"))
    assert source_in("sh", script, "V") == value.encode("utf-8")
