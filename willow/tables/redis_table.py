"""RedisTable: a feature table in Redis, looked up with pipelined MGETs of packed rows.

Layout under a key prefix ``P`` (one table per prefix):

- ``P:<key>`` holds one row as packed little-endian float64 bytes (8 bytes per column);
- ``P#schema`` holds the columns, key dtype and index name as JSON;
- ``P#version`` holds a random version token, written last by ``load``, in the same round trip as
  the rows: it exists only once the whole table does.

Every lookup reads ``P#version`` in the same round trip as its rows. A missing version means the
server lost the table (it restarted empty, was flushed, or the prefix was deleted): the lookup
raises :class:`~willow.errors.TableUnavailableError` (or answers from ``fallback``) instead of
returning NaN rows for every key. Another version means the table was reloaded: the schema is
read again and the lookup repeated. A lookup whose share of missing keys jumps far past what the
first lookups saw (a restore from an old snapshot, keys evicted under ``maxmemory``, a partial
load) is refused the same way: the first :data:`BASELINE_KEYS` distinct keys looked up (usually
calibration's) set the expected miss rate, and a later lookup of at least
:data:`MIN_ALARM_KEYS` keys whose misses exceed it by 25 points and are that unlikely under it
(binomial tail below 1e-6) raises. ``check_misses=False`` turns that check off.

Why packed rows and MGET rather than one hash per key and HMGET: a lookup of 2,000 keys x 20
columns on a local server took 6 ms with MGET of packed rows and 149 ms with pipelined HMGETs
(10,000 keys: 48 ms against 766 ms; see ``python -m benchmarks.table_latency``). HMGET sends one
command per key and returns every value as text that Python parses one float at a time; MGET
returns one bytes string per key and the whole batch becomes an array with one ``frombuffer``.

A key under the prefix that holds another Redis type (a hash, a list) reads as missing: MGET
answers nil for it, as for an absent key; ``load`` clears the prefix before writing.

Keys are sent once each (duplicates are looked up once), ``batch_size`` keys per MGET, and up to
8 MGETs share one pipelined round trip. Numeric keys are written as their decimal text (``20``
and ``20.0`` address the same row, as ``reindex`` matches them), strings as themselves.

A server that is down, refuses or times out raises :class:`~willow.errors.TableUnavailableError`
naming ``host:port``, the prefix and the first key of the failed round trip, unless ``fallback``
is set, in which case the whole lookup is answered by the fallback table (with a
:class:`~willow.errors.TableFallbackWarning`); a lookup never returns some rows from Redis and
others from elsewhere, and never returns partial rows.

The object pickles its connection parameters, schema and fallback, not its connection: a
process that unpickles it (a Dask worker) connects on its first lookup.
"""

from __future__ import annotations

import json
import uuid
import warnings
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd

from willow.errors import TableError, TableFallbackWarning, TableUnavailableError
from willow.tables.base import FeatureTable, TableSchema, as_float_frame, check_keys, lookup_index

__all__ = ["RedisTable", "BASELINE_KEYS", "MIN_ALARM_KEYS"]

BASELINE_KEYS = 1000
"""Distinct keys whose misses set a table's expected miss rate (the first lookups: calibration)."""

MIN_ALARM_KEYS = 50
"""A lookup of fewer keys is never refused for its miss rate (too few to tell)."""

_ROUND_TRIP_BATCHES = 8  # MGET commands pipelined per round trip
_HINT = (
    "Check that the server is running and reachable (host, port, db of RedisTable), raise "
    "socket_timeout= if it is only slow, or pass fallback=MemoryTable(frame) to serve lookups "
    "from memory while it is away."
)


def _import_redis() -> Any:
    try:
        import redis
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "RedisTable needs redis-py: pip install 'willow[tables]' (or pip install redis)."
        ) from exc
    return redis


def _encode_keys(uniques: np.ndarray, numeric_table: bool) -> list[str | None]:
    """Each key's text in Redis: numbers in decimal (integral floats as integers), strings as
    themselves. ``None`` for a key that ``reindex`` could not match in a table with these key
    kinds (a string in a numeric-keyed table, a number in a string-keyed one): it is not sent."""
    if uniques.dtype.kind in "iu":
        return uniques.astype(str).tolist() if numeric_table else [None] * len(uniques)
    out: list[str | None] = []
    for key in uniques.tolist():
        is_number = isinstance(key, (int, float, np.integer, np.floating)) and not isinstance(key, bool)
        if is_number != numeric_table:
            out.append(None)
        elif isinstance(key, (int, np.integer)) or is_number and float(key).is_integer():
            out.append(str(int(key)))
        else:
            out.append(str(key))
    return out


