"""One Numba signature per kernel: input arrays typed read-only, compiled once, then locked.

Numba types an array's read-only flag, and a lazily compiling dispatcher compiles a new
specialization for every new set of argument types: the same kernel called with a writable
array (NumPy's default) and a read-only one (pandas 3's ``to_numpy()``, ``np.frombuffer``, a
memory-mapped plan) is compiled twice, which doubles the compile time of a model's kernels.

:func:`compile_locked` compiles a dispatcher for one explicit signature whose input arrays are
read-only and then disables compilation at call time. A locked dispatcher accepts every argument
that converts safely to a compiled signature, and a writable array converts safely to a read-only
one of the same dtype, rank and layout: both kinds of input run the one machine code, with no copy
and no per-call cost (the dispatcher's type match stays in C). Arguments that do not convert (a
wrong dtype, rank or layout) raise Numba's ``TypeError``: callers hand locked kernels C-ordered,
aligned arrays of the dtype they were compiled for.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
from numba import from_dtype, types

__all__ = ["compile_locked", "readonly_array", "writable_array"]

_LOCK = threading.Lock()


def readonly_array(dtype: Any, ndim: int) -> types.Array:
    """The Numba type of a C-ordered, aligned, read-only ``dtype`` array of ``ndim`` dimensions
    (writable arrays of the same dtype and rank convert to it)."""
    return types.Array(from_dtype(np.dtype(dtype)), ndim, "C", readonly=True)


def writable_array(dtype: Any, ndim: int) -> types.Array:
    """The Numba type of a C-ordered, aligned, writable array (an output the kernel fills)."""
    return types.Array(from_dtype(np.dtype(dtype)), ndim, "C")


def compile_locked(dispatcher: Any, argtypes: Sequence[types.Type]) -> None:
    """Compile ``dispatcher`` for ``argtypes`` (from the disk cache when it is there) and lock it:
    from then on a call uses a compiled signature its arguments convert to, or raises, instead of
    compiling another one.

    A dispatcher shared by kernels of several dtypes (one compiled function, such as
    ``trees_bitvector.score_rows``) is unlocked for the time it takes to add a signature.
    """
    signature = tuple(argtypes)
    with _LOCK:
        if signature not in dispatcher.overloads:
            dispatcher.disable_compile(False)
            try:
                dispatcher.compile(signature)
            finally:
                dispatcher.disable_compile(True)
        else:
            dispatcher.disable_compile(True)
