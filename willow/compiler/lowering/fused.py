"""Fusing text vectorizers stacked with ``scipy.sparse.hstack`` into a linear model.

``fuse_text_linear([word_tfidf, char_tfidf], model, "predict_proba")`` compiles one kernel that
goes from raw strings to the model's output without building the sparse matrix: per row, each
vectorizer tokenises, looks up, weights and normalises its n-grams and adds
``weight x coefficient`` to the row's scores (its columns start where the previous vectorizer's
end, as in the ``hstack``), then the model's head (labels, sigmoid, softmax...) runs on the scores.
Rows are processed in chunks with ``numba.prange`` for large batches and serially for small ones,
where starting threads would cost more than the work.
"""

from __future__ import annotations

import ast
import copy
from collections.abc import Iterable, Sequence
from typing import Any

import numba
import numpy as np

from willow.compiler.lowering import linear_templates, text_runtime, text_templates
from willow.compiler.lowering.astgen import (
    call,
    compile_module,
    kernel_module,
    name,
    runtime_digest,
    specialize,
)
from willow.compiler.lowering.base import CompiledOperator, NotLowerable
from willow.compiler.lowering.linear import finish_output, linear_spec
from willow.compiler.lowering.text import (
    RUNTIME_MODULE,
    RUNTIME_NAMES,
    TextSpec,
    as_document_list,
    prepare_documents,
    text_spec,
)
from willow.compiler.lowering.text_runtime import char_class_table

__all__ = ["fuse_text_linear", "PARALLEL_MIN_ROWS"]

PARALLEL_MIN_ROWS = 256
"""Batches smaller than this run on one thread (thread start-up would dominate)."""


def _label(spec: TextSpec, index: int) -> str:
    options = spec.options
    return f"{spec.kind}_{options['ANALYZER']}_{options['MIN_N']}_{options['MAX_N']}_{index}"


def _statement(expression: ast.expr) -> ast.stmt:
    return ast.Expr(value=expression)


def _assign(target: str, value: ast.expr) -> ast.stmt:
    return ast.Assign(targets=[name(target, store=True)], value=value)


class _Expand(ast.NodeTransformer):
    """Replace the placeholder statements of ``fused_rows`` by generated statement lists."""

    def __init__(self, replacements: dict[str, list[ast.stmt]]):
        self.replacements = replacements

    def visit_Expr(self, node: ast.Expr) -> Any:
        if isinstance(node.value, ast.Name) and node.value.id in self.replacements:
            return self.replacements[node.value.id]
        return node


def _fused_function(
    function_name: str,
    specs: Sequence[TextSpec],
    groups: Sequence[int],
    labels: Sequence[str],
    head: str,
    tuple_sizes: dict[str, int],
) -> ast.FunctionDef:
    """The fused kernel; each parameter named in ``tuple_sizes`` (a term table) arrives as that many
    separate arguments, rebuilt into the tuple inside the kernel: Numba's dispatcher types arrays in
    C but tuples in Python, which cost microseconds per call on a single row."""
    add: list[ast.stmt] = []
    for group, label in zip(groups, labels):
        arguments = [
            name(f"code_points_{group}"),
            name(f"offsets_{group}"),
            name("row"),
            name("char_class"),
            name(f"vocabulary_{label}"),
            name(f"stop_words_{label}"),
            name(f"feature_rows_{label}"),
            name("row_scores"),
        ]
        add.append(_statement(call(f"add_{label}_scores", *arguments)))
    function = specialize(text_templates.fused_rows, function_name, {}, placeholders=("ADD_SCORES", "HEAD"))
    function = _Expand({"ADD_SCORES": add}).visit(function)
    for node in ast.walk(function):
        if isinstance(node, ast.Name) and node.id == "HEAD":
            node.id = head
    parameters = [f"{kind}_{g}" for g in sorted(set(groups)) for kind in ("code_points", "offsets")]
    parameters.append("char_class")
    parameters += [
        f"{kind}_{label}" for label in labels for kind in ("vocabulary", "stop_words", "feature_rows")
    ]
    parameters += ["n_outputs", "intercept", "n_chunks"]
    flat: list[str] = []
    rebuild: list[ast.stmt] = []
    for parameter in parameters:
        size = tuple_sizes.get(parameter)
        if size is None:
            flat.append(parameter)
            continue
        parts = [f"{parameter}_{k}" for k in range(size)]
        flat += parts
        rebuild.append(_assign(parameter, ast.Tuple(elts=[name(p) for p in parts], ctx=ast.Load())))
    function.args.args = [ast.arg(arg=p) for p in flat]
    function.body[1:1] = rebuild  # after the docstring
    return function


