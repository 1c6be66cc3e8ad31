"""Benchmark: compiled lookups and elementwise arithmetic against pandas/numpy.

    python -m benchmarks.compiler_lookups [--rows 1 1000 100000] [--repeats 7]

Each case is one expression as a pipeline writes it, evaluated by pandas/numpy and by the kernel
willow generates for it (key -> row positions, gather, arithmetic in one loop; the operands'
Python expressions, e.g. ``rows["user"]``, are evaluated in both). Reports the median time per
call at each batch size and the ratio, then the key-matching strategies on their own: pandas'
``Index.get_indexer`` against the dense position array (integer keys) and against a Python
``dict`` loop and ``pyarrow.compute.index_in`` (string keys). ``--ulps`` measures why
transcendental functions are not fused: the largest ulp difference and the per-element time of
Numba's (C library) versions against numpy's own. ``--threads`` times each kernel filling its rows
on one thread against row chunks on the worker threads, whatever the batch size, to place
``arithmetic_codegen.PARALLEL_MIN_VALUES``.
"""

from __future__ import annotations

import argparse
import ast
import time
from typing import Any

import numpy as np
import pandas as pd

from willow.compiler.compile_pass import _resolve_fitted
from willow.compiler.lowering.arithmetic import find_expressions, node_at, replace_at
from willow.compiler.lowering.arithmetic_codegen import compile_expression, values_per_row
from willow.compiler.lowering.lookups import _arrow_positions, dense_rows

CASES = {
    "reindex int keys (10k x 8 table)": "ITEMS.reindex(rows['item']).to_numpy(dtype=float)",
    "reindex str keys (40 x 5 table)": "GROUPS.reindex(rows['group']).to_numpy(dtype=float)",
    "map dict (str keys)": "rows['group'].map(RATES).to_numpy(dtype=float)",
    "merge left (int keys)": "rows[['item']].merge(ITEMS, how='left', left_on='item', right_index=True)"
    ".drop(columns='item').to_numpy(dtype=float)",
    "lookup x lookup (music affinity)": "USERS.reindex(rows['user']).to_numpy(dtype=float) * "
    "ITEMS.reindex(rows['item']).to_numpy(dtype=float)",
    "column - lookup (music recency)": "rows['t'].to_numpy(dtype=float)[:, None] - "
    "USERS.reindex(rows['user']).to_numpy(dtype=float)",
    "arithmetic only (1-D)": "np.where(x > 0, y, -y) / (y * y + 1.0) - np.minimum(np.abs(x), 0.5) * 2",
    "Series ratios, column_stack (price)": "np.column_stack([rows['a'] / rows['b'], rows['c'] / rows['a'], "
    "rows['t'] / rows['b']])",
    "Series arithmetic, to_numpy": "(rows['t'] * 2.0 - rows['a'] / rows['c']).to_numpy(dtype=float)",
    "nansum of lookup x lookup (keepdims)": "np.nansum(USERS.reindex(rows['user']).to_numpy(dtype=float) * "
    "ITEMS.reindex(rows['item']).to_numpy(dtype=float), axis=1, keepdims=True)",
    "nanmean of a lookup's columns": "np.nanmean(USERS.reindex(rows['user']).to_numpy(dtype=float), axis=1)",
    "merge left, left columns kept": "rows.merge(ITEMS_ON, how='left', on='item').drop(columns='group')"
    ".to_numpy(dtype=float)",
}


