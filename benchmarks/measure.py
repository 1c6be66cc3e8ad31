"""Measurements: batch time, single-row latency, quality against labels and the original, and
the cascade's oracle bound.

Timings of the variants of one workload are interleaved (round-robin over repeats, after one
warm-up call each) so that a busy machine slows them alike; medians are reported.
"""

from __future__ import annotations

import ast
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.metrics import mean_squared_error, r2_score, roc_auc_score

from willow.rows import n_rows, take_rows

__all__ = [
    "time_batches",
    "point_latencies",
    "predicted_labels",
    "quality",
    "agreement",
    "original_top_k",
    "precision_at_k",
    "oracle_bound",
]


def time_batches(
    calls: dict[str, Callable[[], Any]], repeats: int, min_seconds: float = 0.0
) -> dict[str, list[float]]:
    """Wall seconds per call of each zero-argument call.

    Each call is warmed up once; then ``repeats`` interleaved rounds run, whose order alternates
    (ABC, CBA, ...) so that no variant always runs right after another. In a round each call runs
    back to back until ``min_seconds`` have passed (at least once), like ``timeit``'s autorange,
    so that fast calls are not timed from a single noisy reading; the sample is the mean per call.
    """
    for call in calls.values():
        call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    order = list(calls.items())
    for round_ in range(repeats):
        for name, call in order if round_ % 2 == 0 else order[::-1]:
            runs = 0
            start = time.perf_counter()
            while True:
                call()
                runs += 1
                elapsed = time.perf_counter() - start
                if elapsed >= min_seconds:
                    break
            samples[name].append(elapsed / runs)
    return samples


def point_latencies(calls: dict[str, Callable[[Any], Any]], rows: Any, n: int) -> dict[str, np.ndarray]:
    """Seconds per single-row call of each ``call(one_row)`` over the first ``n`` rows, interleaved."""
    singles = [take_rows(rows, np.array([i])) for i in range(min(n, n_rows(rows)))]
    for call in calls.values():
        call(singles[0])
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for one in singles:
        for name, call in calls.items():
            start = time.perf_counter()
            call(one)
            samples[name].append(time.perf_counter() - start)
    return {name: np.asarray(s) for name, s in samples.items()}


def predicted_labels(output: Any, model: Any) -> np.ndarray:
    """Labels from a pipeline output: probabilities become the most likely class."""
    output = np.asarray(output)
    if output.ndim == 2:
        return np.asarray(model.classes_)[np.argmax(output, axis=1)]
    return output


def agreement(task: str, output: Any, reference: Any, model: Any) -> float:
    """Fraction of rows where ``output`` makes the same prediction as ``reference``."""
    if task == "regression":
        return float(
            np.mean(np.isclose(np.asarray(output, float), np.asarray(reference, float), rtol=1e-9, atol=1e-9))
        )
    return float(np.mean(predicted_labels(output, model) == predicted_labels(reference, model)))


def quality(
    task: str, output: Any, labels: np.ndarray, model: Any, positive_class: Any = None
) -> dict[str, float | None]:
    """Accuracy and AUC (classification) or R^2 and RMSE (regression) against the true labels."""
    output = np.asarray(output)
    if task == "regression":
        return {
            "r2": float(r2_score(labels, output)),
            "rmse": float(np.sqrt(mean_squared_error(labels, output))),
        }
    result: dict[str, float | None] = {
        "accuracy": float(np.mean(predicted_labels(output, model) == labels)),
        "auc": None,
    }
    if output.ndim == 2:
        classes = list(model.classes_)
        try:
            if len(classes) == 2:
                positive = positive_class if positive_class in classes else classes[1]
                result["auc"] = float(roc_auc_score(labels == positive, output[:, classes.index(positive)]))
            else:
                result["auc"] = float(roc_auc_score(labels, output, multi_class="ovr", labels=classes))
        except ValueError:
            result["auc"] = None  # a slice with one class only
    return result


def scores(task: str, output: Any, model: Any, positive_class: Any = None) -> np.ndarray:
    """The value a top-K query ranks rows by: the prediction, or the positive class's probability."""
    output = np.asarray(output)
    if task == "regression" or output.ndim == 1:
        return output.astype(float)
    classes = list(model.classes_)
    positive = positive_class if positive_class in classes else classes[-1]
    return output[:, classes.index(positive)]


def original_top_k(values: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` largest values (ties broken by position)."""
    order = np.argsort(-values, kind="stable")
    return np.sort(order[:k])


def precision_at_k(found: Any, reference: np.ndarray, k: int) -> float:
    """Share of the ``k`` rows a top-K answer returned that are in the original's top ``k``."""
    found = np.asarray(found).ravel()
    if found.dtype == bool:
        found = np.flatnonzero(found)
    return float(len(set(found.tolist()) & set(reference.tolist())) / k)


def oracle_bound(
    pipeline: Any, model: Any, rows: Any, original_output: Any, measured_speedup: float | None
) -> dict[str, Any]:
    """The speedup an ideal cascade over the same selected groups would reach on ``rows``.

    The ideal cascade knows which rows its approximate model gets right (agrees with the original)
    and sends only the others through the full pipeline. Its cost per row, from the measured
    ``pipeline.costs_``: statements every row needs + the selected groups + the approximate model,
    plus, for the rows the approximate model gets wrong, the remaining groups, stacking and the
    full model. Returns that bound, the plan's own expected speedup and the fraction of the bound
    the measured speedup reached.
    """
    from willow.compiler.codegen import stack_expression
    from willow.compiler.execution import StatementRunner, bind_arguments

    plan = pipeline.plan_
    if not plan.cascade:
        return {"status": "n/a", "note": f"no cascade: {plan.reason}"}
    graph = pipeline.graph_
    function = pipeline.traced_function  # the normalized function when the front end rewrote it
    runner = StatementRunner(graph, function)
    ns = runner.run(runner.namespace(bind_arguments(function, (model, rows), {})))
    expression = compile(ast.Expression(body=stack_expression(graph, plan.selected)), graph.filename, "eval")
    approx = np.asarray(pipeline.approximate_model_.predict(eval(expression, ns)))
    easy = approx == predicted_labels(original_output, model)
    costs = pipeline.costs_
    approx_seconds = next(
        (c.approximate_seconds_per_row for c in plan.candidates if tuple(c.groups) == tuple(plan.selected)),
        0.0,
    )
    full_path = costs.stack_seconds_per_row + costs.model_seconds_per_row
    ideal = (
        costs.kept_seconds_per_row
        + costs.features_cost(plan.selected)
        + approx_seconds
        + (1.0 - float(easy.mean())) * (costs.remaining_cost(plan.selected) + full_path)
    )
    oracle = costs.total_seconds_per_row / ideal if ideal > 0 else float("inf")
    return {
        "status": "ok",
        "selected": list(plan.selected),
        "easy_fraction": float(easy.mean()),
        "served_fraction": float(plan.confident_fraction),
        "oracle_speedup": float(oracle),
        "planned_speedup": float(plan.expected_speedup),
        "measured_speedup": measured_speedup,
        "fraction_of_oracle": None if measured_speedup is None else float(measured_speedup / oracle),
    }
