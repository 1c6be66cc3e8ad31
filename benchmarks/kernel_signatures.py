"""Probe: how many Numba specializations each kernel compiles for one piece of work.

    python -m benchmarks.kernel_signatures [--rows 2000] [--time]

Numba types an array's dtype, rank, layout (C, Fortran, any) and read-only flag, and a lazily
compiling dispatcher compiles a new specialization for every new combination it is called with:
the same kernel called with NumPy's writable arrays, pandas 3's read-only ``to_numpy()`` and a
Fortran-ordered frame is compiled (and cached, and loaded) up to three times. This probe calls the
kernels of linear models, dense key lookups and generated array expressions as pipelines do
(writable, read-only, C- and Fortran-ordered, float32 where accepted, CSR rows), then prints each
dispatcher's compiled signatures. ``--time`` also reports the process's CPU seconds (user+sys)
spent, mostly compiling: run it with an empty ``WILLOW_CACHE_DIR`` and ``NUMBA_CACHE_DIR`` for
the cold figure.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp


def _read_only(array: np.ndarray) -> np.ndarray:
    array = array.copy(order="K")
    array.setflags(write=False)
    return array


def _layouts(X: np.ndarray) -> Iterator[np.ndarray]:
    """``X`` as callers hand it: writable and read-only, C- and Fortran-ordered, a frame's
    ``to_numpy()`` (read-only and Fortran-ordered under pandas 3)."""
    yield X
    yield _read_only(X)
    yield np.asfortranarray(X)
    yield _read_only(np.asfortranarray(X))
    yield pd.DataFrame(X).to_numpy()


def linear_kernels(rows: int) -> dict[str, Any]:
    """Every kernel of the linear modules (one per head), after each method's realistic calls."""
    from sklearn.linear_model import LinearRegression, LogisticRegression, SGDClassifier

    from willow.compiler.lowering import linear
    from willow.compiler.lowering.linear import cpu_kernels, linear_spec, lower_linear_model

    rng = np.random.default_rng(0)
    X = rng.normal(size=(rows, 6))
    y2, y3 = (X[:, 0] > 0).astype(int), np.digitize(X[:, 1], [-0.5, 0.5])
    models = [
        LogisticRegression().fit(X, y2),
        LogisticRegression().fit(X, y3),
        SGDClassifier(loss="log_loss", random_state=0).fit(X, y3),
        LinearRegression().fit(X, X[:, 2]),
    ]
    kernels: dict[str, Any] = {}
    threshold = linear.PARALLEL_MIN_WORK
    for model in models:
        for method in ("predict", "predict_proba", "decision_function"):
            if not hasattr(model, method):
                continue
            # the first model's batches (binary logistic regression) also run the parallel kernels
            linear.PARALLEL_MIN_WORK = 0 if model is models[0] else threshold
            op = lower_linear_model(model, method)
            for rows_in in _layouts(X):
                op(rows_in)
                op(rows_in[:3])
            op(X.astype(np.float32))
            csr = sp.csr_matrix(np.where(np.abs(X) > 1, X, 0.0))
            op(csr)
            op(csr.astype(np.float32))
            module, _ = cpu_kernels(linear_spec(model, method))
            head = linear_spec(model, method).head
            for name in ("dense_scores", "dense_scores_serial", "csr_scores", "csr_scores_serial", head):
                kernel = getattr(module, name)  # labelled by its generated module: shared ones once
                generated = kernel.py_func.__module__.removeprefix("willow_kernel_").rsplit("_", 1)[0]
                kernels[f"{generated}.{name}"] = kernel
    linear.PARALLEL_MIN_WORK = threshold
    return kernels


