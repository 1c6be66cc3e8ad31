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

import contextvars
import sys
from types import ModuleType
from typing import Any, TypeVar

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
        import numpy

        return numpy
    import cupy

    return cupy


def to_device(array: Any, dtype: Any = None) -> Any:
    """``array`` as a C-contiguous device array (of ``dtype`` when given: converted on the device,
    after the transfer, so a float32 array crosses the bus at half the size)."""
    xp = array_module()
    moved = xp.ascontiguousarray(xp.asarray(array))
    return moved if dtype is None or moved.dtype == dtype else moved.astype(dtype)


def to_host(array: Any) -> Any:
    """A device array back as a NumPy array."""
    if simulator_active():
        return array
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
        return finish(array)
    except TypeError:
        if simulator_active():  # the "device" array is a host array: that error is the head's own
            raise
        return finish(to_host(array))
