"""willow: serve feature-heavy ML inference pipelines faster, within a proven accuracy target.

Decorate an inference function with :func:`optimize`, call ``.calibrate(...)`` on it with
calibration data, and it serves a cascade (a cheap approximate model on the most valuable cheap
features, the full pipeline only for rows it is unsure about) whose agreement with the original
is proven on held-out rows.
"""

from willow import tables  # noqa: F401 - makes willow.tables importable; not in __all__
from willow._version import __version__
from willow.api import OptimizedPipeline, load, optimize
from willow.cascades.plan import CandidateResult, CascadePlan
from willow.compiler.graph import PipelineGraph
from willow.compiler.profiling import CostProfile
from willow.errors import (
    CalibrationError,
    ModelChangedWarning,
    NotCalibratedError,
    PlanMismatchError,
    UnsupportedPipelineError,
    UnsupportedPipelineWarning,
    WillowError,
)
from willow.options import Options
from willow.topk.plan import TopKPlan

__all__ = [
    "__version__",
    "optimize",
    "load",
    "OptimizedPipeline",
    "Options",
    "PipelineGraph",
    "CostProfile",
    "CascadePlan",
    "CandidateResult",
    "TopKPlan",
    "WillowError",
    "UnsupportedPipelineError",
    "UnsupportedPipelineWarning",
    "NotCalibratedError",
    "CalibrationError",
    "PlanMismatchError",
    "ModelChangedWarning",
]


def __getattr__(name: str):
    """``willow.dask`` is imported on first use, so ``import willow`` never imports dask."""
    if name == "dask":
        import importlib

        return importlib.import_module("willow.dask")
    raise AttributeError(f"module 'willow' has no attribute {name!r}")
