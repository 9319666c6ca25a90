"""The policy in force (policy.PolicySource): what it starts with, when it reloads, and the
private copy of the last good policy that a worker starting during a bad edit falls back on.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from pathlib import Path

import pytest
from flask import Flask

import access
import db
import policy
import watch
from app import create_app

GOOD = '[[tokens]]\nname = "a"\nsecret = "a-secret"\nrules = { "" = "read" }\n'
OTHER = '[[tokens]]\nname = "b"\nsecret = "b-secret"\nrules = { "" = "write" }\n'
BROKEN = "tokens = [ broken"


def names(source: policy.PolicySource) -> list[str]:
    return [token.name for token in source.current().tokens]


def test_without_a_file_only_the_shorthand_tokens_are_in_force():
    fixed = policy.shorthand([], ["w"])
    source = policy.PolicySource(None, fixed, check_interval=0)
    assert source.current().tokens == tuple(fixed)
    assert not source.reload_if_changed()


def test_a_file_that_does_not_parse_at_start_is_an_error_without_a_last_good_copy(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(BROKEN)
    with pytest.raises(policy.PolicyError, match="is refused: not valid TOML"):
        policy.PolicySource(str(path), [], last_good=str(tmp_path / "never-written"))


def test_the_policy_put_in_force_is_kept_privately_as_the_last_good_one(tmp_path: Path):
    path, kept = tmp_path / "policy.toml", tmp_path / "last-good"
    path.write_text(GOOD)
    policy.PolicySource(str(path), [], last_good=str(kept))
    assert kept.read_text() == GOOD
    assert stat.S_IMODE(os.stat(kept).st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["last-good", "policy.toml"]  # no partial copy left


def test_a_reloaded_policy_replaces_the_last_good_copy(tmp_path: Path):
    path, kept = tmp_path / "policy.toml", tmp_path / "last-good"
    path.write_text(GOOD)
    source = policy.PolicySource(str(path), [], check_interval=0, last_good=str(kept))
    path.write_text(OTHER)
    assert names(source) == ["b"]
    assert kept.read_text() == OTHER


def test_a_worker_starting_during_a_bad_edit_takes_the_last_good_policy(tmp_path: Path, caplog):
    path, kept = tmp_path / "policy.json", tmp_path / "last-good"
    path.write_text('{"tokens": [{"name": "j", "secret": "j-secret", "rules": {"": "read"}}]}')
    policy.PolicySource(str(path), [], last_good=str(kept))  # an earlier worker
    path.write_text("{ broken")
    with caplog.at_level(logging.ERROR, logger="var_keeper.policy"):
        source = policy.PolicySource(str(path), [], last_good=str(kept))
    assert names(source) == ["j"]
    assert source.last_error.startswith(f"the access policy {path} is refused: not valid JSON")
    assert caplog.messages == [
        f"{source.last_error}; the policy in force in the other workers stays"
    ]


def test_a_worker_starting_during_a_bad_toml_edit_takes_the_last_good_toml(tmp_path: Path):
    path, kept = tmp_path / "policy.toml", tmp_path / "last-good"
    path.write_text(GOOD)
    policy.PolicySource(str(path), [], last_good=str(kept))
    path.write_text(BROKEN)
    assert names(policy.PolicySource(str(path), [], last_good=str(kept))) == ["a"]


def test_a_policy_that_loaded_has_no_error(tmp_path: Path):
    path = tmp_path / "policy.toml"
    path.write_text(GOOD)
    assert policy.PolicySource(str(path), []).last_error is None


def test_an_unchanged_file_is_not_read_again(tmp_path: Path):
    path = tmp_path / "policy.toml"
    path.write_text(GOOD)
    source = policy.PolicySource(str(path), [], check_interval=0)
    assert not source.reload_if_changed()


def test_a_reload_is_logged_with_the_number_of_tokens(tmp_path: Path, caplog):
    path = tmp_path / "policy.toml"
    path.write_text(GOOD)
    source = policy.PolicySource(str(path), policy.shorthand(["r"], []), check_interval=0)
    path.write_text(GOOD + OTHER)
    with caplog.at_level(logging.INFO, logger="var_keeper.policy"):
        assert source.reload_if_changed()
    assert caplog.messages == [f"access policy reloaded from {path}: 3 tokens"]


def test_a_good_file_after_a_refused_one_clears_the_error(tmp_path: Path):
    path = tmp_path / "policy.toml"
    path.write_text(GOOD)
    source = policy.PolicySource(str(path), [], check_interval=0)
    path.write_text(BROKEN)
    assert not source.reload_if_changed()
    assert source.last_error is not None
    path.write_text(OTHER)
    assert source.reload_if_changed()
    assert (names(source), source.last_error) == (["b"], None)


def test_a_file_repeating_a_shorthand_token_is_refused_and_the_old_stays(tmp_path: Path, caplog):
    path = tmp_path / "policy.toml"
    path.write_text(GOOD)
    source = policy.PolicySource(str(path), policy.shorthand([], ["b-secret"]), check_interval=0)
    path.write_text(OTHER)
    with caplog.at_level(logging.ERROR, logger="var_keeper.policy"):
        assert not source.reload_if_changed()
    assert names(source) == ["a", policy.digest("b-secret").hex()[:8]]
    message = f"tokens {'b'!r} and {policy.digest('b-secret').hex()[:8]!r} are the same secret"
    assert source.last_error == message
    assert caplog.messages == [f"{message}; the policy in force stays"]


def test_a_refused_file_is_not_read_again_until_it_changes(tmp_path: Path):
    path = tmp_path / "policy.toml"
    path.write_text(GOOD)
    source = policy.PolicySource(str(path), [], check_interval=0)
    path.write_text(BROKEN)
    assert not source.reload_if_changed()
    source.last_error = None
    assert not source.reload_if_changed()
    assert source.last_error is None  # not read, so not refused again


# --- As the app holds it (access.init_app)


def make_app(tmp_path: Path, policy_file: Path) -> Flask:
    database = f"sqlite:///{tmp_path / 'v.db'}"
    return create_app(
        {"TESTING": True, "DATABASE_URL": database, "ACCESS_POLICY_FILE": str(policy_file)}
    )


def test_the_app_looks_at_a_changed_policy_file_within_a_second(tmp_path: Path):
    path = tmp_path / "policy.toml"
    path.write_text(GOOD)
    app = make_app(tmp_path, path)
    path.write_text(OTHER)
    time.sleep(1.1)
    with app.app_context():
        assert [token.name for token in access.current_policy().tokens] == ["b"]
    watch.stop_background(app)
    db.get_store(app).close()


def test_each_worker_keeps_its_policy_where_gunicorn_says(tmp_path: Path, monkeypatch):
    # gunicorn.conf.py gives every worker the same private file in this variable.
    kept = tmp_path / "last-good"
    monkeypatch.setenv(policy.LAST_GOOD_VARIABLE, str(kept))
    path = tmp_path / "policy.toml"
    path.write_text(GOOD)
    app = make_app(tmp_path, path)
    assert kept.read_text() == GOOD
    watch.stop_background(app)
    db.get_store(app).close()
