"""Top-K benchmark: willow's top-K plan against scoring every row, on real data.

Run from the repository root (the data ships in data/):

    python -m benchmarks.topk [--workload text|tabular|model|all] [--text-data sms|airline]
                              [--replicate 4] [--repeats 5] [--variant python|compiled|both]
                              [--model-trees 500 --model-leaves 63 --model-rows 8000]

Workloads (each an ordinary ``willow.optimize(query="topk", ...)`` pipeline, calibrated twice:
``python``, compile=False, and ``compiled``, with the compiler pass on the top-K plan; the
tabular one uses compile="all", since its 400-tree model is over compile=True's budget):

* ``text``: word (1-2 gram) + char_wb (2-5 gram) TF-IDF + LogisticRegression; the score is
  P(spam) on the SMS spam data, or P(negative) on the airline tweets.
* ``tabular``: a LightGBM regressor of ``median_house_value`` on the California housing data,
  from four feature groups: raw numeric columns, derived ratios, a per-``ocean_proximity``
  aggregate lookup and a deliberately costly nearest-neighbour group (mean target of the 10
  nearest training block groups).
* ``model`` (not in ``all``): the model is the cost. The synthetic LightGBM classifier of
  ``benchmarks.early_exit`` (``--model-trees`` x ``--model-leaves``, 100 make_classification
  features) read as one feature matrix, ``model.predict_proba(X)``: no feature group is cheaper,
  so the filter is a prefix of the ensemble itself (``approximate_model="prefix"``,
  :mod:`willow.topk.prefix`). Besides the original (LightGBM scoring every row), the plan is
  timed side by side with willow's compiled full ensemble scoring every row, then the same sort.

Each workload trains its model on one part of the data, calibrates on a second part and is
measured on a third part nobody saw. Throughput is measured on the test rows replicated
``--replicate`` times (a larger N), side by side with the original (score every row with the
full pipeline, then a stable argsort), medians of ``--repeats`` runs, K = 1% of N. precision@K
is measured on the distinct test rows only: once on all of them (K = 1% of them, the query size
the plan is tuned for) and on 50 random queries of half of them (K = 1% of those).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import scipy.sparse as sp
from lightgbm import LGBMRegressor
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KDTree

import willow
from benchmarks.data import data_path
from willow.topk.ranking import precision_at_k


def paired_seconds(first, second, repeats: int) -> tuple[float, float, float]:
    """Time ``first`` and ``second`` alternately (after one warm-up each), so that load from other
    processes hits both alike. Returns their median seconds and the median of per-pair ratios."""
    first()
    second()
    a, b = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        first()
        a.append(time.perf_counter() - start)
        start = time.perf_counter()
        second()
        b.append(time.perf_counter() - start)
    ratios = np.array(a) / np.array(b)
    return float(np.median(a)), float(np.median(b)), float(np.median(ratios))


def exact_top(scores: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-scores, kind="stable")[:k]


def report(name, short, pipeline, original_scores, optimized_top_k, test_rows, take, replicate, repeats):
    """Measure and print one workload; ``take(rows, positions)`` selects test rows."""
    n_test = len(test_rows) if not hasattr(test_rows, "shape") else test_rows.shape[0]
    print(f"\n=== {name} ===")
    print(pipeline.plan_.table())
    print()
    # precision@K on distinct held-out rows
    full = original_scores(test_rows)
    k = max(1, round(0.01 * n_test))
    found = optimized_top_k(test_rows, k)
    whole = precision_at_k(found, exact_top(full, k), k)
    rng = np.random.default_rng(123)
    per_query = []
    query_size = n_test // 2
    kq = max(1, round(0.01 * query_size))
    for _ in range(50):
        rows = np.sort(rng.choice(n_test, size=query_size, replace=False))
        sub = take(test_rows, rows)
        per_query.append(precision_at_k(optimized_top_k(sub, kq), exact_top(full[rows], kq), kq))
    per_query = np.array(per_query)
    target = pipeline.plan_.precision_target
    print(
        f"precision@K on all {n_test} distinct test rows (K={k}): {whole:.4f}; on 50 random queries of "
        f"{query_size} distinct test rows (K={kq}): mean {per_query.mean():.4f}, min {per_query.min():.4f}, "
        f">= {target} in {np.mean(per_query >= target - 1e-12):.0%}"
    )
    # throughput on a larger N (replicated test rows)
    big = take(test_rows, np.tile(np.arange(n_test), replicate))
    n_big = n_test * replicate
    k_big = max(1, round(0.01 * n_big))
    t_original, t_topk, speedup = paired_seconds(
        lambda: exact_top(original_scores(big), k_big), lambda: optimized_top_k(big, k_big), repeats
    )
    big_precision = precision_at_k(optimized_top_k(big, k_big), exact_top(original_scores(big), k_big), k_big)
    print(
        f"N={n_big} (test rows x{replicate}), K={k_big}: original {t_original * 1e3:.1f} ms "
        f"({n_big / t_original:,.0f} rows/s), top-K plan {t_topk * 1e3:.1f} ms ({n_big / t_topk:,.0f} rows/s): "
        f"{speedup:.2f}x (median of {repeats} alternating pairs); precision@K on these replicated rows "
        f"{big_precision:.4f}"
    )
    return {
        "workload": name,
        "short": short,
        "selected": "+".join(pipeline.plan_.selected) or "exact",
        "verified": pipeline.plan_.verified,
        "speedup": speedup,
        "precision_all": whole,
        "precision_queries_mean": float(per_query.mean()),
    }


# --------------------------------------------------------------------------- text


word_vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
char_vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2, sublinear_tf=True)


def text_workload(dataset: str, replicate: int, repeats: int, variants: tuple[str, ...]) -> list[dict]:
    if dataset == "sms":
        frame = pd.read_csv(data_path("sms_spam.tsv"), sep="\t")
        texts, labels, score = (
            frame["SMS"].astype(str).to_numpy(dtype=object),
            frame["Label"].to_numpy(),
            "spam",
        )
        cuts = (1500, 4000)
    else:
        frame = pd.read_csv(data_path("airline_tweets.csv"))
        texts = frame["text"].astype(str).to_numpy(dtype=object)
        labels, score = frame["airline_sentiment"].to_numpy(), "negative"
        cuts = (4000, 10000)
    order = np.random.default_rng(0).permutation(len(texts))
    train, calibration, test = np.split(order, cuts)
    query_size = len(test)

    def rank_text(model, messages):
        words = word_vectorizer.transform(messages)
        chars = char_vectorizer.transform(messages)
        X = sp.hstack([words, chars]).tocsr()
        return model.predict_proba(X)

    word_vectorizer.fit(texts[train])
    char_vectorizer.fit(texts[train])
    features = sp.hstack(
        [word_vectorizer.transform(texts[train]), char_vectorizer.transform(texts[train])]
    ).tocsr()
    model = LogisticRegression(max_iter=2000, C=10).fit(features, labels[train])
    column = list(model.classes_).index(score)

    def original_scores(messages):
        return rank_text(model, messages)[:, column]

    results = []
    for variant in variants:
        pipeline = willow.optimize(
            query="topk",
            k=max(1, round(0.01 * query_size)),
            score=score,
            query_size=query_size,
            compile=variant == "compiled",
        )(rank_text)
        start = time.perf_counter()
        pipeline.calibrate(model, list(texts[calibration]))
        print(
            f"[text/{dataset}, {variant}] calibrated on {len(calibration)} rows in "
            f"{time.perf_counter() - start:.1f} s"
        )
        results.append(
            report(
                f"text ({dataset}): word+char TF-IDF + LogisticRegression, score P({score}), top-K {variant}",
                f"text/{dataset}, top-K {variant}",
                pipeline,
                original_scores,
                lambda messages, k, p=pipeline: p.top_k(model, messages, k=k),
                list(texts[test]),
                lambda rows, positions: [rows[i] for i in positions],
                replicate,
                repeats,
            )
        )
    return results


# --------------------------------------------------------------------------- tabular

NUMERIC = [
    "longitude",
    "latitude",
    "housing_median_age",
    "total_rooms",
    "total_bedrooms",
    "population",
    "households",
    "median_income",
]
ocean_table: dict[str, float] = {}
neighbours: dict[str, object] = {}


def derived_ratios(frame: pd.DataFrame) -> np.ndarray:
    households = frame["households"].to_numpy(dtype=float)
    rooms = frame["total_rooms"].to_numpy(dtype=float)
    return np.column_stack(
        [
            rooms / households,
            frame["total_bedrooms"].to_numpy(dtype=float) / rooms,
            frame["population"].to_numpy(dtype=float) / households,
            frame["median_income"].to_numpy(dtype=float) / (rooms / households),
        ]
    )


def ocean_lookup(frame: pd.DataFrame) -> np.ndarray:
    values = frame["ocean_proximity"].map(ocean_table).astype(float).to_numpy()
    return values.reshape(-1, 1)


def neighbour_features(frame: pd.DataFrame) -> np.ndarray:
    """Mean target, spread and distance of the 10 nearest training block groups (costly)."""
    distance, index = neighbours["tree"].query(frame[["longitude", "latitude"]].to_numpy(), k=10)
    values = neighbours["target"][index]
    return np.column_stack([values.mean(axis=1), values.std(axis=1), distance.mean(axis=1)])


def rank_houses(model, frame):
    raw = frame[NUMERIC].to_numpy(dtype=float)
    ratios = derived_ratios(frame)
    ocean = ocean_lookup(frame)
    nearby = neighbour_features(frame)
    X = np.hstack([raw, ratios, ocean, nearby])
    return model.predict(X)


# The approximate model: a small LightGBM (the default, clone(model), would cost as much per row
# as the 400-tree full model, whose predict() is the largest single cost of this pipeline).
APPROXIMATE = LGBMRegressor(n_estimators=60, num_leaves=15, verbose=-1, random_state=0)


def tabular_workload(replicate: int, repeats: int, variants: tuple[str, ...]) -> list[dict]:
    frame = pd.read_csv(data_path("california_housing.csv"))
    order = np.random.default_rng(0).permutation(len(frame))
    train, calibration, test = np.split(order, [8000, 16000])
    fit = frame.iloc[train]
    target = fit["median_house_value"].to_numpy(dtype=float)
    ocean_table.update(fit.groupby("ocean_proximity")["median_house_value"].mean().to_dict())
    # The neighbour table is a larger reference set (train + 4x jittered copies) to make the
    # group realistically costly, as a geo lookup service would be.
    rng = np.random.default_rng(1)
    coords = fit[["longitude", "latitude"]].to_numpy()
    reference = np.vstack([coords] + [coords + rng.normal(scale=0.01, size=coords.shape) for _ in range(4)])
    neighbours["tree"] = KDTree(reference)
    neighbours["target"] = np.tile(target, 5)
    X = np.hstack(
        [fit[NUMERIC].to_numpy(dtype=float), derived_ratios(fit), ocean_lookup(fit), neighbour_features(fit)]
    )
    model = LGBMRegressor(n_estimators=400, num_leaves=63, learning_rate=0.05, verbose=-1, random_state=0)
    model.fit(X, target)

    results = []
    for variant in variants:
        # compile="all": the 400-tree model is over compile=True's 5,000-split-node budget
        pipeline = willow.optimize(
            query="topk",
            k=46,
            query_size=4640,
            split=(0.3, 0.45, 0.25),
            approximate_model=APPROXIMATE,
            compile="all" if variant == "compiled" else False,
        )(rank_houses)
        start = time.perf_counter()
        pipeline.calibrate(model, frame.iloc[calibration].reset_index(drop=True))
        print(
            f"[tabular, {variant}] calibrated on {len(calibration)} rows in {time.perf_counter() - start:.1f} s"
        )
        results.append(
            report(
                "tabular (california housing): LightGBM regressor, score = predicted median_house_value, "
                f"top-K {variant}",
                f"tabular, top-K {variant}",
                pipeline,
                lambda rows: rank_houses(model, rows),
                lambda rows, k, p=pipeline: p.top_k(model, rows, k=k),
                frame.iloc[test].reset_index(drop=True),
                lambda rows, positions: rows.iloc[positions].reset_index(drop=True),
                replicate,
                repeats,
            )
        )
    return results


# --------------------------------------------------------------------------- model-dominated


def rank_model(model, X):
    return model.predict_proba(X)


def model_workload(trees: int, leaves: int, rows: int, replicate: int, repeats: int) -> list[dict]:
    """The ensemble-prefix filter on a model-dominated pipeline (see the module docstring)."""
    import os

    from benchmarks.early_exit import build_model
    from willow.compiler.lowering.trees import lower_tree_model

    model, X = build_model(trees, leaves, 100, train_rows=20_000)
    calibration, test = X[:rows], X[rows : 2 * rows]
    # nothing is trained for a prefix filter: the train split only needs its minimum
    split = (0.04, 0.48, 0.48)
    query_size = round(rows * split[1])
    pipeline = willow.optimize(
        query="topk",
        k=max(1, round(0.01 * query_size)),
        query_size=query_size,
        split=split,
        approximate_model="prefix",
        compile="all",
    )(rank_model)
    start, cpu = time.perf_counter(), os.times()
    pipeline.calibrate(model, calibration)
    used = os.times()
    cpu_seconds = sum(used[:4]) - sum(cpu[:4])  # this process and its compiling workers
    print(
        f"[model {trees} x {leaves}] calibrated on {rows} rows in {time.perf_counter() - start:.1f} s "
        f"({cpu_seconds:.1f} CPU-s, compiling included)"
    )
    short = f"model {trees}x{leaves}, prefix"
    result = report(
        f"model-dominated: LightGBM {trees} trees x {leaves} leaves on 100 features, score P(1)",
        short,
        pipeline,
        lambda Z: model.predict_proba(Z)[:, 1],
        lambda Z, k: pipeline.top_k(model, Z, k=k),
        test,
        lambda Z, positions: Z[positions],
        replicate,
        repeats,
    )
    compiled = lower_tree_model(model, "predict_proba")
    big = np.tile(test, (replicate, 1))
    k_big = max(1, round(0.01 * len(big)))
    t_compiled, t_topk, speedup = paired_seconds(
        lambda: exact_top(compiled(big)[:, 1], k_big), lambda: pipeline.top_k(model, big, k=k_big), repeats
    )
    print(
        f"N={len(big)}, K={k_big}: compiled full ensemble + sort {t_compiled * 1e3:.1f} ms, top-K plan "
        f"{t_topk * 1e3:.1f} ms: {speedup:.2f}x (median of {repeats} alternating pairs)"
    )
    result["selected"] = f"first {pipeline.plan_.prefix_trees} of {pipeline.plan_.model_trees} trees"
    compiled_result = dict(result, short=f"{short} vs compiled", speedup=speedup)
    return [result, compiled_result]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=["text", "tabular", "model", "all"], default="all")
    parser.add_argument("--text-data", choices=["sms", "airline"], default="airline")
    parser.add_argument(
        "--replicate", type=int, default=4, help="test rows are repeated this often for timing"
    )
    parser.add_argument("--repeats", type=int, default=7, help="timed pairs (medians reported)")
    parser.add_argument(
        "--variant",
        choices=["python", "compiled", "both"],
        default="both",
        help="top-K plan without kernels (compile=False), with them, or both",
    )
    parser.add_argument("--model-trees", type=int, default=500, help="model workload: trees")
    parser.add_argument("--model-leaves", type=int, default=63, help="model workload: leaves per tree")
    parser.add_argument(
        "--model-rows", type=int, default=8000, help="model workload: calibration rows (and test rows)"
    )
    args = parser.parse_args()
    variants = ("python", "compiled") if args.variant == "both" else (args.variant,)
    results = []
    if args.workload in ("text", "all"):
        results += text_workload(args.text_data, args.replicate, args.repeats, variants)
    if args.workload in ("tabular", "all"):
        results += tabular_workload(args.replicate, args.repeats, variants)
    if args.workload == "model":
        results += model_workload(
            args.model_trees, args.model_leaves, args.model_rows, args.replicate, args.repeats
        )
    print("\nsummary (K = 1% of N; speedup vs. the original scoring every row, then argsort):")
    for r in results:
        print(
            f"  {r['short']:<28} {r['speedup']:6.2f}x  precision@K all-test {r['precision_all']:.4f}, "
            f"per-query mean {r['precision_queries_mean']:.4f}; filter on {r['selected']}, guarantee "
            f"{'confirmed' if r['verified'] else 'NOT confirmed'} on the holdout split"
        )


if __name__ == "__main__":
    main()
