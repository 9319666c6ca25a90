"""A policy that cannot be used, word for word: the message an operator reads when the access
policy file, READ_TOKENS or WRITE_TOKENS is refused, and what ``python policy.py FILE`` says.

tests/test_policy.py checks that each bad policy is refused; here each message is pinned whole,
since it is all the operator gets to find the mistake with.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import policy

TOKEN_A = '[[tokens]]\nname = "a"\n'
READ_ALL = 'rules = { "" = "read" }\n'


def json_token(**members: object) -> str:
    return json.dumps({"tokens": [{"name": "a", **members}]})


BAD_POLICIES = [
    pytest.param(
        '{"tokens": [], "extra": 1}',
        "json",
        'the policy must have one member, "tokens": a list of tokens',
        id="extra-member",
    ),
    pytest.param(
        "[]",
        "json",
        'the policy must have one member, "tokens": a list of tokens',
        id="not-an-object",
    ),
    pytest.param('{"tokens": {}}', "json", '"tokens" must be a list of tokens', id="tokens-table"),
    pytest.param('{"tokens": [1]}', "json", "token 1 must be a table/object", id="token-number"),
    pytest.param(
        '{"tokens": [{"name": "a b"}]}',
        "json",
        "token 1: name must be 1 to 16 of A-Z a-z 0-9 . _ -",
        id="name-with-space",
    ),
    pytest.param(
        '{"tokens": [{"secret": "s"}]}',
        "json",
        "token 1: name must be 1 to 16 of A-Z a-z 0-9 . _ -",
        id="name-missing",
    ),
    pytest.param(
        TOKEN_A + 'secret = "s"\nzz = 1\nrule = 2\n' + READ_ALL,
        "toml",
        "token 'a': unknown member 'rule'",
        id="unknown-members",
    ),
    pytest.param(
        TOKEN_A + 'secret = "s"\nsha256 = "' + "0" * 64 + '"\n' + READ_ALL,
        "toml",
        "token 'a': give exactly one of secret or sha256",
        id="secret-and-sha256",
    ),
    pytest.param(
        TOKEN_A + READ_ALL,
        "toml",
        "token 'a': give exactly one of secret or sha256",
        id="no-secret",
    ),
    pytest.param(
        TOKEN_A + 'secret = ""\n' + READ_ALL,
        "toml",
        "token 'a': the secret is empty",
        id="secret-empty",
    ),
    pytest.param(
        json_token(secret=5, rules={"": "read"}),
        "json",
        "token 'a': the secret is empty",
        id="secret-a-number",
    ),
    pytest.param(
        TOKEN_A + 'secret = " s"\n' + READ_ALL,
        "toml",
        "token 'a': the secret has spaces or control characters",
        id="secret-leading-space",
    ),
    pytest.param(
        json_token(secret="a\x01", rules={"": "read"}),
        "json",
        "token 'a': the secret has spaces or control characters",
        id="secret-control-character",
    ),
    pytest.param(
        json_token(secret="a\x7f", rules={"": "read"}),
        "json",
        "token 'a': the secret has spaces or control characters",
        id="secret-delete-character",
    ),
    pytest.param(
        TOKEN_A + 'sha256 = "abc"\n' + READ_ALL,
        "toml",
        "token 'a': sha256 must be 64 hex digits (sha256sum of the token)",
        id="sha256-short",
    ),
    pytest.param(
        json_token(sha256=5, rules={"": "read"}),
        "json",
        "token 'a': sha256 must be 64 hex digits (sha256sum of the token)",
        id="sha256-a-number",
    ),
    pytest.param(
        TOKEN_A + 'secret = "s"\nmetrics = "yes"\n' + READ_ALL,
        "toml",
        "token 'a': metrics must be true or false",
        id="metrics-a-string",
    ),
    pytest.param(
        TOKEN_A + 'secret = "s"\nrules = {}\n',
        "toml",
        'token \'a\': rules must be a table of prefix = "read"|"write"|"deny"',
        id="rules-empty",
    ),
    pytest.param(
        TOKEN_A + 'secret = "s"\n',
        "toml",
        'token \'a\': rules must be a table of prefix = "read"|"write"|"deny"',
        id="rules-missing",
    ),
    pytest.param(
        TOKEN_A + 'secret = "s"\nrules = { "x" = "admin" }\n',
        "toml",
        "token 'a': unknown rule \"admin\" for 'x' (read, write or deny)",
        id="rule-unknown-level",
    ),
    pytest.param(
        TOKEN_A + 'secret = "s"\nrules = { "x" = 1 }\n',
        "toml",
        "token 'a': unknown rule 1 for 'x' (read, write or deny)",
        id="rule-level-a-number",
    ),
    pytest.param(
        json_token(secret="s", rules={"x\x01": "read"}),
        "json",
        "token 'a': the prefix 'x\\x01' can never start a name",
        id="prefix-control-character",
    ),
    pytest.param(
        json_token(secret="s", rules={"x\x85": "read"}),
        "json",
        "token 'a': the prefix 'x\\x85' can never start a name",
        id="prefix-c1-control-character",
    ),
    pytest.param(
        json_token(secret="s", rules={"x\x7f": "read"}),
        "json",
        "token 'a': the prefix 'x\\x7f' can never start a name",
        id="prefix-delete-character",
    ),
    pytest.param(
        json_token(secret="s", rules={"p" * 256: "read"}),
        "json",
        f"token 'a': the prefix {'p' * 256!r} can never start a name",
        id="prefix-too-long",
    ),
    pytest.param(
        '{"tokens": [{"name": "a", "secret": "s", "rules": {"x": "read", "x": "write"}}]}',
        "json",
        "the member 'x' is given twice in one object",
        id="member-twice",
    ),
    pytest.param(
        TOKEN_A + 'secret = "s"\n' + READ_ALL + TOKEN_A + 'secret = "t"\n' + READ_ALL,
        "toml",
        "two tokens are named 'a'",
        id="name-twice",
    ),
    pytest.param(
        TOKEN_A + 'secret = "s"\n' + READ_ALL + '[[tokens]]\nname = "b"\nsecret = "s"\n' + READ_ALL,
        "toml",
        "tokens 'a' and 'b' are the same secret",
        id="secret-twice",
    ),
]


@pytest.mark.parametrize(("text", "kind", "message"), BAD_POLICIES)
def test_a_bad_policy_is_refused_with_its_message(text: str, kind: str, message: str):
    with pytest.raises(policy.PolicyError) as refused:
        policy.parse(text, kind)
    assert str(refused.value) == message


@pytest.mark.parametrize(("text", "kind"), [("tokens = [", "toml"), ('{"tokens": [}', "json")])
def test_a_policy_that_does_not_parse_says_which_format_it_is_not(text: str, kind: str):
    with pytest.raises(policy.PolicyError) as refused:
        policy.parse(text, kind)
    assert str(refused.value).startswith(f"not valid {kind.upper()}: ")


@pytest.mark.parametrize("variable", ["READ_TOKENS", "WRITE_TOKENS"])
def test_an_empty_shorthand_token_names_its_variable(variable: str):
    tokens = {"READ_TOKENS": [], "WRITE_TOKENS": [], variable: ["ok", " "]}
    with pytest.raises(policy.PolicyError) as refused:
        policy.shorthand(tokens["READ_TOKENS"], tokens["WRITE_TOKENS"])
    assert str(refused.value) == f"an empty token in {variable}"


def test_a_missing_policy_file_is_refused_naming_it(tmp_path: Path):
    path = tmp_path / "missing.toml"
    with pytest.raises(policy.PolicyError) as refused:
        policy.load(str(path))
    assert str(refused.value) == f"cannot read the access policy {path}: No such file or directory"


def test_a_policy_file_not_utf8_is_refused_naming_it(tmp_path: Path):
    path = tmp_path / "policy.toml"
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(policy.PolicyError) as refused:
        policy.load(str(path))
    assert str(refused.value) == f"the access policy {path} is not UTF-8 text"


def test_a_refused_policy_file_says_which_file_and_why(tmp_path: Path):
    path = tmp_path / "policy.json"
    path.write_text('{"tokens": {}}')
    with pytest.raises(policy.PolicyError) as refused:
        policy.load(str(path))
    assert str(refused.value) == (
        f'the access policy {path} is refused: "tokens" must be a list of tokens'
    )


def test_a_file_ending_in_json_is_read_as_json_whatever_its_case(tmp_path: Path):
    path = tmp_path / "POLICY.JSON"
    path.write_text(json_token(secret="s", rules={"": "read"}))
    assert [token.name for token in policy.load(str(path))] == ["a"]


# --- python policy.py FILE


def test_checking_a_good_file_lists_its_tokens_and_rules(tmp_path: Path, capsys):
    path = tmp_path / "policy.toml"
    path.write_text(
        TOKEN_A + 'secret = "s"\nmetrics = true\nrules = { "é/" = "write", "é/x/" = "deny" }\n'
        '[[tokens]]\nname = "b"\nsha256 = "' + hashlib.sha256(b"t").hexdigest() + '"\n' + READ_ALL
    )
    assert policy.main(["policy.py", str(path)]) == 0
    assert capsys.readouterr().out == (
        'a: "é/x/" = "deny", "é/" = "write"; metrics\nb: "" = "read"\n'
    )


def test_checking_a_bad_file_prints_why_and_fails(tmp_path: Path, capsys):
    path = tmp_path / "policy.toml"
    path.write_text(TOKEN_A + 'secret = "s"\nrules = { "" = "rw" }\n')
    assert policy.main(["policy.py", str(path)]) == 1
    printed = capsys.readouterr()
    assert printed.out == ""
    assert printed.err == (
        f"the access policy {path} is refused: "
        "token 'a': unknown rule \"rw\" for '' (read, write or deny)\n"
    )


@pytest.mark.parametrize("argv", [["policy.py"], ["policy.py", "a.toml", "b.toml"]])
def test_checking_without_exactly_one_file_prints_the_usage(argv: list[str], capsys):
    assert policy.main(argv) == 2
    assert capsys.readouterr().err == "usage: python policy.py POLICY_FILE\n"


@pytest.mark.parametrize(
    "prefix",
    ["p" * 255, "with space", "tilde~", "nbsp\xa0"],
    ids=["255-characters", "space", "tilde", "no-break-space"],
)
def test_a_prefix_of_up_to_255_printable_characters_is_accepted(prefix: str):
    (token,) = policy.parse(json_token(secret="s", rules={prefix: "read"}), "json")
    assert token.rules == (policy.Rule(prefix, "read"),)


def test_a_rule_that_is_a_toml_date_is_refused_not_a_crash():
    with pytest.raises(policy.PolicyError) as refused:
        policy.parse(TOKEN_A + 'secret = "s"\nrules = { "x" = 1979-05-27 }\n', "toml")
    assert str(refused.value) == (
        "token 'a': unknown rule datetime.date(1979, 5, 27) for 'x' (read, write or deny)"
    )


def test_a_secret_may_hold_any_printable_ascii_but_space():
    (token,) = policy.parse(json_token(secret='!"#~', rules={"": "read"}), "json")
    assert token.digest == policy.digest('!"#~')


def test_a_secret_with_a_lone_surrogate_loads_though_no_header_can_carry_it():
    (token,) = policy.parse(json_token(secret="a\ud800", rules={"": "read"}), "json")
    assert token.digest == hashlib.sha256(b"a\xed\xa0\x80").digest()
