"""MySQL 8.x, MariaDB and Galera: ``connections`` (pool, failover, Galera readiness, errors),
``schema`` (tables and numbered steps), ``numbering`` (the change log's seqs) and ``store``
(``MySQLStore``: writes and change-log reads)."""

from storage.mysql.store import MySQLStore

__all__ = ["MySQLStore"]