def lookup_kernels(rows: int) -> dict[str, Any]:
    """``dense_rows`` after integer keys of a frame's column (read-only under pandas 3), a NumPy
    array (writable), an int32 column and a strided slice."""
    from willow.compiler.lowering import lookups
    from willow.compiler.lowering.lookups import KeyIndex

    rng = np.random.default_rng(1)
    index = KeyIndex.build(pd.Index(np.arange(0, 600, 3)), "the table")
    keys = rng.integers(-5, 620, rows)
    frame = pd.DataFrame({"key": keys, "key32": keys.astype(np.int32), "other": keys})
    for value in (frame["key"], keys, _read_only(keys), frame["key32"], frame.to_numpy()[:, 0], keys[::2]):
        index.rows(value)
    return {"lookups.dense_rows": getattr(lookups, "dense_rows_kernel", lookups.dense_rows)}


def _compiled(source: str, ns: dict[str, Any], row_names: set[str]) -> Any:
    """``source`` (one array expression over ``row_names``) as its compiled operator's call."""
    import ast

    from willow.compiler.compile_pass import _resolve_fitted
    from willow.compiler.lowering.arithmetic import find_expressions
    from willow.compiler.lowering.arithmetic_codegen import compile_expression

    def evaluate(expr: ast.expr) -> Any:
        return eval(compile(ast.Expression(body=expr), "<probe>", "eval"), ns)

    node = ast.parse(source, mode="eval").body
    found, _ = find_expressions(node, evaluate, lambda e: _resolve_fitted(e, row_names, evaluate))
    assert len(found) == 1 and found[0][0] == (), f"{source} is not one array expression"
    operator, arguments, _ = compile_expression(found[0][1], node, ns)
    return lambda: operator(*[evaluate(a) for a in arguments])


def expression_kernels(rows: int) -> dict[str, Any]:
    """The generated kernels of ``benchmarks.compiler_lookups``' expressions, called with its
    frame (read-only columns) and with C-, Fortran-ordered and read-only NumPy operands."""
    from benchmarks import compiler_lookups

    before = set(sys.modules)
    ns = compiler_lookups._namespace(rows)
    for source in compiler_lookups.CASES.values():
        compiler_lookups._compiled(source, ns)()
    # two-column arithmetic on arrays of each layout and flag
    m = np.random.default_rng(2).normal(size=(rows, 3))
    for source in ("m * 2.0 - w", "np.nansum(m * w, axis=1)", "np.where(x > 0, m[:, 0], x)"):
        for first in _layouts(m):
            for second in (m, np.asfortranarray(m), _read_only(m)):
                scope = {**ns, "m": first, "w": second, "x": ns["x"]}
                _compiled(source, scope, {"m", "w", "x"})()
    kernels = {}
    for name in sorted(set(sys.modules) - before):
        if name.startswith("willow_kernel_expression_"):
            kernel = sys.modules[name].kernel
            kernels[f"expression.{name.rsplit('_', 1)[-1][:8]}"] = kernel
            for key, twin in getattr(kernel, "willow_twins", {}).items():  # signatures.LayoutKernel
                layouts = "".join(layout for layout, _ in key)
                kernels[f"expression.{name.rsplit('_', 1)[-1][:8]} (twin {layouts})"] = twin
    return kernels


def report(kernels: dict[str, Any]) -> int:
    """Print each kernel's signatures; return how many specializations were compiled in all."""
    total = 0
    for label, kernel in kernels.items():
        signatures = kernel.signatures
        total += len(signatures)
        shown = "; ".join(", ".join(str(t) for t in sig) for sig in signatures)
        print(f"{label}: {len(signatures)}  [{shown}]")
    return total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--only", choices=("linear", "lookups", "expressions"), default=None)
    parser.add_argument("--time", action="store_true", help="report CPU seconds spent per group")
    args = parser.parse_args(argv)
    groups = {"linear": linear_kernels, "lookups": lookup_kernels, "expressions": expression_kernels}
    for group, build in groups.items():
        if args.only not in (None, group):
            continue
        usage, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        kernels = build(args.rows)
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = after.ru_utime - usage.ru_utime + after.ru_stime - usage.ru_stime
        print(f"## {group}")
        total = report(kernels)
        timing = f"; {cpu:.2f} s CPU, {time.perf_counter() - wall:.2f} s wall" if args.time else ""
        print(f"-> {len(kernels)} kernels, {total} signatures{timing}\n")


if __name__ == "__main__":
    main()
