"""Code generation: the cascaded function, built as a Python AST and rendered with astor.

The generated function has the original's signature and runs the original statements, reordered
into sections: statements every row needs, the selected (cheap) feature groups, the approximate
model and threshold, then, for the uncertain rows only, the remaining groups, the stacking step
and the full model. The rendered source is exactly what is compiled and run, and what
``OptimizedPipeline.explain()`` shows.
"""

from __future__ import annotations

import ast
import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import astor

from willow.compiler.graph import PipelineGraph
from willow.compiler.tracing import names_read, unwrap_stack_call
from willow.errors import UnsupportedPipelineError
from willow.functions import function_from_tree

__all__ = [
    "name_node",
    "runtime_call",
    "assign_node",
    "unique_names",
    "forward_call",
    "model_defined_in_body",
    "CascadeLayout",
    "layout_cascade",
    "stack_expression",
    "build_cascade_source",
    "build_compiled_source",
    "output_exit",
    "with_contexts",
    "materialize",
]

RUNTIME = "_willow"


@dataclass(frozen=True)
class CascadeLayout:
    """Which statements run where in a cascade over ``selected`` groups.

    ``row_subsets`` are the row-aligned names (parameters or earlier results) that the uncertain
    section reads and must therefore narrow to the uncertain rows.
    """

    selected: tuple[str, ...]
    every_row: tuple[int, ...]
    selected_features: tuple[int, ...]
    remaining_features: tuple[int, ...]
    full_model: tuple[int, ...]
    row_subsets: tuple[str, ...]


def layout_cascade(graph: PipelineGraph, selected: Sequence[str]) -> CascadeLayout:
    """Split ``graph``'s statements into cascade sections for the ``selected`` groups.

    Raises :class:`UnsupportedPipelineError` when the reordering would change which definition
    some statement reads (a name reassigned between sections).
    """
    assert graph.stack is not None
    chosen = set(selected)
    unknown = chosen - set(graph.group_names)
    if unknown:
        raise ValueError(f"Unknown feature groups {sorted(unknown)}; groups are {list(graph.group_names)}.")
    selected_slice: set[int] = set()
    other_slice: set[int] = set()
    for g in graph.groups:
        (selected_slice if g.name in chosen else other_slice).update(g.slice)
    remaining = other_slice - selected_slice
    full_model = {graph.stack.statement, *graph.tail}
    placed = selected_slice | remaining | full_model
    section_of = {i: 1 for i in selected_slice} | {i: 2 for i in remaining} | {i: 3 for i in full_model}
    members: list[list[int]] = [[], sorted(selected_slice), sorted(remaining), sorted(full_model)]
    for st in graph.statements:
        if st.index in placed:
            continue
        # A statement that binds nothing (an assert, a log call) runs after what it reads: in a
        # later section it sees the values of the uncertain rows only.
        section = max((section_of.get(d, 0) for d in st.depends_on), default=0) if not st.defines else 0
        section_of[st.index] = section
        members[section].append(st.index)
    sections = tuple(tuple(sorted(m)) for m in members)
    # Each statement must still see the same definitions after reordering.
    order = [i for section in sections for i in section]
    last_def: dict[str, int] = {}
    for i in order:
        st = graph.statements[i]
        for name, original in st.reads.items():
            if last_def.get(name) != original:
                seen = last_def.get(name)
                other = graph.statements[seen if seen is not None else original]  # type: ignore[index]
                raise UnsupportedPipelineError(
                    f"{graph.filename}:{st.lineno}: `{st.source.splitlines()[0]}` reads `{name}`, "
                    f"which line {other.lineno} also assigns; cascading reorders statements and "
                    "would change which value it sees. Give the new value a new name, or pass "
                    "strict=False to willow.optimize to run this function unoptimized."
                )
        for name in st.defines:
            last_def[name] = i
    # Row-aligned names computed before the uncertain section and read inside it.
    before = set(sections[0]) | set(sections[1])
    late = set(sections[2]) | set(sections[3])
    subsets: list[str] = []
    reads: list[tuple[str, int | None]] = []
    for i in sorted(late):
        reads.extend(graph.statements[i].reads.items())
    model_reads = names_read(graph.model_call.node)
    final_defs = {name: None for name in model_reads}
    for st in graph.statements:
        for name in st.defines:
            if name in final_defs:
                final_defs[name] = st.index
    reads.extend(final_defs.items())
    for name, definition in reads:
        row_aligned = (definition is None and name in graph.row_parameters) or (
            definition in before and definition in graph.row_dependent
        )
        if row_aligned and name not in subsets:
            subsets.append(name)
    return CascadeLayout(
        selected=tuple(g for g in graph.group_names if g in chosen),
        every_row=sections[0],
        selected_features=sections[1],
        remaining_features=sections[2],
        full_model=sections[3],
        row_subsets=tuple(subsets),
    )


