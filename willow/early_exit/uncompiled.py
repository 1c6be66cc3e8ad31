"""A model cascade in an uncompiled pipeline (``compile=False, early_exit=True``).

Uncompiled, the model call is the library's own Python call, and a model cascade takes the place
of the compiled model call's operator (:func:`~willow.early_exit.wiring.with_model_operator`).
So the pipeline is given exactly one operator, the model call itself (:class:`LibraryCall`: the
library's ``predict``, nothing compiled; every other statement stays Python), and the staged
model, which has its own compiled kernels, stands in for it: the same calibration, proof and
plan as in a compiled pipeline (:func:`~willow.early_exit.planner._calibrate`), with the
library's call answering small batches (``ModelCascade.full``). It serves when it measured at
least :data:`~willow.early_exit.planner.MIN_SPEEDUP` times as fast as the original on the
calibration call (or ``require_faster=False``).

A regressor's ``predict`` returned as it is with ``tolerance=`` is served the same way, its
exits within the tolerance, and so is a thresholded output (``predict_proba(X)[:, 1] > t``), its
exits on the threshold's side (:func:`~willow.early_exit.tiers.uncompiled_model`).

Only where no feature cascade serves: a feature cascade's generated code calls the model in
Python for its uncertain rows. A saved plan keeps the model call as a compiled node, so loading
it compiles the full ensemble (whose tree kernels the staged model shares through the kernel
cache) for the small batches.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from willow.compiler.lowering.base import NotLowerable
from willow.early_exit import planner
from willow.early_exit.calibrate import EarlyExitToleranceError
from willow.early_exit.wiring import recorded, with_cascade
from willow.errors import CalibrationError

__all__ = ["LibraryCall", "consider_uncompiled"]


class LibraryCall:
    """The model call as the library makes it (``model.method(X)``), as an operator."""

    generated = False

    def __init__(self, model: Any, method: str) -> None:
        self.model = model
        self.method = method
        self.name = f"{type(model).__name__}.{method} (the library's own call)"
        self.source = f"# the library's call, not compiled\nmodel.{method}(X)"

    def __call__(self, X: Any) -> Any:
        return getattr(self.model, self.method)(X)


def consider_uncompiled(
    result: Any,
    fn: Any,
    arguments: dict[str, Any],
    options: Any,
    graph: Any,
    model: Any,
    staged: dict[str, Any],
) -> Any:
    """``result`` (an uncompiled calibration's, no feature cascade) served with a model cascade
    in place of the model call when one is proven and fast enough; otherwise ``result`` with its
    reason saying why not."""
    from willow.cascades.calibration import call_with
    from willow.compiler.compile_pass import apply_compilation
    from willow.compiler.profiling import interleaved_seconds

    method = graph.model_call.method
    recipe = {"statement": None, "attribute": f"model_{method}", "method": method, "object": model}
    compilation = apply_compilation(graph, [recipe], LibraryCall, fn)
    plain = replace(result, compilation=compilation)
    try:
        inputs = recorded(plain, fn, arguments, model, cascade=False)
        if len(inputs) != 1:
            raise CalibrationError("the pipeline did not call the model once")
        # a thresholded output keeps its side of the threshold; a regressor's numbers stay
        # within its tolerance= (a classifier's labels take none)
        decision = planner.thresholded_decision(result.output)
        tolerance = None if decision is not None else getattr(options, "tolerance", None)
        cascade = planner._calibrate(
            model, method, inputs[0], options.accuracy_target, options, staged, tolerance=tolerance,
            decision=decision,
        )  # fmt: skip
    except (CalibrationError, NotLowerable, EarlyExitToleranceError) as exc:
        return planner._noted(result, f"No model cascade (compile=False): {str(exc).rstrip('.')}.")
    served = with_cascade(plain, fn, cascade, feature_cascade=False)
    original, staged_seconds = interleaved_seconds(
        [lambda: call_with(fn, arguments), lambda: call_with(served.function.__wrapped__, arguments)],
        max(3, options.cost_repeats),
    )
    speedup = original / staged_seconds
    measured = f"{speedup:.2f}x the original on the calibration call"
    if options.require_faster and speedup < planner.MIN_SPEEDUP:
        return planner._noted(
            result,
            f"A model cascade (staged early exit, its own compiled kernels in place of the uncompiled "
            f"model call) measured {measured}, under the {planner.MIN_SPEEDUP}x it must show, so the "
            "original serves (require_faster=False serves it anyway).",
        )
    plan = cascade.plan
    note = (
        f"Instead, a model cascade serves in place of the uncompiled {plan.model} call (compile=False: "
        f"every other statement stays Python): staged early exit {plan.within + ' ' if plan.within else ''}after "
        f"{', '.join(map(str, plan.stops[:-1]))} of {plan.n_trees} trees, its own compiled kernels "
        f"({measured}; see below)."
    )
    # the plan's figures become the model cascade's own (holdout agreement and bound)
    alone = planner._noted(planner._without_feature_cascade(result, cascade), note)
    return replace(served, plan=replace(alone.plan, measured_speedup=speedup))
