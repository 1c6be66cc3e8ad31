"""Fused text -> linear kernel vs scikit-learn on the SMS spam data.

    python -m benchmarks.compiler_text [--rows 50000] [--repeats 5] [--latency-rows 300] [--transform]

Pipeline: word (1-2) + char_wb (2-5) TfidfVectorizer, ``scipy.sparse.hstack``, LogisticRegression.
Reports, all in one process and as medians of repeats: scikit-learn and fused batch throughput
(rows/s) on the SMS messages replicated to ``--rows`` rows (fused also on one thread), single-row latency (one call per
message), their ratios, whether predictions are identical, and the compile time of the fused kernel
in a fresh kernel cache (cold) and in the cache that run filled (warm), each in a new process.

``--transform`` measures instead each vectorizer's standalone ``transform`` (the kernel used when
its matrix is not fed straight to a linear model): scikit-learn, the compiled kernel on the whole
batch on one thread and on chunks of rows on Numba's threads, interleaved in one process, at several
batch sizes, with the CPU that other processes used meanwhile (threads only help on free cores).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from benchmarks.data import data_available, data_dir, data_path


def build_pipeline(texts: pd.Series, labels: pd.Series):
    """The README's spam pipeline: word and char_wb tf-idf into a logistic regression."""
    word = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2).fit(texts)
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2).fit(texts)
    X = sp.hstack([word.transform(texts), char.transform(texts)]).tocsr()
    model = LogisticRegression(max_iter=1000).fit(X, labels)
    return word, char, model


def load(n_train: int = 3000):
    sms = pd.read_csv(data_path("sms_spam.tsv"), sep="\t")
    texts, labels = sms["SMS"].astype(str), sms["Label"]
    return texts, labels, build_pipeline(texts.iloc[:n_train], labels.iloc[:n_train])


def median_seconds(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def latency(function, rows: list[str]) -> float:
    """Median seconds of one call on one row, over ``rows``."""
    times = []
    for text in rows:
        start = time.perf_counter()
        function([text])
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compile_seconds(cache_dir: str) -> float:
    """Seconds to lower and make the first small and large call (serial and parallel kernels), in a
    new process using ``cache_dir``."""
    code = (
        "import time; from benchmarks.compiler_text import load; "
        "from willow.compiler.lowering.fused import fuse_text_linear; "
        "texts, labels, (word, char, model) = load(); t = time.perf_counter(); "
        "op = fuse_text_linear([word, char], model, 'predict'); op(list(texts[:10])); op(list(texts[:300])); "
        "print(time.perf_counter() - t)"
    )
    env = dict(os.environ, WILLOW_CACHE_DIR=cache_dir, NUMBA_CACHE_DIR=str(Path(cache_dir) / "numba"))
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True, cwd=Path.cwd()
    )
    return float(out.stdout.strip().splitlines()[-1])


