"""The array-module seam between willow's CUDA kernels and the arrays they read.

On a machine with an NVIDIA GPU, ``xp`` is CuPy: rows are moved host -> device once per call as
CuPy arrays, which Numba's CUDA kernels take through ``__cuda_array_interface__``. Under Numba's
CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, what CI runs) ``xp`` is NumPy and the same glue runs
on host arrays, so every line of it is exercised without a GPU.

The simulator must be chosen before ``numba.cuda`` is first imported (Numba picks the simulator
or the real driver at that import); this module imports it only inside functions.

:func:`current_device` is the device operators are lowered for right now (set by
:func:`willow.gpu.device.use_device`; a context variable, so concurrent calibrations do not see
each other's).
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar

import numpy as np

from willow.errors import DeviceUnavailableError

__all__ = [
    "DEVICES",
    "check_device",
    "current_device",
    "simulator_active",
    "cuda_module",
    "array_module",
    "to_device",
    "to_host",
    "is_device_array",
    "empty",
    "computed",
    "SimulatedDeviceArray",
    "Transfer",
    "count_transfers",
    "synchronize",
    "threads_per_block",
    "finish_where_it_is",
]

T = TypeVar("T")

DEVICES = ("cpu", "cuda")
_INSTALL = "pip install willow[gpu]"
_device: contextvars.ContextVar[str] = contextvars.ContextVar("willow_lowering_device", default="cpu")


def current_device() -> str:
    """The device operators are lowered for right now: ``"cpu"`` unless inside :func:`willow.gpu.device.use_device`."""
    return _device.get()


def simulator_active() -> bool:
    """Whether ``numba.cuda`` is (or, once imported, will be) Numba's CUDA simulator."""
    cuda = sys.modules.get("numba.cuda")
    if cuda is not None:
        return getattr(cuda.jit, "__module__", "").startswith("numba.cuda.simulator")
    from numba.core import config

    return bool(config.ENABLE_CUDASIM)


def cuda_module() -> ModuleType:
    """``numba.cuda`` (the simulator's when it is enabled), imported on first use."""
    from numba import cuda

    return cuda


def check_device(device: Any) -> str:
    """``device`` when this process can run it; otherwise a :class:`DeviceUnavailableError` (or a
    ``ValueError`` for a name other than ``"cpu"``/``"cuda"``) saying what is missing."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}.")
    if device == "cpu" or simulator_active():
        return device
    try:
        import cupy
    except ImportError as exc:
        raise DeviceUnavailableError(
            f'device="cuda" needs CuPy, which is not installed ({exc}). Install the gpu extra '
            f'(`{_INSTALL}`, CUDA 12) on a machine with an NVIDIA GPU, use device="cpu", or set '
            "NUMBA_ENABLE_CUDASIM=1 before importing willow to run the kernels in Numba's CUDA "
            "simulator (slow; for tests)."
        ) from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001 - CuPy raises its own runtime errors without a driver
        count, reason = 0, f"{type(exc).__name__}: {exc}"
    else:
        reason = "CuPy sees no CUDA device"
    if count < 1:
        raise DeviceUnavailableError(
            f'device="cuda" found no usable NVIDIA GPU ({reason}). Run on a machine with one (and '
            f'`{_INSTALL}`), or use device="cpu".'
        )
    if not cuda_module().is_available():
        raise DeviceUnavailableError(
            f'device="cuda": CuPy sees {count} GPU(s) but Numba\'s CUDA target is not available '
            '(check the CUDA toolkit / `pip install numba-cuda`), or use device="cpu".'
        )
    return device


THREADS_PER_BLOCK = 128  # on a GPU
SIMULATOR_THREADS_PER_BLOCK = 16  # the simulator runs a Python thread per CUDA thread


def threads_per_block() -> int:
    """CUDA threads per block for the one-thread-per-row kernels."""
    return SIMULATOR_THREADS_PER_BLOCK if simulator_active() else THREADS_PER_BLOCK


def array_module() -> ModuleType:
    """``cupy`` on a real GPU, ``numpy`` under the simulator: what device arrays are made with."""
    if simulator_active():
        return np
    import cupy

    return cupy


class SimulatedDeviceArray(np.ndarray):
    """A NumPy array that stands for a device array under the simulator.

    :func:`to_device` returns one, so a device operator can tell an array already "on the device"
    (the output of another device operator, left there) from a host array it must copy over, as
    it tells a CuPy array from a NumPy one on a GPU; :func:`to_host` returns a plain ``ndarray``.
    NumPy keeps the subclass through ufuncs and slicing; functions that drop it (``np.asarray``)
    give host-looking arrays, which is harmless: the mark only avoids a copy.
    """


@dataclass(frozen=True)
class Transfer:
    """One copy between host and device: ``direction`` is ``"to_device"`` or ``"to_host"``,
    ``what`` the caller's name for the array (``"tree rows"``, ``"uncertain rows"``...)."""

    direction: str
    what: str
    shape: tuple[int, ...]
    nbytes: int


