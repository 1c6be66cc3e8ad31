"""What a function's straight-line code fixes at calibration: types, frame columns, and what follows.

People write inference helpers that branch on the type of what they are given
(``if isinstance(X, pd.DataFrame): X = X.fillna(0)``) and build feature lists from a frame's
columns (``feats = [f for f in df.columns if f not in KEYS]``). Traced as written, the branch is
control flow feeding the features and the list is computed at every call. Both are decided by
what the calibration call passes: the *type* of each parameter and, for a DataFrame, its *column
labels*. This module follows them forward through the statements (:class:`StaticTypes`), folds
the type tests it can decide and evaluates the comprehensions it can (:func:`fold_statements`),
and records, per parameter, the type (and columns) the decision rests on as a
:class:`~willow.frontend.context.TypeGuard`: at every call a different type or other columns run
the original function (:mod:`willow.frontend.guards`).

What is followed (anything else is unknown, so nothing is folded):

- a parameter: the calibration object's exact type (and a 0-row copy of a DataFrame, the
  *shadow*, whose columns and dtypes are the calibration frame's);
- a constant (global, closure value, non-row argument): its type;
- DataFrame methods whose output columns do not depend on the data (``merge``, ``fillna``,
  ``astype``, ``drop``, ``rename``, ``reset_index``, ``assign`` ...): run on the shadow, with
  their arguments resolved to constants (a DataFrame argument by its own shadow);
- ``frame[key]`` with a constant key (run on the shadow), ``frame.values``/``.to_numpy()``;
- literals (a list display is a list, a constant its type).

A frame is *mutated* when its name is the target of an item or attribute store, the receiver of
an in-place method (``inplace=``, ``insert``, ``pop``, ``update``) or an argument of a call that
is not a known pure builtin: its shadow is forgotten (its type cannot change).
"""

from __future__ import annotations

import ast
import builtins
import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from willow.frontend.context import UNRESOLVED, TypeGuard

__all__ = [
    "Known",
    "StaticTypes",
    "fold_statements",
    "fold_statics",
    "substitute_lists",
    "type_test",
    "is_type_test",
]

# DataFrame -> DataFrame methods whose output columns depend only on the input's columns and
# the (constant) arguments, so running them on a 0-row frame gives the real output's columns.
_FRAME_METHODS = frozenset(
    {
        "merge",
        "fillna",
        "copy",
        "astype",
        "drop",
        "rename",
        "reset_index",
        "add_prefix",
        "add_suffix",
        "sort_values",
        "sort_index",
        "round",
        "abs",
        "clip",
        "replace",
        "assign",
    }
)
_MUTATING_METHODS = frozenset(
    {"insert", "pop", "update", "__setitem__", "__delitem__", "set_axis"}
    | {"append", "extend", "remove", "clear", "sort", "reverse"}  # a list's
)
# Builtins that read their arguments without changing them.
_PURE_BUILTINS = frozenset(
    {"len", "isinstance", "type", "hasattr", "print", "repr", "str", "int", "float", "bool", "id", "tuple"}
)
_CONSTANT_TYPES = (str, int, float, bool, bytes, type(None))


@dataclass(frozen=True, eq=False)
class Known:
    """What is known of a value at calibration: its exact type, the parameters that knowledge
    rests on (``basis``), and for a DataFrame a 0-row frame with its columns (``shadow``)."""

    type: type
    basis: frozenset[str] = frozenset()
    shadow: pd.DataFrame | None = None
    value: Any = UNRESOLVED  # a list of constants (an evaluated comprehension, a literal list)