def _namespace(rows: int, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    groups = [f"group-{k}" for k in range(40)]
    frame = pd.DataFrame(
        {
            "user": rng.integers(0, 650, rows),  # 600 users in the table
            "item": rng.integers(0, 11000, rows),  # 10k items in the table
            "group": rng.choice(groups + ["unseen"], rows),
            "t": rng.normal(0, 1, rows),
            "a": rng.integers(0, 5, rows).astype(float),  # zeros: division by zero
            "b": rng.gamma(2.0, 100.0, rows),
            "c": np.where(rng.random(rows) < 0.1, np.nan, rng.normal(500, 100, rows)),
        }
    )
    items = pd.DataFrame(rng.normal(size=(10000, 8)), index=rng.permutation(10000))
    return {
        "np": np,
        "pd": pd,
        "rows": frame,
        "x": rng.normal(0, 1, rows),
        "y": rng.normal(0, 1, rows),
        "ITEMS": items,
        "ITEMS_ON": items.rename_axis("item").reset_index(),
        "USERS": pd.DataFrame(rng.normal(size=(600, 8)), index=np.arange(600)),
        "GROUPS": pd.DataFrame(rng.normal(size=(40, 5)), index=groups),
        "RATES": dict(zip(groups, rng.normal(size=40), strict=True)),
    }


def _median(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        calls = 0
        while True:  # at least 20 ms per sample
            fn()
            calls += 1
            if time.perf_counter() - start > 0.02:
                break
        times.append((time.perf_counter() - start) / calls)
    return float(np.median(times))


def _found(source: str, ns: dict[str, Any]) -> tuple[ast.Expression, list]:
    """``source`` parsed, and the array expressions willow finds in it (path, expression)."""
    tree = ast.parse(source, mode="eval")

    def evaluate(expr: ast.expr) -> Any:
        return eval(compile(ast.Expression(body=expr), "<bench>", "eval"), ns)

    found, _ = find_expressions(
        tree.body, evaluate, lambda e: _resolve_fitted(e, {"rows", "x", "y"}, evaluate)
    )
    assert found, f"nothing compiled in {source}"
    return tree, found


def _compiled(source: str, ns: dict[str, Any]):
    """The expression with every array expression willow finds in it replaced by its kernel."""
    tree, found = _found(source, ns)
    scope = dict(ns)
    for k, (path, expression) in enumerate(found):
        operator, arguments, _ = compile_expression(expression, node_at(tree.body, path), ns)
        scope[f"_willow_op{k}"] = operator
        call = ast.Call(func=ast.Name(id=f"_willow_op{k}", ctx=ast.Load()), args=arguments, keywords=[])
        if path:
            replace_at(tree.body, path, call)
        else:
            tree.body = call
    code = compile(ast.fix_missing_locations(tree), "<bench>", "eval")
    return lambda: eval(code, scope)


def run(sizes: list[int], repeats: int, only: str | None = None) -> None:
    print("| expression | rows | pandas/numpy | compiled | speedup |")
    print("|---|---|---|---|---|")
    for label, source in CASES.items():
        if only is not None and only not in label:
            continue
        for rows in sizes:
            ns = _namespace(rows)
            original_code = compile(source, "<bench>", "eval")
            original = lambda code=original_code, ns=ns: eval(code, ns)  # noqa: E731
            compiled = _compiled(source, ns)
            got, want = compiled(), original()
            assert np.array_equal(got, want, equal_nan=True), label
            t_original, t_compiled = _median(original, repeats), _median(compiled, repeats)
            print(
                f"| {label} | {rows} | {t_original * 1e6:,.1f} us | {t_compiled * 1e6:,.1f} us | "
                f"{t_original / t_compiled:.1f}x |"
            )
    if only is not None:
        return
    print()
    print("| key matching | rows | get_indexer | alternative | alternative speedup |")
    print("|---|---|---|---|---|")
    for rows in sizes:
        ns = _namespace(rows)
        index = ns["ITEMS"].index
        low = int(index.min())
        dense = np.full(int(index.max()) - low + 1, -1, dtype=np.int64)
        dense[index.to_numpy() - low] = np.arange(len(index))
        keys = ns["rows"]["item"]
        t_get = _median(lambda: index.get_indexer(keys), repeats)  # noqa: B023
        t_dense = _median(lambda: dense_rows(keys.to_numpy(), dense, low), repeats)  # noqa: B023
        print(
            f"| int keys, dense array | {rows} | {t_get * 1e6:,.1f} us | {t_dense * 1e6:,.1f} us | {t_get / t_dense:.1f}x |"
        )
        groups = ns["GROUPS"].index
        positions = {label: k for k, label in enumerate(groups)}
        strings = ns["rows"]["group"]
        t_get = _median(lambda: groups.get_indexer(strings), repeats)  # noqa: B023
        t_dict = _median(
            lambda: np.fromiter((positions.get(s, -1) for s in strings.to_numpy()), np.int64, len(strings)),  # noqa: B023
            repeats,
        )
        print(
            f"| str keys, Python dict | {rows} | {t_get * 1e6:,.1f} us | {t_dict * 1e6:,.1f} us | {t_get / t_dict:.1f}x |"
        )
        t_arrow = _median(lambda: _arrow_positions(strings, list(groups)), repeats)  # noqa: B023
        print(
            f"| str keys, pyarrow index_in | {rows} | {t_get * 1e6:,.1f} us | {t_arrow * 1e6:,.1f} us | {t_get / t_arrow:.1f}x |"
        )


def ulps(rows: int = 200000) -> None:
    """Numba's transcendental functions against numpy's: max ulp difference and time."""
    import numba

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(rows // 2) * 10, np.abs(rng.standard_normal(rows // 2))])
    print("| function | max ulps (finite) | elements differing | numpy ns/elem | numba ns/elem |")
    print("|---|---|---|---|---|")
    for name in ("log", "log1p", "log2", "log10", "exp", "expm1", "tanh", "arctan", "sin", "cbrt"):
        function = getattr(np, name)

        @numba.njit(error_model="numpy")
        def loop(values, f=function):
            out = np.empty_like(values)
            for i in range(values.shape[0]):
                out[i] = f(values[i])
            return out

        with np.errstate(all="ignore"):
            want, got = function(x), loop(x)
            t_numpy = _median(lambda f=function: f(x), 5) / len(x)
            t_numba = _median(lambda g=loop: g(x), 5) / len(x)
        finite = np.isfinite(want) & np.isfinite(got)
        spread = np.abs(got[finite] - want[finite]) / np.spacing(np.abs(want[finite]))
        differing = int((~((got == want) | (np.isnan(got) & np.isnan(want)))).sum())
        print(
            f"| {name} | {spread.max():.0f} | {differing} of {len(x)} | {t_numpy * 1e9:.1f} | {t_numba * 1e9:.1f} |"
        )


def threads(sizes: list[int], repeats: int, only: str | None = None) -> None:
    """Each compiled case on one thread against row chunks on every worker thread, alternating."""
    import numba

    from willow.compiler.lowering import arithmetic_codegen

    workers = numba.get_num_threads()
    print(f"| expression | rows | values read + written | 1 thread | {workers} threads | ratio |")
    print("|---|---|---|---|---|---|")
    threshold = arithmetic_codegen.PARALLEL_MIN_VALUES
    arithmetic_codegen.PARALLEL_MIN_VALUES = 0  # chunks at every size (restored below)
    try:
        for label, source in CASES.items():
            if only is not None and only not in label:
                continue
            for rows in sizes:
                ns = _namespace(rows)
                compiled = _compiled(source, ns)
                want = eval(compile(source, "<bench>", "eval"), ns)
                samples: dict[int, list[float]] = {1: [], workers: []}
                for _ in range(3):
                    for count in samples:
                        numba.set_num_threads(count)
                        assert np.array_equal(compiled(), want, equal_nan=True), label
                        samples[count].append(_median(compiled, repeats))
                numba.set_num_threads(workers)
                one, many = float(np.median(samples[1])), float(np.median(samples[workers]))
                values = _values(source, ns, want)
                print(
                    f"| {label} | {rows} | {values:,} | {one * 1e6:,.1f} us | {many * 1e6:,.1f} us | "
                    f"{one / many:.2f}x |"
                )
    finally:
        arithmetic_codegen.PARALLEL_MIN_VALUES = threshold


def _values(source: str, ns: dict[str, Any], result: Any) -> int:
    """rows x (operand columns + output columns), as the compiled call counts them."""
    width = result.shape[1] if result.ndim == 2 else 1
    return sum(len(result) * values_per_row(expression, width) for _, expression in _found(source, ns)[1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 1000, 100000])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--only", help="only the expression cases whose label contains this text")
    parser.add_argument("--ulps", action="store_true", help="only compare transcendental functions")
    parser.add_argument(
        "--threads", action="store_true", help="only compare one thread with row chunks on the worker threads"
    )
    args = parser.parse_args(argv)
    if args.ulps:
        ulps()
    elif args.threads:
        threads(args.rows, args.repeats, args.only)
    else:
        run(args.rows, args.repeats, args.only)


if __name__ == "__main__":
    main()
