"""Feature tables: keyed rows of numeric features that a pipeline looks up like ``reindex``.

``table.lookup(keys) -> DataFrame`` returns one float64 row per key, in order, NaN rows for keys
the table does not hold, equal to ``frame.astype("float64").reindex(keys)``
(:mod:`willow.tables.base` states the rule). :class:`MemoryTable` keeps the rows in this process;
:class:`RedisTable` keeps them in Redis (``pip install 'willow[tables]'``; redis-py is imported
only when a RedisTable connects). A pipeline decorated with ``willow.optimize`` that calls
``table.lookup(...)`` in a feature statement is traced and calibrated like any other: the cost
probes time the statement, network round trips included, so a cascade that can answer a row
without that group skips the remote lookup for it.
"""

from willow.errors import TableError, TableFallbackWarning, TableUnavailableError
from willow.tables.base import FeatureTable, TableSchema
from willow.tables.memory import MemoryTable
from willow.tables.redis_table import RedisTable
from willow.tables.server import LocalRedisServer, redis_server_binary

__all__ = [
    "FeatureTable",
    "TableSchema",
    "MemoryTable",
    "RedisTable",
    "LocalRedisServer",
    "redis_server_binary",
    "TableError",
    "TableUnavailableError",
    "TableFallbackWarning",
]
