"""Row selection on the device: the cascade's uncertain rows and top-K's best rows.

The serving runtimes of a pipeline calibrated with ``device="cuda"``
(:class:`~willow.cascades.runtime.ServingRuntime`, :class:`~willow.topk.runtime.TopKRuntime`)
select rows here instead of with NumPy (top-K's final K only when the candidates' scores are on
the device already): the confidence or score vector is taken onto the device
(``xp.asarray``: no copy when it is already a device array), compared or partitioned there (a
mask and ``flatnonzero``; ``argpartition`` then a sort of the chosen rows only), and only the
selected positions come back to the host. The functions are written against the array-module
seam (:func:`willow.gpu.runtime.array_module`: CuPy on a GPU, NumPy under the CUDA simulator),
so CI runs every line of them.

They give exactly the CPU functions' rows, in the same order, ties included:
:func:`rows_below` is ``np.flatnonzero(~(confidence >= threshold))`` (NaN confidence is
uncertain) and :func:`top_positions` is :func:`willow.topk.ranking.top_positions` (``-score``
ascending, NaN last, ties by lowest position) itself, run in the device's array module: its ties
are decided by an explicit sort on ``(key, position)``, so the result does not depend on
whether the device's sort is stable.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from willow.gpu import runtime
from willow.topk import ranking

__all__ = ["rows_below", "top_positions", "sorted_top_positions"]


def _positions(xp: Any, rows: Any) -> np.ndarray:
    """Device positions as a host ``intp`` array (what the CPU selection returns)."""
    return np.asarray(runtime.to_host(rows, "selected positions"), dtype=np.intp)


def rows_below(confidence: Any, threshold: float) -> np.ndarray:
    """Host positions of the rows whose ``confidence`` is not ``>= threshold`` (NaN included),
    ascending: the rows the cascade's full pipeline must answer. Confidences on the device are
    compared there and only the positions come back; host confidences (an approximate model whose
    output head runs on the host) are compared on the host, which costs less than sending them."""
    if not runtime.is_device_array(confidence):  # a mask costs less than the transfer
        return np.flatnonzero(~(np.asarray(confidence) >= threshold))
    xp = runtime.array_module()
    return _positions(xp, xp.flatnonzero(~(confidence >= threshold)))


def top_positions(scores: Any, m: int) -> np.ndarray:
    """Host positions of the ``m`` highest ``scores``, best first, ties by lowest position, NaN
    last: :func:`willow.topk.ranking.top_positions` computed on the device."""
    xp = runtime.array_module()
    return _positions(xp, ranking.top_positions(scores, int(m), xp))


def sorted_top_positions(scores: Any, m: int) -> np.ndarray:
    """The positions of :func:`top_positions` in ascending order (top-K's candidate rows)."""
    xp = runtime.array_module()
    return _positions(xp, xp.sort(ranking.top_positions(scores, int(m), xp)))
