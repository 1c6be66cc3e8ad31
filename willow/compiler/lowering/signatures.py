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
layouts a call brings, still with read-only inputs (writable and read-only arrays share it). A
call with a strided (or unaligned) array gets the same kind of signature, its strided arrays typed
any layout ("A"), in a second dispatcher of the same function: one any-layout signature for every
call measured 1.2-1.9x slower than the C/F code on lookups and 1-D arithmetic
(``benchmarks/kernel_signatures.py`` describes the probe).
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
from numba import from_dtype, typeof, types

__all__ = ["compile_locked", "readonly_array", "writable_array", "LayoutKernel", "twin_dispatcher"]

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
    """Calls ``dispatcher`` with one compiled signature per combination of its array arguments'
    layouts, typed read-only except the arrays at ``written`` positions (negative ones counted from
    the end), so writable and read-only inputs share it.

    Combinations of C/Fortran-ordered, aligned arrays live in ``dispatcher`` itself, locked: a call
    that matches costs what calling the dispatcher costs (its type match stays in C) plus this
    wrapper (~0.2 us). A combination with a strided or unaligned array gets a dispatcher of its
    own (a *twin* of the same function, sharing its disk cache), chosen in Python after the locked
    dispatcher refused the call (~1 us more): a locked dispatcher holding both a C and an
    any-layout signature refuses a writable C array as ambiguous, both conversions being equal.
    Signatures are compiled on the first call that needs them (from the disk cache when there).
    """

    def __init__(self, dispatcher: Any, written: Collection[int] = (0,)) -> None:
        self.dispatcher = dispatcher
        self.written = frozenset(written)
        self._locked = False  # Numba locks a dispatcher only once it has a signature

    @property
    def twins(self) -> dict[tuple[tuple[str, bool], ...], Any]:
        """The twin dispatchers, by the layout and alignment of each array argument."""
        return getattr(self.dispatcher, "willow_twins", {})

    @property
    def signatures(self) -> list[tuple[types.Type, ...]]:
        """Every compiled signature, the C/F ones (``dispatcher``'s) first."""
        return list(self.dispatcher.signatures) + [s for twin in self.twins.values() for s in twin.signatures]

    def __call__(self, *args: Any) -> Any:
        if self._locked:
            try:
                return self.dispatcher(*args)
            except TypeError:  # no compiled signature takes these arguments (yet)
                pass
        return self._other_call(args)

    def _signature(self, args: Sequence[Any]) -> tuple[types.Type, ...]:
        signature = []
        for position, value in enumerate(args):
            if isinstance(value, np.ndarray):
                readonly = position not in self.written and position - len(args) not in self.written
                signature.append(
                    types.Array(
                        from_dtype(value.dtype),
                        value.ndim,
                        _layout(value),
                        readonly=readonly,
                        aligned=bool(value.flags.aligned),
                    )
                )
            else:
                signature.append(typeof(value))
        return tuple(signature)

    def _other_call(self, args: Sequence[Any]) -> Any:
        """A call the locked dispatcher does not take: a new C/F combination, or a strided one."""
        key = tuple(
            (_layout(value), bool(value.flags.aligned)) for value in args if isinstance(value, np.ndarray)
        )
        if all(layout != "A" and aligned for layout, aligned in key):
            compile_locked(self.dispatcher, self._signature(args))
            self._locked = True
            return self.dispatcher(*args)
        twin = self.twins.get(key)
        if twin is not None:
            try:  # compiled already unless a dtype or scalar type is new
                return twin(*args)
            except TypeError:
                pass
        else:
            twin = twin_dispatcher(self.dispatcher, key)
        compile_locked(twin, self._signature(args))
        return twin(*args)


def twin_dispatcher(dispatcher: Any, key: Any) -> Any:
    """The dispatcher of ``dispatcher``'s function (same options and disk cache) that a
    :class:`LayoutKernel` compiles ``key``'s signatures in; one per key, kept on ``dispatcher``."""
    from numba.core.caching import NullCache

    from willow.compiler.kernel_cache import harden

    with _LOCK:
        twins = dispatcher.__dict__.setdefault("willow_twins", {})
        if key not in twins:
            twin = type(dispatcher)(
                dispatcher.py_func,
                locals=dict(dispatcher.locals),
                targetoptions=dict(dispatcher.targetoptions),
            )
            if not isinstance(dispatcher._cache, NullCache):
                twin.enable_caching()
                harden(twin)
            twins[key] = twin
        return twins[key]
