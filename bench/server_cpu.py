"""The CPU time a database server on this machine has used (bench.inprocess, bench.statements).

On this benchmark's machine the database and the app share the cores, so what a request costs
the server bounds the throughput as much as what it costs the app.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class ServerCpu:
    """A server process's user and system CPU seconds, from /proc (Linux): its pid read from
    the file the server names (``@@pid_file``). All its threads count, so anything else it
    serves meanwhile counts too."""

    SERVERS = ("mariadbd", "mysqld")
    tick = 1 / os.sysconf("SC_CLK_TCK")  # the resolution of ``seconds()``

    def __init__(self, pid: int) -> None:
        self._stat = Path(f"/proc/{pid}/stat")
        # A pid file of another server (a container's path that exists here too, a stale
        # file whose pid was reused) must not pass for this one's.
        if Path(f"/proc/{pid}/comm").read_text().strip() not in self.SERVERS:
            raise ValueError(f"process {pid} is not a MySQL or MariaDB server")

    @classmethod
    def of(cls, cursor: Any) -> ServerCpu | None:
        """The server ``cursor`` talks to; None if it is not ours to look at (another
        machine's, or a pid file we may not read)."""
        cursor.execute("SELECT @@pid_file")
        try:
            server = cls(int(Path(cursor.fetchall()[0][0]).read_text().strip()))
            server.seconds()
        except (OSError, ValueError, TypeError, IndexError):
            return None
        return server

    def seconds(self) -> float:
        # After the command's name, which may hold spaces: utime and stime (fields 14 and 15).
        fields = self._stat.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * self.tick