class StaticTypes:
    """A forward walk over straight-line statements tracking :class:`Known` values of names.

    ``resolve(expr)`` gives the calibration-time object of a constant expression (or
    ``UNRESOLVED``); ``is_local(name)`` says whether a name is assigned in the body being walked.
    """

    def __init__(
        self,
        resolve: Callable[[ast.expr], Any],
        is_local: Callable[[str], bool],
        known: dict[str, Known] | None = None,
    ) -> None:
        self.resolve = resolve
        self.is_local = is_local
        self.env: dict[str, Known] = dict(known or {})

    @classmethod
    def of_parameters(
        cls,
        arguments: dict[str, Any],
        parameters: tuple[str, ...],
        resolve: Callable[[ast.expr], Any],
        is_local: Callable[[str], bool],
    ) -> StaticTypes:
        """The walk at a function's first statement, knowing each parameter's calibration object."""
        known = {}
        for name in parameters:
            if name in arguments:
                value = arguments[name]
                shadow = value.iloc[:0] if type(value) is pd.DataFrame else None
                known[name] = Known(type(value), frozenset({name}), shadow)
        return cls(resolve, is_local, known)

    # ------------------------------------------------------------------ values

    def infer(self, expr: ast.expr) -> Known | None:
        """What is known of ``expr``'s value, or ``None``."""
        try:
            return self._infer(expr)
        except Exception:  # noqa: BLE001 - a shadow operation that fails leaves the value unknown
            return None

    def _infer(self, expr: ast.expr) -> Known | None:
        if isinstance(expr, ast.Name):
            if expr.id in self.env:
                return self.env[expr.id]
            if self.is_local(expr.id):
                return None
            value = self.resolve(expr)
            return None if value is UNRESOLVED else Known(type(value))
        if isinstance(expr, ast.Constant):
            return Known(type(expr.value))
        if isinstance(expr, ast.List):
            if all(isinstance(e, ast.Constant) for e in expr.elts):
                return Known(list, value=[e.value for e in expr.elts])  # type: ignore[attr-defined]
            return Known(list)
        if isinstance(expr, ast.ListComp):
            return Known(list)
        if isinstance(expr, (ast.Tuple,)):
            return Known(tuple)
        if isinstance(expr, (ast.Dict, ast.DictComp)):
            return Known(dict)
        if isinstance(expr, ast.Attribute):
            base = self._infer(expr.value)
            if base is not None and base.type is pd.DataFrame and expr.attr == "values":
                return Known(np.ndarray, base.basis)
            value = self.resolve(expr)
            return None if value is UNRESOLVED else Known(type(value))
        if isinstance(expr, ast.Subscript):
            return self._subscript(expr)
        if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute):
            base = self._infer(expr.func.value)
            if base is not None and base.type is pd.DataFrame:
                return self._frame_method(base, expr)
        return None

    def _constant(self, expr: ast.expr) -> Any:
        """The calibration value of a constant argument (a literal or a resolvable chain); a
        known DataFrame stands for its shadow."""
        known = self._infer(expr) if isinstance(expr, ast.Name) else None
        if known is not None and known.shadow is not None:
            return known.shadow
        if known is not None and known.value is not UNRESOLVED:
            return list(known.value)
        if isinstance(expr, ast.Name) and self.is_local(expr.id):
            return UNRESOLVED
        try:
            return ast.literal_eval(expr)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            pass
        value = self.resolve(expr)
        if type(value) is pd.DataFrame:
            return value.iloc[:0]
        return value

    def _basis(self, exprs: list[ast.expr]) -> frozenset[str]:
        basis: frozenset[str] = frozenset()
        for e in exprs:
            if isinstance(e, ast.Name) and e.id in self.env:
                basis |= self.env[e.id].basis
        return basis

    def _subscript(self, expr: ast.Subscript) -> Known | None:
        base = self._infer(expr.value)
        if base is None or base.shadow is None:
            return None
        key = self._constant(expr.slice)
        if key is UNRESOLVED or isinstance(key, (pd.DataFrame, pd.Series, slice)):
            return None
        result = base.shadow[list(key) if isinstance(key, tuple) else key]
        if type(result) is pd.DataFrame:
            return Known(pd.DataFrame, base.basis, result)
        return Known(type(result), base.basis)

    def _frame_method(self, base: Known, call: ast.Call) -> Known | None:
        method = call.func.attr  # type: ignore[attr-defined]
        if method == "to_numpy":
            return Known(np.ndarray, base.basis)
        if method not in _FRAME_METHODS or any(k.arg == "inplace" for k in call.keywords):
            return None
        if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
            return None
        args = [self._constant(a) for a in call.args]
        basis = base.basis | self._basis(call.args + [k.value for k in call.keywords])
        if method == "assign":  # the new columns' names are the keywords; values do not matter
            if call.args:
                return None
            shadow = (
                base.shadow.assign(**{k.arg: 0 for k in call.keywords}) if base.shadow is not None else None
            )
            return Known(pd.DataFrame, basis, shadow)
        keywords = {k.arg: self._constant(k.value) for k in call.keywords}
        if base.shadow is None or any(v is UNRESOLVED for v in [*args, *keywords.values()]):
            return Known(pd.DataFrame, basis) if method != "merge" or args else None
        result = getattr(base.shadow, method)(*args, **keywords)
        if type(result) is not pd.DataFrame:
            return None
        return Known(pd.DataFrame, basis, result.iloc[:0])

    # ------------------------------------------------------------------ statements

    def step(self, statement: ast.stmt) -> None:
        """Account for ``statement`` having run: names it binds, frames it may mutate."""
        for name in _mutated(statement):
            self._forget_shadow(name)
        if (
            isinstance(statement, ast.Assign)
            and len(statement.targets) == 1
            and isinstance(statement.targets[0], ast.Name)
        ):
            known = self.infer(statement.value)
            name = statement.targets[0].id
            if known is None:
                self.env.pop(name, None)
            else:
                self.env[name] = known
            return
        for node in ast.walk(statement):
            if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
                self.env.pop(node.id, None)

    def _forget_shadow(self, name: str) -> None:
        known = self.env.get(name)
        if known is None or (known.shadow is None and known.value is UNRESOLVED):
            return
        for other, value in list(self.env.items()):
            if value is known:  # an alias holds the same object
                self.env[other] = Known(known.type, known.basis)


