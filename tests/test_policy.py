"""The access policy on its own (policy.py): parsing, the longest-prefix decision, reloading."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import policy
from tests.servers import ROOT

CI_TOML = """
[[tokens]]
name = "ci"
secret = "ci-secret"
rules = {{ "ci/" = "write", "ci/keys/" = "deny" }}

[[tokens]]
name = "app"
sha256 = "{}"
rules = {{ "app/prod/" = "read" }}

[[tokens]]
name = "admin"
secret = "admin-secret"
metrics = true
rules = {{ "" = "write" }}
""".format(hashlib.sha256(b"app-secret").hexdigest())


def tokens(text: str, kind: str = "toml") -> dict[str, policy.Token]:
    return {token.name: token for token in policy.parse(text, kind)}


def test_toml_and_json_give_the_same_tokens():
    from_toml = policy.parse(CI_TOML, "toml")
    as_json = {
        "tokens": [
            {"name": "ci", "secret": "ci-secret", "rules": {"ci/": "write", "ci/keys/": "deny"}},
            {
                "name": "app",
                "sha256": hashlib.sha256(b"app-secret").hexdigest(),
                "rules": {"app/prod/": "read"},
            },
            {"name": "admin", "secret": "admin-secret", "metrics": True, "rules": {"": "write"}},
        ]
    }
    assert policy.parse(json.dumps(as_json), "json") == from_toml


def test_the_longest_matching_prefix_decides_and_no_match_means_no_access():
    ci = tokens(CI_TOML)["ci"]
    assert ci.may("ci/build", "write")
    assert ci.may("ci/build", "read")
    assert not ci.may("ci/keys/deploy", "read")
    assert not ci.may("app/prod/db", "read")
    assert ci.refusal("ci/keys/deploy", "read") == (
        'token \'ci\' may not read "ci/keys/deploy": rule "ci/keys/" = "deny"'
    )
    assert ci.refusal("other", "write") == "token 'ci' may not write \"other\": no rule covers it"


def test_read_does_not_imply_write_and_write_implies_read():
    app = tokens(CI_TOML)["app"]
    assert app.may("app/prod/db", "read")
    assert not app.may("app/prod/db", "write")
    assert 'rule "app/prod/" = "read"' in app.refusal("app/prod/db", "write")


def test_a_token_is_found_by_its_secret_or_its_sha256():
    current = policy.combine(policy.parse(CI_TOML, "toml"))
    assert current.find(policy.digest("app-secret")).name == "app"
    assert current.find(policy.digest("ci-secret")).name == "ci"
    assert current.find(policy.digest("guess")) is None


def test_shorthand_tokens_read_or_write_everything_and_metrics():
    write, read = policy.shorthand(["r0"], ["w0"])  # write tokens first
    assert write.may("any/thing", "write")
    assert write.metrics
    assert read.may("any/thing", "read")
    assert not read.may("any/thing", "write")
    assert read.name == hashlib.sha256(b"r0").hexdigest()[:8]


def test_read_regions_hold_every_readable_name_under_a_prefix():
    mixed = tokens(
        '[[tokens]]\nname = "m"\nsecret = "s"\n'
        'rules = { "app/" = "read", "app/x/" = "deny", "app/x/ok/" = "read", "ci/" = "write" }'
    )["m"]
    assert mixed.read_regions("") == ["app/", "ci/"]
    assert mixed.read_regions("app/x/") == ["app/x/ok/"]  # app/x/ itself is denied
    assert mixed.read_regions("app/x/o") == ["app/x/ok/"]
    assert mixed.read_regions("zzz") == []
    assert mixed.reads_all_under("ci/")
    assert not mixed.reads_all_under("app/")


@pytest.mark.parametrize(
    ("text", "kind", "message"),
    [
        ("tokens = [", "toml", "not valid TOML"),
        ('{"tokens": [}', "json", "not valid JSON"),
        ('{"tokens": [], "extra": 1}', "json", 'one member, "tokens"'),
        ('[[tokens]]\nname = "a"\nsecret = "s"\nrules = { "" = "admin" }', "toml", "unknown rule"),
        ('[[tokens]]\nname = "a"\nsecret = ""\nrules = { "" = "read" }', "toml", "secret is empty"),
        ('[[tokens]]\nname = "a"\nsecret = " "\nrules = { "" = "read" }', "toml", "empty"),
        ('[[tokens]]\nname = "a"\nsha256 = "abc"\nrules = { "" = "read" }', "toml", "64 hex"),
        ('[[tokens]]\nname = "a"\nrules = { "" = "read" }', "toml", "exactly one of"),
        ('[[tokens]]\nname = "a b"\nsecret = "s"\nrules = { "" = "read" }', "toml", "name must"),
        ('[[tokens]]\nname = "a"\nsecret = "s"\nrules = {}', "toml", "rules must"),
        ('[[tokens]]\nname = "a"\nsecret = "s"\nrule = { "" = "read" }', "toml", "unknown member"),
        (
            '{"tokens": [{"name": "a", "secret": "s", "rules": {"x": "read", "x": "write"}}]}',
            "json",
            "given twice",
        ),
        (
            '[[tokens]]\nname = "a"\nsecret = "s"\nrules = { "" = "read" }\n'
            '[[tokens]]\nname = "b"\nsecret = "s"\nrules = { "" = "write" }',
            "toml",
            "the same secret",
        ),
        (
            '[[tokens]]\nname = "a"\nsecret = "s"\nrules = { "" = "read" }\n'
            '[[tokens]]\nname = "a"\nsecret = "t"\nrules = { "" = "write" }',
            "toml",
            "two tokens are named 'a'",
        ),
    ],
)
def test_a_bad_policy_is_refused_with_a_clear_message(text, kind, message):
    with pytest.raises(policy.PolicyError, match=message):
        policy.parse(text, kind)


def test_a_policy_token_also_in_the_shorthand_is_refused():
    file_tokens = policy.parse(CI_TOML, "toml")
    with pytest.raises(policy.PolicyError, match="same secret"):
        policy.combine(file_tokens, policy.shorthand([], ["ci-secret"]))


def test_an_unreadable_or_non_utf8_file_is_refused(tmp_path: Path):
    with pytest.raises(policy.PolicyError, match="cannot read"):
        policy.load(str(tmp_path / "missing.toml"))
    binary = tmp_path / "p.toml"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(policy.PolicyError, match="not UTF-8"):
        policy.load(str(binary))


def test_a_changed_file_takes_effect_and_a_broken_one_keeps_the_old(tmp_path: Path, caplog):
    path = tmp_path / "policy.toml"
    path.write_text(CI_TOML)
    source = policy.PolicySource(str(path), [], check_interval=0)
    assert source.current().by_name("app").may("app/prod/x", "read")

    path.write_text(CI_TOML.replace('"app/prod/" = "read"', '"app/prod/" = "write"') + "\n")
    assert source.current().by_name("app").may("app/prod/x", "write")

    path.write_text("tokens = [ broken")
    with caplog.at_level("ERROR", logger="var_keeper.policy"):
        in_force = source.current()
    assert in_force.by_name("app").may("app/prod/x", "write")  # the old one stays
    assert "is refused: not valid TOML" in caplog.text
    assert "the policy in force stays" in caplog.text
    assert source.last_error
    assert "not valid TOML" in source.last_error

    os.remove(path)
    assert source.current().by_name("app") is not None  # a missing file keeps the old too


def test_the_policy_is_looked_at_no_more_often_than_the_interval(tmp_path: Path):
    path = tmp_path / "policy.toml"
    path.write_text(CI_TOML)
    source = policy.PolicySource(str(path), [], check_interval=3600)
    path.write_text(CI_TOML.replace('name = "ci"', 'name = "ci2"') + "\n")
    assert source.current().by_name("ci") is not None
    assert source.reload_if_changed()  # SIGHUP-free: a reload on demand
    assert source.current().by_name("ci2") is not None


def test_python_policy_py_checks_a_file(tmp_path: Path):
    good, bad = tmp_path / "good.toml", tmp_path / "bad.json"
    good.write_text(CI_TOML)
    bad.write_text('{"tokens": [{"name": "x", "secret": "s", "rules": {"": "rw"}}]}')
    ok = subprocess.run([sys.executable, "policy.py", str(good)], cwd=ROOT, capture_output=True)
    assert ok.returncode == 0
    assert b'ci: "ci/keys/" = "deny", "ci/" = "write"' in ok.stdout
    assert b"ci-secret" not in ok.stdout + ok.stderr
    refused = subprocess.run([sys.executable, "policy.py", str(bad)], cwd=ROOT, capture_output=True)
    assert refused.returncode == 1
    assert b'unknown rule "rw"' in refused.stderr
