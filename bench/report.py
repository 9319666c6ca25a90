"""results.json to results.md (tables, ratios against the same run's references) and
throughput.png (requests/s by concurrency: ours beside the database's limit and the peers)."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

JOBS = ("GET", "POST same", "POST distinct", "list", "batch 10")
# References of the same run: bench/plain_app.py (same stack, no features), its constant route
# (the stack's ceiling), and the peers.
PEERS = ("mysqlslap, our write", "plain app", "constant", "webdis", "etcd v2")
PLAIN = "plain app"
# The Performance issue's targets, each a ratio inside one run at 64 connections:
# (job, minimum req/s ratio to the plain app's same job or None, maximum p99 ratio).
TARGETS = (("GET", 0.9, 1.5), ("POST distinct", 0.7, 1.5), ("POST same", None, 1.5))
ERROR_CONNECTIONS = (64, 256)


def _index(results: Iterable[dict[str, Any]]) -> dict[tuple[str, str, int, str], dict[str, Any]]:
    return {(r["target"], r["job"], r["connections"], r["note"]): r for r in results}


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def _ratio(ours: dict[str, Any] | None, ref: dict[str, Any] | None) -> str:
    if not ours or not ref or not ref["rps"]:
        return "n/a"
    return f"{ours['rps'] / ref['rps']:.3f}"


def throughput_tables(data: dict[str, Any]) -> list[str]:
    idx = _index(data["results"])
    lines: list[str] = []
    connections = sorted({r["connections"] for r in data["results"] if not r["note"]})
    for job in JOBS:
        if not any(("var_keeper", job, c, "") in idx for c in connections):
            continue
        peers = [p for p in PEERS if any((p, job, c, "") in idx for c in connections)]
        head = [
            "conns",
            "ours req/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "mysqlslap q/s",
            "ours / mysqlslap",
        ]
        for peer in peers:
            head += [f"{peer} req/s", f"{peer} p99 ms", f"ours / {peer}"]
        lines += [f"### {job}", "", "| " + " | ".join(head) + " |"]
        lines.append("|" + "---:|" * len(head))
        for conns in connections:
            ours = idx.get(("var_keeper", job, conns, ""))
            if not ours:
                continue
            slap = idx.get(("mysqlslap", job, conns, ""))
            row = [
                str(conns),
                _num(ours["rps"]),
                _num(ours["p50_ms"], 2),
                _num(ours["p99_ms"], 2),
                str(ours["errors"]),
                _num(slap["rps"]) if slap else "n/a",
                _ratio(ours, slap),
            ]
            for peer in peers:
                other = idx.get((peer, job, conns, ""))
                row += [
                    _num(other["rps"]) if other else "n/a",
                    _num(other["p99_ms"], 2) if other else "n/a",
                    _ratio(ours, other),
                ]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return lines


def target_lines(data: dict[str, Any]) -> list[str]:
    idx = _index(data["results"])
    lines = [
        "| target | measured | reference (same run) | ratio | goal | met |",
        "|---|---:|---:|---:|---:|:-:|",
    ]

    def row(what: str, measured: str, ref: str, ratio: float, goal: str, ok: bool) -> None:
        met = "yes" if ok else "no"
        lines.append(f"| {what} | {measured} | {ref} | {ratio:.3f} | {goal} | {met} |")

    for job, min_rps, max_p99 in TARGETS:
        ours = idx.get(("var_keeper", job, 64, ""))
        plain = idx.get((PLAIN, job, 64, ""))
        if not ours or not plain or not plain["rps"]:
            continue
        if min_rps is not None:
            ratio = ours["rps"] / plain["rps"]
            row(
                f"{job} req/s vs the plain app",
                f"{_num(ours['rps'])} req/s",
                f"{_num(plain['rps'])} req/s",
                ratio,
                f"≥ {min_rps}",
                ratio >= min_rps,
            )
        ratio = ours["p99_ms"] / plain["p99_ms"] if plain["p99_ms"] else float("inf")
        row(
            f"{job} p99 vs the plain app",
            f"{_num(ours['p99_ms'], 1)} ms",
            f"{_num(plain['p99_ms'], 1)} ms",
            ratio,
            f"≤ {max_p99}",
            ratio <= max_p99,
        )
    for job in JOBS:
        runs = [idx.get(("var_keeper", job, c, "")) for c in ERROR_CONNECTIONS]
        if all(runs):
            kinds: dict[str, int] = {}
            for r in runs:
                for kind, count in (r or {}).get("error_kinds", {}).items():
                    kinds[kind] = kinds.get(kind, 0) + count
            errors = sum(r["errors"] for r in runs if r)
            detail = ", ".join(f"{k} {v}" for k, v in kinds.items() if v) or "none"
            lines.append(
                f"| {job}: errors at 64 and 256 conns (socket, timeout > 2 s, non-2xx) | "
                f"{errors} ({detail}) | n/a | n/a | 0 | {'yes' if errors == 0 else 'no'} |"
            )
    for job in ("GET", "POST distinct"):
        ours = idx.get(("var_keeper", job, 64, ""))
        for ref_name in ("mysqlslap", "constant", "webdis", "etcd v2"):
            ref = idx.get((ref_name, job, 64, ""))
            if ours and ref and ref["rps"]:
                unit = "q/s" if ref_name == "mysqlslap" else "req/s"
                lines.append(
                    f"| {job} req/s vs {ref_name} (reported) | {_num(ours['rps'])} req/s | "
                    f"{_num(ref['rps'])} {unit} | {ours['rps'] / ref['rps']:.3f} | - | - |"
                )
    return lines


def scaling_table(data: dict[str, Any]) -> list[str]:
    rows = [r for r in data["results"] if r["note"].startswith("rows=")]
    if not rows:
        return []
    rows.sort(key=lambda r: (r["job"], r["connections"], int(r["note"][5:])))
    lines = [
        "| job | conns | rows | req/s | p50 ms | p99 ms | errors | p50 / p50 at fewest rows |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    first: dict[tuple[str, int], float] = {}
    for r in rows:
        base = first.setdefault((r["job"], r["connections"]), r["p50_ms"])
        growth = r["p50_ms"] / base if base else 0.0
        lines.append(
            f"| {r['job']} | {r['connections']} | {int(r['note'][5:]):,} | {_num(r['rps'])} | "
            f"{_num(r['p50_ms'], 2)} | {_num(r['p99_ms'], 2)} | {r['errors']} | {growth:.2f} |"
        )
    return lines


def matrix_table(data: dict[str, Any]) -> list[str]:
    rows = [r for r in data["results"] if r["note"] == "matrix"]
    if not rows:
        return []
    memory = data["meta"].get("matrix_memory", {})
    db_connections = data["meta"].get("matrix_db_connections", {})
    lines = [
        "| gunicorn config | GET req/s | GET p99 ms | POST distinct req/s | POST p99 ms | errors "
        "| peak RSS / worker MiB | peak DB connections |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label in dict.fromkeys(r["target"] for r in rows):
        get = next((r for r in rows if r["target"] == label and r["job"] == "GET"), None)
        post = next((r for r in rows if r["target"] == label and r["job"] == "POST distinct"), None)
        errors = sum(r["errors"] for r in (get, post) if r)
        lines.append(
            f"| {label} | {_num(get and get['rps'])} | {_num(get and get['p99_ms'], 1)} | "
            f"{_num(post and post['rps'])} | {_num(post and post['p99_ms'], 1)} | {errors} | "
            f"{_num(memory.get(label), 1)} | {db_connections.get(label, 'n/a')} |"
        )
    return lines


def _medians(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (target, job, connections): the median of its rounds' rps and p99."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["target"], r["job"], r["connections"]), []).append(r)
    merged = []
    for group in groups.values():
        merged.append(
            {
                **group[0],
                "rps": statistics.median(r["rps"] for r in group),
                "p99_ms": statistics.median(r["p99_ms"] for r in group),
                "errors": sum(r["errors"] for r in group),
                "rounds": len(group),
            }
        )
    return merged


def compare_table(data: dict[str, Any]) -> list[str]:
    rows = [r for r in data["results"] if r["note"] == "compare"]
    if not rows:
        return []
    rows = _medians(rows)
    labels = list(dict.fromkeys(r["target"] for r in rows))
    head = ["job", "conns"] + [f"{lb} req/s (p99 ms)" for lb in labels]
    head += [f"{lb} / shipped" for lb in labels[1:]]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    idx = {(r["target"], r["job"], r["connections"]): r for r in rows}
    for job, conns in dict.fromkeys((r["job"], r["connections"]) for r in rows):
        cells = [job, str(conns)]
        base = idx.get((labels[0], job, conns))
        for lb in labels:
            r = idx.get((lb, job, conns))
            cells.append(f"{_num(r['rps'])} ({_num(r['p99_ms'], 1)})" if r else "n/a")
        for lb in labels[1:]:
            cells.append(_ratio(idx.get((lb, job, conns)), base))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def profile_lines(data: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for job, prof in data["meta"].get("profiles", {}).items():
        lines += [
            f"**{job}**, 64 connections, {prof['samples']} samples "
            f"(GIL holder, all workers; stacks: `{prof['stacks_file']}`)",
            "",
            "| area (leaf frame) | % | top self frames | % |",
            "|---|---:|---|---:|",
        ]
        areas, frames = prof["areas_pct"], prof["self_pct"][:10]
        for i in range(max(len(areas), len(frames))):
            a = areas[i] if i < len(areas) else ("", "")
            f = frames[i] if i < len(frames) else ("", "")
            lines.append(
                f"| {a[0]} | {a[1]} | `{f[0]}` | {f[1]} |" if f[0] else f"| {a[0]} | {a[1]} | | |"
            )
        lines.append("")
    return lines


def write(data: dict[str, Any], out: Path, chart: bool = True) -> None:
    meta = data["meta"]
    memory = meta.get("memory", {})
    workers = memory.get("workers", [])
    lines = [
        "# var_keeper benchmark",
        "",
        "Generated by `make bench` (`python -m bench.run`); every figure below comes from one run,",
        "references interleaved job by job. The machine is shared and noisy: read the ratios.",
        "",
        f"- started {meta.get('started')}, {meta.get('cpus')} CPUs, {meta.get('duration_s')} s "
        f"per measurement, wrk `{meta.get('wrk')}`",
        f"- MariaDB {meta.get('mariadb')} (private instance, durable commits), Python "
        f"{meta.get('python')}, etcd {meta.get('etcd', 'n/a')}",
        f"- {meta.get('gunicorn_config')}: {meta.get('workers')} workers",
        f"- connector at start-up: {meta.get('connector')}; the plain app's: "
        f"{meta.get('plain_connector', 'n/a')} (both started in the environment `python app.py` "
        "gives gunicorn: storage/mysql/driver.py, environ_for_c_extension)",
        f"- references: `bench/plain_app.py` (same stack, no features: one statement a request) "
        f"and its `/constant` route (the stack's ceiling), under gunicorn "
        f"{meta.get('plain_app', 'n/a')}; `mysqlslap, our write` is the database running the "
        "statements of our write one by one",
        "",
        "## Targets (64 connections unless said)",
        "",
        *target_lines(data),
        "",
        "## Throughput by concurrency",
        "",
        "![throughput](throughput.png)",
        "",
        *throughput_tables(data),
    ]
    if scaling := scaling_table(data):
        lines += [
            "## Cost as the table grows (random names, random listing pages)",
            "",
            *scaling,
            "",
        ]
    if workers:
        peaks = ", ".join(f"{w['peak_mib']:.1f}" for w in workers)
        lines += [
            "## Memory",
            "",
            f"Peak RSS (VmHWM) per gunicorn worker after the load above: {peaks} MiB; "
            f"master {memory.get('master_rss_mib', 0):.1f} MiB.",
            "",
        ]
    if matrix := matrix_table(data):
        lines += [
            "## gunicorn: worker class x processes x threads (64 connections)",
            "",
            *matrix,
            "",
        ]
    if compare := compare_table(data):
        rounds = max(
            r.get("rounds", 1)
            for r in _medians([r for r in data["results"] if r["note"] == "compare"])
        )
        lines += [
            "## Proposed changes beside the shipped app (same run)",
            "",
            f"Medians of {rounds} interleaved rounds; the last columns are ratios to `shipped`.",
            "",
            *compare,
            "",
        ]
    if profiles := profile_lines(data):
        lines += ["## Profile of the loaded workers (py-spy)", "", *profiles]
    if one_client := meta.get("one_client"):
        lines += [
            "## Where a request's time goes (one client, same run, same MariaDB)",
            "",
            "Per request, microseconds. `bench.inprocess` calls the apps directly (no gunicorn,",
            "no network client): wall time, the serving thread's CPU, the database server's CPU;",
            "then the time inside each of our app-wide hooks, and a request without any of them;",
            "then cProfile's self time per module. `bench.statements` sends our statements and",
            "the plain app's from one client.",
            "Where the database and the app share the cores, the two CPU figures together bound",
            "the throughput.",
            "",
        ]
        for text in one_client.values():
            lines += ["```", text, "```", ""]
    (out / "results.md").write_text("\n".join(lines).rstrip() + "\n")
    if chart and any(not r["note"] for r in data["results"]):
        draw(data, out / "throughput.png")


def draw(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = _index(data["results"])
    jobs = ("GET", "POST same", "POST distinct", "list")
    targets = ("var_keeper", "mysqlslap", *PEERS)
    styles = {
        "var_keeper": "o-",
        "mysqlslap": "s--",
        "mysqlslap, our write": "s:",
        "plain app": "D-",
        "constant": "x--",
        "webdis": "^:",
        "etcd v2": "v:",
    }
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharex=True)
    for ax, job in zip(axes.flat, jobs, strict=True):
        for target in targets:
            points = sorted(
                (c, r["rps"])
                for (t, j, c, note), r in idx.items()
                if t == target and j == job and not note
            )
            if points:
                label = "mysqlslap (database limit)" if target == "mysqlslap" else target
                ax.plot([p[0] for p in points], [p[1] for p in points], styles[target], label=label)
        ax.set_title(job)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks([1, 8, 64, 256], labels=["1", "8", "64", "256"])
        ax.grid(True, which="both", alpha=0.3)
        ax.set_ylabel("requests (queries) / s")
        ax.legend(fontsize=8)
    for ax in axes[1]:
        ax.set_xlabel("concurrent connections")
    meta = data["meta"]
    fig.suptitle(
        f"var_keeper vs database limit and peers — {meta.get('cpus')} CPUs, "
        f"{meta.get('duration_s')} s runs, {meta.get('started')}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def smoke_problems(data: dict[str, Any]) -> list[str]:
    """What makes the CI smoke run fail: a job that answered nothing; any error of ours; a
    reference (the plain app, mysqlslap...) that failed more than 1 % of its requests. A
    reference's rare error is not ours to fix and not the benchmark failing to run (the plain
    app once answered one GET of 3,203 with an error status in CI): it is printed, not fatal."""
    problems = []
    for r in data["results"]:
        ours = r["target"] == "var_keeper"
        if r["rps"] <= 0 or (r["errors"] > (0 if ours else 0.01 * r.get("requests", 0))):
            problems.append(f"{r['target']} {r['job']} c={r['connections']}: {r}")
        elif r["errors"]:
            print(f"bench: note: {r['target']} {r['job']} c={r['connections']}: {r}")
    return problems
