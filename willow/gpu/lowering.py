"""Which operators have a CUDA lowering, and the entry point the CPU lowering defers to.

:func:`willow.compiler.lowering.lower` calls :func:`lower_cuda` first inside
``willow.gpu.use_device("cuda")``, which installs it with
:func:`willow.compiler.lowering.base.lowering_for_device`; ``None`` means "no CUDA lowering for
this type", and the operator is compiled for the CPU as usual, so one pipeline mixes both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["cuda_lowerings", "lower_cuda"]


def cuda_lowerings() -> dict[type, Callable[[Any, str], Any]]:
    """Operator type -> CUDA lowering (exact types, as the CPU registry)."""
    from willow.compiler.lowering.linear import LINEAR_LOWERINGS
    from willow.compiler.lowering.trees import TREE_LOWERINGS
    from willow.gpu.linear import lower_linear_model_cuda
    from willow.gpu.trees import lower_tree_model_cuda

    return {
        **dict.fromkeys(TREE_LOWERINGS, lower_tree_model_cuda),
        **dict.fromkeys(LINEAR_LOWERINGS, lower_linear_model_cuda),
    }


def lower_cuda(obj: Any, method: str) -> Any | None:
    """``obj.method`` compiled for the device, or ``None`` when ``type(obj)`` has no CUDA lowering.

    Raises :class:`~willow.compiler.lowering.base.NotLowerable` for an unsupported method or
    option of a type that has one (as the CPU lowering would).
    """
    lowering = cuda_lowerings().get(type(obj))
    return None if lowering is None else lowering(obj, method)
