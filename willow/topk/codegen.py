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
from typing import Any

from willow.compiler.codegen import (
    CascadeLayout,
    _ops_call,
    assign_node,
    forward_call,
    model_defined_in_body,
    name_node,
    runtime_call,
    stack_expression,
    unique_names,
    with_contexts,
)
from willow.compiler.graph import PipelineGraph

__all__ = ["build_topk_source", "build_prefix_source"]


def build_topk_source(
    graph: PipelineGraph,
    layout: CascadeLayout,
    guarded: Sequence[str] = (),
    fused: Any = None,
    score_from_call: bool = False,
    approximate_fused: bool = False,
) -> ast.FunctionDef:
    """The top-K function for ``layout`` as an AST: ``def <name>_top_k(k, /, <original params>)``.

    ``graph`` may be a compiled graph (statements calling ``_willow.ops.<name>``); ``guarded``
    are the expressions of the fitted objects its kernels were compiled from (a replaced object
    makes the query exact). With ``score_from_call`` the candidates' scores come from the
    graph's own (possibly compiled) model call, otherwise from ``_willow.score(model, X)``.
    ``fused`` (a :class:`~willow.compiler.compile_pass.FusedText`, used with
    ``score_from_call``) scores the candidates' raw texts with one kernel; ``approximate_fused``
    scores every row's raw text with the approximate model's fused kernel.
    """
    original = ast.parse(graph.source).body[0]
    assert isinstance(original, ast.FunctionDef)
    local = unique_names(
        graph, ["k", "n_rows", "n_candidates", "approx_features", "approx_scores", "candidates"]
    )
    model_expr = graph.model_call.model
    body = _prologue(graph, original, local, guarded, [graph.statements[i].node for i in layout.every_row])
    if approximate_fused:
        # the statement defining the fused text, if a statement does (the vectorizers' are fused)
        body += [
            copy.deepcopy(graph.statements[i].node)
            for i in layout.selected_features
            if i not in fused.statements
        ]
        approximate = runtime_call("approximate_text", name_node(fused.text))
    else:
        body += [copy.deepcopy(graph.statements[i].node) for i in layout.selected_features]
        body.append(assign_node(local["approx_features"], stack_expression(graph, layout.selected)))
        approximate = runtime_call("approximate_scores", name_node(local["approx_features"]))
    body += [
        assign_node(local["approx_scores"], approximate),
        assign_node(
            local["candidates"],
            runtime_call("candidates", name_node(local["approx_scores"]), name_node(local["n_candidates"])),
        ),
    ]
    full_fused = fused is not None and score_from_call
    for name in [fused.text] if full_fused else layout.row_subsets:
        body.append(
            assign_node(
                name,
                runtime_call(
                    "take_rows", name_node(name), name_node(local["candidates"]), name_node(local["n_rows"])
                ),
            )
        )
    if full_fused:
        scores = runtime_call("score_output", _ops_call(fused.attribute, name_node(fused.text)))
    else:
        body += [
            copy.deepcopy(graph.statements[i].node) for i in layout.remaining_features + layout.full_model
        ]
        if score_from_call:
            scores = runtime_call("score_output", copy.deepcopy(graph.model_call.node.value))
        else:
            features = ast.Name(id=graph.model_call.feature_variable, ctx=ast.Load())
            scores = runtime_call("score", copy.deepcopy(model_expr), features)
    return _finish(graph, original, local, body, scores)


