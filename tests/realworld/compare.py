"""Comparing a decorated pipeline's output with its original's: exactly, or row by row."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

__all__ = ["RTOL", "ATOL", "assert_same", "assert_same_kind", "row_agreement"]


# Floating-point outputs (probabilities, decision values, regressions) may differ in the last bits:
# compiled kernels sum in their own order. The tolerance is the project's for probabilities.
RTOL, ATOL = 1e-9, 1e-12


def assert_same(output: Any, reference: Any) -> None:
    """``output`` is ``reference``'s type and equals it (values, dtype, shape, index): exactly,
    floating-point values to ``RTOL``/``ATOL``."""
    assert_same_kind(output, reference)
    if isinstance(reference, pd.Series | pd.DataFrame):
        exact = not any(
            np.dtype(d).kind in "fc" for d in np.atleast_1d(reference.dtypes) if isinstance(d, np.dtype)
        )
        check = (
            pd.testing.assert_series_equal
            if isinstance(reference, pd.Series)
            else pd.testing.assert_frame_equal
        )
        check(output, reference, check_exact=exact, rtol=RTOL, atol=ATOL)
    elif isinstance(reference, np.ndarray) and reference.dtype.kind in "fc":
        np.testing.assert_allclose(output, reference, rtol=RTOL, atol=ATOL, strict=True)
    elif isinstance(reference, np.ndarray):
        np.testing.assert_array_equal(output, reference, strict=True)
    elif isinstance(reference, list) and any(isinstance(v, float) for v in reference):
        np.testing.assert_allclose(np.asarray(output), np.asarray(reference), rtol=RTOL, atol=ATOL)
    else:
        assert output == reference


def assert_same_kind(output: Any, reference: Any) -> None:
    """Same type, and for arrays and pandas objects the same dtype and shape."""
    assert type(output) is type(reference), (
        f"returned {type(output).__name__}, the original {type(reference).__name__}"
    )
    if isinstance(reference, np.ndarray | pd.Series | pd.DataFrame):
        assert output.shape == reference.shape, (output.shape, reference.shape)
        if not isinstance(reference, pd.DataFrame):
            assert output.dtype == reference.dtype, (output.dtype, reference.dtype)
    elif isinstance(reference, list):
        assert len(output) == len(reference), (len(output), len(reference))
        assert [type(v) for v in output] == [type(v) for v in reference]


def _rows(value: Any) -> np.ndarray:
    if isinstance(value, pd.Series | pd.DataFrame):
        return value.to_numpy()
    return np.asarray(value)


def row_agreement(output: Any, reference: Any) -> float:
    """Fraction of rows on which the two outputs make the same decision: equal values (numbers to
    ``RTOL``/``ATOL``), or for 2-D probabilities the same most likely class."""
    out, ref = _rows(output), _rows(reference)
    if len(ref) == 0:
        return 1.0
    if ref.ndim == 2 and ref.dtype.kind == "f":
        agree = np.argmax(out, axis=1) == np.argmax(ref, axis=1)
    elif ref.dtype.kind == "f":  # decision values, regressions: equal to the stated tolerance
        agree = np.isclose(out, ref, rtol=RTOL, atol=ATOL)
    elif ref.ndim == 2:
        agree = np.all(out == ref, axis=1)
    else:
        agree = out == ref
    return float(np.mean(agree))
