"""The README's shell examples, run as a new user runs them: in order, against a live gunicorn.

Which blocks run: each ```sh block right below the line ``<!-- test: run -->``. The README's
"Testing" section states the conventions these follow:

- Blocks run in README order, each in one bash process (its variables, such as ``B=``, last
  for the block), all against one server and one fresh database: an example may use what an
  earlier one made, and must make everything else it uses (files included).
- ``localhost:5000`` means the test server; commands run in an empty directory in which
  ``.venv`` is the repository's, so ``.venv/bin/flask --app app`` works as written.
- A command's expected output is its comment: the one at the end of its (last) line, then
  the comment lines right below it. A command without one must print nothing. What it wrote
  to standard output is compared line by line (trailing spaces ignored), ``...`` standing for
  any text (a timestamp ``"...Z"``, an id, the rest of a long answer).
- A comment line that starts a paragraph (first in the block, or after a blank line)
  describes what follows and is not compared. Every command must exit with status 0.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.servers import ROOT, Gunicorn

README = ROOT / "README.md"
MARKER = "<!-- test: run -->"
SEPARATOR = "\x1evk-step"  # printed after each command with its exit status
# Opening and closing words of bash's compound commands: a command goes on until they balance.
_OPENERS = re.compile(r"^(while|until|for|if|case)\b|^[\w-]+\(\)\s*\{\s*$")
_CLOSERS = re.compile(r"^(done|fi|esac)\b|^\}")


@dataclass
class Step:
    """One command of a block, the README line it starts on, and the output it promises."""

    line: int
    command: str
    expected: list[str] = field(default_factory=list)


@dataclass
class Block:
    line: int
    steps: list[Step]


def runnable_blocks(text: str) -> list[Block]:
    """Every ```sh block right below the marker, with its commands."""
    lines = text.splitlines()
    blocks = []
    for number, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        assert lines[number + 1].strip() == "```sh", (
            f"README.md:{number + 1}: {MARKER} not on a sh block"
        )
        end = lines.index("```", number + 2)
        blocks.append(Block(number + 3, steps(lines[number + 2 : end], first_line=number + 3)))
    return blocks


def steps(lines: list[str], first_line: int) -> list[Step]:
    """The commands of a block's ``lines`` and their expected output (module docstring)."""
    found: list[Step] = []
    current: list[str] = []
    expecting: Step | None = None  # the command whose output the next comment lines continue
    for offset, line in enumerate(lines):
        stripped = line.strip()
        if not current and stripped.startswith("#"):
            if expecting is not None:
                expecting.expected.append(stripped[1:].removeprefix(" "))
            continue
        if not current and not stripped:
            expecting = None
            continue
        if not current:
            found.append(Step(first_line + offset, ""))
        current.append(line)
        if not complete(current):
            continue
        quote = ""
        for earlier in current[:-1]:
            quote = open_quote(earlier, quote)
        command, comment = split_comment(current[-1], quote)
        found[-1].command = "\n".join([*current[:-1], command])
        found[-1].expected = [comment] if comment is not None else []
        expecting, current = found[-1], []
    assert not current, f"README.md:{found[-1].line}: the command never ends"
    return found


def complete(lines: list[str]) -> bool:
    """Whether ``lines`` hold a whole command: no open quote, no ``\\`` at the end, every
    compound command closed."""
    quote, depth = "", 0
    for line in lines:
        if not quote:
            word = line.strip()
            depth += bool(_OPENERS.search(word)) - bool(_CLOSERS.search(word))
        quote = open_quote(line, quote)
    return not quote and depth <= 0 and not lines[-1].rstrip().endswith("\\")


def open_quote(line: str, quote: str) -> str:
    """The quote still open at the end of ``line`` (``""``: none), given the one open before."""
    escaped = False
    for char in line:
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote and char == quote:
            quote = ""
        elif not quote and char in "'\"":
            quote = char
        elif not quote and char == "#":
            break  # a comment: its quotes do not count
    return quote


def split_comment(line: str, quote: str = "") -> tuple[str, str | None]:
    """``line`` without its trailing comment, and the comment's text (None if there is none).
    A ``#`` starts a comment, as in bash, only outside quotes (``quote``: the one open at the
    start of the line) and after a space."""
    escaped = False
    for index, char in enumerate(line):
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote and char == quote:
            quote = ""
        elif not quote and char in "'\"":
            quote = char
        elif not quote and char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index].rstrip(), line[index + 1 :].strip()
    return line, None


