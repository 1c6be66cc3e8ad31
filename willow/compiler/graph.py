"""Plain data types produced by tracing: statements, feature groups and the pipeline graph.

A :class:`PipelineGraph` is the dataflow graph of one decorated function: each straight-line
statement with the names it reads and defines, which definition each read sees, which statements
every feature group needs, and how the feature matrix reaches the model. Later stages (cost
profiling, cascade planning, code generation) only read it.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

__all__ = ["Statement", "FeatureGroup", "StackCall", "ModelCall", "PostProcessing", "PipelineGraph"]


@dataclass(frozen=True, eq=False)
class Statement:
    """One top-level statement of the function body (after normalisation).

    ``reads`` maps every name the statement loads to the index of the statement whose definition
    it sees, or ``None`` when the name comes from outside the body (a parameter, a global, a
    closure variable or a builtin).
    """

    index: int
    lineno: int
    node: ast.stmt
    defines: frozenset[str]
    reads: dict[str, int | None]
    compound: bool
    hoisted: bool = False

    @property
    def source(self) -> str:
        """The statement as Python source (one line for simple statements)."""
        return ast.unparse(self.node)

    @property
    def depends_on(self) -> frozenset[int]:
        """Indices of the statements whose results this statement reads."""
        return frozenset(i for i in self.reads.values() if i is not None)


@dataclass(frozen=True)
class FeatureGroup:
    """One input of the stacking call that builds the model's feature matrix.

    ``statements`` are the statements only this group needs (its exclusive cost); statements it
    shares with other groups are listed in :attr:`PipelineGraph.shared_statements`.
    """

    name: str
    variable: str
    position: int
    lineno: int
    statements: tuple[int, ...]
    slice: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class StackCall:
    """The statement that stacks the feature groups, e.g. ``X = sp.hstack([a, b]).tocsr()``.

    ``function`` is the stacking function's expression and ``kind`` its recognised name (checked
    against the real object at calibration time); ``elements`` are the group variables in the
    order the stacking call lists them.
    """

    statement: int
    kind: str
    function: ast.expr
    elements: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class ModelCall:
    """The model call ``<model>.<method>(X, ...)`` whose output the function returns.

    ``node`` is always ``return <model>.<method>(X)``: when the function transforms the output
    before returning it, the transformation is the graph's :attr:`PipelineGraph.post`, and the
    call is kept here on its own. ``method`` is ``predict``, ``predict_proba`` or
    ``decision_function``.
    """

    lineno: int
    node: ast.Return
    model: ast.expr
    method: str
    feature_variable: str
    model_parameter: str | None


@dataclass(frozen=True, eq=False)
class PostProcessing:
    """What the function does with the model's output before returning it.

    ``statements`` run with ``variable`` bound to the model's raw output and end in a
    ``return``: ``proba = model.predict_proba(X); return proba[:, 1] > 0.3`` has ``variable``
    ``proba`` and the statement ``return proba[:, 1] > 0.3``. They read only that output, names
    defined by earlier post statements, and names from outside the feature computation
    (parameters, globals, statements that feed no feature group). A cascade merges the raw
    outputs of its confident and uncertain rows and runs these statements once on the merge.
    """

    variable: str
    statements: tuple[ast.stmt, ...]
    reads: frozenset[str]
    lineno: int

    @property
    def source(self) -> str:
        return "\n".join(ast.unparse(s) for s in self.statements)


@dataclass(frozen=True, eq=False)
class PipelineGraph:
    """The traced dataflow of a decorated inference function.

    Statements appear in execution order; ``return`` is described by :attr:`model_call` and is not
    one of them. ``consumers[i]`` is the set of groups whose features need statement ``i``.
    """

    function_name: str
    filename: str
    source: str
    parameters: tuple[str, ...]
    statements: tuple[Statement, ...]
    model_call: ModelCall
    stack: StackCall | None
    groups: tuple[FeatureGroup, ...]
    tail: tuple[int, ...]
    consumers: dict[int, frozenset[str]]
    row_parameters: tuple[str, ...]
    row_dependent: frozenset[int]
    notes: tuple[str, ...] = field(default_factory=tuple)
    # What the function does around the pipeline (willow keeps and runs it, see tracing):
    # ``post`` transforms the model's output; ``prologue`` holds the leading early-return guards
    # (``if len(texts) == 0: return []``) and the statements before them, run first and unchanged;
    # ``contexts`` are the ``with`` items (``timer()``, ``warnings.catch_warnings()``) whose
    # blocks were unwrapped for analysis; the generated function runs its work inside them.
    post: PostProcessing | None = None
    prologue: tuple[ast.stmt, ...] = ()
    contexts: tuple[ast.withitem, ...] = ()

    @property
    def group_names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.groups)

    @property
    def shared_statements(self) -> tuple[int, ...]:
        """Statements needed by more than one group: computed once, attributed to the set."""
        return tuple(sorted(i for i, c in self.consumers.items() if len(c) > 1))

    def group(self, name: str) -> FeatureGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(f"No feature group named {name!r}; groups are {list(self.group_names)}.")

    def describe(self) -> str:
        """A readable listing of the graph: statements, what they read, which groups need them."""
        lines = [f"PipelineGraph of {self.function_name}({', '.join(self.parameters)})"]
        for node in self.prologue:
            lines.append(f"  line {node.lineno:>4}  [guard]  {ast.unparse(node).splitlines()[0]}")
        for item in self.contexts:
            lines.append(f"  line {item.context_expr.lineno:>4}  [with]  {ast.unparse(item)}")
        for st in self.statements:
            owners = self.consumers.get(st.index, frozenset())
            if st.index in self.tail or (self.stack and st.index == self.stack.statement):
                role = "stack/tail"
            elif owners:
                role = "group " + "+".join(sorted(owners))
            else:
                role = "kept"
            lines.append(f"  line {st.lineno:>4}  [{role}]  {st.source.splitlines()[0]}")
        model = ast.unparse(self.model_call.node)
        if self.post is not None:
            model = f"{self.post.variable} = {ast.unparse(self.model_call.node.value)}"  # type: ignore[arg-type]
        lines.append(f"  line {self.model_call.lineno:>4}  [model]  {model}")
        if self.post is not None:
            for node in self.post.statements:
                lines.append(f"  line {node.lineno:>4}  [output]  {ast.unparse(node).splitlines()[0]}")
        return "\n".join(lines)