def _mutated(statement: ast.stmt) -> set[str]:
    """Names whose object ``statement`` may change in place (see the module doc)."""
    names: set[str] = set()
    for node in ast.walk(statement):
        if isinstance(node, (ast.Subscript, ast.Attribute)) and isinstance(node.ctx, (ast.Store, ast.Del)):
            root = node.value
            while isinstance(root, (ast.Subscript, ast.Attribute)):
                root = root.value
            if isinstance(root, ast.Name):
                names.add(root.id)
        elif isinstance(node, ast.Call):
            func = node.func
            if (
                isinstance(func, ast.Attribute)
                and isinstance(func.value, ast.Name)
                and (func.attr in _MUTATING_METHODS or any(k.arg == "inplace" for k in node.keywords))
            ):
                names.add(func.value.id)
            pure = isinstance(func, ast.Name) and func.id in _PURE_BUILTINS
            if not pure:
                for arg in [*node.args, *(k.value for k in node.keywords)]:
                    for sub in ast.walk(arg):
                        if isinstance(sub, ast.Name):
                            names.add(sub.id)
        elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


# --------------------------------------------------------------------------- type tests


def is_type_test(test: ast.expr) -> bool:
    """Whether ``test`` is (a negation or ``and``/``or`` of) ``isinstance(x, T)``,
    ``type(x) is/is not/==/!= T`` or ``hasattr(x, "name")``."""
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        return is_type_test(test.operand)
    if isinstance(test, ast.BoolOp):
        return all(is_type_test(v) for v in test.values)
    if isinstance(test, ast.Call) and isinstance(test.func, ast.Name) and not test.keywords:
        if test.func.id == "isinstance" and len(test.args) == 2:
            return True
        return (
            test.func.id == "hasattr"
            and len(test.args) == 2
            and isinstance(test.args[1], ast.Constant)
            and isinstance(test.args[1].value, str)
        )
    return (
        isinstance(test, ast.Compare)
        and len(test.ops) == 1
        and isinstance(test.ops[0], (ast.Is, ast.IsNot, ast.Eq, ast.NotEq))
        and any(_type_call(side) is not None for side in (test.left, test.comparators[0]))
    )


def _type_call(node: ast.expr) -> ast.expr | None:
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "type"
        and len(node.args) == 1
        and not node.keywords
    ):
        return node.args[0]
    return None


