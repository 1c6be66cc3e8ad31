"""What the original pipeline returns, so the cascade can return exactly the same thing.

A :class:`OutputSpec` records the model method (``predict``, ``predict_proba`` or
``decision_function``), the raw output's dtype and shape, and the full model's classes. It builds
empty raw outputs for 0-row batches and measures agreement between two outputs *of the function*:
the cascade is judged on what the function returns (the application's decision), so

* ``decision="model"``: the function returns the model's output (perhaps wrapped: ``.tolist()``,
  ``pd.Series(...)``): rows agree when the model's labels agree (the most likely class for
  probabilities);
* ``decision="post"``: the function returns something derived per row (``proba[:, 1] > 0.3``,
  ``np.where(...)``, an ``argmax``): rows agree when the returned values are equal;
* ``decision="numbers"``: it returns numbers (a probability column, a score): a cascade would
  change them, so none is planned.

For a thresholded output (``proba[:, c] > t``, ``margin > t``) ``margin_column`` and
``margin_threshold`` describe the comparison, and the approximate model's confidence in a row is
its distance from the threshold, ``|p_c - t|``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from willow.errors import UnsupportedPipelineError

__all__ = ["OutputSpec", "find_margin", "output_rows", "same_output"]

DECISIONS = ("model", "post", "numbers")


@dataclass(frozen=True, eq=False)
class OutputSpec:
    """The shape of the original pipeline's output."""

    method: str
    dtype: np.dtype
    n_columns: int | None
    classes: np.ndarray | None
    decision: str = "model"
    margin_column: int | None = None
    margin_threshold: float | None = None
    threshold_source: str | None = None
    # what the function itself returned on calibration rows, when it is not the model's output:
    # (dtype string, columns per row or None for one value per row); see judged_on
    returned: tuple[str, int | None] | None = None

    @classmethod
    def from_output(cls, method: str, output: Any, model: Any) -> OutputSpec:
        """Describe ``output``, which ``model.<method>`` returned on calibration rows."""
        if not isinstance(output, np.ndarray):
            raise UnsupportedPipelineError(
                f"The model's {method}() returned a {type(output).__name__}; willow cascades "
                "models whose output is a numpy array (as scikit-learn and LightGBM return). "
                "Pass strict=False to willow.optimize to run this function unoptimized."
            )
        classes = getattr(model, "classes_", None)
        classes = None if classes is None else np.asarray(classes)
        if method == "predict":
            if output.ndim != 1:
                raise UnsupportedPipelineError(
                    f"The model's predict() returned an array of shape {output.shape}; willow "
                    "cascades classifiers whose predict() returns one label per row. Pass "
                    "strict=False to willow.optimize to run this function unoptimized."
                )
            return cls(method, output.dtype, None, classes)
        if method == "decision_function":
            if output.ndim not in (1, 2):
                raise UnsupportedPipelineError(
                    f"The model's decision_function() returned an array of shape {output.shape}; "
                    "willow expects one score per row, or one per class. Pass strict=False to "
                    "willow.optimize to run this function unoptimized."
                )
            return cls(method, output.dtype, None if output.ndim == 1 else output.shape[1], classes)
        if output.ndim != 2 or classes is None or output.shape[1] != len(classes):
            raise UnsupportedPipelineError(
                f"The model's predict_proba() returned an array of shape {output.shape}; willow "
                "cascades classifiers with a `classes_` attribute whose predict_proba() returns "
                "one column per class. Pass strict=False to willow.optimize to run this function "
                "unoptimized."
            )
        return cls(method, output.dtype, output.shape[1], classes)

    def empty(self) -> np.ndarray:
        """The result of the original pipeline on a batch of zero rows."""
        shape = (0,) if self.n_columns is None else (0, self.n_columns)
        return np.empty(shape, dtype=self.dtype)

    def labels(self, output: Any) -> np.ndarray:
        """Per-row predictions of raw model output: labels as they are, probabilities as the top
        class, decision-function margins as the class they pick."""
        output = np.asarray(output)
        if self.method == "predict" or self.classes is None:
            return output
        if self.method == "decision_function" and output.ndim == 1:
            return self.classes[(output > 0).astype(np.intp)]
        return self.classes[np.argmax(output, axis=1)]

    def decisions(self, returned: Any) -> np.ndarray:
        """Per-row values to compare of what the function returned (see the module docstring)."""
        if self.decision == "model":
            return self.labels(output_rows(returned))
        return output_rows(returned)

    def agreement(self, output: Any, reference: Any) -> np.ndarray:
        """Boolean per row: does the function output ``output`` make the same decision as
        ``reference``?"""
        a, b = self.decisions(output), self.decisions(reference)
        if len(a) != len(b):
            return np.zeros(max(len(a), len(b)), dtype=bool)
        if a.dtype.kind in "fc" and b.dtype.kind in "fc":  # numbers: equal up to kernel rounding
            same = np.isclose(a, b, rtol=1e-9, atol=1e-12, equal_nan=True)
        else:
            same = a == b
        if isinstance(same, np.ndarray) and same.ndim > 1:
            same = same.reshape(len(a), -1).all(axis=1)
        return np.asarray(same, dtype=bool)

    def judged_on(
        self, returned: Any, raw: np.ndarray, margin: tuple[int | None, float, str | None] | None
    ) -> OutputSpec:
        """This spec with its decision kind set from what the function returned on calibration
        rows (``returned``) for the raw model output ``raw``, and the threshold it compares to."""
        values = output_rows(returned)
        raw = np.asarray(raw)
        wrapped = values.shape == raw.shape and values.dtype.kind == raw.dtype.kind and _equal(values, raw)
        if wrapped:
            decision = "numbers" if self.method == "decision_function" else "model"
        elif values.dtype.kind in "fc":
            decision = "numbers"
        else:
            decision = "post"
        shape = None if values.ndim <= 1 else int(np.prod(values.shape[1:]))
        kind = None if wrapped else (values.dtype.str, shape)
        if decision != "post" or margin is None:
            return replace(self, decision=decision, returned=kind)
        column, threshold, source = margin
        return replace(
            self,
            decision=decision,
            margin_column=column,
            margin_threshold=threshold,
            threshold_source=source,
            returned=kind,
        )

    def describe(self) -> str:
        """What the cascade is judged on, in words (for explain())."""
        if self.decision == "numbers":
            return "the returned numbers"
        if self.decision == "post":
            if self.margin_threshold is not None:
                what = "the output" if self.margin_column is None else f"column {self.margin_column}"
                return (
                    f"the returned decisions; the approximate model's confidence is the distance of "
                    f"{what} from the threshold {self.margin_threshold:g}"
                )
            return "the returned values, row by row"
        return "the model's predicted labels"


