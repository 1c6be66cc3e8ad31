"""Model calls with extra keyword arguments that do not change the output.

Willump's helpers call ``model.predict_proba(X, num_iteration=model.best_iteration_)``. The
compile pass lowers a model call only as ``model.<method>(X)`` (the lowerings reproduce a model's
default output), so any keyword keeps the model uncompiled. Many keywords are no-ops for the
model at hand: a LightGBM ``num_iteration`` that selects the trees the default already uses
(``best_iteration_`` is 0 without early stopping: every tree), ``raw_score=False``, a thread
count, or any keyword passed its own default. This pass evaluates each keyword at calibration
(a literal, or an expression over the model itself and constants) and drops the call's keywords
when every one is such a no-op, with a note for ``explain()``. A keyword that changes the output
(``num_iteration`` below the trees used by default, ``raw_score=True``, ``pred_leaf=True``...)
or cannot be evaluated is kept, and the note says the model stays uncompiled (still exact).

The model's identity at serving is checked by the plan's model guard (its content fingerprint),
so a keyword over the model (``model.best_iteration_``) is checked with it.
"""

from __future__ import annotations

import ast
import inspect
from typing import Any

from willow.frontend.arguments import MODEL_METHODS
from willow.frontend.context import UNRESOLVED, FrontEndContext

__all__ = ["drop_neutral_model_kwargs", "neutral_keyword"]

# LightGBM prediction parameters that set threads only (the output does not depend on them).
_LIGHTGBM_THREADS = frozenset({"num_threads", "num_thread", "nthread", "nthreads", "n_jobs"})


def _lightgbm_booster(model: Any) -> Any:
    """The LightGBM Booster behind ``model`` (a Booster or a fitted LGBMModel), or ``None``."""
    try:
        import lightgbm
    except ImportError:  # pragma: no cover - lightgbm is optional
        return None
    if isinstance(model, lightgbm.Booster):
        return model
    if isinstance(model, lightgbm.LGBMModel):
        try:
            return model.booster_
        except Exception:  # noqa: BLE001 - not fitted: the call fails as written
            return None
    return None


def _trees_used(booster: Any, num_iteration: Any, start_iteration: int) -> int | None:
    """How many boosting iterations LightGBM's predict uses for ``num_iteration``."""
    total = booster.current_iteration()
    if num_iteration is None:
        num_iteration = booster.best_iteration if start_iteration <= 0 else -1
    if isinstance(num_iteration, bool) or not isinstance(num_iteration, int):
        return None
    remaining = total - start_iteration
    return remaining if num_iteration <= 0 or num_iteration >= remaining else num_iteration


def neutral_keyword(model: Any, method: str, keyword: str, value: Any, keywords: dict[str, Any]) -> bool:
    """Whether ``model.<method>(X, keyword=value)`` gives what ``model.<method>(X)`` gives
    (``keywords`` are all the call's keyword values)."""
    booster = _lightgbm_booster(model)
    if booster is not None:
        if keyword == "num_iteration":
            start = keywords.get("start_iteration", 0)
            if start != 0:
                return False
            used = _trees_used(booster, value, 0)
            return used is not None and used == _trees_used(booster, None, 0)
        if keyword in _LIGHTGBM_THREADS:
            return isinstance(value, int) and not isinstance(value, bool)
    try:
        parameter = inspect.signature(getattr(model, method)).parameters.get(keyword)
    except (TypeError, ValueError):
        return False
    if parameter is None or parameter.kind not in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
        return False
    default = parameter.default
    if default is parameter.empty:
        return False
    return type(value) is type(default) and value == default


def _root(expr: ast.expr) -> str | None:
    while isinstance(expr, (ast.Attribute, ast.Subscript)):
        expr = expr.value
    return expr.id if isinstance(expr, ast.Name) else None


def _value(expr: ast.expr, model_root: str | None, ctx: FrontEndContext) -> Any:
    """A keyword's calibration value: a literal, or an attribute chain over the model's own name
    or a constant that is not a parameter (a global); otherwise ``UNRESOLVED``."""
    try:
        return ast.literal_eval(expr)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        pass
    root = _root(expr)
    if root is None or (root != model_root and root in ctx.parameters):
        return UNRESOLVED
    return ctx.resolve(expr)


def drop_neutral_model_kwargs(tree: ast.FunctionDef, ctx: FrontEndContext) -> ast.FunctionDef:
    """The front-end pass (see the module doc)."""
    for node in ast.walk(tree):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in MODEL_METHODS
            and node.args
            and node.keywords
        ):
            continue
        model = ctx.resolve(node.func.value)
        if model is UNRESOLVED or any(k.arg is None for k in node.keywords):
            continue
        written = ast.unparse(node)
        root = _root(node.func.value)
        values = {k.arg: _value(k.value, root, ctx) for k in node.keywords}
        method = node.func.attr
        kept = [
            k
            for k in node.keywords
            if values[k.arg] is UNRESOLVED or not neutral_keyword(model, method, k.arg, values[k.arg], values)  # type: ignore[arg-type]
        ]
        where = f"{ctx.filename}:{node.lineno}"
        if kept:
            names = ", ".join(f"`{k.arg}={ast.unparse(k.value)}`" for k in kept)
            ctx.note(
                f"{where}: `{written}` passes {names}, which changes the model's output or cannot be "
                "evaluated at calibration: the model call runs as written (not compiled)"
            )
            continue
        shown = ", ".join(f"{k}={v!r}" for k, v in values.items())
        node.keywords = []
        ctx.note(
            f"{where}: `{written}` gives what `{ast.unparse(node)}` gives for this model ({shown} at "
            "calibration): the keywords are dropped so the model call can be compiled"
        )
    return tree
