"""Tracing: turn a decorated function's source into a :class:`PipelineGraph`.

willow reads the function's source with :mod:`ast` rather than running it, so the graph is known
at decoration time and calibration can time and re-run each statement on its own. Tracing finds
the model call whose output the function returns (``<model>.predict(X)``, ``.predict_proba`` or
``.decision_function``), where ``X`` is built by a stacking call over the feature groups,
possibly followed by statements that only transform ``X``. Around that pipeline it keeps, and
never refuses, what does not feed the features: what the function does with the model's output
(``proba[:, 1] > 0.3``, ``np.where``, ``.tolist()``, ``pd.Series(...)``: the graph's ``post``),
leading early-return guards (``if len(texts) == 0: return []``), ``with`` blocks whose statements
are unwrapped for analysis, asserts and log calls. Functions written otherwise reach it through
the front end (:mod:`willow.frontend`). Anything else raises
:class:`~willow.UnsupportedPipelineError` naming the line and the reason.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import textwrap
from collections.abc import Callable

from willow.compiler.graph import (
    FeatureGroup,
    ModelCall,
    PipelineGraph,
    PostProcessing,
    StackCall,
    Statement,
)
from willow.errors import UnsupportedPipelineError
from willow.functions import function_source

__all__ = ["trace_pipeline", "source_fingerprint", "unwrap_stack_call", "names_read", "STACK_FUNCTIONS"]

MODEL_METHODS = ("predict", "predict_proba", "decision_function")
# Methods and attributes that only change the format of the stacked matrix: ``sp.hstack(...).tocsr()``.
FORMAT_METHODS = frozenset({"tocsr", "tocsc", "tocoo", "toarray", "todense", "astype", "to_numpy", "copy"})
FORMAT_ATTRIBUTES = frozenset({"values"})
# Stacking functions by attribute name; checked against the real objects at calibration time.
STACK_FUNCTIONS = {
    "hstack": "hstack",
    "column_stack": "column_stack",
    "concatenate": "concatenate",
    "concat": "concat",
}
_FALLBACK = "Pass strict=False to willow.optimize to run this function unoptimized (with a warning)."


def _fail(message: str, filename: str, lineno: int | None) -> UnsupportedPipelineError:
    where = f"{filename}:{lineno}: " if lineno is not None else f"{filename}: "
    return UnsupportedPipelineError(f"{where}{message} {_FALLBACK}")


def source_fingerprint(source: str) -> str:
    """A stable hash of a function's source, used to match saved plans to their function."""
    return hashlib.sha256(textwrap.dedent(source).encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- names read / defined


def _stored_names(target: ast.AST) -> tuple[set[str], set[str]]:
    """Names a target binds, and names it mutates in place (``df["x"] = ...``)."""
    bound: set[str] = set()
    mutated: set[str] = set()
    if isinstance(target, ast.Name):
        bound.add(target.id)
    elif isinstance(target, (ast.Tuple, ast.List)):
        for elt in target.elts:
            b, m = _stored_names(elt)
            bound |= b
            mutated |= m
    elif isinstance(target, ast.Starred):
        return _stored_names(target.value)
    elif isinstance(target, (ast.Attribute, ast.Subscript)):
        base = target.value
        while isinstance(base, (ast.Attribute, ast.Subscript)):
            base = base.value
        if isinstance(base, ast.Name):
            mutated.add(base.id)
    return bound, mutated


class _ReadCollector(ast.NodeVisitor):
    """Collects the free names an expression or statement loads, skipping names bound inside
    comprehensions, lambdas and nested function or class definitions."""

    def __init__(self) -> None:
        self.loads: set[str] = set()
        self._scopes: list[set[str]] = []

    def _bound(self, name: str) -> bool:
        return any(name in s for s in self._scopes)

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load) and not self._bound(node.id):
            self.loads.add(node.id)

    def _visit_scope(self, bound: set[str], children: list[ast.AST]) -> None:
        self._scopes.append(bound)
        for child in children:
            self.visit(child)
        self._scopes.pop()

    def _comprehension(self, node: ast.AST, results: list[ast.AST]) -> None:
        gens: list[ast.comprehension] = node.generators  # type: ignore[attr-defined]
        # The first iterable is evaluated in the enclosing scope.
        self.visit(gens[0].iter)
        bound: set[str] = set()
        for gen in gens:
            bound |= _stored_names(gen.target)[0]
        children: list[ast.AST] = []
        for i, gen in enumerate(gens):
            if i:
                children.append(gen.iter)
            children.extend(gen.ifs)
        self._visit_scope(bound, children + results)

    def visit_ListComp(self, node: ast.ListComp) -> None:
        self._comprehension(node, [node.elt])

    visit_SetComp = visit_ListComp  # type: ignore[assignment]
    visit_GeneratorExp = visit_ListComp  # type: ignore[assignment]

    def visit_DictComp(self, node: ast.DictComp) -> None:
        self._comprehension(node, [node.key, node.value])

    def _arguments(self, args: ast.arguments) -> set[str]:
        names = {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}
        if args.vararg:
            names.add(args.vararg.arg)
        if args.kwarg:
            names.add(args.kwarg.arg)
        for default in args.defaults + [d for d in args.kw_defaults if d is not None]:
            self.visit(default)
        return names

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._visit_scope(self._arguments(node.args), [node.body])

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        for dec in node.decorator_list:
            self.visit(dec)
        bound = self._arguments(node.args)
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                bound.add(sub.id)
        self._visit_scope(bound, list(node.body))

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for child in node.bases + node.keywords + node.decorator_list:
            self.visit(child)
        self._visit_scope(set(), list(node.body))


