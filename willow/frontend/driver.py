"""Run the front-end passes over a function and build the normalized function they describe.

``normalize(fn, arguments)`` parses ``fn``, classifies its arguments (row inputs vs. constants),
runs each registered pass in order and compiles the rewritten tree into a function with the
original's signature, globals and closure, plus one closure cell per object the passes bound.
Tracing then reads :attr:`FrontEnd.tree` instead of the source file.
"""

from __future__ import annotations

import ast
import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from willow.compiler.execution import closure_values
from willow.errors import UnsupportedPipelineError
from willow.frontend.arguments import bind_argument_reads
from willow.frontend.chunking import rewrite_chunks
from willow.frontend.composites import expand_composites
from willow.frontend.context import FrontEndContext, FrontEndPass, ObjectGuard, TypeGuard
from willow.frontend.elements import bind_element_reads
from willow.frontend.fast_estimators import fast_opaque_estimators
from willow.frontend.frames import split_frame_groups
from willow.frontend.inline import inline_helpers
from willow.frontend.model_kwargs import drop_neutral_model_kwargs
from willow.frontend.records import fuse_frame_records
from willow.frontend.selections import select_columns_by_position
from willow.frontend.statics import fold_statics, substitute_lists
from willow.frontend.strings import fuse_string_concatenation
from willow.functions import function_from_tree, parse_function

__all__ = ["FrontEnd", "normalize", "parse_function", "build_function", "PASSES"]

# The passes, in order. Each module owns one rewrite; register it here (explicitly, not by import
# side effects) so a reader sees the whole front end in one list. After them, the non-row
# arguments still read become constants (willow.frontend.arguments.bind_argument_reads).
PASSES: list[tuple[str, FrontEndPass]] = [
    ("statics", fold_statics),
    ("chunks", rewrite_chunks),  # before helpers: they are rewritten as they are inlined
    ("helpers", inline_helpers),
    ("elements", bind_element_reads),
    ("column lists", substitute_lists),
    ("composites", expand_composites),
    ("model keywords", drop_neutral_model_kwargs),
    ("frames", split_frame_groups),
    ("records", fuse_frame_records),
    ("strings", fuse_string_concatenation),
    ("selections", select_columns_by_position),
]


@dataclass(frozen=True, eq=False)
class FrontEnd:
    """The normalized form of a decorated function, ready for tracing."""

    original: Callable
    function: Callable
    tree: ast.FunctionDef
    filename: str
    bindings: dict[str, Any]
    guards: tuple[ObjectGuard, ...]
    row_parameters: tuple[str, ...]
    notes: tuple[str, ...]
    type_guards: tuple[TypeGuard, ...] = ()  # types/columns the rewrite rests on, checked per call

    @property
    def rewritten(self) -> bool:
        """Whether any pass changed the function (otherwise ``function is original``)."""
        return self.function is not self.original


def build_function(
    tree: ast.FunctionDef, original: Callable, bindings: dict[str, Any], filename: str
) -> Callable:
    """Compile ``tree`` into a function with ``original``'s globals, defaults and closure cells,
    where each name in ``bindings`` is a closure cell holding its object."""
    function = function_from_tree(copy.deepcopy(tree), original, bindings, filename)
    # What serving falls back to (0 rows, a changed model, an error) is the function as written,
    # not this rewrite: a rewrite may leave a helper's empty-batch guard to the original.
    function.__willow_original__ = getattr(original, "__willow_original__", original)
    return function


def _assigned_names(func: ast.FunctionDef) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(func):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
    return names


def normalize(
    fn: Callable,
    arguments: dict[str, Any],
    row_parameters: Sequence[str],
    passes: Sequence[tuple[str, FrontEndPass]] | None = None,
) -> FrontEnd:
    """Run the front-end ``passes`` (default :data:`PASSES`) over ``fn`` for the calibration call
    ``arguments``; ``row_parameters`` are the parameters holding rows (the rest are constants)."""
    tree, filename = parse_function(fn)
    args = tree.args
    parameters = tuple(a.arg for a in args.posonlyargs + args.args + args.kwonlyargs)
    constants = dict(fn.__globals__)
    constants.update(closure_values(fn))
    constants.update({k: v for k, v in arguments.items() if k not in row_parameters})
    ctx = FrontEndContext(
        filename=filename,
        constants=constants,
        row_parameters=tuple(row_parameters),
        parameters=parameters,
        arguments=dict(arguments),
        locals_=_assigned_names(tree),
        taken={n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | set(parameters),
    )
    rewritten = copy.deepcopy(tree)
    for name, run_pass in PASSES if passes is None else passes:
        try:
            rewritten = run_pass(rewritten, ctx)
        except UnsupportedPipelineError:
            raise
        except Exception as exc:  # noqa: BLE001 - a front-end bug must not break the pipeline
            raise UnsupportedPipelineError(
                f"{filename}:{tree.lineno}: willow's front end failed in its `{name}` pass "
                f"({type(exc).__name__}: {exc}); this is a bug in willow, please report it. Pass "
                "strict=False to willow.optimize to run this function unoptimized (with a warning)."
            ) from exc
        ctx.locals_ = _assigned_names(rewritten)
    rewritten = bind_argument_reads(rewritten, ctx, tree)
    rewritten = fast_opaque_estimators(rewritten, ctx)  # needs the argument bindings
    changed = ast.dump(rewritten) != ast.dump(tree) or bool(ctx.bindings)
    function = build_function(rewritten, fn, ctx.bindings, filename) if changed else fn
    return FrontEnd(
        original=fn,
        function=function,
        tree=rewritten,
        filename=filename,
        bindings=dict(ctx.bindings),
        guards=tuple(ctx.guards),
        row_parameters=tuple(row_parameters),
        notes=tuple(ctx.notes),
        type_guards=_merged(ctx.type_guards),
    )


def _merged(guards: Sequence[TypeGuard]) -> tuple[TypeGuard, ...]:
    """One guard per parameter (the one that also checks columns, when any does)."""
    by_parameter: dict[str, TypeGuard] = {}
    for guard in guards:
        kept = by_parameter.get(guard.parameter)
        if kept is None or (kept.columns is None and guard.columns is not None):
            by_parameter[guard.parameter] = guard
    return tuple(by_parameter.values())
