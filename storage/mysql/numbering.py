"""Numbering MySQL's change log: every committed entry gets its seq just after the commit.

A write inserts its entry with seq NULL in its own transaction: nothing in the write path is
shared by every write, so writers do not queue on one lock and, on a multi-primary Galera
cluster, do not conflict with each other at commit (a counter row touched by every write made
every pair of concurrent writes on two nodes a certification conflict). Seqs are given
afterwards, to committed entries only, under the lock of the one-row counter ``var_seq``:
dense and in the order they are given, so a reader that has seen seq N has seen every change
up to N and a watcher can never skip one. (An AUTO_INCREMENT allocated at insert would commit
out of order; on Galera it is not even increasing across nodes.) ``id`` only identifies an
entry until it has a seq.

Whoever reads seqs and finds an entry without one numbers (the change feed's poller, SSE and
long-poll requests, history reads: their own query tells them, at no extra cost), and so does
the sweeper, so that the log is numbered with nobody watching.
"""

from __future__ import annotations

from typing import Any

from storage.mysql.connections import MySQLConnections
from storage.mysql.errors import NotApplied

# Entries given a seq at a time: one short transaction, one UPDATE of at most this many rows.
SEQUENCE_BATCH = 1000


def number(connections: MySQLConnections, *, pending: bool = False, backlog: bool = True) -> None:
    """Give the committed entries without a seq the next seqs, in id order, except that each
    name's entries take the order of their versions. Unless ``pending`` (the caller saw such
    an entry), it first looks: one indexed read. Batches follow while the last one was full,
    unless not ``backlog``.

    Two processes at once: on one server the second finds the counter locked and leaves (SKIP
    LOCKED: the first is numbering); on Galera one of them fails certification (1213) because
    the other did the work. Either way nothing is numbered twice and nothing waits, and what is
    left over is numbered by the next call, so a conflict is not retried here.
    """
    look = "SELECT id FROM var_changes WHERE seq IS NULL LIMIT 1"
    while pending or connections.query(look):
        pending = False
        try:
            read = connections.transaction(_number_batch, retried=False)
        except NotApplied:
            return
        if read < SEQUENCE_BATCH or not backlog:
            return


def _number_batch(cur: Any) -> int:
    """Number a batch of entries in the caller's transaction; return how many were read (the
    batch's size: when full, there may be more)."""
    # SKIP LOCKED (MySQL 8.0.1+, MariaDB 10.6+): if another process holds the counter, it is
    # numbering right now; no row means leave it to that one.
    cur.execute("SELECT n FROM var_seq WHERE id = 1 FOR UPDATE SKIP LOCKED")
    counter = cur.fetchall()
    if not counter:
        return 0
    last = int(counter[0][0])
    # A consistent read, so no lock on an entry being inserted. Holding the counter, this
    # transaction is the only one numbering: what it reads without a seq stays so.
    cur.execute(
        "SELECT id, name, version FROM var_changes WHERE seq IS NULL ORDER BY id LIMIT %s",
        (SEQUENCE_BATCH,),
    )
    rows = [(int(i), bytes(name), int(version)) for i, name, version in cur.fetchall()]
    read = len(rows)
    if not rows:  # another process numbered them after our look
        return 0
    if read == SEQUENCE_BATCH:
        # The batch may hold a name's later version and not an earlier one (on Galera, nodes
        # draw ids from their own ranges): the earlier ones join the batch.
        cur.execute(
            "SELECT id, name, version FROM var_changes WHERE seq IS NULL AND name IN "
            f"({', '.join(['%s'] * len(rows))})",
            [name for _, name, _ in rows],
        )
        more = [(int(i), bytes(name), int(version)) for i, name, version in cur.fetchall()]
        rows = with_earlier_versions(rows, more)
    give_seqs(cur, last, in_version_order(rows))
    return read


def give_seqs(cur: Any, last: int, ids: list[int]) -> None:
    """In the caller's transaction, which holds the counter at ``last``: give the entries
    ``ids`` the seqs last+1, last+2, ... in that order, and move the counter past them."""
    marks = ", ".join(["%s"] * len(ids))
    # FIELD(id, a, b, ...) is id's 1-based position in the list: seq last+1, last+2, ...
    cur.execute(
        f"UPDATE var_changes SET seq = %s + FIELD(id, {marks}) "
        f"WHERE id IN ({marks}) AND seq IS NULL",
        [last, *ids, *ids],
    )
    if cur.rowcount != len(ids):  # numbered by another process meanwhile: undone
        raise NotApplied("the change log was numbered by another process meanwhile")
    cur.execute("UPDATE var_seq SET n = %s WHERE id = 1", (last + len(ids),))


def with_earlier_versions(
    batch: list[tuple[int, bytes, int]], candidates: list[tuple[int, bytes, int]]
) -> list[tuple[int, bytes, int]]:
    """``batch`` of (id, name, version) rows, plus those of ``candidates`` that are a batch
    name's version below the newest the batch has of it."""
    newest: dict[bytes, int] = {}
    for _, name, version in batch:
        newest[name] = max(newest.get(name, 0), version)
    return sorted({*batch, *(row for row in candidates if row[2] < newest.get(row[1], 0))})


def in_version_order(rows: list[tuple[int, bytes, int]]) -> list[int]:
    """The ids of (id, name, version) rows in id order, except that the places a name's rows
    take are given to its versions in ascending order."""
    ordered = sorted(rows)
    by_name: dict[bytes, list[tuple[int, bytes, int]]] = {}
    for row in ordered:
        by_name.setdefault(row[1], []).append(row)
    queues = {name: iter(sorted(group, key=lambda r: r[2])) for name, group in by_name.items()}
    return [next(queues[name])[0] for _, name, _ in ordered]
