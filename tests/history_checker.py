"""A history of what clients saw, and a checker of it (used by the fault and cluster tests).

``History`` records each HTTP operation around the call: its name, start and end time, and
result. A write (PUT/POST) is ``ok`` with the version its ETag names, ``failed`` when the
service said it changed nothing (412, 409, other 4xx), or ``unknown`` (503, a 500, no answer):
it may or may not have been applied. A read (GET, asking for JSON) is ``ok`` with the value and
version it reports (version 0: the name does not exist), or ``unknown`` and then ignored.

``check`` verifies, per name and across every instance the clients used:

- **values**: a read reports a value written at the version it reports: never the value of
  another acknowledged version, never a value only a failed write sent, never a value no write
  had started to send before the read ended; two reads of one version agree;
- **versions**: acknowledged writes have unique versions, increasing in real time: a write
  that began after another write was acknowledged, or after a read reported a version, gets a
  higher version;
- **real time**: a read that began after a write was acknowledged (or after another read
  ended) reports that version or a newer one.

An unknown write constrains nothing by itself, but a read may reveal that it happened.
Values should be unique per write for the value rule to tell writes apart.

**Crashes** (``check(ops, crashes=[...])``, each the moment the database was serving again
after a kill): InnoDB makes a commit visible before its log is on disk, so a write whose client
never heard back (unknown) can be read and still be lost in a crash. A read that revealed such
a write (its version and value are no acknowledged write's) constrains only what began before
the next crash; reads of it that a crash then undid are counted, not reported. Acknowledged
writes are never excused.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import requests

WRITE_OK = {200, 201, 204}


@dataclass(frozen=True)
class Op:
    """One operation as a client saw it."""

    kind: str  # "write" or "read"
    name: str
    started: float
    ended: float
    outcome: str  # "ok", "failed" (writes: certainly not applied) or "unknown"
    version: int | None = None  # the write's new version / the version read (0: absent)
    value: str | None = None  # the value written / read
    where: str = ""  # which instance answered, for the report


@dataclass
class Report:
    """What the checker looked at and what it found."""

    operations: int = 0
    names: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)  # "write ok", "read unknown", ...
    checks: Counter[str] = field(default_factory=Counter)  # rule -> operations checked
    violations: list[str] = field(default_factory=list)

    def summary(self) -> str:
        outcomes = ", ".join(f"{n} {k}" for k, n in sorted(self.outcomes.items()))
        checks = ", ".join(f"{n} {k}" for k, n in sorted(self.checks.items()))
        return (
            f"history: {self.operations} operations on {self.names} names ({outcomes}); "
            f"checked: {checks}; {len(self.violations)} violations"
        )


def etag_version(response: requests.Response) -> int | None:
    tag = response.headers.get("ETag", "")
    return int(tag.strip('"')) if tag.strip('"').isdigit() else None


class History:
    """Thread-safe recorder: clients call ``write`` and ``read`` instead of the session."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.lock = threading.Lock()

    def add(self, op: Op) -> None:
        with self.lock:
            self.ops.append(op)

    def write(
        self,
        session: requests.Session,
        method: str,
        url: str,
        name: str,
        value: str,
        **kwargs: Any,
    ) -> requests.Response | None:
        """Send a write of ``value`` to ``name`` (the body is in ``kwargs``) and record it."""
        started = time.monotonic()
        try:
            response: requests.Response | None = session.request(method, url, **kwargs)
        except requests.RequestException:
            response = None
        status = None if response is None else response.status_code
        version = None
        if status in WRITE_OK and response is not None:
            outcome, version = "ok", etag_version(response)
        elif status is not None and 400 <= status < 500:
            outcome = "failed"
        else:
            outcome = "unknown"
        self.add(Op("write", name, started, time.monotonic(), outcome, version, value, url))
        return response

    def read(
        self, session: requests.Session, url: str, name: str, **kwargs: Any
    ) -> tuple[requests.Response | None, str | None]:
        """GET ``name`` as JSON and record it; return the response and the value read."""
        headers = {**kwargs.pop("headers", {}), "Accept": "application/json"}
        started = time.monotonic()
        try:
            response: requests.Response | None = session.get(url, headers=headers, **kwargs)
        except requests.RequestException:
            response = None
        status = None if response is None else response.status_code
        value, version, outcome = None, None, "unknown"
        if status == 200 and response is not None:
            body = response.json()
            value, version, outcome = body.get("value"), body.get("version"), "ok"
        elif status == 404:
            version, outcome = 0, "ok"
        self.add(Op("read", name, started, time.monotonic(), outcome, version, value, url))
        return response, value


class _Floor:
    """The highest version among operations that ended before a moment (prefix maxima)."""

    def __init__(self, ops: Iterable[Op]) -> None:
        ordered = sorted(ops, key=lambda op: op.ended)
        self.ends = [op.ended for op in ordered]
        self.maxima: list[tuple[int, Op | None]] = []
        best: tuple[int, Op | None] = (-1, None)
        for op in ordered:
            if (op.version or 0) > best[0]:
                best = (op.version or 0, op)
            self.maxima.append(best)

    def before(self, moment: float) -> tuple[int, Op | None]:
        index = bisect.bisect_left(self.ends, moment)
        return self.maxima[index - 1] if index else (-1, None)


