"""A pipeline whose expensive feature group is a lookup into a feature table (``willow.tables``).

Defined in a real file because willow traces source code; the tests set ``CHEAP`` and ``REMOTE``
(a MemoryTable or RedisTable) before calibrating.
"""

from __future__ import annotations

import numpy as np


def table_pipeline(model, rows):
    cheap = rows[["c0", "c1"]].to_numpy(dtype=float)
    remote = REMOTE.lookup(rows["key"]).to_numpy(dtype=float)
    X = np.hstack([cheap, remote])
    return model.predict(X)


def frame_pipeline(model, rows):
    cheap = rows[["c0", "c1"]].to_numpy(dtype=float)
    remote = FRAME.reindex(rows["key"]).to_numpy(dtype=float)
    X = np.hstack([cheap, remote])
    return model.predict(X)


REMOTE = None
FRAME = None
