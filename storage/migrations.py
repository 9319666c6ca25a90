"""Schema changes as numbered steps, the number applied recorded in the database itself.

Each store keeps its own table of steps (``storage.sqlite.STEPS``,
``storage.mysql.schema.STEPS``) and where it records how far it got (SQLite's
``PRAGMA user_version``; MySQL's one-row table ``var_schema``). A start that finds the latest
number recorded runs no step and sniffs nothing. Every step is idempotent as well: a database
of a release before the numbering (nothing recorded) runs them all and each finds what is
already there, and on a Galera cluster, where a lock taken on one node does not hold on
another, two instances may run the same step at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("var_keeper.db")

CREATED, MIGRATED, UP_TO_DATE = "created", "migrated", "up to date"


@dataclass(frozen=True, slots=True)
class Step:
    number: int
    description: str
    # Applies the step on a cursor (or connection); says CREATED, MIGRATED or UP_TO_DATE
    # (found done already).
    apply: Callable[[Any], str]


def latest(steps: Sequence[Step]) -> int:
    return steps[-1].number


def run(steps: Sequence[Step], applied: int, cursor: Any) -> str:
    """Apply the steps numbered above ``applied``, in order; return what happened on the whole:
    CREATED if the first step created the schema, MIGRATED if any step changed it, else
    UP_TO_DATE."""
    outcomes = []
    for step in steps:
        if step.number > applied:
            outcome = step.apply(cursor)
            if outcome != UP_TO_DATE:
                log.info("schema step %d (%s): %s", step.number, step.description, outcome)
            outcomes.append(outcome)
    if outcomes and applied == 0 and outcomes[0] == CREATED:
        return CREATED
    return MIGRATED if any(o != UP_TO_DATE for o in outcomes) else UP_TO_DATE