def stack_expression(graph: PipelineGraph, groups: Sequence[str]) -> ast.expr:
    """The original stacking expression (with its ``.tocsr()``-style suffixes) over ``groups``."""
    assert graph.stack is not None
    value = copy.deepcopy(graph.statements[graph.stack.statement].node.value)  # type: ignore[attr-defined]
    call = unwrap_stack_call(value)
    assert call is not None
    seq = call.args[0]
    assert isinstance(seq, (ast.List, ast.Tuple))
    seq.elts = [ast.copy_location(ast.Name(id=graph.group(g).variable, ctx=ast.Load()), seq) for g in groups]
    return value


def name_node(id_: str, store: bool = False) -> ast.Name:
    """An ``ast.Name`` loading (or, with ``store``, assigning) ``id_``."""
    return ast.Name(id=id_, ctx=ast.Store() if store else ast.Load())


def runtime_call(method: str, *args: ast.expr, **kwargs: ast.expr) -> ast.Call:
    """``_willow.<method>(*args, **kwargs)``: a call of a serving-runtime helper."""
    return ast.Call(
        func=ast.Attribute(value=name_node(RUNTIME), attr=method, ctx=ast.Load()),
        args=list(args),
        keywords=[ast.keyword(arg=k, value=v) for k, v in kwargs.items()],
    )


def assign_node(target: str | Sequence[str], value: ast.expr) -> ast.Assign:
    """``target = value`` (a tuple target for several names)."""
    if isinstance(target, str):
        node: ast.expr = name_node(target, store=True)
    else:
        node = ast.Tuple(elts=[name_node(t, store=True) for t in target], ctx=ast.Store())
    return ast.Assign(targets=[node], value=value)


def forward_call(func_def: ast.FunctionDef, method: str = "original", *leading: str) -> ast.Call:
    """``_willow.<method>(*leading, <every parameter, passed the way it was declared>)``."""
    a = func_def.args
    args: list[ast.expr] = [name_node(n) for n in leading] + [
        name_node(p.arg) for p in a.posonlyargs + a.args
    ]
    if a.vararg:
        args.append(ast.Starred(value=name_node(a.vararg.arg), ctx=ast.Load()))
    keywords = [ast.keyword(arg=p.arg, value=name_node(p.arg)) for p in a.kwonlyargs]
    if a.kwarg:
        keywords.append(ast.keyword(arg=None, value=name_node(a.kwarg.arg)))
    call = runtime_call(method, *args)
    call.keywords = keywords
    return call


def model_defined_in_body(graph: PipelineGraph) -> bool:
    """Whether the model expression reads a name the function body assigns, so a guard on the
    model can only run after the statements that compute it."""
    body_defined = set().union(*(st.defines for st in graph.statements)) if graph.statements else set()
    return bool(names_read(graph.model_call.model) & body_defined)


def unique_names(graph: PipelineGraph, wanted: Sequence[str]) -> dict[str, str]:
    """Generated local names that clash with none of the function's own names."""
    taken = {n.id for n in ast.walk(ast.parse(graph.source)) if isinstance(n, ast.Name)}
    taken |= set(graph.parameters)
    taken.add(RUNTIME)
    chosen = {}
    for name in wanted:
        candidate, k = name, 1
        while candidate in taken:
            k += 1
            candidate = f"{name}_{k}"
        taken.add(candidate)
        chosen[name] = candidate
    return chosen


