"""Lowerings: fitted operators compiled to generated Numba kernels (and one-hot encoding, which
needs no generated code: see :mod:`willow.compiler.lowering.encoders`).

``LOWERINGS`` maps an operator type to the function that compiles one of its methods; it is an
explicit dict (no registration by import side effects) so the supported list is readable here.
Pipelines of several operators are compiled by dedicated fusions: :func:`fuse_text_linear`
(text vectorizers stacked with ``scipy.sparse.hstack`` into a linear model).
"""

from __future__ import annotations

from typing import Any

from willow.compiler.lowering.base import (
    CompiledOperator,
    Lowering,
    NotLowerable,
    device_lowering,
    lower_with,
)
from willow.compiler.lowering.encoders import ENCODER_LOWERINGS
from willow.compiler.lowering.fused import fuse_text_linear
from willow.compiler.lowering.linear import LINEAR_LOWERINGS
from willow.compiler.lowering.preprocessing import PREPROCESSING_LOWERINGS
from willow.compiler.lowering.records import RECORDS_LOWERINGS
from willow.compiler.lowering.text import TEXT_LOWERINGS
from willow.compiler.lowering.trees import TREE_LOWERINGS

__all__ = ["NotLowerable", "CompiledOperator", "LOWERINGS", "lower", "fuse_text_linear"]

LOWERINGS: dict[type, Lowering] = {
    **TEXT_LOWERINGS,
    **LINEAR_LOWERINGS,
    **TREE_LOWERINGS,
    **ENCODER_LOWERINGS,
    **PREPROCESSING_LOWERINGS,
    **RECORDS_LOWERINGS,
}


def lower(obj: Any, method: str) -> CompiledOperator:
    """Compile ``obj.method`` (e.g. ``lower(tfidf, "transform")``) or raise :class:`NotLowerable`.

    Inside ``willow.gpu.use_device("cuda")`` types with a CUDA lowering get it (the device's
    lowering installed with :func:`~willow.compiler.lowering.base.lowering_for_device`, see
    :mod:`willow.gpu.lowering`); the others are compiled for the CPU.
    """
    for_device = device_lowering()
    if for_device is not None:
        operator = for_device(obj, method)
        if operator is not None:
            return operator
    return lower_with(LOWERINGS, obj, method)