def type_test(test: ast.expr, types: StaticTypes) -> tuple[bool, frozenset[str]] | None:
    """The outcome of a type test at calibration and the parameters it rests on, or ``None``
    when it is not decided by what ``types`` knows."""
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        inner = type_test(test.operand, types)
        return None if inner is None else (not inner[0], inner[1])
    if isinstance(test, ast.BoolOp):
        basis: frozenset[str] = frozenset()
        for value in test.values:  # short-circuit as Python does
            part = type_test(value, types)
            if part is None:
                return None
            basis |= part[1]
            if part[0] == isinstance(test.op, ast.Or):
                return part[0], basis
        return not isinstance(test.op, ast.Or), basis
    if not is_type_test(test):
        return None
    if isinstance(test, ast.Call):
        if not _builtin(test.func, types):
            return None
        known = types.infer(test.args[0])
        if known is None:
            return None
        if test.func.id == "hasattr":  # type: ignore[attr-defined]
            name = test.args[1].value  # type: ignore[attr-defined]
            if hasattr(known.type, name):
                return True, known.basis
            if getattr(known.type, "__dictoffset__", 1) == 0 and not hasattr(known.type, "__getattr__"):
                return False, known.basis  # no instance attributes: the type decides
            return None
        classes = types.resolve(test.args[1]) if not _reads_call_values(test.args[1], types) else UNRESOLVED
        if classes is UNRESOLVED:
            return None
        try:
            return issubclass(known.type, classes), known.basis
        except TypeError:
            return None
    assert isinstance(test, ast.Compare)
    left, right = test.left, test.comparators[0]
    subject, other = (_type_call(left), right) if _type_call(left) is not None else (_type_call(right), left)
    type_func = left.func if _type_call(left) is not None else right.func  # type: ignore[attr-defined]
    if not _builtin(type_func, types):
        return None
    known = types.infer(subject)  # type: ignore[arg-type]
    cls = types.resolve(other) if not _reads_call_values(other, types) else UNRESOLVED
    if known is None or cls is UNRESOLVED or not isinstance(cls, type):
        return None
    same = known.type is cls
    return (same if isinstance(test.ops[0], (ast.Is, ast.Eq)) else not same), known.basis


def _reads_call_values(expr: ast.expr, types: StaticTypes) -> bool:
    """Whether ``expr`` reads a name holding a value of the call (a parameter or what is computed
    from one): its value may differ at the next call, so it is not a constant."""
    return any(isinstance(n, ast.Name) and n.id in types.env for n in ast.walk(expr))


def _builtin(func: ast.expr, types: StaticTypes) -> bool:
    """Whether ``func`` (a name) is the builtin of that name here (not shadowed)."""
    return isinstance(func, ast.Name) and types.resolve(func) is getattr(builtins, func.id, None)


# --------------------------------------------------------------------------- comprehensions


def constant_comprehension(expr: ast.ListComp, types: StaticTypes) -> tuple[list[Any], frozenset[str]] | None:
    """The value of ``[elt for t in ITER if ...]`` at calibration, when ``ITER`` is a known
    frame's ``.columns`` or a constant, and the element and conditions read only the loop
    variable and constants (calling only methods of the loop variable and pure builtins)."""
    if len(expr.generators) != 1:
        return None
    gen = expr.generators[0]
    if gen.is_async or not isinstance(gen.target, ast.Name):
        return None
    var = gen.target.id
    basis: frozenset[str] = frozenset()
    if isinstance(gen.iter, ast.Attribute) and gen.iter.attr == "columns":
        known = types.infer(gen.iter.value)
        if known is None or known.shadow is None:
            return None
        items: Any = list(known.shadow.columns)
        basis = known.basis
    else:
        if _reads_call_values(gen.iter, types):
            return None
        items = types._constant(gen.iter)
        if items is UNRESOLVED or not isinstance(items, (list, tuple, range, pd.Index, dict, set, frozenset)):
            return None
        if isinstance(items, (set, frozenset)):
            return None  # iteration order is not fixed
    namespace: dict[str, Any] = {}
    for part in [expr.elt, *gen.ifs]:
        for node in ast.walk(part):
            if isinstance(node, (ast.Lambda, ast.NamedExpr, ast.Await, ast.Yield, ast.YieldFrom)):
                return None
            if isinstance(node, ast.Call):
                func = node.func
                pure_builtin = isinstance(func, ast.Name) and func.id in _PURE_BUILTINS - {"print", "id"}
                method_of_var = (
                    isinstance(func, ast.Attribute)
                    and isinstance(func.value, ast.Name)
                    and func.value.id == var
                )
                if not (pure_builtin or method_of_var):
                    return None
            if isinstance(node, ast.Name) and node.id != var:
                if types.is_local(node.id) or node.id in types.env:
                    return None  # a value of this call, not a constant
                value = types._constant(node)
                if value is UNRESOLVED or isinstance(value, pd.DataFrame):
                    return None
                namespace[node.id] = value
    if not all(
        isinstance(v, _CONSTANT_TYPES) or _constant_list(v) for v in namespace.values() if not callable(v)
    ):
        return None
    evaluated = copy.deepcopy(expr)
    evaluated.generators[0].iter = ast.Name(id="__willow_items__", ctx=ast.Load())
    namespace["__willow_items__"] = items
    module = ast.Expression(body=evaluated)
    ast.fix_missing_locations(module)
    try:
        # the names are globals of the evaluation: a comprehension's own scope does not see locals
        code = compile(module, "<willow comprehension>", "eval")
        value = eval(code, {**namespace, "__builtins__": builtins})  # noqa: S307
    except Exception:  # noqa: BLE001 - it raises as written at every call: leave it there
        return None
    if not all(isinstance(v, _CONSTANT_TYPES) for v in value):
        return None
    return value, basis


