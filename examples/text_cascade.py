"""Optimize a word + char TF-IDF spam classifier with a willow cascade, on the real SMS data.

Run from the repository root (the data ships in data/):

    python examples/text_cascade.py [--data PATH] [--repeats N]

It trains the pipeline on one part of the data, calibrates willow on a second part, and on a
third part (rows neither saw) prints, for a pure-Python cascade (``compile=False``) and for the
default compiled cascade, the batch speedup over the original function (medians of repeats,
measured side by side in this process) and the agreement with the original.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

import willow

DEFAULT_DATA = Path(__file__).resolve().parents[1] / "data" / "sms_spam.tsv.xz"

word_vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
char_vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2, sublinear_tf=True)


@willow.optimize(accuracy_target=0.99, confidence=0.95, split=(0.3, 0.35, 0.35))
def classify(model, comments):
    """Label each message ham or spam."""
    words = word_vectorizer.transform(comments)
    chars = char_vectorizer.transform(comments)
    X = sp.hstack([words, chars]).tocsr()
    return model.predict(X)


def median_seconds(fn, repeats: int) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return float(np.median(samples))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="path to sms_spam.tsv")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats (median reported)")
    args = parser.parse_args()

    frame = pd.read_csv(args.data, sep="\t")
    texts = frame["SMS"].astype(str).to_numpy(dtype=object)
    labels = frame["Label"].to_numpy()
    order = np.random.default_rng(0).permutation(len(texts))
    train, calibration, test = np.split(order, [1500, 4600])

    word_vectorizer.fit(texts[train])
    char_vectorizer.fit(texts[train])
    features = sp.hstack([word_vectorizer.transform(texts[train]), char_vectorizer.transform(texts[train])])
    model = LogisticRegression(max_iter=2000, C=10).fit(features.tocsr(), labels[train])

    python_cascade = willow.optimize(classify.__wrapped__, **(classify.get_params() | {"compile": False}))
    for pipeline in (python_cascade, classify):
        start = time.perf_counter()
        pipeline.calibrate(model, list(texts[calibration]))
        seconds = time.perf_counter() - start
        print(f"calibrated (compile={pipeline.compile}) on {len(calibration)} rows in {seconds:.1f} s")
    print(classify.plan_.table())

    batch = list(texts[test])
    original = classify.__wrapped__(model, batch)
    variants = {"original": None, "cascade (Python)": python_cascade, "cascade (compiled)": classify}
    timings = {"original": median_seconds(lambda: classify.__wrapped__(model, batch), args.repeats)}
    timings["cascade (Python)"] = median_seconds(lambda: python_cascade(model, batch), args.repeats)
    timings["cascade (compiled)"] = median_seconds(lambda: classify(model, batch), args.repeats)
    print()
    print(f"test batch: {len(batch)} unseen rows, medians of {args.repeats} runs")
    for name, pipeline in variants.items():
        seconds = timings[name]
        line = f"  {name:<20} {seconds * 1e3:8.2f} ms  speedup {timings['original'] / seconds:6.2f}x"
        if pipeline is not None:
            agreement = float(np.mean(pipeline(model, batch) == original))
            line += (
                f"  agreement {agreement:.4f} (holdout {pipeline.plan_.agreement:.4f}, "
                f"lower 95% bound {pipeline.plan_.lower_bound:.4f})"
            )
        print(line)


if __name__ == "__main__":
    main()
