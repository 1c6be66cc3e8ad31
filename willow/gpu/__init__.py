"""willow's GPU target: CUDA lowerings of compiled operators, and the array-module seam they run on.

``@willow.optimize(..., device="cuda")`` makes :func:`willow.compiler.lowering.lower` try
:func:`willow.gpu.lowering.lower_cuda` first (trees: :mod:`~willow.gpu.trees`, linear models:
:mod:`~willow.gpu.linear`) and the elementwise-expression compiler try
:mod:`~willow.gpu.arithmetic` first; operators without a CUDA lowering stay on the CPU. The
serving runtimes select cascade and top-K rows with :mod:`~willow.gpu.selection`, and
``explain()`` adds :mod:`~willow.gpu.explain`'s "Devices" section.
Nothing here imports CuPy or ``numba.cuda`` at import time: :mod:`willow.gpu.runtime` does it on
first use, so the package and its CI never need either.
"""

from __future__ import annotations

from willow.gpu.device import use_device
from willow.gpu.runtime import DEVICES, check_device, current_device, simulator_active

__all__ = ["DEVICES", "check_device", "current_device", "simulator_active", "use_device"]