def output_rows(returned: Any) -> np.ndarray:
    """A function's output as an array with one entry (or one row) per input row."""
    import pandas as pd

    if isinstance(returned, (pd.Series, pd.DataFrame, pd.Index)):
        return returned.to_numpy()
    if isinstance(returned, np.ndarray):
        return returned
    try:
        return np.asarray(returned)
    except ValueError:  # ragged nested lists
        return np.asarray(list(returned), dtype=object)


def _equal(a: np.ndarray, b: np.ndarray) -> bool:
    try:
        return bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc" and b.dtype.kind in "fc"))
    except TypeError:
        return bool(np.array_equal(a, b))


def same_output(a: Any, b: Any) -> bool:
    """Whether two outputs of the function are the same: same type, same index and columns for
    pandas, equal values (floats within 1e-9 relative, as compiled kernels may round differently)."""
    import pandas as pd

    if type(a) is not type(b):
        return False
    if isinstance(a, (pd.Series, pd.DataFrame)):
        if not a.index.equals(b.index):
            return False
        if isinstance(a, pd.DataFrame) and not a.columns.equals(b.columns):
            return False
        if isinstance(a, pd.Series) and a.name != b.name:
            return False
    if isinstance(a, (list, tuple)) and len(a) != len(b):
        return False
    x, y = output_rows(a), output_rows(b)
    if x.shape != y.shape:
        return False
    if x.dtype.kind in "fc" and y.dtype.kind in "fc":
        return bool(np.allclose(x, y, rtol=1e-9, atol=1e-12, equal_nan=True))
    return _equal(x, y)


