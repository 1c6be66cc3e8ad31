"""scikit-learn composites as written vs. willow's expansion of them, compiled (no cascade).

    python -m benchmarks.composites [--batch 1000] [--repeats 7] [--latency-rows 200]

Two pipelines people write, each called as one composite method:

- text: ``Pipeline(FeatureUnion(word tf-idf, char_wb tf-idf), LogisticRegression)`` on the SMS spam
  messages, ``pipe.predict_proba(texts)``;
- tabular: ``make_pipeline(ColumnTransformer(StandardScaler on the numbers, OneHotEncoder on the
  categories, passthrough), LogisticRegression)`` on the Adult census rows,
  ``model.predict_proba(frame)`` with the pipeline passed as an argument; the same with a
  ``LGBMClassifier`` (100 trees, 31 leaves) as the final estimator.

Each is optimized with ``willow.optimize(cascade=False)`` (exact: the front end expands the
composite into one statement per branch, the compile pass lowers them) and calibrated on held-out
rows. Reported, in one process with interleaved repeats (medians): batch time of ``--batch`` rows
and single-row latency of the original and of the optimized function, their ratio, and whether
outputs are identical to 1e-12. Needs willow's ``calibrate`` to run the front end
(:func:`willow.frontend.driver.normalize`); without it the composite stays one opaque call and the
ratio is ~1x.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

import willow
from benchmarks.measure import point_latencies, time_batches

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
NUMBERS = ["age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week"]
CATEGORIES = ["workclass", "education", "marital-status", "occupation", "relationship", "race", "sex"]


def text_workload():
    sms = pd.read_csv(DATA / "sms_spam.tsv", sep="\t")
    texts = sms["SMS"].astype(str).tolist()
    labels = (sms["Label"] == "spam").to_numpy()
    pipe = Pipeline(
        [
            (
                "union",
                FeatureUnion(
                    [
                        ("word", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)),
                        ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2)),
                    ]
                ),
            ),
            ("clf", LogisticRegression(max_iter=1000)),
        ]
    ).fit(texts[:3000], labels[:3000])

    def spam(texts):
        return pipe.predict_proba(texts)

    return spam, {}, "texts", texts[3000:4300], texts[4300:]


def tabular_workload(model=None):
    adult = pd.read_csv(DATA / "adult.data", sep=", ", engine="python")
    adult["native-country"] = adult["native-country"].astype(object)
    frame = adult.drop(columns="Salary").astype({c: object for c in CATEGORIES})
    labels = (adult["Salary"] == ">50K").to_numpy()
    pipe = make_pipeline(
        ColumnTransformer(
            [
                ("num", StandardScaler(), NUMBERS),
                ("cat", OneHotEncoder(handle_unknown="ignore"), CATEGORIES),
            ],
            remainder="drop",
        ),
        model if model is not None else LogisticRegression(max_iter=1000),
    ).fit(frame.iloc[:20000], labels[:20000])

    def income(frame, model):
        return model.predict_proba(frame)

    return (
        income,
        {"model": pipe},
        "frame",
        frame.iloc[20000:22000],
        frame.iloc[22000:].reset_index(drop=True),
    )


def lightgbm_workload():
    from lightgbm import LGBMClassifier

    return tabular_workload(LGBMClassifier(n_estimators=100, num_leaves=31, verbose=-1))


def measure(name, workload, batch: int, repeats: int, latency_rows: int) -> dict:
    fn, constants, rows_name, calibration, serving = workload()
    optimized = willow.optimize(cascade=False)(fn)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimized.calibrate(**{rows_name: calibration}, **constants)
    if isinstance(serving, pd.DataFrame):
        rows = serving.iloc[:batch]
    else:
        rows = serving[:batch]
    same = bool(
        np.allclose(
            optimized(**{rows_name: rows}, **constants),
            fn(**{rows_name: rows}, **constants),
            rtol=0,
            atol=1e-12,
        )
    )
    batches = time_batches(
        {
            "original": lambda: fn(**{rows_name: rows}, **constants),
            "willow": lambda: optimized(**{rows_name: rows}, **constants),
        },
        repeats,
        min_seconds=0.2,
    )
    singles = point_latencies(
        {
            "original": lambda one: fn(**{rows_name: one}, **constants),
            "willow": lambda one: optimized(**{rows_name: one}, **constants),
        },
        rows,
        latency_rows,
    )
    batch_o, batch_w = (statistics.median(batches[k]) for k in ("original", "willow"))
    lat_o, lat_w = (float(np.median(singles[k])) for k in ("original", "willow"))
    return {
        "pipeline": name,
        "identical": same,
        f"batch {batch} original ms": round(batch_o * 1e3, 2),
        f"batch {batch} willow ms": round(batch_w * 1e3, 2),
        "batch speedup": round(batch_o / batch_w, 2),
        "1-row original us": round(lat_o * 1e6, 1),
        "1-row willow us": round(lat_w * 1e6, 1),
        "1-row speedup": round(lat_o / lat_w, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--latency-rows", type=int, default=200)
    args = parser.parse_args()
    results = []
    for name, workload in (
        ("text Pipeline(FeatureUnion)", text_workload),
        ("tabular ColumnTransformer", tabular_workload),
        ("tabular ColumnTransformer, LightGBM", lightgbm_workload),
    ):
        start = time.perf_counter()
        results.append(measure(name, workload, args.batch, args.repeats, args.latency_rows))
        print(f"# {name}: measured in {time.perf_counter() - start:.0f} s", flush=True)
    print(pd.DataFrame(results).set_index("pipeline").T.to_string())


if __name__ == "__main__":
    main()