def _constant_list(value: Any) -> bool:
    return isinstance(value, (list, tuple, frozenset, set)) and all(
        isinstance(v, _CONSTANT_TYPES) for v in value
    )


# --------------------------------------------------------------------------- the fold


@dataclass
class FoldReport:
    """What :func:`fold_statements` decided: guards to add and notes for ``explain()``."""

    guards: list[TypeGuard]
    notes: list[str]


def fold_statements(
    body: list[ast.stmt],
    types: StaticTypes,
    report: FoldReport,
    where: str,
    roots: dict[str, Known],
    on_statement: Callable[[ast.stmt], list[ast.stmt]] | None = None,
) -> list[ast.stmt]:
    """``body`` with decided type tests folded and constant comprehensions evaluated, stepping
    ``types`` over it. ``roots`` are the parameters' calibration facts the guards check;
    ``on_statement`` (optional) rewrites each kept statement (the inliner's helper expansion)
    before it is stepped. A folded branch that returns ends the body."""
    out: list[ast.stmt] = []
    queue = list(body)
    while queue:
        st = queue.pop(0)
        if isinstance(st, ast.If) and is_type_test(st.test):
            decided = type_test(st.test, types)
            if decided is not None:
                outcome, basis = decided
                branch = st.body if outcome else st.orelse
                report.guards.extend(_typeguards(basis, roots, st.lineno, ast.unparse(st.test)))
                report.notes.append(
                    f"{where}:{st.lineno}: `if {ast.unparse(st.test)}` is {outcome} for the calibration "
                    f"call's {_describe(basis, roots)}: folded to its "
                    f"{'body' if outcome else 'else branch'}; another type at a call runs the original"
                )
                queue = [copy.deepcopy(s) for s in branch] + ([] if _returns(branch) else queue)
                continue
        _fold_comprehensions(st, types, report, where, roots)
        emitted = on_statement(st) if on_statement is not None else [st]
        for new in emitted:
            types.step(new)
        out.extend(emitted)
    return out


def _returns(branch: list[ast.stmt]) -> bool:
    return bool(branch) and isinstance(branch[-1], (ast.Return, ast.Raise))


def _typeguards(
    basis: frozenset[str], roots: dict[str, Known], lineno: int, reason: str, columns: bool = False
) -> list[TypeGuard]:
    """A guard per parameter in ``basis``: its type, and its columns when ``columns`` (the
    decision read the column labels, not only the type)."""
    out = []
    for name in sorted(basis):
        root = roots.get(name)
        if root is None:
            continue
        labels = tuple(root.shadow.columns) if columns and root.shadow is not None else None
        out.append(TypeGuard(name, root.type, labels, lineno, reason))
    return out


def _describe(basis: frozenset[str], roots: dict[str, Known]) -> str:
    by_type: dict[str, list[str]] = {}
    for name in sorted(basis):
        root = roots.get(name)
        if root is not None:
            by_type.setdefault(f"{root.type.__module__}.{root.type.__qualname__}", []).append(f"`{name}`")
    return "; ".join(f"{', '.join(names)} ({kind})" for kind, names in by_type.items()) or "constants"


