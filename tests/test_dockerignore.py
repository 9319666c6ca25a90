"""What `docker build` sends as the build context, by Docker's own .dockerignore matching rules.

The Dockerfile copies the whole context into /app, so .dockerignore alone decides what the image
holds. The rules come from the ``docker`` SDK, which implements the CLI's matching.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from docker.utils.build import exclude_paths

from tests.servers import ROOT

RUNTIME_FILES = ["app.py", "db.py", "web.py", "gunicorn.conf.py", "openapi.json", "requirement.txt"]

# Clutter a working tree collects; none of it may reach an image.
OUTSIDE = [
    ".git/HEAD",
    ".github/workflows/docker-publish.yml",
    ".ci/run",
    ".venv/bin/python",
    "venv/lib/site.py",
    "__pycache__/app.cpython-313.pyc",
    "static/__pycache__/x.cpython-313.pyc",
    "stray.pyc",
    ".pytest_cache/v/cache/nodeids",
    ".ruff_cache/CACHEDIR.TAG",
    ".mypy_cache/3.13/app.meta.json",
    ".hypothesis/examples/x",
    "instance/var_keeper.db",
    "var_keeper.db",
    "data/var_keeper.db-wal",
    "data/var_keeper.db-shm",
    "secrets/db_password.txt",
    ".env",
    "local.env",
    "tests/test_api.py",
    "bench/run.py",
    "compose.yaml",
    "Makefile",
    "requirement-dev.txt",
    "pyproject.toml",
    "README.md",
    "docs/operations.md",
]

# Runtime files to come (templates, static assets, modules) ship without editing the ignore list.
INSIDE = [*RUNTIME_FILES, "observability.py", "templates/index.html", "static/app.js", "LICENSE"]


def build_context(root: Path) -> set[str]:
    """The files and directories under ``root`` that the build context holds."""
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    return exclude_paths(str(root), patterns)


@pytest.fixture(scope="module")
def cluttered_context(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    root = tmp_path_factory.mktemp("context")
    for name in [*OUTSIDE, *INSIDE]:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    return build_context(root)


@pytest.mark.parametrize("path", OUTSIDE)
def test_non_runtime_file_stays_out_of_the_context(cluttered_context: set[str], path: str) -> None:
    assert path not in cluttered_context


@pytest.mark.parametrize("path", INSIDE)
def test_runtime_file_is_in_the_context(cluttered_context: set[str], path: str) -> None:
    assert path in cluttered_context


def test_repository_context_holds_the_runtime_files_and_every_top_level_module() -> None:
    context = build_context(ROOT)
    modules = [path.name for path in ROOT.glob("*.py")]

    assert set(RUNTIME_FILES) <= context
    assert set(modules) <= context


def test_repository_context_holds_nothing_from_the_working_tree_clutter() -> None:
    context = build_context(ROOT)
    top_levels = {path.split("/", 1)[0] for path in context}

    assert not top_levels & {".git", ".venv", "venv", ".ci", "tests", "secrets", ".pytest_cache"}
    assert not [path for path in context if "__pycache__" in path or path.endswith(".db")]
