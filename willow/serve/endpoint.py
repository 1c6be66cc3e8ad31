"""The pipeline behind the server: its tiers, its row argument, and JSON rows in and out.

A willow pipeline is a function of several arguments (``classify(model, comments)``) of which one
holds the rows. :class:`ServedPipeline` binds the others once (``ServedPipeline(classify,
model)``), so a batch of JSON rows becomes one call. It also resolves the pipeline's accuracy
tiers: a pipeline calibrated for several targets exposes ``tiers_`` (objects with ``.target``,
strictest first) and ``tier(target)`` (a callable with the function's signature); anything else
is served as one tier, the plain call.

Rows arrive as JSON: a list of scalars (texts, numbers) becomes a Python list, a list of objects
becomes a pandas DataFrame with those columns, a list of lists becomes a 2-D numpy array. An
``example`` of the row argument (a few calibration rows) fixes the expected shape, so a request
of another shape is refused before it reaches a batch; without one, requests are only batched
with requests of their own shape.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from willow.errors import WillowError
from willow.rows import n_rows, take_rows

__all__ = ["ServedPipeline", "RowShape", "RequestError", "OutputError", "row_shape", "to_container"]

_SCALARS = (str, int, float, bool)


class RequestError(WillowError, ValueError):
    """A request the server refuses (bad JSON, rows of the wrong shape, an unknown tier): a 4xx.

    ``status`` is the HTTP status code the server answers with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class OutputError(WillowError, RuntimeError):
    """The pipeline's output for a batch cannot be split into one answer per row (a 500)."""


@dataclass(frozen=True)
class RowShape:
    """What one request's rows look like: ``kind`` is ``"scalars"`` (a list of texts or numbers;
    ``types`` names the JSON type), ``"records"`` (objects with ``columns``) or ``"matrix"``
    (lists of ``width`` numbers). Requests are batched together only when their shapes are equal."""

    kind: str
    columns: tuple[str, ...] = ()
    width: int = 0
    types: str = ""

    def describe(self) -> str:
        if self.kind == "records":
            return f"objects with the keys {list(self.columns)}"
        if self.kind == "matrix":
            return f"lists of {self.width} numbers"
        return f"{self.types or 'scalar'} values"


def _scalar_type(value: Any) -> str:
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    return "number"


def row_shape(rows: list[Any]) -> RowShape:
    """The shape of a request's JSON rows; :class:`RequestError` when they are not one shape."""
    if not isinstance(rows, list) or not rows:
        raise RequestError(f"Expected a non-empty JSON list of rows, got {_json_kind(rows)}.")
    first = rows[0]
    if isinstance(first, dict):
        columns = tuple(first)
        for i, row in enumerate(rows):
            if not isinstance(row, dict) or row.keys() != first.keys():
                raise RequestError(
                    f"Row {i} is {_describe_row(row)}, but row 0 is an object with the keys "
                    f"{list(columns)}; every row of a request must have the same keys."
                )
        return RowShape("records", columns=columns)
    if isinstance(first, list):
        width = len(first)
        for i, row in enumerate(rows):
            if not isinstance(row, list) or len(row) != width:
                raise RequestError(
                    f"Row {i} is {_describe_row(row)}, but row 0 is a list of {width} values; every "
                    "row of a request must be a list of the same length."
                )
            bad = [
                v for v in row if not (v is None or isinstance(v, (int, float)) and not isinstance(v, bool))
            ]
            if bad:
                raise RequestError(
                    f"Row {i} holds {bad[0]!r}; a row given as a list must hold numbers (or null)."
                )
        return RowShape("matrix", width=width)
    if first is None or isinstance(first, _SCALARS):
        kinds = {_scalar_type(v) for v in rows if v is not None}
        for i, row in enumerate(rows):
            if row is not None and not isinstance(row, _SCALARS):
                raise RequestError(
                    f"Row {i} is {_describe_row(row)}, but row 0 is a {_scalar_type(first)}; every row "
                    "of a request must have the same shape."
                )
        if len(kinds) > 1:
            raise RequestError(f"The rows mix {sorted(kinds)} values; send rows of one type.")
        return RowShape("scalars", types=kinds.pop() if kinds else "null")
    raise RequestError(f"Row 0 is {_describe_row(first)}; expected a string, a number, an object or a list.")


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an empty list" if not value else "a list"
    return {dict: "an object", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__
    )