def names_read(node: ast.AST) -> set[str]:
    """Free names that ``node`` loads (names bound inside comprehensions or lambdas excluded)."""
    collector = _ReadCollector()
    collector.visit(node)
    return collector.loads


COMPOUND = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.With, ast.AsyncWith, ast.Try, ast.Match)
if hasattr(ast, "TryStar"):
    COMPOUND = COMPOUND + (ast.TryStar,)


def _defines_and_reads(node: ast.stmt, known_locals: set[str]) -> tuple[set[str], set[str]]:
    reads = names_read(node)
    defines: set[str] = set()
    if isinstance(node, ast.Assign):
        for target in node.targets:
            bound, mutated = _stored_names(target)
            defines |= bound | mutated
            reads |= mutated
    elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
        bound, mutated = _stored_names(node.target)
        defines |= bound | mutated
        reads |= mutated
        if isinstance(node, ast.AugAssign):
            reads |= bound
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
        for alias in node.names:
            defines.add(alias.asname or alias.name.split(".")[0])
    elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        defines.add(node.name)
    elif isinstance(node, ast.Delete):
        for target in node.targets:
            bound, mutated = _stored_names(target)
            defines |= bound | mutated
    elif isinstance(node, ast.Expr):
        # ``rows.append(x)`` may mutate a local: order it like a new definition of ``rows``.
        call = node.value
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute):
            base = call.func.value
            while isinstance(base, (ast.Attribute, ast.Subscript)):
                base = base.value
            if isinstance(base, ast.Name) and base.id in known_locals:
                defines.add(base.id)
    elif isinstance(node, COMPOUND):
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name) and isinstance(sub.ctx, (ast.Store, ast.Del)):
                defines.add(sub.id)
            elif isinstance(sub, (ast.Attribute, ast.Subscript)) and isinstance(sub.ctx, ast.Store):
                defines |= _stored_names(sub)[1]
    return defines, reads


def _build_statements(body: list[ast.stmt], parameters: tuple[str, ...]) -> list[Statement]:
    statements: list[Statement] = []
    last_def: dict[str, int] = {}
    known_locals = set(parameters)
    for index, node in enumerate(body):
        defines, reads = _defines_and_reads(node, known_locals)
        statements.append(
            Statement(
                index=index,
                lineno=node.lineno,
                node=node,
                defines=frozenset(defines),
                reads={name: last_def.get(name) for name in sorted(reads)},
                compound=isinstance(node, COMPOUND),
                hoisted=getattr(node, "_willow_hoisted", False),
            )
        )
        for name in defines:
            last_def[name] = index
        known_locals |= defines
    return statements


def _reaching(statements: list[Statement], name: str, before: int) -> int | None:
    for st in reversed(statements[:before]):
        if name in st.defines:
            return st.index
    return None


def _backward_slice(statements: list[Statement], roots: set[int]) -> set[int]:
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        i = stack.pop()
        if i in seen:
            continue
        seen.add(i)
        stack.extend(statements[i].depends_on)
    return seen


# --------------------------------------------------------------------------- stacking call