def _prologue(
    graph: PipelineGraph,
    original: ast.FunctionDef,
    local: dict[str, str],
    guarded: Sequence[str],
    every_row: Sequence[ast.stmt],
) -> list[ast.stmt]:
    """Count the rows and candidates, answer exactly when the candidates would be every row or
    the model (or a compiled fitted object) changed, and run the ``every_row`` statements."""
    k = local["k"]
    exact = ast.Return(value=forward_call(original, "exact", k))
    model_expr = graph.model_call.model
    guard_late = model_defined_in_body(graph)
    not_same_model = ast.UnaryOp(op=ast.Not(), operand=runtime_call("same_model", copy.deepcopy(model_expr)))

    body: list[ast.stmt] = [
        assign_node(
            local["n_rows"], runtime_call("count_rows", **{p: name_node(p) for p in graph.row_parameters})
        ),
        assign_node(
            local["n_candidates"], runtime_call("candidate_count", name_node(k), name_node(local["n_rows"]))
        ),
    ]
    too_many = ast.Compare(
        left=name_node(local["n_candidates"]), ops=[ast.GtE()], comparators=[name_node(local["n_rows"])]
    )
    if guarded:
        objects = [ast.parse(expr, mode="eval").body for expr in guarded]
        not_same_model = ast.BoolOp(
            op=ast.Or(),
            values=[
                not_same_model,
                ast.UnaryOp(op=ast.Not(), operand=runtime_call("same_objects", *objects)),
            ],
        )
    test = too_many if guard_late else ast.BoolOp(op=ast.Or(), values=[too_many, not_same_model])
    body.append(ast.If(test=test, body=[exact], orelse=[]))
    body += [copy.deepcopy(node) for node in every_row]
    if guard_late:
        body.append(ast.If(test=not_same_model, body=[copy.deepcopy(exact)], orelse=[]))
    return body


def _finish(
    graph: PipelineGraph,
    original: ast.FunctionDef,
    local: dict[str, str],
    body: list[ast.stmt],
    scores: ast.expr,
) -> ast.FunctionDef:
    """``body`` and ``return _willow.best_of(candidates, <scores>, k)`` as the top-K function."""
    k = local["k"]
    body.append(
        ast.Return(value=runtime_call("best_of", name_node(local["candidates"]), scores, name_node(k)))
    )
    args = copy.deepcopy(original.args)
    args.posonlyargs = [ast.arg(arg=k)] + args.posonlyargs
    func = ast.FunctionDef(
        name=f"{original.name}_top_k",
        args=args,
        body=with_contexts(graph, [], body),  # the function's own `with` blocks (timer()...)
        decorator_list=[],
        returns=None,
        type_comment=None,
        type_params=[],
    )
    ast.fix_missing_locations(func)
    return func


def build_prefix_source(
    graph: PipelineGraph, guarded: Sequence[str] = (), score_from_call: bool = False
) -> ast.FunctionDef:
    """The top-K function of an ensemble-prefix plan (:mod:`willow.topk.prefix`) as an AST.

    Every statement runs on every row (the prefix reads every feature); the approximate scores
    are the prefix's on the model's feature matrix, whose candidate rows are then scored by the
    (possibly compiled) model call, or ``_willow.score(model, X)`` without ``score_from_call``.
    Needs no stacking step, so it also serves a model reading one feature matrix.
    """
    original = ast.parse(graph.source).body[0]
    assert isinstance(original, ast.FunctionDef)
    local = unique_names(graph, ["k", "n_rows", "n_candidates", "approx_scores", "candidates"])
    body = _prologue(graph, original, local, guarded, [st.node for st in graph.statements])
    features = graph.model_call.feature_variable
    body += [
        assign_node(local["approx_scores"], runtime_call("approximate_scores", name_node(features))),
        assign_node(
            local["candidates"],
            runtime_call("candidates", name_node(local["approx_scores"]), name_node(local["n_candidates"])),
        ),
        assign_node(
            features,
            runtime_call(
                "take_rows", name_node(features), name_node(local["candidates"]), name_node(local["n_rows"])
            ),
        ),
    ]
    if score_from_call:
        scores = runtime_call("score_output", copy.deepcopy(graph.model_call.node.value))
    else:
        scores = runtime_call("score", copy.deepcopy(graph.model_call.model), name_node(features))
    return _finish(graph, original, local, body, scores)