def _prelude(
    graph: PipelineGraph,
    original_def: ast.FunctionDef,
    guarded: Sequence[str],
    n_rows: str,
    threshold_source: str | None = None,
) -> tuple[list[ast.stmt], list[ast.stmt], ast.If, bool]:
    """The statements every generated function starts with, and the fallback guard.

    Returns ``(head, work, guard, guard_late)``: ``head`` runs first (the guard, then the
    function's own early-return guards, unchanged); ``work`` (counting rows, the 0-row answer and
    whatever the caller appends) runs inside the function's ``with`` contexts (see
    :func:`with_contexts`). The guard runs the original function when the model (or a compiled fitted
    object, or the threshold the output is compared to) is not the one the plan was made for; it
    comes first unless the model is computed inside the body, in which case the caller places it
    after the statements that run on every row.
    """
    model_expr = copy.deepcopy(graph.model_call.model)
    test: ast.expr = ast.UnaryOp(op=ast.Not(), operand=runtime_call("same_model", model_expr))
    checks = [test]
    if guarded:
        objects = [ast.parse(expr, mode="eval").body for expr in guarded]
        checks.append(ast.UnaryOp(op=ast.Not(), operand=runtime_call("same_objects", *objects)))
    if threshold_source is not None:
        value = ast.parse(threshold_source, mode="eval").body
        checks.append(ast.UnaryOp(op=ast.Not(), operand=runtime_call("same_threshold", value)))
    if len(checks) > 1:
        test = ast.BoolOp(op=ast.Or(), values=checks)
    guard = ast.If(test=test, body=[ast.Return(value=forward_call(original_def))], orelse=[])
    guard_late = model_defined_in_body(graph)
    head: list[ast.stmt] = [] if guard_late else [guard]
    head += [copy.deepcopy(node) for node in graph.prologue]
    work: list[ast.stmt] = [
        assign_node(n_rows, runtime_call("count_rows", **{p: name_node(p) for p in graph.row_parameters}))
    ]
    work.append(
        ast.If(
            test=ast.Compare(left=name_node(n_rows), ops=[ast.Eq()], comparators=[ast.Constant(0)]),
            # 0 rows: whatever the original does with them (an empty result, or its exception)
            body=[ast.Return(value=forward_call(original_def))],
            orelse=[],
        )
    )
    return head, work, guard, guard_late


def output_exit(
    graph: PipelineGraph, raw: ast.expr, restore: Sequence[tuple[str, str]] = ()
) -> list[ast.stmt]:
    """Return what the function returns when the model's output is ``raw``: ``return raw``, or,
    when the function post-processes the output, ``<variable> = raw`` and its post statements
    (after restoring the full-batch values ``restore`` lists as ``(name, saved name)``)."""
    if graph.post is None:
        return [ast.Return(value=raw)]
    exit_: list[ast.stmt] = [assign_node(graph.post.variable, raw)]
    exit_ += [assign_node(name, name_node(saved)) for name, saved in restore]
    exit_ += [copy.deepcopy(node) for node in graph.post.statements]
    return exit_


def with_contexts(graph: PipelineGraph, head: list[ast.stmt], work: list[ast.stmt]) -> list[ast.stmt]:
    """``head`` then ``work``, the latter inside the function's unwrapped ``with`` contexts."""
    if not graph.contexts:
        return head + work
    items = [copy.deepcopy(item) for item in graph.contexts]
    return head + [ast.With(items=items, body=work, type_comment=None)]


def _function(original_def: ast.FunctionDef, body: list[ast.stmt]) -> ast.FunctionDef:
    func = ast.FunctionDef(
        name=original_def.name,
        args=original_def.args,
        body=body,
        decorator_list=[],
        returns=original_def.returns,
        type_comment=None,
        type_params=[],
    )
    ast.fix_missing_locations(func)
    return func


def _original_def(graph: PipelineGraph) -> ast.FunctionDef:
    original_def = ast.parse(graph.source).body[0]
    assert isinstance(original_def, ast.FunctionDef)
    return original_def


def _ops_call(attribute: str, *args: ast.expr) -> ast.Call:
    ops = ast.Attribute(value=name_node(RUNTIME), attr="ops", ctx=ast.Load())
    return ast.Call(
        func=ast.Attribute(value=ops, attr=attribute, ctx=ast.Load()), args=list(args), keywords=[]
    )


def build_compiled_source(
    graph: PipelineGraph, guarded: Sequence[str] = (), fused: Any = None, threshold_source: str | None = None
) -> ast.FunctionDef:
    """The pipeline without a cascade: the (compiled) statements in their original order.

    With ``fused`` (a :class:`~willow.compiler.compile_pass.FusedText`), the vectorizer
    statements, the stacking and the model call become one fused kernel call on the text. With
    ``threshold_source`` (a compiled operator calibrated for the threshold the output is compared
    to, read from that expression), the original runs when the threshold is not that one.
    """
    original_def = _original_def(graph)
    local = unique_names(graph, ["n_rows"])
    head, body, guard, guard_late = _prelude(graph, original_def, guarded, local["n_rows"], threshold_source)
    if guard_late:
        head.insert(0, guard)
    if fused is None:
        body += [copy.deepcopy(st.node) for st in graph.statements]
        body += output_exit(graph, copy.deepcopy(graph.model_call.node.value))  # type: ignore[arg-type]
        return _function(original_def, with_contexts(graph, head, body))
    assert graph.stack is not None
    skip = set(fused.statements) | {graph.stack.statement}
    body += [copy.deepcopy(st.node) for st in graph.statements if st.index not in skip]
    body += output_exit(graph, _ops_call(fused.attribute, name_node(fused.text)))
    return _function(original_def, with_contexts(graph, head, body))


