"""The history checker itself, on hand-made histories: one that is fine, and one that breaks
each rule (tests/history_checker.py)."""

from __future__ import annotations

from tests.history_checker import Op, check


def write(start: float, end: float, version: int | None, value: str, outcome: str = "ok") -> Op:
    return Op("write", "x", start, end, outcome, version if outcome == "ok" else None, value)


def read(start: float, end: float, version: int, value: str | None) -> Op:
    return Op("read", "x", start, end, "ok", version, value)


def violations(*ops: Op) -> list[str]:
    return check(ops).violations


def test_a_linearizable_history_with_overlaps_and_unknown_writes_passes() -> None:
    report = check(
        [
            read(0, 1, 0, None),
            write(2, 3, 1, "a"),
            write(2.5, 5, 2, "b"),  # overlaps the read below: either version may be read
            read(4, 4.5, 1, "a"),
            write(6, 7, None, "lost?", "unknown"),  # never applied
            write(8, 20, None, "c", "unknown"),  # applied: a read reveals it
            read(9, 10, 3, "c"),
            write(11, 12, None, "d", "failed"),  # 412: changed nothing
            read(13, 14, 3, "c"),
            write(15, 16, 4, "e"),
        ]
    )
    assert report.violations == []
    assert report.operations == 10
    assert report.checks == {"reads' values": 3, "writes ordered": 3, "reads in real time": 4}


def test_a_read_of_another_versions_value_is_a_violation() -> None:
    found = violations(write(0, 1, 1, "a"), write(2, 3, 2, "b"), read(4, 5, 2, "a"))
    assert len(found) == 1
    assert "but that version is" in found[0]


def test_two_reads_of_one_version_with_different_values_are_a_violation() -> None:
    found = violations(
        write(0, 10, None, "a", "unknown"),
        write(0, 10, None, "b", "unknown"),
        read(11, 12, 1, "a"),
        read(13, 14, 1, "b"),
    )
    assert any("but earlier" in v for v in found)


def test_a_value_no_write_sent_or_only_a_failed_one_is_a_violation() -> None:
    assert violations(read(0, 1, 1, "ghost"))
    assert violations(write(0, 1, None, "a", "failed"), read(2, 3, 1, "a"))


def test_a_value_read_before_its_write_began_is_a_violation() -> None:
    found = violations(read(0, 1, 1, "a"), write(2, 3, 1, "a"))
    assert any("no write of it had begun" in v for v in found)


def test_two_acknowledged_writes_with_one_version_are_a_violation() -> None:
    found = violations(write(0, 1, 1, "a"), write(0.5, 1.5, 1, "b"))
    assert any("2 acknowledged writes got version 1" in v for v in found)


def test_a_later_write_with_a_lower_version_is_a_violation() -> None:
    found = violations(write(0, 1, 2, "a"), write(2, 3, 1, "b"))
    assert any("version not higher" in v for v in found)


def test_a_write_after_a_read_of_a_newer_version_is_a_violation() -> None:
    found = violations(
        write(0, 10, None, "a", "unknown"),
        write(0, 10, None, "b", "unknown"),
        read(11, 12, 2, "b"),
        write(13, 14, 2, "c"),
    )
    assert any("version not higher" in v for v in found)


def test_a_stale_read_after_an_acknowledged_write_is_a_violation() -> None:
    found = violations(write(0, 1, 1, "a"), write(2, 3, 2, "b"), read(4, 5, 1, "a"))
    assert len(found) == 1
    assert "an older version" in found[0]


def test_a_read_of_nothing_after_an_acknowledged_write_is_a_violation() -> None:
    found = violations(write(0, 1, 1, "a"), read(2, 3, 0, None))
    assert any("an older version" in v for v in found)


def test_a_read_going_back_after_another_read_is_a_violation() -> None:
    found = violations(
        write(0, 10, None, "a", "unknown"),
        write(0, 10, None, "b", "unknown"),
        read(2, 3, 2, "b"),
        read(4, 5, 1, "a"),
    )
    assert any("an older version" in v for v in found)


def test_names_are_checked_apart() -> None:
    other = Op("read", "y", 2, 3, "ok", 0, None)
    assert violations(write(0, 1, 1, "a"), other) == []


def test_an_unknown_write_seen_and_then_lost_in_a_crash_is_no_violation() -> None:
    # v2 'b' was committed and seen, its client never heard back, and a crash at 5 lost it:
    # after the crash v2 goes to 'c', and reads see v1 again until then.
    ops = [
        write(0, 1, 1, "a"),
        write(2, 9, None, "b", outcome="unknown"),
        read(3, 4, 2, "b"),
        read(6, 7, 1, "a"),
        write(7, 8, 2, "c"),
        read(9, 10, 2, "c"),
    ]
    assert check(ops).violations  # without the crash: reads went back, v2 given twice
    report = check(ops, crashes=[5])
    assert report.violations == []
    assert report.checks["reads of unknown writes a crash then undid"] == 1


def test_a_crash_never_excuses_a_lost_acknowledged_write() -> None:
    ops = [write(0, 1, 1, "a"), write(2, 3, 2, "b"), read(6, 7, 1, "a")]
    assert check(ops, crashes=[5]).violations