def _describe_row(row: Any) -> str:
    if isinstance(row, dict):
        return f"an object with the keys {list(row)}"
    if isinstance(row, list):
        return f"a list of {len(row)} values"
    return f"{_json_kind(row)} ({row!r})"


def to_container(rows: list[Any], shape: RowShape, example: Any = None) -> Any:
    """The JSON ``rows`` (all of one ``shape``) as the row argument: a list, a DataFrame (with the
    ``example`` frame's dtypes where they apply) or a 2-D float array."""
    if shape.kind == "records":
        frame = pd.DataFrame.from_records(rows, columns=list(shape.columns))
        if isinstance(example, pd.DataFrame):
            for column, dtype in example.dtypes.items():
                if frame[column].dtype != dtype:
                    # a null in an integer column cannot be cast: keep pandas' own choice (float, NaN)
                    with contextlib.suppress(TypeError, ValueError):
                        frame[column] = frame[column].astype(dtype)
        return frame
    if shape.kind == "matrix":
        return np.array(rows, dtype=float)
    if isinstance(example, np.ndarray):
        return np.array(rows, dtype=example.dtype if example.dtype != object else object)
    return list(rows)


def _example_shape(example: Any) -> RowShape:
    """The shape JSON rows must have to stand for ``example`` (the row argument's own type)."""
    if isinstance(example, pd.DataFrame):
        return RowShape("records", columns=tuple(str(c) for c in example.columns))
    if isinstance(example, np.ndarray) and example.ndim == 2:
        return RowShape("matrix", width=int(example.shape[1]))
    values = list(example)
    if not values:
        raise ValueError("example must hold at least one row, got none.")
    return row_shape([v.item() if isinstance(v, np.generic) else v for v in values])


def output_rows(output: Any, expected: int) -> list[Any]:
    """The pipeline's output as one JSON-ready value per row; :class:`OutputError` unless it has
    exactly ``expected`` rows."""
    if isinstance(output, pd.DataFrame):
        values: list[Any] = output.to_dict("records")
    elif isinstance(output, (pd.Series, pd.Index)):
        values = output.tolist()
    elif sp.issparse(output):
        values = output.toarray().tolist()
    elif isinstance(output, np.ndarray):
        if output.ndim == 0:
            raise OutputError(
                f"The pipeline returned a 0-d array for a batch of {expected} rows; expected one value per row."
            )
        values = output.tolist()
    elif isinstance(output, (list, tuple)):
        values = list(output)
    else:
        raise OutputError(
            f"The pipeline returned {type(output).__name__}; the server expects one value per row "
            "(a list, numpy array, pandas Series or DataFrame)."
        )
    if len(values) != expected:
        raise OutputError(
            f"The pipeline returned {len(values)} rows for a batch of {expected}; the server needs "
            "one output row per input row to give each request its own."
        )
    return values