class RedisTable(FeatureTable):
    """A feature table stored in Redis (see the module docstring for the layout and errors).

    ``RedisTable("redis://host:6379/0", prefix="user")`` or ``RedisTable(host=..., port=...)``;
    ``table.load(frame)`` (or ``RedisTable.from_frame(frame, url, prefix=...)``) writes a frame;
    ``table.lookup(keys)`` equals ``frame.astype("float64").reindex(keys)``.

    ``socket_timeout`` (seconds) bounds every connect and read; ``batch_size`` is the number of
    keys per MGET; ``fallback`` is a table with the same columns that answers lookups while the
    server is unavailable, has lost the table, or misses far more keys than it used to (see the
    module docstring); ``check_misses=False`` turns the last check off.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 6379,
        db: int = 0,
        password: str | None = None,
        prefix: str = "willow",
        socket_timeout: float = 1.0,
        batch_size: int = 2000,
        fallback: FeatureTable | None = None,
        check_misses: bool = True,
    ) -> None:
        if url is not None:
            parsed = urlparse(url)
            if parsed.scheme not in ("redis", "rediss"):
                raise ValueError(f"RedisTable url must look like redis://host:port/db; got {url!r}.")
            host = parsed.hostname or host
            port = parsed.port or port
            if parsed.path.strip("/"):
                db = int(parsed.path.strip("/"))
            password = unquote(parsed.password) if parsed.password else password
        if not prefix or any(c in prefix for c in "*?[]"):
            raise ValueError(
                f"prefix must be a non-empty name without glob characters (*?[]); got {prefix!r}."
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        if socket_timeout <= 0:
            raise ValueError(f"socket_timeout must be positive seconds, got {socket_timeout}.")
        if fallback is not None and not isinstance(fallback, FeatureTable):
            raise TypeError(
                f"fallback must be a willow.tables table (MemoryTable...); got {type(fallback).__name__}."
            )
        self.host, self.port, self.db, self.password = host, int(port), int(db), password
        self.prefix = prefix
        self.socket_timeout = float(socket_timeout)
        self.batch_size = int(batch_size)
        self.fallback = fallback
        self.check_misses = bool(check_misses)
        self._schema: TableSchema | None = None
        self._version: str | None = None
        self._client: Any = None
        self._baseline = [0, 0]  # distinct keys looked up, of which missing, up to BASELINE_KEYS

    # ------------------------------------------------------------------ connection and pickling

    @property
    def server(self) -> str:
        """``host:port`` of the server, as error messages name it."""
        return f"{self.host}:{self.port}"

    def _redis(self) -> Any:
        if self._client is None:
            redis = _import_redis()
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            self._client = redis.Redis(
                host=self.host,
                port=self.port,
                db=self.db,
                password=self.password,
                socket_timeout=self.socket_timeout,
                socket_connect_timeout=self.socket_timeout,
                # One immediate retry reconnects a pooled connection the server dropped; a server
                # that is really gone fails fast instead of backing off.
                retry=Retry(NoBackoff(), 1),
            )
        return self._client

    def close(self) -> None:
        """Drop the connection pool (the next lookup reconnects)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client"] = None
        return state

    def __repr__(self) -> str:
        return f"RedisTable({self.server}/{self.db}, prefix={self.prefix!r})"

    def _unavailable(self, exc: BaseException, doing: str) -> TableUnavailableError:
        kind = "timed out" if "Timeout" in type(exc).__name__ else "is unavailable"
        return TableUnavailableError(
            f"Redis server {self.server} (db {self.db}, table prefix {self.prefix!r}) {kind} while "
            f"{doing} ({type(exc).__name__}: {exc}). {_HINT}"
        )

    def _refused(self, exc: BaseException, doing: str) -> TableError:
        return TableError(
            f"Redis server {self.server} (db {self.db}, table prefix {self.prefix!r}) answered an "
            f"error while {doing}: {exc}. Check db= and password= of RedisTable."
        )

    def _errors(self) -> tuple[type[BaseException], ...]:
        redis = _import_redis()
        return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)

    # ------------------------------------------------------------------ schema

    @property
    def schema(self) -> TableSchema:
        """Columns, key dtype and index name, read from the server once (TableError if absent)."""
        if self._schema is None:
            try:
                raw, version = self._redis().mget([f"{self.prefix}#schema", f"{self.prefix}#version"])
            except self._errors() as exc:
                raise self._unavailable(exc, "reading the schema") from exc
            except _import_redis().exceptions.ResponseError as exc:
                raise self._refused(exc, "reading the schema") from exc
            if raw is None:
                raise TableError(
                    f"No table under prefix {self.prefix!r} on Redis {self.server} db {self.db}: "
                    "write one with RedisTable.load(frame) or RedisTable.from_frame(frame, ...) first."
                )
            if version is None:
                raise TableError(
                    f"The table under prefix {self.prefix!r} on Redis {self.server} db {self.db} has a "
                    "schema but no version key: it was written by an older willow or its load did not "
                    "finish. Write it again with RedisTable.load(frame)."
                )
            self._schema = TableSchema.from_json(json.loads(raw))
            self._version = version.decode() if isinstance(version, bytes) else str(version)
        return self._schema

    @property
    def columns(self) -> tuple[str, ...]:
        return self.schema.columns

    # ------------------------------------------------------------------ writing

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, url: str | None = None, **options: Any) -> RedisTable:
        """A RedisTable with ``options`` (host=, prefix=...) after writing ``frame`` into it."""
        return cls(url, **options).load(frame)

    def load(self, frame: pd.DataFrame, replace: bool = True) -> RedisTable:
        """Write ``frame`` (indexed by key, numeric columns) under this table's prefix.

        ``replace=True`` first deletes every row already under the prefix, so keys that are not
        in ``frame`` are not found afterwards. The schema is written last. Returns ``self``.
        """
        data = as_float_frame(frame, "RedisTable")
        schema = TableSchema.of(data)
        values = np.ascontiguousarray(data.to_numpy(dtype="<f8"))
        numeric = data.index.dtype.kind in "iuf"
        encoded = _encode_keys(np.asarray(data.index), numeric)
        if None in encoded:
            raise TableError(
                "A RedisTable's keys are all numbers or all strings; the frame's index mixes them "
                f"({data.index[:5].tolist()}...)."
            )
        names = [f"{self.prefix}:{k}" for k in encoded]
        client = self._redis()
        try:
            if replace:
                client.delete(f"{self.prefix}#version", f"{self.prefix}#schema")
                stale = list(client.scan_iter(match=f"{self.prefix}:*", count=10_000))
                for start in range(0, len(stale), 10_000):
                    client.unlink(*stale[start : start + 10_000])
            pipe = client.pipeline(transaction=False)
            for start in range(0, len(names), self.batch_size):
                stop = start + self.batch_size
                pipe.mset({name: row.tobytes() for name, row in zip(names[start:stop], values[start:stop])})
            version = uuid.uuid4().hex
            pipe.set(f"{self.prefix}#schema", json.dumps(schema.to_json()))
            pipe.set(f"{self.prefix}#version", version)  # last: the table is complete
            pipe.execute()
        except self._errors() as exc:
            raise self._unavailable(exc, f"loading {len(names)} rows") from exc
        self._schema, self._version = schema, version
        self._baseline = [0, 0]
        return self

    # ------------------------------------------------------------------ reading

    def lookup(self, keys: Sequence[Any] | np.ndarray | pd.Series | pd.Index) -> pd.DataFrame:
        """One float64 row per key, in order; NaN rows for keys not in the table."""
        keys = check_keys(keys)
        try:
            schema = self.schema
            try:
                values = self._fetch(keys, schema)
            except _Reloaded:  # another version was loaded: read its schema, look up again
                self._schema = self._version = None
                self._baseline = [0, 0]
                schema = self.schema
                values = self._fetch(keys, schema)
        except _Reloaded as exc:
            raise TableError(
                f"The table under prefix {self.prefix!r} on Redis {self.server} was reloaded twice "
                "during one lookup; retry the lookup."
            ) from exc
        except TableUnavailableError as exc:
            if self.fallback is None:
                raise
            return self._from_fallback(keys, exc)
        return pd.DataFrame(values, index=lookup_index(keys, schema), columns=schema.column_index, copy=False)

    def _from_fallback(self, keys: Any, exc: TableUnavailableError) -> pd.DataFrame:
        assert self.fallback is not None
        if self._schema is not None and tuple(self.fallback.columns) != self._schema.columns:
            raise TableError(
                f"The fallback of RedisTable {self.prefix!r} has columns {list(self.fallback.columns)}, "
                f"not the table's {list(self._schema.columns)}; build it from the same frame."
            ) from exc
        warnings.warn(TableFallbackWarning(f"{exc} Answered from the fallback table."), stacklevel=3)
        return self.fallback.lookup(keys)

    def _fetch(self, keys: Any, schema: TableSchema) -> np.ndarray:
        # A list goes through pd.Index so mixed keys stay objects (np.asarray would make [10, "x"]
        # two strings) and integer lists stay integers; arrays factorize faster than Series.
        array = np.asarray(keys) if isinstance(keys, (pd.Series, pd.Index, np.ndarray)) else pd.Index(keys)
        codes, uniques = pd.factorize(array, use_na_sentinel=True)
        uniques = np.asarray(uniques)
        n_cols = len(schema.columns)
        row_bytes = 8 * n_cols
        # One extra NaN row at the end: code -1 (a NaN key) takes it.
        table = np.full((len(uniques) + 1, n_cols), np.nan)
        encoded = _encode_keys(uniques, schema.numeric_keys)
        wanted = np.asarray([i for i, name in enumerate(encoded) if name is not None], dtype=np.intp)
        names = [f"{self.prefix}:{encoded[i]}" for i in wanted]
        step = self.batch_size * _ROUND_TRIP_BATCHES
        client = self._redis()
        missing = 0
        for first in range(0, max(len(names), 1), step):
            chunk = names[first : first + step]
            pipe = client.pipeline(transaction=False)
            pipe.get(f"{self.prefix}#version")
            for start in range(0, len(chunk), self.batch_size):
                pipe.mget(chunk[start : start + self.batch_size])
            try:
                replies = pipe.execute()
            except self._errors() as exc:
                n_batches = -(-len(names) // self.batch_size)
                batch = first // self.batch_size + 1
                last = min(batch + _ROUND_TRIP_BATCHES - 1, n_batches)
                if not chunk:
                    raise self._unavailable(exc, "checking the table's version") from exc
                first_key = uniques[wanted[first]]
                first_key = first_key.item() if hasattr(first_key, "item") else first_key
                raise self._unavailable(
                    exc,
                    f"fetching {len(chunk)} keys starting at key {first_key!r} "
                    f"(MGET batches {batch}-{last} of {n_batches}, {self.batch_size} keys each)",
                ) from exc
            except _import_redis().exceptions.ResponseError as exc:
                raise self._refused(exc, f"fetching keys starting at {chunk[0]!r}") from exc
            self._check_version(replies[0])
            rows = [row for reply in replies[1:] for row in reply]
            found = [i for i, row in enumerate(rows) if row is not None]
            missing += len(rows) - len(found)
            if not found:
                continue
            packed = b"".join(rows[i] for i in found)
            if len(packed) != row_bytes * len(found):
                bad = next(i for i in found if len(rows[i]) != row_bytes)
                raise TableError(
                    f"Row {chunk[bad]!r} on Redis {self.server} holds {len(rows[bad])} bytes, not "
                    f"{row_bytes} ({n_cols} float64 columns of the schema): the table was written "
                    "by something else or with other columns. Reload it with RedisTable.load(frame)."
                )
            positions = wanted[np.asarray(found) + first]
            table[positions] = np.frombuffer(packed, dtype="<f8").reshape(len(found), n_cols)
        self._check_misses(missing, len(names))
        return table[codes]

    def _check_version(self, reply: Any) -> None:
        """Refuse a lookup from a server that lost the table; signal a reloaded one."""
        if reply is None:
            raise TableUnavailableError(
                f"Redis server {self.server} (db {self.db}) no longer holds the table under prefix "
                f"{self.prefix!r} (its version key is gone: the server restarted empty, was flushed, "
                "or the table was deleted), so every key would read as missing. Reload the table "
                "with RedisTable.load(frame), or pass fallback=MemoryTable(frame) to serve from memory."
            )
        version = reply.decode() if isinstance(reply, bytes) else str(reply)
        if version != self._version:
            raise _Reloaded(version)

    def _check_misses(self, missing: int, sent: int) -> None:
        """Learn the usual miss rate from the first lookups; refuse one that jumps far past it."""
        seen, seen_missing = self._baseline
        if seen < BASELINE_KEYS:
            self._baseline = [seen + sent, seen_missing + missing]
            return
        if not self.check_misses or sent < MIN_ALARM_KEYS:
            return
        usual = seen_missing / seen
        rate = missing / sent
        if rate < usual + 0.25:
            return
        from scipy.stats import binom

        if binom.sf(missing - 1, sent, max(usual, 0.01)) >= 1e-6:
            return
        raise TableUnavailableError(
            f"Redis server {self.server} (db {self.db}, table prefix {self.prefix!r}) had no row for "
            f"{missing} of {sent} keys ({rate:.1%}), far more than the {usual:.1%} of the first {seen} "
            "keys looked up: it has probably lost rows (restored from an old snapshot, evicted under "
            "maxmemory, or a load that did not finish). Reload the table with RedisTable.load(frame), "
            "pass fallback=MemoryTable(frame), or check_misses=False if such lookups are expected."
        )


class _Reloaded(Exception):
    """The table's version changed between reading its schema and a lookup (it was reloaded)."""
