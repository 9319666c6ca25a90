"""Variables as environment files: ``GET /var?prefix=P&format=env`` and ``format=shell``.

**Names.** A variable's environment name is the rest of its name after the prefix, each ``/``
written ``__`` and every letter upper-cased: under ``app/prod/``, ``db/host`` is ``DB__HOST``
and ``log_level`` is ``LOG_LEVEL``. The way back is exact: lower-case the environment name,
turn each ``__`` into ``/`` and put the prefix in front (``name_for``). So that it is, the rest
must be one or more segments separated by single ``/``, each made of lower-case ASCII letters
and digits with single ``_`` between them (``db``, ``log_level``, ``v2``), and it must not
start with a digit (an environment name cannot). Anything else (an upper-case letter, ``-``,
``.``, a space, non-ASCII, an empty segment, ``__``, a segment starting or ending with ``_``,
nothing after the prefix) is refused, never renamed: two names must not meet in one variable.

**Values.** ``env`` is Docker's ``--env-file``: ``NAME=value`` a line, the value taken as it is,
without quoting or escapes. A line feed, a carriage return or NUL cannot be written there, and
Docker reads lines of at most 64 KiB; such a value is refused. ``shell`` is
``export NAME='value'`` a line for ``.``/``source``/``eval`` in any POSIX shell: inside single
quotes every byte is literal, and a ``'`` is written ``'\\''`` (close, escaped quote, reopen),
so any value comes back byte for byte, except NUL, which no shell variable can hold.

``render`` checks every variable first and reports all that cannot be written
(``NotExportable``), so that one answer lists everything to fix.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import db

FORMATS = ("env", "shell")
# Docker reads an env file with Go's bufio.Scanner: a line and its "\n" fit in 64 KiB.
MAX_ENV_LINE_BYTES = 64 * 1024 - 1
_SEGMENT = r"[a-z0-9]+(?:_[a-z0-9]+)*"
_EXPORTABLE_REST = re.compile(rf"(?![0-9]){_SEGMENT}(?:/{_SEGMENT})*")


@dataclass(frozen=True, slots=True)
class Offender:
    """A variable that cannot be exported, and every reason why."""

    name: str
    reasons: list[str]


class NotExportable(Exception):
    """Some variables cannot be written in the format asked for: nothing was written."""

    def __init__(self, offenders: list[Offender]) -> None:
        super().__init__(f"{len(offenders)} variables cannot be exported")
        self.offenders = offenders


def env_name(name: str, prefix: str) -> str | None:
    """The environment name of ``name`` under ``prefix``, or None if it has none."""
    rest = name[len(prefix) :] if name.startswith(prefix) else ""
    if not _EXPORTABLE_REST.fullmatch(rest):
        return None
    return rest.replace("/", "__").upper()


def name_for(environment_name: str, prefix: str) -> str:
    """The variable name ``environment_name`` stands for under ``prefix`` (``env_name``'s
    inverse)."""
    return prefix + environment_name.lower().replace("__", "/")


def render(variables: Sequence[db.Variable], prefix: str, export_format: str) -> str:
    """The variables (with values) as an ``env`` or ``shell`` file; NotExportable if any
    cannot be."""
    lines: list[str] = []
    offenders: list[Offender] = []
    for var in variables:
        value = var.value or ""
        environment_name = env_name(var.name, prefix)
        reasons = [] if environment_name else [_name_problem(var.name, prefix)]
        if export_format == "env":
            line = f"{environment_name}={value}"
            reasons += _env_value_problems(value, len(line.encode("utf-8")))
        else:
            line = f"export {environment_name}={shell_quote(value)}"
            if "\0" in value:
                reasons.append("the value contains NUL, which no shell variable can hold")
        if reasons:
            offenders.append(Offender(var.name, reasons))
        lines.append(line + "\n")
    if offenders:
        raise NotExportable(offenders)
    return "".join(lines)


def shell_quote(value: str) -> str:
    """``value`` as one POSIX shell word: single-quoted, each ``'`` written ``'\\''``."""
    return "'" + value.replace("'", "'\\''") + "'"


def _name_problem(name: str, prefix: str) -> str:
    rest = name[len(prefix) :]
    if not rest:
        return "nothing follows the prefix: no environment name"
    return (
        f"{rest!r} is not an exportable name: use lower-case ASCII letters, digits and single _"
        " between them, segments separated by single /, not starting with a digit"
    )


def _env_value_problems(value: str, line_bytes: int) -> list[str]:
    problems = []
    if "\n" in value or "\r" in value:
        problems.append("the value has a line break, which an env file cannot hold")
    if "\0" in value:
        problems.append("the value contains NUL, which an environment variable cannot hold")
    if line_bytes > MAX_ENV_LINE_BYTES:
        problems.append(f"the line would be {line_bytes} bytes; Docker reads at most 65535")
    return problems
