"""A consistent snapshot of a MySQL store whose position is exact although seqs come later.

The view is one transaction ``WITH CONSISTENT SNAPSHOT`` under REPEATABLE READ (the session
stays READ COMMITTED). Its position must be a seq such that the view holds exactly the changes
up to it; but an entry gets its seq after its commit (``storage.mysql.numbering``), so the
view may show entries that are committed and not numbered yet. So the snapshot begins while
another connection holds the log's counter (nobody numbers meanwhile), and that connection
then numbers exactly the unnumbered entries the view shows, next after the counter, before it
lets go. Those are the view's last changes (a name's earlier versions committed before its
later ones, so the view holds them too); everything committed after the snapshot began gets
a higher seq. The backlog is numbered first, so that only the last instant's entries are left.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from storage import queries
from storage.dialect import MYSQL
from storage.mysql import numbering
from storage.mysql.connections import MySQLConnections
from storage.mysql.errors import retrying
from storage.snapshot import Snapshot


@contextmanager
def consistent_snapshot(connections: MySQLConnections) -> Iterator[Snapshot]:
    """The store at one instant, on one pooled connection (and briefly a second one)."""
    numbering.number(connections)
    with connections.cursor() as cur:

        def attempt() -> Snapshot:
            try:
                return connections.transaction(lambda lock: _begin(lock, cur), retried=False)
            except BaseException:
                cur.execute("ROLLBACK")  # the snapshot of an attempt that did not number
                raise

        # On Galera another node may number at the same moment: then it all starts again.
        view = retrying(attempt)
        try:
            yield view
        finally:
            cur.execute("ROLLBACK")  # read only: nothing to commit


def _begin(lock: Any, cur: Any) -> Snapshot:
    """In ``lock``'s transaction, holding the counter: begin the snapshot on ``cur`` and
    number the entries it shows unnumbered (committed with ``lock``'s transaction)."""
    lock.execute("SELECT n FROM var_seq WHERE id = 1 FOR UPDATE")
    last = int(lock.fetchall()[0][0])
    cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")

    def rows(sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        cur.execute(sql, params)
        return cur.fetchall()

    view = Snapshot.begin(MYSQL, rows)
    unnumbered = rows(f"SELECT id, {queries.CHANGE_COLUMNS} FROM var_changes WHERE seq IS NULL")
    if not unnumbered:
        return view
    entries = {int(row[0]): row[1:] for row in unnumbered}
    ids = numbering.in_version_order(
        [(entry_id, bytes(row[1]), int(row[2])) for entry_id, row in entries.items()]
    )
    numbering.give_seqs(lock, last, ids)
    pending = [queries.change((last + n, *entries[i][1:])) for n, i in enumerate(ids, 1)]
    return view.with_pending(pending)
