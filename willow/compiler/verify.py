"""Whether a compiled operator's result reproduces the original's, checked at calibration.

Every lowering is verified on the calibration rows before it is used: the compiled result must
have the original's structure (type, shape, dtype, sparsity) and its values, exactly for
integers and strings and to 1e-9 relative / 1e-12 absolute for floats (summation order differs).
Compile passes, approximate models and top-K filters share this one check.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = ["reproduces"]


def reproduces(a: Any, b: Any) -> bool:
    """Whether a compiled result reproduces the original (exact structure, values to 1e-12/1e-9)."""
    if sp.issparse(b):
        if not sp.issparse(a) or a.shape != b.shape or a.dtype != b.dtype:
            return False
        diff = abs(sp.csr_matrix(a) - sp.csr_matrix(b))
        return diff.nnz == 0 or float(diff.max()) <= 1e-12 * max(1.0, float(abs(b).max()))
    if isinstance(b, np.ndarray):
        if not isinstance(a, np.ndarray) or a.shape != b.shape or a.dtype != b.dtype:
            return False
        if np.issubdtype(b.dtype, np.floating):
            return bool(np.allclose(a, b, rtol=1e-9, atol=1e-12, equal_nan=True))
        return bool(np.array_equal(a, b))
    import pandas as pd

    if isinstance(b, (pd.DataFrame, pd.Series)):  # FunctionTransformer(np.log1p) on a frame's columns
        if type(a) is not type(b):
            return False
        check = (
            pd.testing.assert_frame_equal if isinstance(b, pd.DataFrame) else pd.testing.assert_series_equal
        )
        try:
            check(a, b, rtol=1e-9, atol=1e-12)
        except AssertionError:
            return False
        return True
    return False