_transfers: contextvars.ContextVar[list[Transfer] | None] = contextvars.ContextVar(
    "willow_transfers", default=None
)


@contextlib.contextmanager
def count_transfers() -> Iterator[list[Transfer]]:
    """Record every host <-> device copy :func:`to_device` and :func:`to_host` make inside the
    ``with`` block (in this context: this thread or task) in the list it yields. Tests read it to
    check that a chain of device operators moves its inputs over once and its result back once;
    outside such a block nothing is recorded."""
    log: list[Transfer] = []
    token = _transfers.set(log)
    try:
        yield log
    finally:
        _transfers.reset(token)


def _record(direction: str, what: str, array: Any) -> None:
    log = _transfers.get()
    if log is not None:
        log.append(Transfer(direction, what, tuple(array.shape), int(array.nbytes)))


def is_device_array(array: Any) -> bool:
    """Whether ``array`` is on the device already: a CuPy array on a GPU, a
    :class:`SimulatedDeviceArray` under the simulator."""
    if isinstance(array, SimulatedDeviceArray):
        return True
    cupy = sys.modules.get("cupy")
    return cupy is not None and isinstance(array, cupy.ndarray)


def empty(shape: Any, dtype: Any) -> Any:
    """An uninitialised device array (marked as one under the simulator: see
    :class:`SimulatedDeviceArray`)."""
    xp = array_module()
    out = xp.empty(shape, dtype=dtype)
    return out.view(SimulatedDeviceArray) if xp is np else out


def computed(array: Any) -> Any:
    """``array``, computed in the device's array module from device arrays, marked as the device
    array it is: CuPy's results are device arrays already; NumPy functions standing in for them
    under the simulator (``np.asarray``, ``np.zeros``) drop the :class:`SimulatedDeviceArray` mark."""
    if simulator_active() and isinstance(array, np.ndarray):
        return array.view(SimulatedDeviceArray)
    return array


def to_device(array: Any, dtype: Any = None, what: str = "array") -> Any:
    """``array`` as a C-contiguous device array (of ``dtype`` when given: converted on the device,
    after the transfer, so a float32 array crosses the bus at half the size). An array on the
    device already is not copied over (only made contiguous / converted there); a copy that is
    made is recorded as ``what`` (see :func:`count_transfers`)."""
    xp = array_module()
    if is_device_array(array):
        moved = xp.ascontiguousarray(array)
    else:
        host = np.asarray(array)
        _record("to_device", what, host)
        moved = xp.ascontiguousarray(xp.asarray(host))
        if xp is np:  # the simulator: a copy, marked as a device array
            moved = np.array(moved, copy=True).view(SimulatedDeviceArray)
    if dtype is not None and moved.dtype != dtype:
        moved = moved.astype(dtype)
    if xp is np and not isinstance(moved, SimulatedDeviceArray):
        moved = moved.view(SimulatedDeviceArray)
    return moved


def to_host(array: Any, what: str = "array") -> np.ndarray:
    """A device array back as a NumPy array (recorded as ``what``, see :func:`count_transfers`)."""
    _record("to_host", what, array)
    if simulator_active():
        return np.asarray(array).view(np.ndarray)
    import cupy

    return cupy.asnumpy(array)


def synchronize() -> None:
    """Wait for the device's queued work (a no-op under the simulator)."""
    if not simulator_active():
        import cupy

        cupy.cuda.Device().synchronize()


def finish_where_it_is(finish: Any, array: Any) -> Any:
    """``finish(array)`` on the device when ``finish`` (a lowering's NumPy head: a squeeze, a
    sigmoid, labels) works on device arrays, which CuPy's NumPy protocols give for most; a head
    that needs a host array (CuPy refuses implicit conversion with a ``TypeError``) gets one."""
    try:
        result = finish(array)
    except TypeError:
        if simulator_active():  # the "device" array is a host array: that error is the head's own
            raise
        return finish(to_host(array, "scores for a host output head"))
    if simulator_active() and type(result) is np.ndarray:
        result = result.view(SimulatedDeviceArray)  # CuPy's head would have given a device array
    return result
