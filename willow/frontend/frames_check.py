"""The calibration check of a rewritten whole-frame pipeline (:mod:`willow.frontend.frames`).

The original and the rewritten function bodies both run up to the statement that selects the
model's columns, on the calibration rows as given, with another index, and on 0 and 1 rows; the
selected frames must be identical (``assert_frame_equal`` with exact values), and an error must be
raised by both or neither (same type). What follows the selection is the same code in both, and
the model is never called.
"""

from __future__ import annotations

import ast
import copy
import warnings
from typing import Any

import numpy as np
import pandas as pd

from willow.frontend.context import FrontEndContext
from willow.rows import n_rows, take_rows

__all__ = ["check_rewrite", "PROBE_ROWS"]

PROBE_ROWS = 5000
"""Calibration rows the check runs on (the first ones)."""


def check_rewrite(
    function: ast.FunctionDef,
    original: tuple[list[ast.stmt], ast.expr],
    rewritten: tuple[list[ast.stmt], ast.expr],
    ctx: FrontEndContext,
    parameter: str,
) -> tuple[str, str] | None:
    """``None`` when the original statements before the selection and its selected frame
    (``original``: statements, expression) equal the rewritten ones (``rewritten``) on every probe
    batch; otherwise ``("unchecked", why)`` (the original does not reach the selection on the
    calibration rows) or ``("different", where and how)``. ``function`` gives the signature."""
    expected_fn, found_fn = _probe(function, *original, ctx), _probe(function, *rewritten, ctx)
    for position, (label, arguments) in enumerate(_probe_arguments(ctx, parameter)):
        expected = _outcome(expected_fn, arguments)
        found = _outcome(found_fn, arguments)
        if position == 0 and expected[0] != "value":
            return "unchecked", (
                "the original statements did not reach the column selection on the calibration rows, so the "
                "rewrite could not be checked"
            )
        difference = _difference(expected, found)
        if difference:
            return "different", f"the rewrite differs from the original on {label} ({difference})"
    return None


def _load(name: str) -> ast.Name:
    return ast.Name(id=name, ctx=ast.Load())


class _Selected(Exception):
    """Raised by a probe with the value the model would read."""

    def __init__(self, value: Any) -> None:
        super().__init__("selected")
        self.value = value


def _probe(function: ast.FunctionDef, body: list[ast.stmt], selected: ast.expr, ctx: FrontEndContext) -> Any:
    """A function with ``function``'s signature running ``body``, then raising the value of
    ``selected`` as :class:`_Selected`."""
    marker = "__willow_selected__"
    probe = copy.deepcopy(function)
    probe.name = "__willow_frames_probe__"
    probe.decorator_list = []
    raise_node = ast.Raise(
        exc=ast.Call(func=_load(marker), args=[copy.deepcopy(selected)], keywords=[]), cause=None
    )
    probe.body = [copy.deepcopy(node) for node in body] + [ast.copy_location(raise_node, function)]
    namespace = dict(ctx.constants)
    namespace.update(ctx.bindings)
    namespace[marker] = _Selected
    module = ast.Module(body=[probe], type_ignores=[])
    ast.fix_missing_locations(module)
    exec(compile(module, ctx.filename, "exec"), namespace)
    return namespace[probe.name]


def _probe_arguments(ctx: FrontEndContext, parameter: str) -> list[tuple[str, dict[str, Any]]]:
    arguments = dict(ctx.arguments)
    rows = n_rows(arguments[parameter])
    count = min(rows, PROBE_ROWS)
    sample = dict(arguments)
    for name in ctx.row_parameters:
        if name in sample:
            sample[name] = take_rows(sample[name], np.arange(count))
    variants = [("the calibration rows", sample)]
    shifted = dict(sample)
    frame = sample[parameter]
    shifted[parameter] = frame.set_axis(pd.Index(np.arange(len(frame), dtype=np.int64) * 3 + 7), axis=0)
    variants.append(("the calibration rows with another index", shifted))
    for size in (0, 1):
        small = dict(arguments)
        for name in ctx.row_parameters:
            if name in small:
                small[name] = take_rows(small[name], np.arange(min(size, rows)))
        variants.append((f"{size} rows", small))
    return variants


def _outcome(function: Any, arguments: dict[str, Any]) -> tuple[str, Any]:
    # each run gets its own frames: the original may add columns to its input
    arguments = {k: v.copy() if isinstance(v, (pd.DataFrame, pd.Series)) else v for k, v in arguments.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            function(**arguments)
        except _Selected as selected:
            return "value", selected.value
        except Exception as exc:  # noqa: BLE001 - the original's own error: compared by type
            return "error", type(exc)
    return "returned", None


def _difference(expected: tuple[str, Any], found: tuple[str, Any]) -> str | None:
    if expected[0] != found[0]:
        return f"{expected[0]} {_describe(expected)} vs {found[0]} {_describe(found)}"
    if expected[0] == "error":
        return None if expected[1] is found[1] else f"{expected[1].__name__} vs {found[1].__name__}"
    if expected[0] == "returned":
        return None
    a, b = expected[1], found[1]
    if type(a) is not type(b):
        return f"{type(a).__name__} vs {type(b).__name__}"
    try:
        if isinstance(a, pd.DataFrame):
            pd.testing.assert_frame_equal(a, b, check_exact=True, check_flags=True)
        elif isinstance(a, pd.Series):
            pd.testing.assert_series_equal(a, b, check_exact=True)
        elif isinstance(a, np.ndarray):
            if a.dtype != b.dtype:
                return f"dtype {a.dtype} vs {b.dtype}"
            np.testing.assert_array_equal(a, b, strict=True)
        else:
            return "a value that is not a frame or array"
    except AssertionError as exc:
        return str(exc).splitlines()[0]
    return None


def _describe(outcome: tuple[str, Any]) -> str:
    return outcome[1].__name__ if outcome[0] == "error" else ""
