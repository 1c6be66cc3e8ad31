"""Scalar helpers the generated elementwise kernels call, written as numpy's float64 loops are.

Each mirrors the element rule of a numpy ufunc on float64 (NaN handling included) so a fused
kernel computes, element by element, what the numpy expression computes array by array. They are
inlined into the kernels at Numba IR level. Signed zeros of ``minimum``/``maximum``/``fmin``/
``fmax``/``clip`` follow numpy's scalar loops; numpy's own SIMD loops may pick the other zero
when both operands are zeros (they compare equal, so results are still equal as numbers).

The ``row_*`` helpers reduce one row (``buf[:width]``, the row's elements as the kernel computed
them) as numpy reduces ``axis=1`` of a float64 array, which depends on the array's memory order
(measured on numpy 2.4, every row width 0-300, C and F order, signed zeros included): the sum
starts from numpy's identity ``0.0`` and adds, for a C-ordered array (or a single row), the
row's *pairwise* sum (numpy's ``pairwise_sum``: fewer than 8 elements in order; up to 128 in
8 interleaved partial sums combined as ``((r0+r1)+(r2+r3))+((r4+r5)+(r6+r7))`` then the
remainder in order; the kernel refuses wider rows), for an F-ordered one each element in
column order. ``nansum`` is the sum with NaN read as ``0.0`` (numpy replaces them in a copy of
the same layout), ``mean`` the sum divided by the width, ``nanmean`` the NaN-free sum divided
by the count of non-NaN elements, ``nanmax``/``nanmin`` ``fmax``/``fmin`` folded from the first
element (the kernel refuses width 0: numpy raises).
"""

from __future__ import annotations

import sys

import numba

from willow.compiler.kernel_cache import harden_module

__all__ = [
    "minimum",
    "maximum",
    "fmin",
    "fmax",
    "clip",
    "sign",
    "truth",
    "row_sum",
    "row_nansum",
    "row_mean",
    "row_nanmean",
    "row_nanmax",
    "row_nanmin",
]

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


@_inline
def _pairwise(buf, width):  # pragma: no cover - numba
    """numpy's ``pairwise_sum`` of ``buf[:width]`` for ``width <= 128`` (one block)."""
    if width < 8:
        res = 0.0
        for k in range(width):
            res += buf[k]
        return res
    r0, r1, r2, r3 = buf[0], buf[1], buf[2], buf[3]
    r4, r5, r6, r7 = buf[4], buf[5], buf[6], buf[7]
    k = 8
    end = width - width % 8
    while k < end:
        r0 += buf[k]
        r1 += buf[k + 1]
        r2 += buf[k + 2]
        r3 += buf[k + 3]
        r4 += buf[k + 4]
        r5 += buf[k + 5]
        r6 += buf[k + 6]
        r7 += buf[k + 7]
        k += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while k < width:
        res += buf[k]
        k += 1
    return res


@_inline
def row_sum(buf, width, pairwise):  # pragma: no cover - numba
    if pairwise:
        return 0.0 + _pairwise(buf, width)
    res = 0.0
    for k in range(width):
        res += buf[k]
    return res


@_inline
def row_nansum(buf, width, pairwise):  # pragma: no cover - numba
    for k in range(width):
        if buf[k] != buf[k]:
            buf[k] = 0.0
    return row_sum(buf, width, pairwise)


@_inline
def row_mean(buf, width, pairwise):  # pragma: no cover - numba
    return row_sum(buf, width, pairwise) / width


@_inline
def row_nanmean(buf, width, pairwise):  # pragma: no cover - numba
    count = 0
    for k in range(width):
        if buf[k] == buf[k]:
            count += 1
    return row_nansum(buf, width, pairwise) / count


@_inline
def row_nanmax(buf, width, pairwise):  # pragma: no cover - numba
    res = buf[0]
    for k in range(1, width):
        res = fmax(res, buf[k])
    return res


@_inline
def row_nanmin(buf, width, pairwise):  # pragma: no cover - numba
    res = buf[0]
    for k in range(1, width):
        res = fmin(res, buf[k])
    return res


harden_module(sys.modules[__name__])  # checksummed, self-repairing cache files
