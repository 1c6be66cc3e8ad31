"""CUDA kernel templates (specialised by :func:`willow.compiler.lowering.astgen.specialize` into
generated modules, never called from here: ``cuda`` is bound in the generated module)."""

from __future__ import annotations

from typing import Any

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