def unwrap_stack_call(expr: ast.expr) -> ast.Call | None:
    """The stacking call inside ``expr`` once format-only suffixes (``.tocsr()``) are removed."""
    while True:
        if (
            isinstance(expr, ast.Call)
            and isinstance(expr.func, ast.Attribute)
            and expr.func.attr in FORMAT_METHODS
        ):
            expr = expr.func.value
        elif isinstance(expr, ast.Attribute) and expr.attr in FORMAT_ATTRIBUTES:
            expr = expr.value
        else:
            break
    if not isinstance(expr, ast.Call):
        return None
    func = expr.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if name not in STACK_FUNCTIONS or not expr.args:
        return None
    if not isinstance(expr.args[0], (ast.List, ast.Tuple)):
        return None
    if name in ("concatenate", "concat"):
        axis = None
        if len(expr.args) > 1:
            axis = expr.args[1]
        for kw in expr.keywords:
            if kw.arg == "axis":
                axis = kw.value
        if not (isinstance(axis, ast.Constant) and axis.value in (1, "columns")):
            return None
    return expr


def _group_hint(expr: ast.expr, taken: set[str]) -> str:
    hint = "features"
    node = expr
    while isinstance(node, (ast.Call, ast.Attribute, ast.Subscript)):
        node = node.func if isinstance(node, ast.Call) else node.value
    if isinstance(node, ast.Name):
        hint = f"{node.id}_features"
    return _unique(hint, taken)


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}_{n}"
    taken.add(candidate)
    return candidate


def _all_names(tree: ast.AST) -> set[str]:
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    names |= {n.arg for n in ast.walk(tree) if isinstance(n, ast.arg)}
    return names


def _hoist(expr: ast.expr, name: str, lineno: int) -> ast.Assign:
    node = ast.Assign(targets=[ast.Name(id=name, ctx=ast.Store())], value=expr)
    node.lineno = lineno
    node.col_offset = 0
    node.end_lineno = max(lineno, getattr(expr, "end_lineno", None) or lineno)
    node.end_col_offset = getattr(expr, "end_col_offset", None) or 0
    ast.fix_missing_locations(node)
    node._willow_hoisted = True  # type: ignore[attr-defined]
    return node


# --------------------------------------------------------------------------- around the pipeline
# Guards, ``with`` blocks and what the function does with the model's output are not features:
# willow keeps and runs them, and traces the pipeline between them.

# Calls that only observe (log, print, warn): kept wherever they are, never a reason to refuse.
OBSERVER_ROOTS = frozenset({"print", "logging", "logger", "log", "LOGGER", "LOG", "warnings"})


def _assigned(tree: ast.AST) -> set[str]:
    return {
        n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del))
    }


def _is_observer(node: ast.stmt, parameters: tuple[str, ...]) -> bool:
    """An ``assert``, ``pass`` or a call statement that binds nothing (``print(...)``,
    ``logger.info(...)``) and mutates no parameter."""
    if isinstance(node, (ast.Assert, ast.Pass)):
        return True
    if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)) or _assigned(node):
        return False
    base = node.value.func
    while isinstance(base, (ast.Attribute, ast.Subscript, ast.Call)):
        base = base.func if isinstance(base, ast.Call) else base.value
    return isinstance(base, ast.Name) and base.id not in parameters


def _is_early_return(node: ast.stmt) -> bool:
    """``if <test>: ... return ...`` that binds no name: a guard for inputs willow need not see."""
    if not isinstance(node, ast.If) or _assigned(node):
        return False
    found = False
    for sub in ast.walk(node):
        if isinstance(sub, (ast.Yield, ast.YieldFrom, ast.Await)):
            return False
        if isinstance(sub, ast.Return) and not _inside_nested_def(node, sub):
            found = True
    return found


def split_prologue(
    body: list[ast.stmt], parameters: tuple[str, ...]
) -> tuple[list[ast.stmt], list[ast.stmt]]:
    """The leading early-return guards (``if len(texts) == 0: return []``), with the asserts and
    log calls before them, and the rest of the body. The generated function runs the guards first,
    exactly as written, so an input they answer gets the original's answer."""
    last = -1
    for i, node in enumerate(body[:-1]):
        if _is_early_return(node):
            last = i
        elif not _is_observer(node, parameters):
            break
    return body[: last + 1], body[last + 1 :]


