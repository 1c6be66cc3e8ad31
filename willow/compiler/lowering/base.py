"""The lowering contract: what a lowering returns and how an unsupported option is reported.

A *lowering* turns one fitted operator method (``TfidfVectorizer.transform``,
``LogisticRegression.predict_proba``...) into a :class:`CompiledOperator`: a callable that gives
the same result as the original method on the same inputs, computed by a generated Numba kernel
whose source is kept on the object so ``explain()`` can show it. A lowering only reads fitted
attributes; when an option cannot be reproduced exactly it raises :class:`NotLowerable` saying
which option and why, and the caller keeps running the original method.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from willow.errors import WillowError

__all__ = [
    "NotLowerable",
    "CompiledOperator",
    "Lowering",
    "lower_with",
    "DeviceLowering",
    "device_lowering",
    "lowering_for_device",
    "DeviceExpressionCompiler",
    "device_expression_compiler",
]


class NotLowerable(WillowError, TypeError):
    """An object, method or option cannot be compiled exactly; the message gives the reason."""


@dataclass(frozen=True)
class CompiledOperator:
    """A compiled stand-in for one operator method.

    ``name`` says what it replaces (``"TfidfVectorizer.transform"``), ``source`` is the generated
    kernel module exactly as compiled (or, for an operator that needs no generated code,
    ``generated=False``, a description of what it runs), and calling the object runs it.
    """

    name: str
    source: str
    function: Callable[..., Any] = field(repr=False)
    generated: bool = True

    def __call__(self, *inputs: Any) -> Any:
        return self.function(*inputs)


Lowering = Callable[[Any, str], CompiledOperator]


def lower_with(registry: Mapping[type, Lowering], obj: Any, method: str) -> CompiledOperator:
    """Lower ``obj.method`` with the lowering registered for ``type(obj)`` (exact type, no subclasses).

    Subclasses are refused because they may override the very method being replaced.
    """
    lowering = registry.get(type(obj))
    if lowering is None:
        supported = ", ".join(sorted(t.__name__ for t in registry))
        raise NotLowerable(
            f"No lowering for {type(obj).__name__}.{method}: willow compiles only {supported}; "
            "the original method keeps running."
        )
    return lowering(obj, method)


DeviceLowering = Callable[[Any, str], "CompiledOperator | None"]
"""A device backend's lowering: ``obj.method`` compiled for the device, or ``None`` when the type
has none there (the CPU lowering is used). Device backends (:mod:`willow.gpu`) depend on the
compiler, not the other way round: they install theirs with :func:`lowering_for_device`."""

DeviceExpressionCompiler = Callable[..., "tuple[Any, ...] | None"]
"""A device backend's compiler of analysed elementwise expressions: called by
:func:`~willow.compiler.lowering.arithmetic_codegen.compile_expression` with its arguments, it
returns the same ``(operator, arguments, objects)`` triple, or ``None`` when the expression stays
on the CPU. Installed with :func:`lowering_for_device` too."""

_device_lowering: contextvars.ContextVar[tuple[DeviceLowering | None, DeviceExpressionCompiler | None]] = (
    contextvars.ContextVar("willow_device_lowering", default=(None, None))
)


def device_lowering() -> DeviceLowering | None:
    """The device lowering tried first right now, or ``None`` (CPU only)."""
    return _device_lowering.get()[0]


def device_expression_compiler() -> DeviceExpressionCompiler | None:
    """The device's elementwise-expression compiler tried first right now, or ``None`` (CPU only)."""
    return _device_lowering.get()[1]


@contextlib.contextmanager
def lowering_for_device(
    lowering: DeviceLowering | None, expressions: DeviceExpressionCompiler | None = None
) -> Iterator[None]:
    """Try ``lowering`` before the CPU lowerings, and ``expressions`` before the CPU kernel of
    elementwise expressions, inside the ``with`` block (a context variable, so concurrent
    calibrations do not see each other's device)."""
    token = _device_lowering.set((lowering, expressions))
    try:
        yield
    finally:
        _device_lowering.reset(token)
