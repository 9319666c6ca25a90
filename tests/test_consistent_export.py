"""``export`` takes one consistent snapshot and records the change log's position it was taken
at; ``--with-history`` adds the retained log, which ``import`` restores whole into an empty
store. Both stores, through the CLI as a user runs it, with writers busy meanwhile."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

import backup
import db
import watch
from app import create_app
from tests.servers import scratch_database
from tests.sse import open_stream

# 2,500 names, so that an export reads three pages; four writers each cycle through a block of
# 4 names, two of the blocks across the pages' boundaries: an export that read page by page
# would show the names after a boundary newer than those before it.
NAMES = 2 * backup.PAGE + backup.PAGE // 2
BLOCKS = [range(middle - 2, middle + 2) for middle in range(500, NAMES, 500)]


def name(index: int) -> str:
    return f"n{index:05d}"


def ready(app: Flask) -> db.Store:
    """The app's store; its background sweeper stopped, so that the whole log stays."""
    watch.stop_background(app)
    store = db.get_store(app)
    store.ensure_ready()
    return store


@contextmanager
def cycling_writers(store: db.Store) -> Iterator[None]:
    """One writer a block of names, each cycling through its names in name order with a
    rising counter: at every instant no name of a block holds a higher counter than the name
    before it, and the counters of a block differ by one at most. The other names stay 0."""
    store.import_batch([(name(i), "0") for i in range(NAMES)])
    stop = threading.Event()

    def write(block: range) -> None:
        counter = 0
        while not stop.is_set():
            counter += 1
            for index in block:
                store.put(name(index), str(counter))

    threads = [threading.Thread(target=write, args=(b,), daemon=True) for b in BLOCKS]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)


def export(app: Flask, path: Path, *options: str) -> dict[str, Any]:
    result = app.test_cli_runner().invoke(args=["export", *options, str(path)])
    assert result.exit_code == 0, result.output
    return json.loads(path.read_text(encoding="utf-8"))


def import_file(app: Flask, path: Path, *options: str) -> Any:
    return app.test_cli_runner().invoke(args=["import", *options, str(path)])


def a_state_that_existed(variables: list[dict[str, Any]]) -> bool:
    counters = [int(var["value"]) for var in variables]
    in_blocks = {index for block in BLOCKS for index in block}
    return (
        [var["name"] for var in variables] == [name(i) for i in range(NAMES)]
        and all(counters[i] == 0 for i in range(NAMES) if i not in in_blocks)
        and all(
            sorted(run := [counters[i] for i in block], reverse=True) == run
            and run[0] - run[-1] <= 1
            for block in BLOCKS
        )
    )


def settled_head(store: db.Store) -> int:
    """The last seq once every committed change has one (MySQL numbers a batch at a time)."""
    head, previous = store.numbered_last_seq(), -1
    while head != previous:
        head, previous = store.numbered_last_seq(), head
    return head


def after_a_change(store: db.Store, seq: int, timeout: float = 30.0) -> None:
    """Wait until a change past ``seq`` has its seq (the writers are running)."""
    deadline = time.monotonic() + timeout
    while store.numbered_last_seq() <= seq:
        assert time.monotonic() < deadline, f"no change after seq {seq} within {timeout} s"
        time.sleep(0.001)


def state_at(store: db.Store, seq: int) -> dict[str, str]:
    """Every variable's value after the changes up to ``seq`` (none were pruned)."""
    state: dict[str, str] = {}
    for change in store.changes_since(0, seq, "", 10_000_000):
        if change.op == "set":
            state[change.name] = change.value or ""
        else:
            state.pop(change.name, None)
    return state


# --- One instant, and its position ----------------------------------------------------------


def test_exports_taken_while_clients_write_show_a_state_that_existed(app, tmp_path: Path):
    store = ready(app)
    exports: list[dict[str, Any]] = []
    with cycling_writers(store):
        for n in range(20):
            # A change after the previous export's, so that each export has a later position
            # to record (on a busy machine two exports once fell between the same two writes).
            after_a_change(store, exports[-1]["seq"] if exports else 0)
            exports.append(export(app, tmp_path / f"e{n}.json"))
    seqs = [data["seq"] for data in exports]
    assert seqs == sorted(set(seqs))  # each one taken while the writers wrote
    for data in exports:
        assert a_state_that_existed(data["variables"])
        # The position is exact: the changes up to it make exactly the exported state.
        exported = {v["name"]: v["value"] for v in data["variables"]}
        assert state_at(store, data["seq"]) == exported