def json_default(value: Any) -> Any:
    """``json.dumps`` fallback for numpy scalars and arrays."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"Cannot encode {type(value).__name__} as JSON.")


class ServedPipeline:
    """A pipeline with its non-row arguments bound, ready to answer batches of JSON rows.

    ``ServedPipeline(classify, model)`` serves ``classify(model, rows)``: positional and keyword
    ``args``/``kwargs`` bind the other parameters (as ``functools.partial`` would), and the rows
    go to ``row_arg`` (by default the pipeline's traced row parameter, else the one parameter left
    unbound). ``example`` (optional; a few rows of the row argument, e.g. calibration rows) fixes
    the JSON shape requests must have and the dtypes a DataFrame gets.
    """

    def __init__(
        self, pipeline: Callable, *args: Any, row_arg: str | None = None, example: Any = None, **kwargs: Any
    ) -> None:
        if not callable(pipeline):
            raise TypeError(f"ServedPipeline expects a pipeline (a callable), got {type(pipeline).__name__}.")
        self.pipeline = pipeline
        self.name = getattr(pipeline, "__qualname__", type(pipeline).__name__)
        signature = inspect.signature(getattr(pipeline, "__wrapped__", pipeline))
        try:
            bound = signature.bind_partial(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"The arguments bound for {self.name}{signature} do not fit it: {exc}.") from None
        free = [n for n in signature.parameters if n not in bound.arguments]
        self.row_arg = row_arg or self._row_parameter(free)
        if self.row_arg not in signature.parameters:
            raise TypeError(
                f"row_arg={self.row_arg!r} is not a parameter of {self.name}{signature}; name the "
                "parameter that holds the rows."
            )
        if self.row_arg in bound.arguments:
            raise TypeError(
                f"{self.name}'s row parameter {self.row_arg!r} is bound to a value; bind only the other "
                "parameters (the rows come from the requests)."
            )
        missing = [
            n
            for n in free
            if n != self.row_arg
            and signature.parameters[n].default is inspect.Parameter.empty
            and signature.parameters[n].kind
            not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        ]
        if missing:
            raise TypeError(
                f"{self.name}{signature} needs {missing} besides the rows ({self.row_arg!r}); pass them "
                f"to ServedPipeline, e.g. ServedPipeline({self.name}, {', '.join(missing)})."
            )
        self._signature = signature
        self._arguments = dict(bound.arguments)
        self.example = example
        self.shape = _example_shape(example) if example is not None else None
        self.targets, self._callables = _tiers(pipeline)
        self.same_as = _same_plans(pipeline, len(self.targets))

    def with_pipeline(self, pipeline: Callable) -> ServedPipeline:
        """The same bound arguments, row argument and example, serving ``pipeline`` (e.g. the
        pipeline a plan file was loaded into)."""
        return ServedPipeline(pipeline, row_arg=self.row_arg, example=self.example, **self._arguments)

    def _row_parameter(self, free: list[str]) -> str:
        graph = getattr(self.pipeline, "__dict__", {}).get("graph_")
        traced = tuple(getattr(graph, "row_parameters", ()) or ())
        if len(traced) == 1:
            return traced[0]
        if len(traced) > 1:
            raise TypeError(
                f"{self.name} reads rows from {list(traced)}; the server sends one row argument. Pass "
                "row_arg= and bind the others, or serve a function of one row argument."
            )
        required = [n for n in free if self._parameter_required(n)]
        if len(required) == 1:
            return required[0]
        raise TypeError(
            f"Cannot tell which parameter of {self.name} holds the rows (unbound: {free}); pass row_arg=."
        )

    def _parameter_required(self, name: str) -> bool:
        parameter = inspect.signature(getattr(self.pipeline, "__wrapped__", self.pipeline)).parameters[name]
        return parameter.default is inspect.Parameter.empty and parameter.kind not in (
            inspect.Parameter.VAR_POSITIONAL,
            inspect.Parameter.VAR_KEYWORD,
        )

    # ------------------------------------------------------------------ tiers

    def tier_index(self, target: Any) -> int:
        """The position of the tier whose accuracy target is ``target``; :class:`RequestError`
        for anything else (the message lists the tiers)."""
        if isinstance(target, (int, float)) and not isinstance(target, bool):
            for i, known in enumerate(self.targets):
                if known is not None and math.isclose(float(target), known, rel_tol=0, abs_tol=1e-9):
                    return i
        served = ", ".join("default" if t is None else f"{t:g}" for t in self.targets)
        raise RequestError(
            f"Unknown tier {target!r}: {self.name} serves the accuracy targets {served} (strictest "
            'first). Pass one of them as "tier", or leave "tier" out for the default.'
        )

    def label(self, index: int) -> str:
        """The tier's name in responses and metrics (its accuracy target)."""
        target = self.targets[index]
        return "default" if target is None else f"{target:g}"

    # ------------------------------------------------------------------ calls

    def shape_of(self, rows: Any) -> RowShape:
        """The shape of a request's rows, checked against ``example``'s when one was given (objects
        may list their keys in any order: the example's order is the frame's)."""
        shape = row_shape(rows)
        expected = self.shape
        if expected is not None and shape != expected:
            same_keys = expected.kind == shape.kind == "records" and set(expected.columns) == set(
                shape.columns
            )
            nulls = expected.kind == shape.kind == "scalars" and "null" in (expected.types, shape.types)
            if not (same_keys or nulls):
                raise RequestError(
                    f"{self.name} takes rows of {expected.describe()} as {self.row_arg!r}, got "
                    f"{shape.describe()}."
                )
            shape = expected
        return shape

    def call(self, index: int, rows: list[Any], shape: RowShape) -> list[Any]:
        """Run tier ``index`` on the JSON ``rows`` (one shape) and return one value per row."""
        arguments = dict(self._arguments)
        arguments[self.row_arg] = to_container(rows, shape, self.example)
        bound = self._signature.bind(**arguments)
        output = self._callables[index](*bound.args, **bound.kwargs)
        return output_rows(output, len(rows))

    def warm_up(self, sizes: tuple[int, ...] = (1, 2, 8, 64)) -> int:
        """Call every tier on ``example``'s rows repeated to each batch size, so that kernels
        compiled (or loaded from the cache) for a batch shape are ready before the first request;
        returns the number of calls (0 without an ``example``)."""
        if self.example is None:
            return 0
        available = np.arange(n_rows(self.example))
        calls = 0
        for call in self._callables:
            for size in sizes:
                arguments = dict(self._arguments)
                arguments[self.row_arg] = take_rows(self.example, np.resize(available, size))
                bound = self._signature.bind(**arguments)
                call(*bound.args, **bound.kwargs)
                calls += 1
        return calls

    def explain(self) -> str:
        """The pipeline's own explanation (``explain()``), or a line saying it has none."""
        explain = getattr(self.pipeline, "explain", None)
        return explain() if callable(explain) else f"{self.name} is a plain callable (no willow plan)."