def build_cascade_source(
    graph: PipelineGraph,
    layout: CascadeLayout,
    threshold: float,
    guarded: Sequence[str] = (),
    fused: Any = None,
    threshold_source: str | None = None,
) -> ast.FunctionDef:
    """The cascaded function as an AST with the original's name and signature.

    With ``fused``, the approximate model scores the raw text through its own fused kernel and
    the uncertain rows go through the full model's fused kernel: no feature matrix is built.
    """
    original_def = _original_def(graph)
    local = unique_names(graph, ["n_rows", "approx_features", "approx_output", "confidence", "uncertain"])
    head, body, guard, guard_late = _prelude(graph, original_def, guarded, local["n_rows"], threshold_source)
    # Full-batch values the post-processing reads that the uncertain section narrows.
    narrowed = list(layout.row_subsets) if fused is None else [fused.text]
    post_reads = graph.post.reads if graph.post is not None else frozenset()
    kept_names = unique_names(graph, [f"{n}_all_rows" for n in narrowed if n in post_reads])
    restore = [(n, kept_names[f"{n}_all_rows"]) for n in narrowed if n in post_reads]
    for i in layout.every_row:
        body.append(copy.deepcopy(graph.statements[i].node))
    if guard_late:
        body.append(guard)
    if fused is not None:
        # the statement defining the fused text, if a statement does (the vectorizers' are fused)
        body += [
            copy.deepcopy(graph.statements[i].node)
            for i in layout.selected_features
            if i not in fused.statements
        ]
        text = name_node(fused.text)
        approximate = runtime_call("approximate_text", text)
    else:
        for i in layout.selected_features:
            body.append(copy.deepcopy(graph.statements[i].node))
        body.append(assign_node(local["approx_features"], stack_expression(graph, layout.selected)))
        approximate = runtime_call("approximate", name_node(local["approx_features"]))
    body.append(assign_node([local["approx_output"], local["confidence"]], approximate))
    body.append(
        assign_node(
            local["uncertain"],
            runtime_call("rows_below", name_node(local["confidence"]), ast.Constant(float(threshold))),
        )
    )
    body.append(
        ast.If(
            test=ast.Compare(
                left=ast.Call(func=name_node("len"), args=[name_node(local["uncertain"])], keywords=[]),
                ops=[ast.Eq()],
                comparators=[ast.Constant(0)],
            ),
            body=output_exit(graph, name_node(local["approx_output"])),
            orelse=[],
        )
    )
    body += [assign_node(saved, name_node(name)) for name, saved in restore]
    if fused is not None:
        body.append(
            assign_node(
                fused.text,
                runtime_call(
                    "take_rows",
                    name_node(fused.text),
                    name_node(local["uncertain"]),
                    name_node(local["n_rows"]),
                ),
            )
        )
        full = _ops_call(fused.attribute, name_node(fused.text))
        merged = runtime_call("merge", name_node(local["approx_output"]), name_node(local["uncertain"]), full)
        body += output_exit(graph, merged, restore)
        return _function(original_def, with_contexts(graph, head, body))
    for name in layout.row_subsets:
        body.append(
            assign_node(
                name,
                runtime_call(
                    "take_rows", name_node(name), name_node(local["uncertain"]), name_node(local["n_rows"])
                ),
            )
        )
    for i in layout.remaining_features + layout.full_model:
        body.append(copy.deepcopy(graph.statements[i].node))
    full_call = copy.deepcopy(graph.model_call.node.value)
    assert full_call is not None
    merged = runtime_call(
        "merge", name_node(local["approx_output"]), name_node(local["uncertain"]), full_call
    )
    body += output_exit(graph, merged, restore)
    return _function(original_def, with_contexts(graph, head, body))


def render(func: ast.FunctionDef) -> str:
    """Readable Python source of a generated function (what explain() shows)."""
    return astor.to_source(func)


def materialize(func: ast.FunctionDef, original: Callable, runtime: Any, label: str) -> tuple[Callable, str]:
    """Compile the rendered source of ``func`` into a function bound to ``original``'s globals,
    closure cells and defaults, with ``runtime`` as ``_willow``. Returns it and its source."""
    source = render(func)
    compiled = function_from_tree(
        ast.parse(source).body[0],  # type: ignore[arg-type]
        original,
        {RUNTIME: runtime},
        f"<willow cascade of {label}>",
        register_source=True,
    )
    return compiled, source
