"""The helpers a generated function calls as ``_willow.<name>(...)`` while serving.

One :class:`ServingRuntime` belongs to one calibrated plan. It holds the approximate model (for
a cascade), the compiled operators (``_willow.ops``), the description of the original output and
the identity of the model and fitted objects the plan was calibrated with; it keeps no per-call
state, so a generated function can serve several threads at once.
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from willow.cascades.approximate import ApproximateModel
from willow.cascades.outputs import OutputSpec
from willow.errors import ModelChangedWarning, WillowError
from willow.fingerprints import fingerprint
from willow.gpu.runtime import current_device
from willow.rows import n_rows
from willow.rows import take_rows as _take_rows

__all__ = ["ServingRuntime", "ModelGuard", "with_original_errors", "early_exit_counts"]

# Per thread: rows that reached a cascade's approximate model, and those it answered (read by
# willow.serve around each batch; per thread, so concurrent callers do not mix their counts).
_exits = threading.local()


def early_exit_counts() -> tuple[int, int]:
    """Cumulative ``(rows through a cascade's approximate model, rows it answered)`` in this
    thread; the difference of two readings around a call is that call's early-exit count."""
    return getattr(_exits, "rows", 0), getattr(_exits, "early", 0)


def with_original_errors(function: Callable, original: Callable) -> Callable:
    """``function`` (a generated serving function) whose failures are the original's.

    When the serving function raises (a malformed frame reaching a cascade fails in the
    approximate model's features, with another error than the full pipeline would give), the
    original function runs on the same arguments: its exception is raised (its type and
    message, not the cascade's), or, should it succeed, its result is returned with a warning.
    Calls that succeed pay one extra Python frame.
    """

    @functools.wraps(function)
    def serve(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - the original decides what the caller sees
            failure = error
        try:
            result = original(*args, **kwargs)
        except Exception as exc:
            exc.__suppress_context__ = True  # the original's own error, as if it had run alone
            raise
        warnings.warn(
            f"The optimized pipeline failed on this batch ({type(failure).__name__}: {failure}) where "
            "the original function did not; returning the original's output. Please report this "
            "as a willow bug.",
            RuntimeWarning,
            stacklevel=2,
        )
        return result

    return serve


class ModelGuard:
    """Checks that the model passed at call time is the one a plan was calibrated with.

    The first call with a new model object hashes it; later calls with the same object are an
    identity check. A model refitted in place keeps its identity: call ``calibrate`` again after
    refitting.
    """

    def __init__(self, fingerprint: str, model: Any | None = None) -> None:
        self.fingerprint = fingerprint
        self._verified = model

    def __call__(self, model: Any) -> bool:
        if model is self._verified:
            return True
        if fingerprint(model) == self.fingerprint:
            self._verified = model
            return True
        warnings.warn(
            f"The model passed to this pipeline ({type(model).__name__}) is not the one it was "
            "calibrated with, so the cascade's approximate model and threshold do not apply to it; "
            "running the original function instead. Call calibrate() with this model to cascade it.",
            ModelChangedWarning,
            stacklevel=4,
        )
        return False

    def __getstate__(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "_verified": None}


class ServingRuntime:
    """Serving-time helpers of one calibrated plan.

    ``device`` is where the cascade selects its uncertain rows: ``"cpu"`` (NumPy) or ``"cuda"``
    (:mod:`willow.gpu.selection`, the same rows); by default the device operators are being
    lowered for (:func:`willow.gpu.runtime.current_device`, the pipeline's ``device=``).
    """

    device = "cpu"

    def __init__(
        self,
        approximate: ApproximateModel | None,
        output: OutputSpec,
        original: Callable,
        guard: ModelGuard,
        operators: Any = None,
        objects: tuple[Any, ...] = (),
        device: str | None = None,
    ) -> None:
        self.device = current_device() if device is None else device
        self.approximate_model = approximate
        self.output = output
        self.original = original
        self.same_model = guard
        self.ops = operators
        self._objects = objects
        self._fingerprints: tuple[str, ...] | None = None  # of the calibrated objects, when needed
        self._rejected: tuple[Any, ...] = ()

    def same_objects(self, *objects: Any) -> bool:
        """Whether the compiled fitted objects (vectorizers...) are still the calibrated ones.

        An identity check first; an object that is another one (a global rebound, a vectorizer
        loaded again from its file) is compared by :func:`~willow.fingerprints.fingerprint`, and
        an equal one is adopted. A different one makes the pipeline run the original function
        (with a warning) until it is calibrated again; it is remembered, so later calls with it
        are an identity check too.
        """
        calibrated = self._objects
        if len(objects) == len(calibrated) and all(a is b for a, b in zip(objects, calibrated)):
            return True
        rejected = self._rejected
        same = False
        if not (len(objects) == len(rejected) and all(a is b for a, b in zip(objects, rejected))):
            if len(objects) == len(calibrated):
                if self._fingerprints is None:
                    self._fingerprints = tuple(fingerprint(obj) for obj in calibrated)
                same = all(
                    a is b or fingerprint(a) == expected
                    for a, b, expected in zip(objects, calibrated, self._fingerprints)
                )
            if same:
                self._objects = objects
                return True
            self._rejected = objects
        warnings.warn(
            "A fitted object that willow compiled has been replaced since calibration by one with "
            "other content; running the original function instead. Call calibrate() again to "
            "compile the new object.",
            ModelChangedWarning,
            stacklevel=3,
        )
        return False

    def same_threshold(self, value: Any) -> bool:
        """Whether the threshold the function compares its output to (a global such as
        ``THRESHOLD``) still has the value the cascade was proven for."""
        expected = self.output.margin_threshold
        try:
            same = float(value) == expected
        except (TypeError, ValueError):
            same = False
        if same:
            return True
        warnings.warn(
            f"The threshold this pipeline compares its output to is now {value!r}, but its cascade "
            f"was proven for {expected!r}; running the original function instead. Call calibrate() "
            "again to cascade the new threshold.",
            ModelChangedWarning,
            stacklevel=3,
        )
        return False

    @staticmethod
    def count_rows(**inputs: Any) -> int:
        """The batch's row count; every row input must have the same number of rows."""
        counts = {name: n_rows(value) for name, value in inputs.items()}
        distinct = set(counts.values())
        if len(distinct) > 1:
            found = ", ".join(f"{name}: {count}" for name, count in counts.items())
            raise ValueError(
                f"Found row inputs with inconsistent numbers of rows ({found}); every row input "
                "must describe the same rows."
            )
        return distinct.pop()

    def approximate(self, features: Any) -> tuple[np.ndarray, np.ndarray]:
        """The approximate model's output rows and confidence on every row (with ``device="cuda"``
        the confidence stays on the device when the approximate model's kernel runs there)."""
        assert self.approximate_model is not None
        if self.device == "cuda":
            return self.approximate_model.predict_with_confidence_on_device(features)
        return self.approximate_model.predict_with_confidence(features)

    def approximate_text(self, texts: Any) -> tuple[np.ndarray, np.ndarray]:
        """The approximate model's output rows and confidence, from raw texts (fused kernel)."""
        assert self.approximate_model is not None
        return self.approximate_model.predict_with_confidence_text(texts)

    def rows_below(self, confidence: np.ndarray, threshold: float) -> np.ndarray:
        """Positions of the rows the approximate model is not confident about (ascending)."""
        if self.device == "cuda":
            from willow.gpu.selection import rows_below

            uncertain = rows_below(confidence, threshold)
        else:
            uncertain = np.flatnonzero(~(confidence >= threshold))
        _exits.rows = getattr(_exits, "rows", 0) + confidence.shape[0]
        _exits.early = getattr(_exits, "early", 0) + confidence.shape[0] - uncertain.shape[0]
        return uncertain

    @staticmethod
    def take_rows(values: Any, rows: np.ndarray, expected_rows: int) -> Any:
        """``rows`` of ``values``, after checking ``values`` has one entry per batch row."""
        found = n_rows(values)
        if found != expected_rows:
            raise WillowError(
                f"A value the cascade narrows to its uncertain rows has {found} rows, but the batch "
                f"has {expected_rows}; this pipeline does not compute its features row by row. "
                "Pass strict=False or call the original function."
            )
        return _take_rows(values, rows)

    @staticmethod
    def merge(approx_output: np.ndarray, uncertain: np.ndarray, full_output: Any) -> np.ndarray:
        """The approximate rows with the uncertain ones replaced by the full pipeline's output."""
        full_output = np.asarray(full_output)
        merged = approx_output
        if merged.dtype != full_output.dtype:
            merged = merged.astype(full_output.dtype)
        merged[uncertain] = full_output
        return merged
