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

:class:`LayoutKernel` is for kernels whose arrays come in whatever memory order the caller's data
has (generated array expressions: NumPy's C order, pandas' Fortran-ordered frames, strided
slices). C and Fortran layouts are different machine code (the contiguous axis is known at compile
time, which is what lets LLVM vectorize), so it compiles one signature per combination of C/F
layouts a call brings, still with read-only inputs (writable and read-only arrays share it), and
one "any layout" signature for everything else, in a second dispatcher of the same function.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
from numba import from_dtype, typeof, types

__all__ = ["compile_locked", "readonly_array", "writable_array", "LayoutKernel", "any_layout_twin"]

_LOCK = threading.Lock()


def readonly_array(dtype: Any, ndim: int, layout: str = "C", aligned: bool = True) -> types.Array:
    """The Numba type of a read-only ``dtype`` array of ``ndim`` dimensions, C-ordered and aligned
    by default (writable arrays of the same dtype and rank convert to it; with ``layout="A"`` and
    ``aligned=False``, arrays of every layout and alignment do)."""
    return types.Array(from_dtype(np.dtype(dtype)), ndim, layout, readonly=True, aligned=aligned)


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


def _layout(array: np.ndarray) -> str:
    """The layout Numba's ``typeof`` gives ``array`` (C wins for arrays that are both)."""
    return "C" if array.flags.c_contiguous else "F" if array.flags.f_contiguous else "A"


class LayoutKernel:
    """Calls ``dispatcher`` with one compiled signature per combination of C/Fortran layouts of its
    array arguments (read-only typed except the arrays at ``written`` positions, negative ones
    counted from the end, so writable and read-only inputs share it), and calls with any other array (strided, unaligned) through one
    signature that types every array as any layout, unaligned, in a second dispatcher of the same
    function (sharing its disk cache).

    Signatures are compiled on the first call that needs them (from the disk cache when there).
    A call that matches a compiled signature costs what calling the dispatcher costs: the locked
    dispatcher's type match stays in C; the first call of a new combination, and every call of the
    any-layout kind, pay a rejected match first (tens of microseconds of typing in Python). The two
    kinds live in separate dispatchers because a locked dispatcher holding both a C and an
    any-layout signature refuses a writable C array as ambiguous (both convert equally).
    """

    def __init__(self, dispatcher: Any, written: Collection[int] = (0,)) -> None:
        self.dispatcher = dispatcher
        self.written = frozenset(written)
        self.any_layout: Any = None
        self._locked = False  # Numba locks a dispatcher only once it has a signature

    @property
    def signatures(self) -> list[tuple[types.Type, ...]]:
        """Every compiled signature, the exact-layout ones first."""
        twin = [] if self.any_layout is None else list(self.any_layout.signatures)
        return list(self.dispatcher.signatures) + twin

    def __call__(self, *args: Any) -> Any:
        if not self._locked:
            return self._first_call(args)
        try:
            return self.dispatcher(*args)
        except TypeError:  # no compiled signature takes these arguments (yet)
            return self._first_call(args)

    def _signature(self, args: Sequence[Any], exact: bool) -> tuple[types.Type, ...]:
        signature = []
        for position, value in enumerate(args):
            if isinstance(value, np.ndarray):
                layout, aligned = (_layout(value), True) if exact else ("A", False)
                dtype = from_dtype(value.dtype)
                readonly = position not in self.written and position - len(args) not in self.written
                signature.append(types.Array(dtype, value.ndim, layout, readonly=readonly, aligned=aligned))
            else:
                signature.append(typeof(value))
        return tuple(signature)

    def _first_call(self, args: Sequence[Any]) -> Any:
        arrays = [value for value in args if isinstance(value, np.ndarray)]
        if all(value.flags.aligned and _layout(value) != "A" for value in arrays):
            compile_locked(self.dispatcher, self._signature(args, exact=True))
            self._locked = True
            return self.dispatcher(*args)
        if self.any_layout is None:
            self.any_layout = any_layout_twin(self.dispatcher)
        compile_locked(self.any_layout, self._signature(args, exact=False))
        return self.any_layout(*args)


def any_layout_twin(dispatcher: Any) -> Any:
    """The second dispatcher of ``dispatcher``'s function (same options and disk cache) that
    :class:`LayoutKernel` compiles its any-layout signature in; one per dispatcher, kept on it."""
    from numba.core.caching import NullCache

    from willow.compiler.kernel_cache import harden

    with _LOCK:
        twin = getattr(dispatcher, "willow_any_layout", None)
        if twin is None:
            twin = type(dispatcher)(
                dispatcher.py_func,
                locals=dict(dispatcher.locals),
                targetoptions=dict(dispatcher.targetoptions),
            )
            if not isinstance(dispatcher._cache, NullCache):
                twin.enable_caching()
                harden(twin)
            dispatcher.willow_any_layout = twin
    return twin
