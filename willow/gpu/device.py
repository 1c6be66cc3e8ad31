"""Which device a pipeline's operators are lowered for while it is calibrated or restored.

``willow.optimize(device=...)`` is carried to :func:`willow.compiler.lowering.lower` by
:func:`use_device`: it records the device (:func:`willow.gpu.runtime.current_device`) and installs
the device's lowering (:func:`willow.gpu.lowering.lower_cuda` for ``"cuda"``) with
:func:`willow.compiler.lowering.base.lowering_for_device`, with its elementwise-expression
compiler (:func:`willow.gpu.arithmetic.compile_expression_cuda`), so the compiler never imports
the GPU backend.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from willow.compiler.lowering.base import lowering_for_device
from willow.gpu.runtime import _device, check_device

__all__ = ["use_device", "on_pipeline_device", "on_device_of"]

T = TypeVar("T")


@contextlib.contextmanager
def use_device(device: str) -> Iterator[None]:
    """Lower operators for ``device`` inside the ``with`` block (``"cuda"`` is checked first)."""
    device = check_device(device)
    lowering = expressions = None
    if device == "cuda":
        from willow.gpu.arithmetic import compile_expression_cuda as expressions
        from willow.gpu.lowering import lower_cuda as lowering
    token = _device.set(device)
    try:
        with lowering_for_device(lowering, expressions):
            yield
    finally:
        _device.reset(token)


def on_pipeline_device(function: Callable[..., T]) -> Callable[..., T]:
    """Decorate a function whose first argument is an ``OptimizedPipeline``: run it inside
    :func:`use_device` with the pipeline's ``device`` option (``"cpu"`` for an object without
    one), so every operator it lowers is lowered for that device."""

    @functools.wraps(function)
    def wrapper(pipeline: Any, *args: Any, **kwargs: Any) -> T:
        with use_device(getattr(pipeline, "device", "cpu")):
            return function(pipeline, *args, **kwargs)

    return wrapper


def on_device_of(pipeline: Any, function: Callable[[], T]) -> Callable[[], T]:
    """``function`` run inside :func:`use_device` with ``pipeline``'s device, wherever it is called:
    a thread does not inherit the caller's context, so a background compilation of a
    ``device="cuda"`` pipeline would otherwise lower its operators for the CPU."""
    device = getattr(pipeline, "device", "cpu")

    def run() -> T:
        with use_device(device):
            return function()

    return run