def unwrap_contexts(body: list[ast.stmt], assigned: set[str]) -> tuple[list[ast.stmt], list[ast.withitem]]:
    """Statements of top-level ``with`` blocks (``with timer():``, ``with warnings.catch_warnings():``)
    spliced into the body, and the ``with`` items. Only blocks whose context expressions read no
    name the function assigns are unwrapped (they can be entered before any statement runs); the
    generated function enters them, in order, around all of its work."""
    out: list[ast.stmt] = []
    items: list[ast.withitem] = []
    for node in body:
        if (
            isinstance(node, ast.With)
            and all(not (names_read(item.context_expr) & assigned) for item in node.items)
            and all(
                item.optional_vars is None or isinstance(item.optional_vars, ast.Name) for item in node.items
            )
        ):
            inner, inner_items = unwrap_contexts(list(node.body), assigned)
            items.extend(node.items)
            items.extend(inner_items)
            out.extend(inner)
        else:
            out.append(node)
    return out, items


def _model_calls(node: ast.AST) -> list[ast.Call]:
    calls = []
    for sub in ast.walk(node):
        if (
            isinstance(sub, ast.Call)
            and isinstance(sub.func, ast.Attribute)
            and sub.func.attr in MODEL_METHODS
            and sub.args
            and not _inside_nested_def(node, sub)
            and not _inside_comprehension(node, sub)
        ):
            calls.append(sub)
    return calls


def _inside_comprehension(root: ast.AST, target: ast.AST) -> bool:
    kinds = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
    return any(
        sub is not root and isinstance(sub, kinds) and any(n is target for n in ast.walk(sub))
        for sub in ast.walk(root)
    )


class _Replace(ast.NodeTransformer):
    def __init__(self, target: ast.AST, replacement: ast.expr) -> None:
        self.target = target
        self.replacement = replacement

    def visit(self, node: ast.AST) -> ast.AST:
        if node is self.target:
            return ast.copy_location(self.replacement, node)
        return super().visit(node)


def split_model_output(
    body: list[ast.stmt], taken: set[str], filename: str
) -> tuple[list[ast.stmt], ast.Return, PostProcessing | None]:
    """Find the model call whose output the function returns and split the body around it.

    The model call is the last ``<model>.predict / .predict_proba / .decision_function(X)`` of
    the body. Returns the statements before it, ``return <model>.<method>(X)`` and the
    :class:`PostProcessing` after it (``None`` when the output is returned as it is).
    """
    for k in range(len(body) - 1, -1, -1):
        calls = _model_calls(body[k])
        if calls:
            break
    else:
        found = ast.unparse(body[-1]).splitlines()[0]
        raise _fail(
            "no recognisable model call: expected the function to return the output of "
            "`<model>.predict(X)`, `<model>.predict_proba(X)` or `<model>.decision_function(X)` "
            f"(possibly transformed), found `{found}`.",
            filename,
            body[-1].lineno,
        )
    node = body[k]
    if len(calls) > 1:
        raise _fail(
            f"`{ast.unparse(node).splitlines()[0]}` calls the model more than once "
            f"({', '.join(ast.unparse(c.func) for c in calls)}); willow needs one model call whose "
            "output the function returns. Call the model once and derive the rest from its output.",
            filename,
            node.lineno,
        )
    call = copy.deepcopy(calls[0])
    ret = ast.copy_location(ast.Return(value=call), node)
    ast.fix_missing_locations(ret)
    after = list(body[k + 1 :])
    if isinstance(node, ast.Return) and node.value is calls[0]:
        return list(body[:k]), ret, None
    if (
        isinstance(node, ast.Assign)
        and len(node.targets) == 1
        and isinstance(node.targets[0], ast.Name)
        and node.value is calls[0]
    ):
        variable = node.targets[0].id
        statements = after
    else:
        variable = _unique(f"{call.func.attr}_output", taken)  # type: ignore[union-attr]
        rewritten = copy.deepcopy(node)
        target = _model_calls(rewritten)[0]
        rewritten = _Replace(target, ast.Name(id=variable, ctx=ast.Load())).visit(rewritten)
        ast.fix_missing_locations(rewritten)
        statements = [rewritten, *after]
    if (
        len(statements) == 1
        and isinstance(statements[0], ast.Return)
        and isinstance(statements[0].value, ast.Name)
        and statements[0].value.id == variable
    ):
        return list(body[:k]), ret, None  # ``preds = model.predict(X); return preds``
    for st in statements:
        for sub in ast.walk(st):
            if isinstance(sub, (ast.Yield, ast.YieldFrom)) and not _inside_nested_def(st, sub):
                raise _fail(
                    f"`{ast.unparse(sub)}` yields after the model call; willow needs the function "
                    "to return its result.",
                    filename,
                    sub.lineno,
                )
    module = ast.Module(body=list(statements), type_ignores=[])
    reads = names_read(module) - _assigned(module) - {variable}
    post = PostProcessing(variable, tuple(statements), frozenset(reads), statements[0].lineno)
    return list(body[:k]), ret, post


