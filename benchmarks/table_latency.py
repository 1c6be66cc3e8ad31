"""``python -m benchmarks.table_latency``: raw lookup latency of feature tables per key batch.

On music's real tables (``genres``: 9,742 movies x 19 columns; ``user``: 610 users x 4), it
times one lookup of a batch of keys drawn from the MovieLens ratings (repeated keys, as in a real
batch) for batch sizes 1, 100, 2,000 and 10,000, through:

- ``pandas``: ``frame.reindex(keys)``, what the music pipeline does by default;
- ``memory``: :class:`willow.tables.MemoryTable`;
- ``redis``: :class:`willow.tables.RedisTable` (packed float64 rows, pipelined MGET) in a local
  redis-server started for the run;
- ``redis-hmget``: the layout RedisTable does not use, one Redis hash per key read with
  pipelined HMGET (kept here to show why: every value comes back as text, parsed one by one).

Every lookup's result is checked against ``reindex``. Medians of ``--repeats`` interleaved runs
(``benchmarks.measure.time_batches``).
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import pandas as pd

from benchmarks import measure, music
from willow.tables import LocalRedisServer, MemoryTable, RedisTable

BATCHES = (1, 100, 2000, 10000)


class HashLayout:
    """A table as one Redis hash per key (field = column, value = text), read with HMGET."""

    def __init__(self, client: Any, prefix: str, frame: pd.DataFrame) -> None:
        self.client, self.prefix = client, prefix
        self.columns = [str(c) for c in frame.columns]
        pipe = client.pipeline(transaction=False)
        for key, row in zip(frame.index.tolist(), frame.to_numpy(dtype=float).tolist()):
            pipe.hset(f"{prefix}:{key}", mapping={c: repr(v) for c, v in zip(self.columns, row)})
        pipe.execute()

    def lookup(self, keys: pd.Series) -> pd.DataFrame:
        codes, uniques = pd.factorize(keys)
        pipe = self.client.pipeline(transaction=False)
        for key in uniques.tolist():
            pipe.hmget(f"{self.prefix}:{key}", self.columns)
        rows = [[np.nan if v is None else float(v) for v in reply] for reply in pipe.execute()]
        values = np.asarray(rows + [[np.nan] * len(self.columns)], dtype=float)[codes]
        return pd.DataFrame(values, index=pd.Index(keys), columns=self.columns)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.table_latency", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--repeats", type=int, default=7, help="timed lookups per point (median)")
    args = parser.parse_args(argv)
    prepared = music.prepare("quick")
    frames = prepared.feature_frames
    assert frames is not None
    ratings = pd.concat([prepared.calibration_rows, prepared.test_rows], ignore_index=True)
    rng = np.random.default_rng(0)
    import redis

    print(f"{'table':<8} {'keys':>6}  {'layout':<12} {'ms/batch':>9} {'us/key':>8}")
    with LocalRedisServer() as server:
        client = redis.Redis(host=server.host, port=server.port)
        for name, key_column in (("genres", "movieId"), ("user", "userId")):
            frame = frames[name]
            layouts = {
                "pandas": frame.reindex,
                "memory": MemoryTable(frame).lookup,
                "redis": RedisTable.from_frame(frame, server.url, prefix=f"packed:{name}").lookup,
                "redis-hmget": HashLayout(client, f"hash:{name}", frame).lookup,
            }
            for size in BATCHES:
                keys = pd.Series(rng.choice(ratings[key_column].to_numpy(), size), name=key_column)
                expected = frame.astype(float).reindex(keys)
                for lookup in layouts.values():
                    np.testing.assert_array_equal(lookup(keys).to_numpy(dtype=float), expected.to_numpy())
                calls = {
                    layout: (lambda lookup=lookup, keys=keys: lookup(keys))
                    for layout, lookup in layouts.items()
                }
                samples = measure.time_batches(calls, args.repeats, min_seconds=0.02)
                for layout, times in samples.items():
                    seconds = float(np.median(times))
                    print(
                        f"{name:<8} {size:>6}  {layout:<12} {seconds * 1e3:>9.3f} {seconds / size * 1e6:>8.2f}"
                    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
