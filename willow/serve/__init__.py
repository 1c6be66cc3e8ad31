"""willow.serve: an HTTP front end for a willow pipeline (``python -m willow.serve module:pipeline``).

One module per job: :mod:`~willow.serve.endpoint` (the pipeline, its tiers and JSON rows),
:mod:`~willow.serve.batching` (Clipper's adaptive batching), :mod:`~willow.serve.scaling`
(Proteus-style accuracy scaling), :mod:`~willow.serve.metrics` (Prometheus), :mod:`~willow.serve.app`
(the Starlette routes) and :mod:`~willow.serve.__main__` (the command line, on uvicorn). Starlette,
uvicorn and prometheus-client (the ``serve`` extra) are imported only when an app is built or
served, so ``import willow`` and ``import willow.serve`` do not need them.
"""

from willow.serve.batching import AdaptiveBatcher, AIMDController
from willow.serve.endpoint import RequestError, ServedPipeline
from willow.serve.scaling import AccuracyScaler

__all__ = [
    "ServedPipeline",
    "RequestError",
    "AdaptiveBatcher",
    "AIMDController",
    "AccuracyScaler",
    "create_app",
]


def create_app(*args, **kwargs):
    """:func:`willow.serve.app.create_app` (imports Starlette on first use)."""
    from willow.serve.app import create_app as create

    return create(*args, **kwargs)