def _check_post_reads(
    post: PostProcessing, statements: list[Statement], slice_all: set[int], filename: str
) -> None:
    """What follows the model call may read its output and anything the features do not compute."""
    for name in sorted(post.reads):
        definition = _reaching(statements, name, len(statements))
        if definition is not None and definition in slice_all:
            where = next((s for s in post.statements if name in names_read(s)), post.statements[0])
            raise _fail(
                f"`{ast.unparse(where).splitlines()[0]}` (after the model call) reads `{name}`, "
                f"which the feature computation defines (line {statements[definition].lineno}); "
                "willow needs what follows the model call to read only the model's output "
                f"(`{post.variable}`), the inputs and values that feed no feature. Compute it from "
                "the inputs instead.",
                filename,
                where.lineno,
            )


# --------------------------------------------------------------------------- entry point


def trace_pipeline(
    fn: Callable,
    row_args: tuple[str, ...] | None = None,
    *,
    tree: ast.FunctionDef | None = None,
    filename: str | None = None,
) -> PipelineGraph:
    """Trace ``fn``'s source into a :class:`PipelineGraph`.

    ``row_args`` names the parameters that hold one entry per row; by default they are the
    parameters the features read (other than the model). ``tree`` (with its ``filename``) is the
    function's syntax tree to trace instead of its source file: the front end's normalized form
    (:mod:`willow.frontend`), whose statements keep the user's line numbers.

    Raises :class:`~willow.UnsupportedPipelineError` when the source is unavailable, the function
    does not end in a recognisable model call, or control flow feeds the features.
    """
    if tree is not None:
        func = copy.deepcopy(tree)
        source = ast.unparse(func)
        filename = filename or fn.__code__.co_filename
        first_line = func.lineno
    else:
        source, filename, first_line = function_source(fn)
        module = ast.parse(textwrap.dedent(source))
        ast.increment_lineno(module, first_line - 1)
        func = module.body[0] if module.body else None
    if not isinstance(func, ast.FunctionDef):
        raise _fail(
            "willow.optimize needs a plain `def` function (not async, a class or a lambda).",
            filename,
            first_line,
        )
    args = func.args
    parameters = tuple(a.arg for a in args.posonlyargs + args.args + args.kwonlyargs)
    varargs = {a.arg for a in (args.vararg, args.kwarg) if a is not None}
    parameters = parameters + tuple(sorted(varargs))
    taken = _all_names(func)

    body = list(func.body)
    first = body[0] if body else None
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        body = body[1:]  # the docstring
    for node in body:
        if isinstance(node, (ast.Global, ast.Nonlocal)):
            raise _fail(
                f"`{ast.unparse(node)}` is not supported: willow re-runs statements on row subsets "
                "and cannot reason about names rebound outside the function.",
                filename,
                node.lineno,
            )
    prologue, body = split_prologue(body, parameters)
    body, contexts = unwrap_contexts(body, _assigned(func))
    if not body or not isinstance(body[-1], ast.Return):
        lineno = body[-1].lineno if body else func.lineno
        raise _fail(
            "no recognisable model call: the function must end with a `return` of "
            "`<model>.predict(X)`, `.predict_proba(X)` or `.decision_function(X)` (or of what it "
            "computes from that output).",
            filename,
            lineno,
        )
    body, ret, post = split_model_output(body, taken, filename)
    for node in body:
        for sub in ast.walk(node):
            if isinstance(sub, (ast.Return, ast.Yield, ast.YieldFrom)) and not _inside_nested_def(node, sub):
                raise _fail(
                    f"`{ast.unparse(sub).splitlines()[0]}` returns or yields before the final model "
                    "call; willow needs a single `return <model>.predict(X)` at the end (an early "
                    "`if ...: return ...` guard is fine as the function's first statement).",
                    filename,
                    sub.lineno,
                )
    call = ret.value
    assert isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
    if not isinstance(call.args[0], ast.Name):
        feature_name = _unique("X", taken)
        body.append(_hoist(call.args[0], feature_name, ret.lineno))
        call.args[0] = ast.copy_location(ast.Name(id=feature_name, ctx=ast.Load()), call.args[0])
    feature_variable = call.args[0].id
    model_expr = call.func.value

    statements = _build_statements(body, parameters)
    feature_def = _reaching(statements, feature_variable, len(statements))
    model_parameter = None
    if (
        isinstance(model_expr, ast.Name)
        and model_expr.id in parameters
        and _reaching(statements, model_expr.id, len(statements)) is None
    ):
        model_parameter = model_expr.id

    # Find the stacking statement on the chain that feeds the model, and hoist inline groups.
    stack_index, tail = _find_stack(statements, feature_def, model_parameter, parameters)
    if stack_index is not None:
        stack_node = statements[stack_index].node
        stack_call = unwrap_stack_call(stack_node.value)  # type: ignore[attr-defined]
        assert stack_call is not None
        seq = stack_call.args[0]
        assert isinstance(seq, (ast.List, ast.Tuple))
        hoisted: list[ast.stmt] = []
        for i, elt in enumerate(seq.elts):
            if isinstance(elt, ast.Starred):
                raise _fail(
                    f"the stacking call `{ast.unparse(stack_call)}` unpacks `{ast.unparse(elt)}`; "
                    "willow needs the feature groups listed one by one.",
                    filename,
                    stack_node.lineno,
                )
            if not isinstance(elt, ast.Name):
                name = _group_hint(elt, taken)
                hoisted.append(_hoist(elt, name, stack_node.lineno))
                seq.elts[i] = ast.copy_location(ast.Name(id=name, ctx=ast.Load()), elt)
        if hoisted:
            body = body[:stack_index] + hoisted + body[stack_index:]
            statements = _build_statements(body, parameters)
            feature_def = _reaching(statements, feature_variable, len(statements))
            stack_index, tail = _find_stack(statements, feature_def, model_parameter, parameters)
            assert stack_index is not None

    slice_all = _backward_slice(statements, {feature_def} if feature_def is not None else set())
    if post is not None:
        _check_post_reads(post, statements, slice_all, filename)
    row_parameters = _row_parameters(statements, slice_all, model_parameter, parameters)
    if feature_def is None and feature_variable in parameters:
        row_parameters = tuple(p for p in parameters if p in set(row_parameters) | {feature_variable})
    if row_args is not None:
        unknown = [a for a in row_args if a not in parameters]
        if unknown or not row_args:
            raise ValueError(
                f"row_args must name parameters of {func.name}{tuple(parameters)}, got {tuple(row_args)!r}."
            )
        row_parameters = tuple(p for p in parameters if p in set(row_args))
    for name in row_parameters:
        if name in varargs:
            raise _fail(
                f"the features read `*{name}`/`**{name}`; willow needs each row input as a named parameter.",
                filename,
                func.lineno,
            )
    row_dependent = _row_dependent(statements, row_parameters)
    for i in sorted(slice_all):
        st = statements[i]
        if st.compound:
            kind = type(st.node).__name__.lower()
            raise _fail(
                f"control flow (`{kind}`) feeds the model's features; willow needs straight-line "
                "statements between the inputs and the model call. Move the branch or loop into a "
                "helper function called from a single statement.",
                filename,
                st.lineno,
            )

    if stack_index is None:
        group_vars = [
            (
                feature_variable,
                feature_def,
                statements[feature_def].lineno if feature_def is not None else ret.lineno,
            )
        ]
        stack = None
    else:
        stack_st = statements[stack_index]
        stack_call = unwrap_stack_call(stack_st.node.value)  # type: ignore[attr-defined]
        assert stack_call is not None
        elements = tuple(e.id for e in stack_call.args[0].elts)  # type: ignore[attr-defined]
        duplicates = {e for e in elements if elements.count(e) > 1}
        if duplicates:
            raise _fail(
                f"the stacking call lists {sorted(duplicates)} more than once; willow needs each "
                "feature group once.",
                filename,
                stack_st.lineno,
            )
        func_node = stack_call.func
        kind = func_node.attr if isinstance(func_node, ast.Attribute) else func_node.id  # type: ignore[union-attr]
        stack = StackCall(statement=stack_index, kind=kind, function=func_node, elements=elements)
        group_vars = []
        for name in elements:
            definition = stack_st.reads.get(name)
            lineno = statements[definition].lineno if definition is not None else stack_st.lineno
            group_vars.append((name, definition, lineno))

    groups: list[FeatureGroup] = []
    consumers: dict[int, set[str]] = {}
    for position, (name, definition, lineno) in enumerate(group_vars):
        depends_on_rows = (definition is None and name in row_parameters) or (
            definition is not None and definition in row_dependent
        )
        if not depends_on_rows:
            raise _fail(
                f"feature group `{name}` does not depend on the function's inputs, so it is not a "
                "per-row feature; willow needs every stacked group to be computed from the rows.",
                filename,
                lineno,
            )
        group_slice = _backward_slice(statements, {definition} if definition is not None else set())
        for i in group_slice:
            consumers.setdefault(i, set()).add(name)
        groups.append(FeatureGroup(name, name, position, lineno, (), tuple(sorted(group_slice))))
    frozen_consumers = {i: frozenset(c) for i, c in consumers.items()}
    groups = [
        FeatureGroup(
            g.name,
            g.variable,
            g.position,
            g.lineno,
            tuple(i for i in g.slice if frozen_consumers[i] == frozenset({g.name})),
            g.slice,
        )
        for g in groups
    ]
    notes = []
    if len(groups) == 1:
        notes.append(
            "The model reads a single feature group, so there is no cheaper subset of features for a cascade."
        )
    return PipelineGraph(
        function_name=func.name,
        filename=filename,
        source=textwrap.dedent(source),
        parameters=parameters,
        statements=tuple(statements),
        model_call=ModelCall(
            lineno=ret.lineno,
            node=ret,
            model=model_expr,
            method=call.func.attr,
            feature_variable=feature_variable,
            model_parameter=model_parameter,
        ),
        stack=stack,
        groups=tuple(groups),
        tail=tuple(tail),
        consumers=frozen_consumers,
        row_parameters=row_parameters,
        row_dependent=frozenset(row_dependent),
        notes=tuple(notes),
        post=post,
        prologue=tuple(prologue),
        contexts=tuple(contexts),
    )