def _tiers(pipeline: Any) -> tuple[tuple[float | None, ...], tuple[Callable, ...]]:
    """The pipeline's tiers (targets strictest first) and one callable per tier: ``tiers_`` and
    ``tier(target)`` when it has them, else the plain call as a single tier."""
    try:
        tiers = getattr(pipeline, "tiers_", None)
    except AttributeError:  # willow's NotCalibratedError: an uncalibrated pipeline has no tiers yet
        tiers = None
    if tiers:
        targets = tuple(float(t.target) for t in tiers)
        if any(a <= b for a, b in zip(targets, targets[1:])):
            raise ValueError(f"tiers_ must be ordered strictest first, got targets {targets}.")
        # The strictest tier is the plain call (as the tiers interface promises), the rest by name.
        return targets, (pipeline, *(pipeline.tier(t) for t in targets[1:]))
    target = getattr(pipeline, "accuracy_target", None)
    return (float(target) if isinstance(target, (int, float)) else None,), (pipeline,)


def _same_plans(pipeline: Any, n_tiers: int) -> tuple[int, ...]:
    """For each tier, the index of the strictest tier that serves the same plan (itself when none
    does), so that the accuracy scaler does not step between tiers that cost the same: tiers
    without a cascade all run the full pipeline, and a looser tier that inherited a stricter
    tier's cascade (:mod:`willow.cascades.tiers`) runs that cascade, unless their model cascades
    differ (:func:`willow.early_exit.tiers.plan_keys`). Tiers whose ``tiers_`` entries carry no
    willow plan are taken to differ."""
    keys: list[Any] = []
    with contextlib.suppress(AttributeError):
        for tier in getattr(pipeline, "tiers_", None) or ():
            plan = getattr(tier, "plan", None)
            if plan is None or not hasattr(plan, "cascade"):
                keys.append(object())  # unknown: its own plan
            elif not plan.cascade:
                keys.append(("full pipeline",))
            else:
                keys.append(("cascade", tuple(plan.selected), plan.method, plan.threshold, plan.trained_on))
    from willow.early_exit.tiers import plan_keys

    models = plan_keys(pipeline)  # and the model cascade serving each tier (its own per tier)
    if len(models) == len(keys):
        keys = [(key, model) for key, model in zip(keys, models)]
    if len(keys) != n_tiers:
        return tuple(range(n_tiers))
    return tuple(keys.index(key) for key in keys)
