"""Code generation for top-K queries: the top-K function, built as an AST and rendered with astor.

The generated function takes ``k`` (positional-only) followed by the original function's own
parameters, and runs the original statements in the sections of
:func:`willow.compiler.codegen.layout_cascade`: statements every row needs, the selected (cheap)
feature groups, the approximate score and the choice of candidates, then, for the candidate rows
only, the remaining groups, the stacking step and the full model's score. It returns
``(positions, scores)`` of the top K, best first. The rendered source is what runs and what
``explain()`` shows.
"""

from __future__ import annotations

import ast
import copy
from collections.abc import Sequence

from willow.compiler.codegen import RUNTIME, CascadeLayout, stack_expression
from willow.compiler.graph import PipelineGraph
from willow.compiler.tracing import names_read

__all__ = ["build_topk_source"]


def _name(id_: str, store: bool = False) -> ast.Name:
    return ast.Name(id=id_, ctx=ast.Store() if store else ast.Load())


def _call(method: str, *args: ast.expr, **kwargs: ast.expr) -> ast.Call:
    return ast.Call(
        func=ast.Attribute(value=_name(RUNTIME), attr=method, ctx=ast.Load()),
        args=list(args),
        keywords=[ast.keyword(arg=key, value=value) for key, value in kwargs.items()],
    )


def _assign(target: str, value: ast.expr) -> ast.Assign:
    return ast.Assign(targets=[_name(target, store=True)], value=value)


def _unique_names(graph: PipelineGraph, wanted: Sequence[str]) -> dict[str, str]:
    taken = {n.id for n in ast.walk(ast.parse(graph.source)) if isinstance(n, ast.Name)}
    taken |= set(graph.parameters) | {RUNTIME}
    chosen = {}
    for name in wanted:
        candidate, i = name, 1
        while candidate in taken:
            i += 1
            candidate = f"{name}_{i}"
        taken.add(candidate)
        chosen[name] = candidate
    return chosen


def _exact_call(func_def: ast.FunctionDef, k: str) -> ast.Call:
    """``_willow.exact(k, <every original parameter, passed the way it was declared>)``."""
    a = func_def.args
    args: list[ast.expr] = [_name(k)] + [_name(p.arg) for p in a.posonlyargs + a.args]
    if a.vararg:
        args.append(ast.Starred(value=_name(a.vararg.arg), ctx=ast.Load()))
    keywords = [ast.keyword(arg=p.arg, value=_name(p.arg)) for p in a.kwonlyargs]
    if a.kwarg:
        keywords.append(ast.keyword(arg=None, value=_name(a.kwarg.arg)))
    call = _call("exact", *args)
    call.keywords = keywords
    return call


def build_topk_source(graph: PipelineGraph, layout: CascadeLayout) -> ast.FunctionDef:
    """The top-K function for ``layout`` as an AST: ``def <name>_top_k(k, /, <original params>)``."""
    original = ast.parse(graph.source).body[0]
    assert isinstance(original, ast.FunctionDef)
    local = _unique_names(
        graph, ["k", "n_rows", "n_candidates", "approx_features", "approx_scores", "candidates"]
    )
    k = local["k"]
    exact = ast.Return(value=_exact_call(original, k))
    model_expr = graph.model_call.model
    body_defined = set().union(*(st.defines for st in graph.statements)) if graph.statements else set()
    guard_late = bool(names_read(model_expr) & body_defined)
    not_same_model = ast.UnaryOp(op=ast.Not(), operand=_call("same_model", copy.deepcopy(model_expr)))

    body: list[ast.stmt] = [
        _assign(local["n_rows"], _call("count_rows", **{p: _name(p) for p in graph.row_parameters})),
        _assign(local["n_candidates"], _call("candidate_count", _name(k), _name(local["n_rows"]))),
    ]
    too_many = ast.Compare(
        left=_name(local["n_candidates"]), ops=[ast.GtE()], comparators=[_name(local["n_rows"])]
    )
    test = too_many if guard_late else ast.BoolOp(op=ast.Or(), values=[too_many, not_same_model])
    body.append(ast.If(test=test, body=[exact], orelse=[]))
    body += [copy.deepcopy(graph.statements[i].node) for i in layout.every_row]
    if guard_late:
        body.append(ast.If(test=not_same_model, body=[copy.deepcopy(exact)], orelse=[]))
    body += [copy.deepcopy(graph.statements[i].node) for i in layout.selected_features]
    body += [
        _assign(local["approx_features"], stack_expression(graph, layout.selected)),
        _assign(local["approx_scores"], _call("approximate_scores", _name(local["approx_features"]))),
        _assign(
            local["candidates"],
            _call("candidates", _name(local["approx_scores"]), _name(local["n_candidates"])),
        ),
    ]
    for name in layout.row_subsets:
        body.append(
            _assign(name, _call("take_rows", _name(name), _name(local["candidates"]), _name(local["n_rows"])))
        )
    body += [copy.deepcopy(graph.statements[i].node) for i in layout.remaining_features + layout.full_model]
    features = ast.Name(id=graph.model_call.feature_variable, ctx=ast.Load())
    body.append(
        ast.Return(
            value=_call(
                "best_of",
                _name(local["candidates"]),
                _call("score", copy.deepcopy(model_expr), features),
                _name(k),
            )
        )
    )
    args = copy.deepcopy(original.args)
    args.posonlyargs = [ast.arg(arg=k)] + args.posonlyargs
    func = ast.FunctionDef(
        name=f"{original.name}_top_k",
        args=args,
        body=body,
        decorator_list=[],
        returns=None,
        type_comment=None,
        type_params=[],
    )
    ast.fix_missing_locations(func)
    return func