_COMPARISONS = (ast.Gt, ast.GtE, ast.Lt, ast.LtE)


class _Inline(ast.NodeTransformer):
    def __init__(self, env: dict[str, ast.expr]) -> None:
        self.env = env

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if isinstance(node.ctx, ast.Load) and node.id in self.env:
            import copy

            return copy.deepcopy(self.env[node.id])
        return node


def _column_of(node: ast.expr, variable: str) -> tuple[bool, int | None]:
    """``(True, c)`` for ``<variable>[:, c]``, ``(True, None)`` for ``<variable>``."""
    if isinstance(node, ast.Name) and node.id == variable:
        return True, None
    if (
        isinstance(node, ast.Subscript)
        and isinstance(node.value, ast.Name)
        and node.value.id == variable
        and isinstance(node.slice, ast.Tuple)
        and len(node.slice.elts) == 2
    ):
        first, second = node.slice.elts
        if (
            isinstance(first, ast.Slice)
            and first.lower is None
            and first.upper is None
            and first.step is None
            and isinstance(second, ast.Constant)
            and isinstance(second.value, int)
            and not isinstance(second.value, bool)
        ):
            return True, second.value
        if (
            isinstance(first, ast.Slice)
            and isinstance(second, ast.UnaryOp)
            and isinstance(second.op, ast.USub)
            and isinstance(second.operand, ast.Constant)
            and isinstance(second.operand.value, int)
        ):
            return True, -second.operand.value
    return False, None


def find_margin(
    statements: tuple[ast.stmt, ...],
    variable: str,
    namespace: dict[str, Any],
    n_columns: int | None,
    local_names: set[str],
) -> tuple[int | None, float, str | None] | None:
    """The threshold comparison that decides the returned value, if there is exactly one.

    Follows single-name assignments of the post-processing statements into the returned
    expression, which must use the model output ``variable`` only in one comparison
    ``<variable>[:, c] <op> t`` or ``<variable> <op> t`` (``op`` one of ``> >= < <=``, either
    side) with ``t`` a number that reads none of ``local_names`` (evaluated in ``namespace``).
    Returns ``(c, t, source of t or None for a literal)`` or ``None``.
    """
    from willow.compiler.tracing import names_read

    env: dict[str, ast.expr] = {}
    returned: ast.expr | None = None
    for node in statements:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            env[node.targets[0].id] = _Inline(env).visit(ast.parse(ast.unparse(node.value), mode="eval").body)
        elif isinstance(node, ast.Return) and node.value is not None:
            returned = _Inline(env).visit(ast.parse(ast.unparse(node.value), mode="eval").body)
            break
        elif isinstance(node, (ast.Expr, ast.Assert, ast.Pass)):
            continue
        else:
            return None
    if returned is None:
        return None
    found = []
    for sub in ast.walk(returned):
        if isinstance(sub, ast.Compare) and len(sub.ops) == 1 and isinstance(sub.ops[0], _COMPARISONS):
            left, right = sub.left, sub.comparators[0]
            for side, other in ((left, right), (right, left)):
                ok, column = _column_of(side, variable)
                if ok and variable not in names_read(other):
                    found.append((sub, side, column, other))
    uses = sum(1 for n in ast.walk(returned) if isinstance(n, ast.Name) and n.id == variable)
    if len(found) != 1 or uses != 1:
        return None
    _, _, column, other = found[0]
    if names_read(other) & local_names:
        return None
    if (column is None) != (n_columns is None):
        return None
    try:
        value = eval(compile(ast.Expression(body=other), "<willow threshold>", "eval"), dict(namespace))
    except Exception:  # noqa: BLE001 - not a number we can read: the default confidence applies
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    if column is not None and n_columns is not None:
        if not -n_columns <= column < n_columns:
            return None
        column %= n_columns
    literal = not names_read(other)
    return column, float(value), None if literal else ast.unparse(other)