def matches(expected: list[str], output: str) -> bool:
    """Whether ``output`` is what ``expected`` promises (``...``: any text)."""
    actual = [line.rstrip() for line in output.split("\n")]
    while actual and not actual[-1]:
        actual.pop()
    pattern = ".*?".join(re.escape(part) for part in "\n".join(expected).split("..."))
    return re.fullmatch(pattern, "\n".join(actual), re.S) is not None


def run_block(block: Block, address: str, workdir: Path, env: dict[str, str]) -> None:
    """Run ``block`` in bash; fail at the first command whose output or status differs."""
    script = "".join(
        f"{step.command.replace('localhost:5000', address)}\nprintf '\\n{SEPARATOR} %s\\n' \"$?\"\n"
        for step in block.steps
    )
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    parts = re.split(rf"\n{SEPARATOR} (\d+)\n", done.stdout)
    outputs, statuses = parts[0:-1:2], [int(s) for s in parts[1::2]]
    for index, step in enumerate(block.steps):
        where = f"README.md:{step.line}: {step.command.splitlines()[0]}"
        assert index < len(statuses), f"{where}: never ran (stderr: {done.stderr[-2000:]})"
        assert statuses[index] == 0, f"{where}: exit status {statuses[index]}: {done.stderr}"
        output = outputs[index].replace(address, "localhost:5000")
        assert matches(step.expected, output), (
            f"{where}\n  printed:\n{output}\n  the README says:\n" + "\n".join(step.expected)
        )


# --- The conventions, checked on small examples ---------------------------------------------


def test_a_comment_after_a_command_is_its_output_and_a_paragraph_comment_is_not():
    block = [
        "# Says what follows.",
        "curl -d 'a=#1' x   # OK",
        "curl x",
        "# {",
        "#   ...}",
        "",
        "# Says what follows.",
        "while :; do",
        "  break  # inside: part of the command",
        "done",
        "curl -X PUT -d '{",
        '  "a": 1}\' x  # Created',
    ]
    assert [(s.line, s.command, s.expected) for s in steps(block, first_line=1)] == [
        (2, "curl -d 'a=#1' x", ["OK"]),
        (3, "curl x", ["{", "  ...}"]),
        (8, "while :; do\n  break  # inside: part of the command\ndone", []),
        (11, "curl -X PUT -d '{\n  \"a\": 1}' x", ["Created"]),
    ]


@pytest.mark.parametrize(
    ("expected", "output", "ok"),
    [
        (["hello"], "hello", True),
        (["hello"], "hello\r\n\n", True),
        (["hello"], "hello!", False),
        ([], "", True),
        ([], "OK", False),
        (['{"at":"...Z","v":1}'], '{"at":"2026-01-01T00:00:00.000000Z","v":1}', True),
        (['{"at":"...Z","v":1}'], '{"at":"2026-01-01T00:00:00.000000Z","v":2}', False),
        (["a", "..."], "a\nb\nc", True),
    ],
)
def test_outputs_match_line_by_line_with_dots_for_any_text(expected, output, ok):
    assert matches(expected, output) is ok


# --- The README --------------------------------------------------------------------------------


def test_the_readme_marks_the_examples_a_new_user_follows():
    text = README.read_text(encoding="utf-8")
    blocks = runnable_blocks(text)
    commands = "\n".join(step.command for block in blocks for step in block.steps)
    for example in ("/var/greeting", "If-Match", "?history", "ttl=", "?wait=", "flask --app"):
        assert example in commands, f"no runnable README example uses {example}"


def test_the_readme_names_the_venvs_flask_wherever_it_runs_flask():
    text = README.read_text(encoding="utf-8")
    # The system's flask has neither this app's dependencies nor its commands.
    assert not re.search(r"(?<![/\w])flask --app", text), "say .venv/bin/flask --app app"


@pytest.fixture
def readme_server(gunicorn: Callable[..., Gunicorn], store_url: str) -> Gunicorn:
    return gunicorn({"DATABASE_URL": store_url}, workers=2)


@pytest.mark.slow
def test_every_runnable_readme_example_does_what_it_says(readme_server, store_url, tmp_path):
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    env = {**os.environ, "DATABASE_URL": store_url, "PYTHONPATH": str(ROOT)}
    address = readme_server.base.removeprefix("http://")
    for block in runnable_blocks(README.read_text(encoding="utf-8")):
        run_block(block, address, tmp_path, env)