def fuse_text_linear(vectorizers: Sequence[Any], model: Any, method: str) -> CompiledOperator:
    """Compile ``getattr(model, method)(sp.hstack([v.transform(texts) for v in vectorizers]).tocsr())``.

    The returned operator takes the texts (list, numpy array or pandas Series of ``str``) shared
    by all vectorizers. Raises :class:`NotLowerable` when a vectorizer or the model cannot be
    compiled exactly, or when the model's width is not the vectorizers' total.
    """
    if not vectorizers:
        raise NotLowerable("fuse_text_linear needs at least one vectorizer.")
    specs = [text_spec(v) for v in vectorizers]
    for vectorizer, spec in zip(vectorizers, specs):
        if spec.kind != "count" and spec.dtype != np.float64:
            raise NotLowerable(
                f"{type(vectorizer).__name__}(dtype={spec.dtype}) is not fused: sklearn rounds every "
                "weighting step to float32, which the fused float64 kernel does not reproduce to 1e-9."
            )
    model_spec = linear_spec(model, method)
    widths = [spec.n_features for spec in specs]
    if sum(widths) != model_spec.n_features:
        raise NotLowerable(
            f"The vectorizers produce {sum(widths)} columns ({' + '.join(map(str, widths))}) but "
            f"{model_spec.model_name} expects {model_spec.n_features} features."
        )
    group_keys: list[tuple] = []
    groups = []
    for vectorizer in vectorizers:
        key = (vectorizer.lowercase, vectorizer.strip_accents, vectorizer.encoding, vectorizer.decode_error)
        if key not in group_keys:
            group_keys.append(key)
        groups.append(group_keys.index(key))
    group_specs = [specs[groups.index(g)] for g in range(len(group_keys))]
    labels = [_label(spec, i) for i, spec in enumerate(specs)]

    functions: list[tuple[ast.FunctionDef, bool | None]] = []
    for spec, label in zip(specs, labels):
        functions.append(
            (specialize(text_templates.add_row_scores, f"add_{label}_scores", spec.options), False)
        )
    functions.append((specialize(getattr(linear_templates, model_spec.head), model_spec.head, {}), False))
    tuple_sizes = {}
    for spec, label in zip(specs, labels):
        tuple_sizes[f"vocabulary_{label}"] = len(spec.vocabulary)
        tuple_sizes[f"stop_words_{label}"] = len(spec.stop_words)
    serial = _fused_function("fused_rows_serial", specs, groups, labels, model_spec.head, tuple_sizes)
    parallel = copy.deepcopy(serial)
    parallel.name = "fused_rows_parallel"
    functions += [(serial, False), (parallel, True)]
    # The source names vectorizer kinds and the head, not the model class or fitted sizes, so
    # every model with the same head (and refits of the same pipeline) reuse one cached kernel.
    described = " + ".join(f"{spec.kind}({spec.options['ANALYZER']})" for spec in specs)
    module_ast = kernel_module(
        f"Generated by willow: {described} -> linear scores -> {model_spec.head}, fused (no sparse matrix); "
        f"runtime {runtime_digest(text_runtime)}.",
        [(RUNTIME_MODULE, RUNTIME_NAMES)],
        functions,
    )
    module, source = compile_module(module_ast, f"fused_{model_spec.head}")
    run_serial, run_parallel = module.fused_rows_serial, module.fused_rows_parallel
    constants: list[Any] = [char_class_table()]
    offset = 0
    for spec in specs:
        coef_block = model_spec.coef_t[offset : offset + spec.n_features]  # rows of this vectorizer's columns
        idf = spec.idf if spec.idf.size else np.ones(spec.n_features)
        feature_rows = np.ascontiguousarray(np.column_stack([idf, coef_block]))
        constants += [*spec.vocabulary, *spec.stop_words, feature_rows]
        offset += spec.n_features
    constants += [model_spec.coef_t.shape[1], model_spec.intercept]
    width = model_spec.n_features

    def fused(raw_documents: Iterable[Any]) -> np.ndarray:
        if type(raw_documents) is list and len(raw_documents) == 1 and type(raw_documents[0]) is str:
            documents = raw_documents  # one text (online serving): nothing to convert
        else:
            documents = as_document_list(raw_documents)
        n_rows = len(documents)
        if n_rows == 0:
            raise ValueError(
                f"Found array with 0 sample(s) (shape=(0, {width})) while a minimum of 1 is required by "
                f"{model_spec.model_name}."
            )
        arguments: list[Any] = []
        for spec in group_specs:
            arguments += prepare_documents(documents, spec)
        if n_rows < PARALLEL_MIN_ROWS:
            result = run_serial(*arguments, *constants, 1)
        else:
            n_chunks = min(n_rows, 4 * numba.get_num_threads())
            result = run_parallel(*arguments, *constants, n_chunks)
        return finish_output(model_spec, result)

    names = " + ".join(type(v).__name__ for v in vectorizers)
    return CompiledOperator(
        name=f"{names} -> {model_spec.model_name}.{method}", source=source, function=fused
    )
