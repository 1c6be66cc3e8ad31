"""Benchmark: staged early exit inside a tree ensemble against the compiled full ensemble.

    python -m benchmarks.early_exit [--trees 500 --leaves 63 --features 100] [--quick] [--out FILE]
        [--workloads synthetic credit music price synthetic-regression credit-end-to-end
        price-end-to-end] [--scale full]
        [--end-to-end-scale quick]

Besides the synthetic model (``synthetic``) it measures the credit and music workloads' models on
their own features (the same table), price (a regressor: exits within ``tolerance=`` $50,000,
agreement within it; ``synthetic-regression``: the same on a make_regression LightGBM) and credit
end to end (see :mod:`benchmarks.early_exit_workloads`, which has their figures).

The model is an LGBMClassifier (``--trees`` x ``--leaves``) on ``make_classification`` data with
``--features`` features; it is trained on its own rows, calibrated (:func:`willow.early_exit.
calibrate_early_exit`: half tune, half holdout) on ``--calibration-rows`` rows and measured on
``--test-rows`` disjoint rows (a target the holdout half cannot prove is reported as n/a). For each accuracy target (1.0 = exact exits only) it reports the
batch speedup over willow's compiled full ensemble (``lower_tree_model(model, "predict")``,
medians of interleaved runs in one process), the exit fraction per stage and the mean trees per
row on the test rows, the agreement with LightGBM's own ``predict`` there, and the plan's proven
holdout bound. ``--quick``: 100 trees x 31 leaves, 4,000 calibration and test rows.

Measured on the shared 2-core development machine, quiet (2026-12-03 22:05 UTC, load 0.5-1.4,
``--scale full --end-to-end-scale full``; the workloads' figures are in
:mod:`benchmarks.early_exit_workloads`):

| model | target | speedup vs compiled | trees/row | test agreement | holdout bound |
|---|---|---|---|---|---|
| 500 x 63, 20,000 calibration / 10,000 test rows | 1.0 | 1.09x | 437 | 1.0000 | exact |
| | 0.999 | 1.11x (exact exits: no margins qualified) | 437 | 1.0000 | exact |
| | 0.99 | **5.04x** | 59.4 | 0.9944 | 0.9920 |
| | 0.99 cheap model first (LightGBM 40 x 15, answers 58.5%) | 2.00x | | 0.9946 | 0.9935 |

``--workloads synthetic synthetic-threshold`` (2026-12-04 03:47 UTC, quiet): the same 500 x 63
model deciding ``predict_proba(X)[:, 1] > 0.3`` (``--threshold``; exits keep that side, agreement
on that decision): exact 1.12x (436.9 trees), 0.999 1.10x (exact only), 0.99 **3.82x** (98.1
trees, 0.9949, bound 0.9937); its labels in the same run 1.12x / 1.13x / 5.04x.

Earlier, loaded (load ~14): ``--quick`` (100 x 31, 4,000 / 4,000 rows) 1.03x exact, 2.06x at 0.99
(43.9 trees per row, 0.9970, bound 0.9969).

At 0.99 on the 500 x 63 model 43% of the test rows left after 20 trees, 27% after 35, 16%
after 65, 7% after 125, 5% after 250 and 2% ran all 500. Exact exits start after ~375 trees.
Below 1.0 each target also reports **cheap model first** (:func:`willow.early_exit.
calibrate_distilled`: a distilled logistic regression or small LightGBM in front of the ensemble,
proven on the same holdout half).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

TARGETS = (1.0, 0.999, 0.99)
WORKLOADS = (
    "synthetic",
    "synthetic-threshold",
    "credit",
    "music",
    "price",
    "synthetic-regression",
    "credit-end-to-end",
    "credit-threshold-end-to-end",
    "price-end-to-end",
)


def build_model(
    trees: int, leaves: int, features: int, train_rows: int, seed: int = 0
) -> tuple[Any, np.ndarray]:
    """The classifier and the rows left after training (make_classification, ``features`` wide)."""
    from lightgbm import LGBMClassifier
    from sklearn.datasets import make_classification

    X, y = make_classification(
        n_samples=train_rows + 40_000,
        n_features=features,
        n_informative=min(features, 30),
        n_redundant=min(max(features - 30, 0), 20),
        flip_y=0.02,
        random_state=seed,
    )
    model = LGBMClassifier(n_estimators=trees, num_leaves=leaves, verbose=-1, random_state=seed)
    model.fit(X[:train_rows], y[:train_rows])
    return model, X[train_rows:]


def measure_targets(
    model: Any,
    X_cal: Any,
    X_test: np.ndarray,
    targets: list[float],
    repeats: int,
    tolerance: float | None = None,
    decision: float | None = None,
) -> dict[str, Any]:
    """Staged early exit on ``model.predict`` calibrated on ``X_cal`` for each of ``targets``,
    measured on ``X_test`` against willow's compiled full ensemble (medians of interleaved runs):
    speedup, stops, thresholds, exit fractions, trees per row, test agreement, holdout bound.
    ``tolerance``: a regressor, whose exits and agreement are within it (no cheap model first).
    ``decision``: a threshold ``t``: the decision is ``predict_proba(X)[:, 1] > t`` (exits keep
    its side; agreement on it; no cheap model first, which answers labels)."""
    from benchmarks.measure import time_batches
    from willow.compiler.lowering.trees import lower_tree_model
    from willow.early_exit import calibrate_early_exit, stage_tree_model
    from willow.early_exit.distilled import calibrate_distilled
    from willow.errors import CalibrationError

    method = "predict" if decision is None else "predict_proba"
    start = time.perf_counter()
    compiled = lower_tree_model(model, method)
    staged = stage_tree_model(model, method)
    compile_seconds = time.perf_counter() - start
    if decision is None:
        reference = model.predict(X_test)
        assert np.array_equal(compiled(X_test), reference)
    else:
        reference = model.predict_proba(X_test)[:, 1] > decision
        assert np.array_equal(compiled(X_test)[:, 1] > decision, reference)

    def agreement(output: np.ndarray) -> float:
        if decision is not None:
            return round(float(((output[:, 1] > decision) == reference).mean()), 5)
        if tolerance is None:
            return round(float((output == reference).mean()), 5)
        return round(float((np.abs(output - reference) <= tolerance).mean()), 5)

    cascades = {}
    results: dict[str, Any] = {
        "calibration_rows": len(X_cal),
        "test_rows": len(X_test),
        "compile_seconds": round(compile_seconds, 1),
        "targets": {},
    }
    for target in targets:
        start = time.perf_counter()
        try:
            cascades[target] = calibrate_early_exit(
                model, X_cal, method=method, accuracy_target=target, staged=staged, tolerance=tolerance,
                decision=None if decision is None else (1, decision),
            )  # fmt: skip
        except CalibrationError as exc:  # too few holdout rows to ever prove this target
            results["targets"][str(target)] = {"n/a": str(exc)}
            continue
        results["targets"][str(target)] = {"calibration_seconds": round(time.perf_counter() - start, 2)}
    cheap = {}  # cheap model first (a distilled model in front of the ensemble), below 1.0
    for target in cascades if tolerance is None and decision is None else ():
        if target < 1.0:
            start = time.perf_counter()
            try:
                cheap[target] = calibrate_distilled(model, X_cal, accuracy_target=target, full=compiled)
            except CalibrationError as exc:
                results["targets"][str(target)]["cheap model first"] = {"n/a": str(exc)}
                continue
            results["targets"][str(target)]["cheap model first"] = {
                "calibration_seconds": round(time.perf_counter() - start, 2)
            }
    calls = {"compiled": lambda: compiled(X_test)}
    for target, cascade in cascades.items():
        calls[str(target)] = lambda cascade=cascade: cascade(X_test)
    for target, cascade in cheap.items():
        calls[f"cheap {target}"] = lambda cascade=cascade: cascade(X_test)
    samples = time_batches(calls, repeats)
    base = float(np.median(samples["compiled"]))
    results["compiled_rows_per_second"] = round(len(X_test) / base)
    for target, cascade in cascades.items():
        output, stage = cascade.run(X_test)
        plan = cascade.plan
        fractions = np.bincount(stage, minlength=len(plan.stops)) / len(stage)
        seconds = float(np.median(samples[str(target)]))
        results["targets"][str(target)].update(
            speedup=round(base / seconds, 2),
            rows_per_second=round(len(X_test) / seconds),
            stops=list(plan.stops),
            thresholds=[None if np.isinf(t) else round(t, 4) for t in plan.thresholds],
            exit_fractions=[round(float(f), 4) for f in fractions],
            trees_per_row=round(float(np.dot(fractions, plan.stops)), 1),
            agreement=agreement(output),
            exact=plan.exact,
            holdout_agreement=round(plan.agreement, 5),
            holdout_lower_bound=None if plan.lower_bound is None else round(plan.lower_bound, 5),
            plan=plan.table(),
        )
    for target, cascade in cheap.items():
        output, answered = cascade.run(X_test)
        plan = cascade.plan
        seconds = float(np.median(samples[f"cheap {target}"]))
        results["targets"][str(target)]["cheap model first"].update(
            kind=plan.kind,
            speedup=round(base / seconds, 2),
            rows_per_second=round(len(X_test) / seconds),
            threshold=round(plan.threshold, 4),
            exit_fraction=round(float(answered.mean()), 4),
            agreement=round(float((output == reference).mean()), 5),
            holdout_lower_bound=round(plan.lower_bound, 5),
            plan=plan.table(),
        )
    return results


def main(argv: list[str] | None = None) -> dict:
    from benchmarks import early_exit_workloads as workloads

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trees", type=int, default=500)
    parser.add_argument("--leaves", type=int, default=63)
    parser.add_argument("--features", type=int, default=100)
    parser.add_argument("--train-rows", type=int, default=20_000)
    # half of them prove the plan: 0.999 needs about 8,600 holdout rows to be provable at all
    parser.add_argument("--calibration-rows", type=int, default=20_000)
    parser.add_argument("--test-rows", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--targets", type=float, nargs="+", default=list(TARGETS))
    parser.add_argument("--quick", action="store_true", help="100 trees x 31 leaves, 4,000 rows each")
    parser.add_argument(
        "--workloads", nargs="*", default=list(WORKLOADS), help=f"of {', '.join(WORKLOADS)}, and "
        "'synthetic' (the make_classification model above); default: all"
    )  # fmt: skip
    parser.add_argument("--scale", default="full", help="the workloads' scale: smoke, quick or full")
    parser.add_argument("--accuracy-target", type=float, default=0.99, help="end to end (credit)")
    parser.add_argument("--end-to-end-scale", default="quick", help="credit end to end: its scale")
    parser.add_argument(
        "--threshold", type=float, default=0.3,
        help="synthetic-threshold: the same model deciding predict_proba(X)[:, 1] > THRESHOLD",
    )  # fmt: skip
    parser.add_argument("--out", help="also write the results as JSON to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.trees, args.leaves, args.train_rows = 100, 31, 8_000
        args.calibration_rows, args.test_rows, args.repeats = 4_000, 4_000, 5

    results: dict[str, Any] = {}
    if {"synthetic", "synthetic-threshold"} & set(args.workloads):
        start = time.perf_counter()
        model, rest = build_model(args.trees, args.leaves, args.features, args.train_rows)
        X_cal = rest[: args.calibration_rows]
        X_test = np.ascontiguousarray(rest[args.calibration_rows : args.calibration_rows + args.test_rows])
        train_seconds = time.perf_counter() - start
        described = f"LGBMClassifier {args.trees} trees x {args.leaves} leaves, {args.features} features"
        for name, decision in (("synthetic", None), ("synthetic-threshold", args.threshold)):
            if name not in args.workloads:
                continue
            measured = measure_targets(model, X_cal, X_test, args.targets, args.repeats, decision=decision)
            measured["model"] = described + (
                "" if decision is None else f", deciding predict_proba(X)[:, 1] > {decision:g}"
            )
            measured["train_seconds"] = round(train_seconds, 1)
            results[name.replace("-", " ")] = measured
            print(("\n" if decision is not None else "") + _markdown(measured), flush=True)
    for name in ("credit", "music"):
        if name in args.workloads:
            results[name] = workloads.inside_the_model(name, args.scale, args.targets, args.repeats)
            print("\n" + _markdown(results[name]), flush=True)
    if "price" in args.workloads:
        price = results["price"] = workloads.price_inside(args.scale, args.targets, args.repeats)
        print("\n" + _markdown(price), flush=True)
        print(
            f"(leaf bounds alone: every row within tolerance after {price['bound_trees']} trees)", flush=True
        )
    if "synthetic-regression" in args.workloads:
        regression = results["synthetic regression"] = workloads.synthetic_regression(
            args.targets, args.repeats, rows=4_000 if args.quick else 10_000
        )
        print("\n" + _markdown(regression), flush=True)
        print(
            f"(leaf bounds alone: every row within tolerance after {regression['bound_trees']} trees)",
            flush=True,
        )
    if "credit-end-to-end" in args.workloads:
        credit = results["credit end to end"] = workloads.end_to_end(
            "credit", args.end_to_end_scale, args.accuracy_target, args.repeats
        )
        print("\n" + workloads.markdown(credit), flush=True)
    if "credit-threshold-end-to-end" in args.workloads:
        above = results["credit threshold end to end"] = workloads.end_to_end(
            "credit", args.end_to_end_scale, args.accuracy_target, args.repeats, threshold=args.threshold
        )
        print("\n" + workloads.markdown(above), flush=True)
    if "price-end-to-end" in args.workloads:
        price_e2e = results["price end to end"] = workloads.price_end_to_end(
            args.end_to_end_scale, args.accuracy_target, args.repeats
        )
        print("\n" + workloads.markdown(price_e2e), flush=True)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=1)
    return results


def _markdown(results: dict) -> str:
    lines = [
        f"{results['model']}: {results['calibration_rows']} calibration / {results['test_rows']} test "
        f"rows, compiled full ensemble "
        f"{results['compiled_rows_per_second']:,} rows/s",
        "",
        "| target | speedup vs compiled | trees/row | exit fractions per stage (stops) | test agreement | holdout bound |",
        "|---|---|---|---|---|---|",
    ]
    for target, r in results["targets"].items():
        if "n/a" in r:
            lines.append(f"| {target} | n/a: {r['n/a']} | | | | |")
            continue
        exits = ", ".join(f"{s}:{f:.1%}" for s, f in zip(r["stops"], r["exit_fractions"]))
        bound = "exact" if r["exact"] else f"{r['holdout_lower_bound']:.4f}"
        lines.append(
            f"| {target} | {r['speedup']:.2f}x | {r['trees_per_row']} | {exits} | {r['agreement']:.4f} | {bound} |"
        )
        c = r.get("cheap model first")
        if c and "n/a" in c:
            lines.append(f"| {target} cheap model first | n/a: {c['n/a']} | | | | |")
        elif c:
            lines.append(
                f"| {target} cheap model first ({c['kind']}) | {c['speedup']:.2f}x | | "
                f"cheap model answers {c['exit_fraction']:.1%} | {c['agreement']:.4f} | "
                f"{c['holdout_lower_bound']:.4f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