def test_a_watcher_resuming_from_the_exported_seq_gets_exactly_the_later_changes(
    app, tmp_path: Path
):
    store = ready(app)
    with cycling_writers(store):
        data = export(app, tmp_path / "e.json")
        # The writers go on for a while after the snapshot.
        while store.numbered_last_seq() < data["seq"] + 500:
            time.sleep(0.05)
    head = settled_head(store)
    state = {v["name"]: v["value"] for v in data["variables"]}

    stream = open_stream(app, "/events", last_event_id=data["seq"])
    events = stream.take(head - data["seq"])
    stream.close()
    assert [int(e["id"]) for e in events] == list(range(data["seq"] + 1, head + 1))
    assert all("event" not in e for e in events)  # no resync
    for event in events:
        state[event["data"]["name"]] = event["data"]["value"]
    final = {v.name: v.value for v in store.list("", None, 10_000, with_values=True)}
    assert state == final


# --- History: export and restore ------------------------------------------------------------


@pytest.fixture
def empty_store_url(
    store_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[str]:
    """A second, empty database of the same kind as the test's."""
    if store_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'restored.db'}"
        return
    with scratch_database(request.getfixturevalue("mysql_server")) as url:
        yield url


@pytest.fixture
def second_app(empty_store_url: str) -> Iterator[Flask]:
    app = create_app({"TESTING": True, "DATABASE_URL": empty_store_url})
    yield app
    watch.stop_background(app)
    db.get_store(app).close()


def some_history(store: db.Store) -> None:
    for n in range(5):
        store.put("a", f"a{n}", actor="0123abcd")
    store.put("gone", "x")
    store.delete("gone")
    store.put("ttl", "soon", ttl=3600)
    store.transact([db.Operation("set", "t/1", "one"), db.Operation("set", "t/2", "two")])
    store.sweep(keep_versions=3, keep_days=30, batch=100)  # a's versions 1 and 2 go


def whole_log(store: db.Store) -> list[db.Change]:
    return store.changes_since(0, store.numbered_last_seq(), "", 10_000)


def test_an_export_with_history_restores_exactly_into_an_empty_store(
    app, second_app, tmp_path: Path
):
    source = ready(app)
    some_history(source)
    data = export(app, tmp_path / "h.json", "--with-history")
    assert data["seq"] == source.numbered_last_seq()
    assert data["pruned_through"] == source.pruned_through() > 0

    result = import_file(second_app, tmp_path / "h.json")
    assert result.exit_code == 0, result.output
    target = ready(second_app)
    assert target.list("", None, 100, True) == source.list("", None, 100, True)
    assert whole_log(target) == whole_log(source)
    assert target.numbered_last_seq() == data["seq"]
    assert target.pruned_through() == data["pruned_through"]
    # It carries on where the source was: versions, seqs, and a resume from the position.
    stream = open_stream(second_app, "/events", last_event_id=data["seq"])
    assert target.put("a", "next").version == 6
    event = stream.next()
    stream.close()
    assert (int(event["id"]), event["data"]["version"]) == (data["seq"] + 1, 6)


def test_history_is_restored_only_into_an_empty_store(app, second_app, tmp_path: Path):
    some_history(ready(app))
    export(app, tmp_path / "h.json", "--with-history")
    ready(second_app).put("already", "here")

    refused = import_file(second_app, tmp_path / "h.json")
    assert refused.exit_code != 0
    assert "empty" in refused.output
    assert db.get_store(second_app).get("a") is None

    loaded = import_file(second_app, tmp_path / "h.json", "--without-history")
    assert loaded.exit_code == 0, loaded.output
    assert "4 created" in loaded.output
    assert db.get_store(second_app).get("a").value == "a4"


def test_an_export_file_of_an_earlier_release_still_imports(client, runner, tmp_path: Path):
    old = tmp_path / "old.json"
    old.write_text(
        '{"format": "var_keeper/1", "variables": [\n{"name": "a", "value": "1"},\n'
        '{"name": "app/b", "value": "ünï"}\n]}\n',
        encoding="utf-8",
    )
    result = runner.invoke(args=["import", str(old)])
    assert result.exit_code == 0, result.output
    assert "2 created" in result.output
    assert client.get("/var/app/b").get_data(as_text=True) == "ünï"


def test_an_export_records_its_position_and_keeps_the_earlier_layout(app, tmp_path: Path):
    store = ready(app)
    store.put("a", "1")
    data = export(app, tmp_path / "e.json")
    assert data == {
        "format": "var_keeper/1",
        "seq": store.numbered_last_seq(),
        "variables": [{"name": "a", "value": "1"}],
    }