def _show(op: Op | None) -> str:
    if op is None:
        return "-"
    return f"{op.kind} v{op.version} {op.value!r} [{op.started:.3f}-{op.ended:.3f}] {op.where}"


def _revealed_unknown(read: Op, acked: dict[int | None, Op]) -> bool:
    """Whether ``read`` saw a write no acknowledgement covers (one whose client never heard)."""
    known = acked.get(read.version)
    return known is None or known.value != read.value


def _crash_between(crashes: list[float], earlier: float, later: float) -> bool:
    return any(earlier <= crash <= later for crash in crashes)


def _check_values(
    name: str, writes: list[Op], reads: list[Op], report: Report, crashes: list[float]
) -> None:
    acked = {op.version: op for op in writes if op.outcome == "ok"}
    sent: dict[str, float] = {}  # value -> earliest start of a write that may have applied it
    for op in writes:
        if op.outcome != "failed" and op.value is not None:
            sent[op.value] = min(op.started, sent.get(op.value, op.started))
    seen: dict[int, Op] = {}
    for read in reads:
        if not read.version:
            continue
        report.checks["reads' values"] += 1
        first = seen.setdefault(read.version, read)
        known = acked.get(read.version)
        if known is not None and known.value != read.value:
            if _crash_between(crashes, read.ended, known.started):
                report.checks["reads of unknown writes a crash then undid"] += 1
            else:
                report.violations.append(
                    f"{name}: {_show(read)} but that version is {_show(known)}"
                )
        elif first.value != read.value:
            if _revealed_unknown(first, acked) and _crash_between(
                crashes, first.ended, read.started
            ):
                seen[read.version] = read  # the version was given again after the crash
                if known is None:  # else counted above, for the read the crash undid
                    report.checks["reads of unknown writes a crash then undid"] += 1
            else:
                report.violations.append(f"{name}: {_show(read)} but earlier {_show(first)}")
        elif read.value not in sent or sent[read.value] > read.ended:
            report.violations.append(f"{name}: {_show(read)}: no write of it had begun")


def _floors(acked: list[Op], reads: list[Op], crashes: list[float]) -> list[tuple[float, _Floor]]:
    """For each period between crashes (from its first moment), the floor of the operations
    that bind what begins in it: every acknowledged write and read, but a read that revealed an
    unknown write only until the next crash (see the module docstring)."""
    by_version = {op.version: op for op in acked}
    periods = [float("-inf"), *sorted(crashes)]
    floors = []
    for begins in periods:
        binding = [r for r in reads if r.ended >= begins or not _revealed_unknown(r, by_version)]
        floors.append((begins, _Floor([*acked, *binding])))
    return floors


def _floor_before(floors: list[tuple[float, _Floor]], moment: float) -> tuple[int, Op | None]:
    floor = next(f for begins, f in reversed(floors) if begins <= moment)
    return floor.before(moment)


def _check_versions(
    name: str, writes: list[Op], reads: list[Op], report: Report, crashes: list[float]
) -> None:
    acked = [op for op in writes if op.outcome == "ok"]
    for version, count in Counter(op.version for op in acked).items():
        if count > 1:
            report.violations.append(f"{name}: {count} acknowledged writes got version {version}")
    if any(op.version is None for op in acked):
        report.violations.append(f"{name}: an acknowledged write had no version (ETag)")
        return
    floors = _floors(acked, reads, crashes)
    for write in acked:
        report.checks["writes ordered"] += 1
        version, before = _floor_before(floors, write.started)
        if version >= (write.version or 0):
            report.violations.append(
                f"{name}: {_show(write)} began after {_show(before)} ended: version not higher"
            )


def _check_real_time(
    name: str, writes: list[Op], reads: list[Op], report: Report, crashes: list[float]
) -> None:
    floors = _floors([op for op in writes if op.outcome == "ok"], reads, crashes)
    for read in reads:
        report.checks["reads in real time"] += 1
        version, before = _floor_before(floors, read.started)
        if (read.version or 0) < version:
            report.violations.append(
                f"{name}: {_show(read)} began after {_show(before)} ended: an older version"
            )


def check(ops: Iterable[Op], crashes: Iterable[float] = ()) -> Report:
    """Check a history (see the module docstring); the report lists every violation.
    ``crashes``: when the database came back from each crash (kill -9), if any."""
    crashed = sorted(crashes)
    report = Report()
    by_name: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        report.operations += 1
        report.outcomes[f"{op.kind} {op.outcome}"] += 1
        by_name[op.name].append(op)
    report.names = len(by_name)
    for name, named in sorted(by_name.items()):
        writes = [op for op in named if op.kind == "write"]
        reads = [op for op in named if op.kind == "read" and op.outcome == "ok"]
        _check_values(name, writes, reads, report, crashed)
        _check_versions(name, writes, reads, report, crashed)
        _check_real_time(name, writes, reads, report, crashed)
    return report