def _inside_nested_def(root: ast.AST, target: ast.AST) -> bool:
    for sub in ast.walk(root):
        nested = sub is not root and isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        if nested and any(n is target for n in ast.walk(sub)):
            return True
    return False


def _row_parameters(
    statements: list[Statement], slice_all: set[int], model_parameter: str | None, parameters: tuple[str, ...]
) -> tuple[str, ...]:
    names: set[str] = set()
    for i in slice_all:
        for name, definition in statements[i].reads.items():
            if definition is None and name in parameters and name != model_parameter:
                names.add(name)
    return tuple(p for p in parameters if p in names)


def _row_dependent(statements: list[Statement], row_parameters: tuple[str, ...]) -> set[int]:
    dependent: set[int] = set()
    for st in statements:
        for name, definition in st.reads.items():
            if (definition is None and name in row_parameters) or definition in dependent:
                dependent.add(st.index)
                break
    return dependent


def _find_stack(
    statements: list[Statement],
    feature_def: int | None,
    model_parameter: str | None,
    parameters: tuple[str, ...],
) -> tuple[int | None, list[int]]:
    """Walk back from the model's input to the stacking statement, collecting ``X``-only steps."""
    if feature_def is None:
        return None, []
    slice_all = _backward_slice(statements, {feature_def})
    row_dependent = _row_dependent(
        statements, _row_parameters(statements, slice_all, model_parameter, parameters)
    )
    tail: list[int] = []
    current: int | None = feature_def
    while current is not None:
        st = statements[current]
        node = st.node
        single_target = (
            isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
        )
        if single_target and unwrap_stack_call(node.value) is not None:  # type: ignore[attr-defined]
            return current, sorted(tail)
        if st.compound:
            break
        row_inputs = [d for d in st.reads.values() if d is not None and d in row_dependent]
        if len(set(row_inputs)) != 1:
            break
        tail.append(current)
        current = row_inputs[0]
    return None, []