def _busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy (Linux ``/proc/stat``; NaN elsewhere)."""
    try:
        with open("/proc/stat") as stat:
            ticks = [int(x) for x in stat.readline().split()[1:9]]
    except OSError:
        return float("nan")
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def transform_report(vectorizers: dict, texts: pd.Series, sizes: list[int], repeats: int) -> None:
    """Print rows/s of scikit-learn and the compiled ``transform`` on one thread and on chunks.

    The compiled operator chooses by comparing the batch with
    ``willow.compiler.lowering.text.PARALLEL_MIN_ROWS`` and ``PARALLEL_MIN_CODE_POINTS`` at call
    time; one thread or chunks are forced by setting them out of reach or to 0. Runs are interleaved (each round runs all three),
    the median over ``repeats`` rounds is reported, and "others" is how many cores other
    processes kept busy meanwhile (on 2 cores, above ~0.2 the chunks cannot run at full speed).
    """
    import numba

    from willow.compiler.lowering import lower, text

    default, default_code_points = text.PARALLEL_MIN_ROWS, text.PARALLEL_MIN_CODE_POINTS
    print(f"standalone transform, threads={numba.get_num_threads()}, load average {os.getloadavg()[0]:.2f}")
    print(
        f"{'vectorizer':<12}{'rows':>7}{'sklearn':>12}{'1 thread':>12}{'chunks':>12}{'chunks/1':>10}{'others':>8}"
    )
    try:
        for label, vectorizer in vectorizers.items():
            operator = lower(vectorizer, "transform")
            for rows in sizes:
                batch = list(np.resize(texts.to_numpy(), rows))

                def compiled(threshold: int, batch=batch, operator=operator):
                    text.PARALLEL_MIN_ROWS = threshold
                    text.PARALLEL_MIN_CODE_POINTS = dict.fromkeys(default_code_points, threshold)
                    return operator(batch)

                runs = {
                    "sklearn": lambda batch=batch, vectorizer=vectorizer: vectorizer.transform(batch),
                    "serial": lambda compiled=compiled: compiled(2**62),
                    "parallel": lambda compiled=compiled: compiled(0),
                }
                serial, parallel = runs["serial"](), runs["parallel"]()
                if (serial != parallel).nnz or not np.array_equal(serial.indices, parallel.indices):
                    raise AssertionError(f"{label}: serial and parallel kernels differ on {rows} rows")
                times: dict[str, list[float]] = {key: [] for key in runs}
                wall, busy, own = time.perf_counter(), _busy_cpu_seconds(), _own_cpu_seconds()
                for _ in range(repeats):
                    for key, run in runs.items():
                        start = time.perf_counter()
                        run()
                        times[key].append(time.perf_counter() - start)
                wall = time.perf_counter() - wall
                others = (_busy_cpu_seconds() - busy - (_own_cpu_seconds() - own)) / wall
                median = {key: statistics.median(values) for key, values in times.items()}
                print(
                    f"{label:<12}{rows:>7}"
                    + "".join(f"{rows / median[key]:>12,.0f}" for key in runs)
                    + f"{median['serial'] / median['parallel']:>9.2f}x{max(others, 0.0):>8.2f}"
                )
    finally:
        text.PARALLEL_MIN_ROWS, text.PARALLEL_MIN_CODE_POINTS = default, default_code_points
    print(
        f"(rows/s, medians of {repeats} interleaved rounds; load average {os.getloadavg()[0]:.2f} at the end)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sklearn-repeats", type=int, default=3)
    parser.add_argument("--latency-rows", type=int, default=300)
    parser.add_argument("--skip-compile", action="store_true", help="do not measure cold/warm compile time")
    parser.add_argument(
        "--transform",
        action="store_true",
        help="measure the standalone vectorizer transform (serial vs parallel kernel) instead",
    )
    parser.add_argument(
        "--transform-sizes", default="64,128,256,512,2000,20000", help="batch sizes for --transform"
    )
    args = parser.parse_args(argv)
    if not data_available("sms_spam.tsv"):
        sys.exit(f"SMS data (sms_spam.tsv) not found in {data_dir()}")
    if args.transform:
        texts, _, (word, char, _) = load()
        sizes = [int(size) for size in args.transform_sizes.split(",")]
        transform_report({"word 1-2": word, "char_wb 2-5": char}, texts, sizes, args.repeats)
        return

    from willow.compiler.lowering.fused import fuse_text_linear

    texts, _, (word, char, model) = load()
    batch = list(np.resize(texts.to_numpy(), args.rows))
    fused_predict = fuse_text_linear([word, char], model, "predict")
    fused_proba = fuse_text_linear([word, char], model, "predict_proba")

    def sklearn_predict(rows):
        return model.predict(sp.hstack([word.transform(rows), char.transform(rows)]).tocsr())

    def sklearn_proba(rows):
        return model.predict_proba(sp.hstack([word.transform(rows), char.transform(rows)]).tocsr())

    fused_predict(batch[:1000])  # warm-up (loads compiled kernels, starts threads)
    same_labels = np.array_equal(fused_predict(batch), sklearn_predict(batch))
    proba_error = float(np.abs(fused_proba(batch[:5000]) - sklearn_proba(batch[:5000])).max())

    sk_batch = median_seconds(lambda: sklearn_predict(batch), args.sklearn_repeats)
    fused_batch = median_seconds(lambda: fused_predict(batch), args.repeats)
    import numba

    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    fused_one_thread = median_seconds(lambda: fused_predict(batch), args.repeats)
    numba.set_num_threads(threads)
    singles = list(texts.iloc[-args.latency_rows :])
    latency(fused_predict, singles[:20])
    sk_single = latency(sklearn_predict, singles)
    fused_single = latency(fused_predict, singles)

    print(f"rows={args.rows} threads={threads} features={model.coef_.shape[1]}")
    print(f"identical labels on the batch: {same_labels}; max |proba diff| on 5000 rows: {proba_error:.2e}")
    print(f"batch   scikit-learn {args.rows / sk_batch:12,.0f} rows/s ({sk_batch:.3f} s)")
    print(f"batch   fused        {args.rows / fused_batch:12,.0f} rows/s ({fused_batch:.3f} s)")
    print(f"batch   speedup      {sk_batch / fused_batch:12.1f} x")
    print(
        f"batch   fused 1 thread {args.rows / fused_one_thread:10,.0f} rows/s ({sk_batch / fused_one_thread:.1f} x)"
    )
    print(f"latency scikit-learn {sk_single * 1e6:12.1f} us/row")
    print(f"latency fused        {fused_single * 1e6:12.1f} us/row")
    print(f"latency ratio        {sk_single / fused_single:12.1f} x lower")
    if not args.skip_compile:
        with tempfile.TemporaryDirectory() as cache:
            cold = compile_seconds(cache)
            warm = compile_seconds(cache)
        print(f"compile (lower + first call) cold cache {cold:.2f} s, warm cache {warm:.2f} s")


if __name__ == "__main__":
    main()
