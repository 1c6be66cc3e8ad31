"""CUDA kernel templates (specialised by :func:`willow.compiler.lowering.astgen.specialize` into
generated modules, never called from here: ``cuda`` is bound in the generated module)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

cuda: Any = None  # the generated module imports numba.cuda


def dense_linear_scores(X, coef_t, intercept, scores):
    """Row ``cuda.grid(1)``'s decision values: the CPU template's loop (features in order, then
    the intercept), one thread per row."""
    row = cuda.grid(1)
    if row < X.shape[0]:
        n_features = coef_t.shape[0]
        for k in range(coef_t.shape[1]):
            total = 0.0
            for j in range(n_features):
                total += X[row, j] * coef_t[j, k]
            scores[row, k] = total + intercept[k]


# numpy's element functions for the elementwise kernels, as CUDA device functions. Numba's CUDA
# target has no np.sqrt/np.floor/... loops, and Python's math.floor/math.sqrt (which the
# simulator runs) return ints or raise, so each is written to give numpy's float64 result both on
# the device and in the simulator (signed zeros included; a NaN's sign bit is unspecified).
TWO_POW_52 = 4503599627370496.0  # from here on every float64 is an integer


def np_sqrt(x):
    if x < 0.0:
        return np.nan
    return math.sqrt(x)


def np_trunc(x):
    if not abs(x) < TWO_POW_52:  # NaN, infinities and integers that large are their own trunc
        return x
    return math.copysign(float(int(x)), x)


def np_floor(x):
    t = np_trunc(x)
    return t - 1.0 if t > x else t


def np_ceil(x):
    t = np_trunc(x)
    return t + 1.0 if t < x else t


def np_rint(x):
    """Round half to even, as numpy's rint."""
    t = np_floor(x)
    d = x - t
    if d > 0.5 or (d == 0.5 and t * 0.5 != np_trunc(t * 0.5)):
        t += 1.0
    return math.copysign(t, x)


def np_isinf(x):
    return math.isinf(x)


def np_isfinite(x):
    return math.isfinite(x)
