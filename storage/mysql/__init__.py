"""MySQL 8.x, MariaDB and Galera: ``driver`` (mysql-connector, its C extension's environment),
``connections`` (pool, failover, Galera readiness), ``errors`` (what the driver's errors mean,
retrying), ``schema`` (tables and numbered steps), ``numbering`` (the change log's seqs),
``snapshot`` (a snapshot's exact position) and ``store`` (``MySQLStore``: writes and change-log
reads)."""

from storage.mysql.store import MySQLStore

__all__ = ["MySQLStore"]