def _outer_nodes(node: ast.AST) -> list[ast.AST]:
    """``node`` and what it contains, except the insides of nested scopes (a lambda's or inner
    function's parameters are not the function's names)."""
    out, stack = [], [node]
    while stack:
        current = stack.pop()
        if current is not node and isinstance(
            current, (ast.Lambda, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
        ):
            continue
        out.append(current)
        stack.extend(ast.iter_child_nodes(current))
    return out


def _fold_comprehensions(
    st: ast.stmt, types: StaticTypes, report: FoldReport, where: str, roots: dict[str, Known]
) -> None:
    for parent in _outer_nodes(st):
        for field_name, value in ast.iter_fields(parent):
            children = value if isinstance(value, list) else [value]
            for i, child in enumerate(children):
                if not isinstance(child, ast.ListComp):
                    continue
                found = constant_comprehension(child, types)
                if found is None:
                    continue
                items, basis = found
                literal = ast.copy_location(
                    ast.List(elts=[ast.Constant(v) for v in items], ctx=ast.Load()), child
                )
                literal._willow_evaluated = True  # type: ignore[attr-defined] # see substitute_lists
                if isinstance(value, list):
                    value[i] = literal
                else:
                    setattr(parent, field_name, literal)
                report.guards.extend(_typeguards(basis, roots, st.lineno, ast.unparse(child), columns=True))
                report.notes.append(
                    f"{where}:{st.lineno}: `{ast.unparse(child)}` evaluated at calibration to "
                    f"{len(items)} constant(s) (from {_describe(basis, roots)}); other columns at a "
                    "call run the original"
                )
    ast.fix_missing_locations(st)


# --------------------------------------------------------------------------- the pass


def fold_statics(tree: ast.FunctionDef, ctx: Any) -> ast.FunctionDef:
    """The front-end pass over the decorated function itself (helpers are folded as they are
    inlined, :mod:`willow.frontend.inline`): decided type tests folded, constant comprehensions
    evaluated, and a list so computed substituted where the function selects with it
    (``df[feats]``: the frames pass needs constant column lists)."""
    types = StaticTypes.of_parameters(ctx.arguments, ctx.parameters, ctx.resolve, ctx.is_local)
    roots = dict(types.env)
    report = FoldReport([], [])
    before = ast.dump(tree)
    body = list(tree.body)
    docstring = body[:1] if body and _is_docstring(body[0]) else []
    folded = fold_statements(body[len(docstring) :], types, report, ctx.filename, roots)
    if not report.notes:
        return tree
    tree = copy.copy(tree)
    tree.body = docstring + folded
    ctx.type_guards.extend(report.guards)
    for note in report.notes:
        ctx.note(note)
    ast.fix_missing_locations(tree)
    assert ast.dump(tree) != before
    return tree


def _is_docstring(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


def substitute_lists(tree: ast.FunctionDef, ctx: Any) -> ast.FunctionDef:
    """The front-end pass after helper inlining: where a name assigned once to an evaluated
    comprehension (in the function or an inlined helper) is only read as a selection key
    (``df[feats]``, ``df.loc[:, feats]``), read the constant list itself (the frames pass needs
    constant column lists)."""
    stores: dict[str, list[ast.AST]] = {}
    loads: dict[str, list[ast.Name]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loads if isinstance(node.ctx, ast.Load) else stores).setdefault(node.id, []).append(node)
        elif isinstance(node, ast.arg):
            stores.setdefault(node.arg, []).append(node)
    keys: dict[int, ast.Subscript] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript):
            key = node.slice
            if isinstance(key, ast.Tuple) and len(key.elts) == 2 and isinstance(key.elts[0], ast.Slice):
                key = key.elts[1]
            if isinstance(key, ast.Name):
                keys[id(key)] = node
    for st in tree.body:
        if not (
            isinstance(st, ast.Assign)
            and len(st.targets) == 1
            and isinstance(st.targets[0], ast.Name)
            and getattr(st.value, "_willow_evaluated", False)
        ):
            continue
        name = st.targets[0].id
        uses = loads.get(name, [])
        if len(stores.get(name, [])) != 1 or not uses or not all(id(u) in keys for u in uses):
            continue
        for use in uses:
            holder = keys[id(use)]
            literal = ast.copy_location(copy.deepcopy(st.value), use)
            if holder.slice is use:
                holder.slice = literal
            else:
                holder.slice.elts[1] = literal  # type: ignore[attr-defined]
        ctx.note(
            f"{ctx.filename}:{st.lineno}: the column list `{name}` is read as its constant value where it selects"
        )
    return tree
