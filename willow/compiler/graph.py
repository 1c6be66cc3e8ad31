"""Plain data types produced by tracing: statements, feature groups and the pipeline graph.

A :class:`PipelineGraph` is the dataflow graph of one decorated function: each straight-line
statement with the names it reads and defines, which definition each read sees, which statements
every feature group needs, and how the feature matrix reaches the model. Later stages (cost
profiling, cascade planning, code generation) only read it.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

__all__ = ["Statement", "FeatureGroup", "StackCall", "ModelCall", "PipelineGraph"]


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
    """The ``return <model>.<method>(X, ...)`` that ends the function."""

    lineno: int
    node: ast.Return
    model: ast.expr
    method: str
    feature_variable: str
    model_parameter: str | None


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
        for st in self.statements:
            owners = self.consumers.get(st.index, frozenset())
            if st.index in self.tail or (self.stack and st.index == self.stack.statement):
                role = "stack/tail"
            elif owners:
                role = "group " + "+".join(sorted(owners))
            else:
                role = "kept"
            lines.append(f"  line {st.lineno:>4}  [{role}]  {st.source.splitlines()[0]}")
        lines.append(f"  line {self.model_call.lineno:>4}  [model]  {ast.unparse(self.model_call.node)}")
        return "\n".join(lines)
