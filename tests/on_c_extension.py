"""The MySQL store's own tests again, on the connector's C extension: the driver the image and
``python app.py`` run. The rest of the suite runs where Python's ``ssl`` loaded first, on the
pure-Python driver; tests/test_c_extension.py runs this module in a process whose environment
lets the extension load (``storage.mysql.driver.environ_for_c_extension``). Not named
``test_*``: collected only when given by name."""

from __future__ import annotations

import time

import mysql.connector
import pytest

from storage.mysql import MySQLStore
from tests.servers import server_connection
from tests.test_db import *  # noqa: F403 - every test of the module, on this driver
from tests.test_driver import *  # noqa: F403
from tests.test_one_trip_write import *  # noqa: F403
from tests.test_store_writes import *  # noqa: F403

# The C extension hides its socket, so a connection the server killed is noticed before reuse
# only once it has been idle for a second (storage/mysql/connections.py, ``_idle_alive``):
# this pure-driver test kills and writes at once. Its C-extension form is below.
del test_a_connection_killed_by_the_server_is_replaced_on_the_next_call  # noqa: F821


@pytest.fixture(autouse=True)
def _on_the_c_extension() -> None:
    assert mysql.connector.HAVE_CEXT, "this module must run where the C extension loads"


def test_the_store_here_runs_on_the_c_extension(store: MySQLStore):
    assert not store.connections._use_pure
    with store.connections.cursor() as cur:
        assert type(cur).__mro__[1].__name__ == "CMySQLCursor"  # storage/mysql/driver.py's


def test_a_connection_killed_while_idle_for_a_second_is_replaced(
    store: MySQLStore, mysql_server: str
):
    store.put("k", "before")
    [(victim,)] = store.connections.query("SELECT CONNECTION_ID()")
    admin = server_connection(mysql_server)
    admin.cursor().execute(f"KILL {int(victim)}")
    admin.close()
    time.sleep(1.2)  # idle for over a second: pinged before it is lent again
    assert store.put("k", "after").version == 2
    [(replacement,)] = store.connections.query("SELECT CONNECTION_ID()")
    assert replacement != victim
