"""What every workload module hands the harness: a trained model, a pipeline factory, and data.

A workload module (``benchmarks/toxic.py`` ...) defines ``NAME``, ``FILES`` (the data files it
reads), ``SIZES`` (row counts per scale) and ``prepare(scale) -> Prepared``. Its pipeline is an
ordinary ``@willow.optimize`` function of ``(model, rows)``; ``make_pipeline(**options)`` builds a
fresh, uncalibrated one with the given ``willow.optimize`` options, so the harness can calibrate
several variants (accuracy targets, compile on or off) side by side.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Sizes", "Prepared"]


@dataclass(frozen=True)
class Sizes:
    """Rows per split. ``train`` fits the model (and, where there is no ``history``, the feature
    tables); ``history`` rows only build lookup tables; ``calibrate`` goes to ``calibrate()``;
    ``test`` rows are measured and were seen by neither."""

    train: int
    calibrate: int
    test: int
    history: int = 0
    point_rows: int = 50


@dataclass
class Prepared:
    """A trained workload, ready to be optimized and measured.

    ``optimize_options`` are ``willow.optimize`` keyword arguments this workload's user would
    choose (such as a smaller ``approximate_model``); every optimized variant gets them, except
    the top-K variant, which gets ``topk_options`` (its approximate model is a regressor).
    """

    name: str
    task: str  # "binary", "multiclass" or "regression"
    model: Any
    make_pipeline: Callable[..., Any]
    calibration_rows: Any
    calibration_labels: np.ndarray
    test_rows: Any
    test_labels: np.ndarray
    groups: tuple[str, ...]
    description: str
    sizes: Sizes
    top_k: int | None = None
    optimize_options: dict[str, Any] = field(default_factory=dict)
    topk_options: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    # Workloads whose features are table lookups: the tables as frames, and the same pipeline
    # built over willow.tables tables (``make_table_pipeline(tables, **options)``), for --tables.
    feature_frames: dict[str, Any] | None = None
    make_table_pipeline: Callable[..., Any] | None = None

    def original(self) -> Callable[..., Any]:
        """The undecorated pipeline function."""
        return self.make_pipeline().__wrapped__


def feature_matrix(fn: Callable[..., Any], rows: Any, method: str = "predict_proba") -> Any:
    """The stacked features the undecorated pipeline ``fn`` builds for ``rows``.

    The model argument is a stand-in whose ``method`` returns its input, so the features are
    captured at the model call: training uses exactly the feature code the pipeline runs.
    """

    class _Capture:
        pass

    capture = _Capture()
    setattr(capture, method, lambda X: X)
    return fn(capture, rows)
