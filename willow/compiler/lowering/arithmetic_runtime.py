"""Scalar helpers the generated elementwise kernels call, written as numpy's float64 loops are.

Each mirrors the element rule of a numpy ufunc on float64 (NaN handling included) so a fused
kernel computes, element by element, what the numpy expression computes array by array. They are
inlined into the kernels at Numba IR level. Signed zeros of ``minimum``/``maximum``/``fmin``/
``fmax``/``clip`` follow numpy's scalar loops; numpy's own SIMD loops may pick the other zero
when both operands are zeros (they compare equal, so results are still equal as numbers).
"""

from __future__ import annotations

import numba

__all__ = ["minimum", "maximum", "fmin", "fmax", "clip", "sign", "truth"]

_inline = numba.njit(cache=True, nogil=True, inline="always", error_model="numpy")


@_inline
def minimum(a: float, b: float) -> float:  # pragma: no cover - numba
    if a != a:
        return a
    if b != b:
        return b
    return a if a < b else b


@_inline
def maximum(a: float, b: float) -> float:  # pragma: no cover - numba
    if a != a:
        return a
    if b != b:
        return b
    return a if a > b else b


@_inline
def fmin(a: float, b: float) -> float:  # pragma: no cover - numba
    if b != b:
        return a
    if a != a:
        return b
    return a if a <= b else b


@_inline
def fmax(a: float, b: float) -> float:  # pragma: no cover - numba
    if b != b:
        return a
    if a != a:
        return b
    return a if a >= b else b


@_inline
def clip(x: float, low: float, high: float) -> float:  # pragma: no cover - numba
    # numpy: _NPY_MIN(_NPY_MAX(x, low), high), each propagating a NaN first argument
    if x != x:
        return x
    y = x if x > low else low
    if y != y:
        return y
    return y if y < high else high


@_inline
def sign(a: float) -> float:  # pragma: no cover - numba
    if a > 0.0:
        return 1.0
    if a < 0.0:
        return -1.0
    if a == 0.0:
        return 0.0
    return a


@_inline
def truth(a: float) -> bool:  # pragma: no cover - numba
    """numpy's truth value of a float (NaN is true), as ``np.where`` reads a float condition."""
    return a != 0.0
