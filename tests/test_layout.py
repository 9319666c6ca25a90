"""The architecture the code promises: storage stands without the web framework."""

from __future__ import annotations

import subprocess
import sys

from tests.servers import ROOT

STORAGE_MODULES = sorted(
    ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    for path in (ROOT / "storage").rglob("*.py")
)


def test_every_storage_module_imports_without_flask_or_click():
    # None in sys.modules makes any import of these names fail, as if not installed.
    script = (
        "import sys\n"
        "for blocked in ('flask', 'click', 'werkzeug', 'jinja2'):\n"
        "    sys.modules[blocked] = None\n"
        f"for module in {STORAGE_MODULES!r}:\n"
        "    __import__(module)\n"
        "print(len([m for m in sys.modules if m.startswith('storage')]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == len(STORAGE_MODULES) >= 12


def test_the_storage_package_gives_the_sqlite_store_without_the_mysql_driver(tmp_path):
    script = (
        "import sys\n"
        "sys.modules['mysql'] = None\n"
        "from storage import DatabaseURL, open_store\n"
        f"store = open_store(DatabaseURL.parse('sqlite:///{tmp_path}/v.db'),"
        " connect_timeout=1, timeout=1, pool_size=1)\n"
        "store.ensure_ready()\n"
        "print(store.put('a', '1').version, store.get('a').value)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "1"]
