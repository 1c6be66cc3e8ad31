"""Fusing text vectorizers stacked with ``scipy.sparse.hstack`` into a linear model.

``fuse_text_linear([word_tfidf, char_tfidf], model, "predict_proba")`` compiles one kernel that
goes from raw strings to the model's output without building the sparse matrix: per row, each
vectorizer tokenises, looks up, weights and normalises its n-grams and adds
``weight x coefficient`` to the row's scores (its columns start where the previous vectorizer's
end, as in the ``hstack``), then the model's head (labels, sigmoid, softmax...) runs on the scores.
Large batches run the same ``nogil`` kernel on chunks of rows in several threads
(:mod:`willow.compiler.lowering.chunks`: threads rather than ``numba.prange``, whose spinning
workers stall for milliseconds when other processes use the cores), small ones on the calling
thread, where handing work over would cost more than it saves.

Single-row latency is mostly fixed costs, so a single text takes a short path: its code points
go to the kernel with no offsets array, every argument is a plain array (Numba types those in C),
and vocabulary tables are one packed array each (see :mod:`text_runtime`).
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from willow.compiler.lowering import chunks, linear_templates, text_runtime, text_templates
from willow.compiler.lowering.astgen import (
    compile_module,
    kernel_module,
    runtime_digest,
    specialize,
)
from willow.compiler.lowering.base import CompiledOperator, NotLowerable
from willow.compiler.lowering.linear import finish_output, linear_spec
from willow.compiler.lowering.text import (
    PARALLEL_MIN_ROWS,
    RUNTIME_MODULE,
    RUNTIME_NAMES,
    TextSpec,
    as_document_list,
    prepare_documents,
    text_spec,
)
from willow.compiler.lowering.text_runtime import char_class_table, slot_weights

__all__ = ["fuse_text_linear", "PARALLEL_MIN_ROWS"]

NO_OFFSETS = np.zeros(0, dtype=np.int64)
"""The offsets argument of a single text: the kernel reads the whole code point buffer as one row.
Writable (it has no element to protect) like a batch's offsets: Numba types an array's read-only
flag, so a read-only one here would compile the kernel a second time for single texts."""

_UINT32 = np.dtype(np.uint32)


def _single_text_encoder(spec: TextSpec) -> Callable[[str], np.ndarray]:
    """One ``str`` -> its preprocessed code points, as sklearn's preprocessor would give them.

    sklearn's default preprocessor is ``doc.lower()`` (if ``lowercase``) then the accent stripper;
    those two are inlined for speed, anything else calls the vectorizer's own preprocessor.
    """
    lowercase, strip_accents = spec.preprocess_key
    if strip_accents is None:
        if lowercase:
            return lambda text: np.frombuffer(text.lower().encode("utf-32-le", "surrogatepass"), _UINT32)
        return lambda text: np.frombuffer(text.encode("utf-32-le", "surrogatepass"), _UINT32)
    preprocess = spec.preprocess
    return lambda text: np.frombuffer(preprocess(text).encode("utf-32-le", "surrogatepass"), _UINT32)


def _label(spec: TextSpec, index: int) -> str:
    options = spec.options
    return f"{spec.kind}_{options['ANALYZER']}_{options['MIN_N']}_{options['MAX_N']}_{index}"


class _Expand(ast.NodeTransformer):
    """Replace the placeholder statements of ``fused_rows`` by generated statement lists."""

    def __init__(self, replacements: dict[str, list[ast.stmt]]):
        self.replacements = replacements

    def visit_Expr(self, node: ast.Expr) -> Any:
        if isinstance(node.value, ast.Name) and node.value.id in self.replacements:
            return self.replacements[node.value.id]
        return node


def _statements(source: str) -> list[ast.stmt]:
    return ast.parse(source).body


def _fused_function(
    function_name: str, specs: Sequence[TextSpec], groups: Sequence[int], labels: Sequence[str], head: str
) -> ast.FunctionDef:
    """The fused kernel: per row, each document group's bounds, then one ``add_*_scores`` call per
    vectorizer. Every argument is an array or a number (Numba types those in C when called; a tuple
    argument would cost microseconds per call on a single row)."""
    group_ids = sorted(set(groups))
    bounds = "".join(
        f"start_{g}, end_{g} = row_bounds(code_points_{g}, offsets_{g}, row)\n" for g in group_ids
    )
    longest = bounds + "".join(f"longest = max(longest, end_{g} - start_{g})\n" for g in group_ids)
    add = bounds + "".join(
        f"add_{label}_scores(code_points_{g}, start_{g}, end_{g}, char_class, vocabulary_{label}, "
        f"weights_{label}, stop_words_{label}, longest, buf, work, keys, counts, row_scores)\n"
        for g, label in zip(groups, labels)
    )
    max_sizes = max(spec.options["MAX_N"] - spec.options["MIN_N"] + 1 for spec in specs)
    function = specialize(
        text_templates.fused_rows,
        function_name,
        {"MAX_SIZES": max_sizes},
        placeholders=("LONGEST", "ADD_SCORES", "HEAD"),
    )
    function = _Expand({"LONGEST": _statements(longest), "ADD_SCORES": _statements(add)}).visit(function)
    for node in ast.walk(function):
        if isinstance(node, ast.Name) and node.id == "HEAD":
            node.id = head
    parameters = [f"{kind}_{g}" for g in group_ids for kind in ("code_points", "offsets")]
    parameters.append("char_class")
    parameters += [f"{kind}_{label}" for label in labels for kind in ("vocabulary", "weights", "stop_words")]
    parameters.append("intercept")
    function.args.args = [ast.arg(arg=p) for p in parameters]
    return function


def _weights(spec: TextSpec, coefficients: np.ndarray) -> np.ndarray:
    """What ``add_*_scores`` reads per n-gram: ``[idf, coef...]`` per vocabulary slot, or
    ``[1, coef...]`` per column for feature hashing."""
    idf = spec.idf if spec.idf.size else np.ones(spec.n_features)
    columns = np.ascontiguousarray(np.column_stack([idf, coefficients]))
    return columns if spec.options["HASHING"] else slot_weights(spec.vocabulary, columns)


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

    # Two modules: the vectorizers' scoring functions (the bulk of the compile time), which depend
    # only on the vectorizer options, and the row loop with the model's head, which imports them.
    # Sources name vectorizer kinds and the head, not the model class or fitted sizes, so every
    # model with the same head (and refits of the same pipeline) reuse one cached kernel, and
    # another head (predict / predict_proba / decision_function) reuses the scoring functions.
    described = " + ".join(f"{spec.kind}({spec.options['ANALYZER']})" for spec in specs)
    digest = runtime_digest(text_runtime)
    adders = [
        (specialize(text_templates.add_row_scores, f"add_{label}_scores", spec.options), False)
        for spec, label in zip(specs, labels)
    ]
    scores_module, scores_source = compile_module(
        kernel_module(
            f"Generated by willow: {described}, each vectorizer's weighted n-grams added to a row's "
            f"linear scores (no sparse matrix); runtime {digest}.",
            [(RUNTIME_MODULE, RUNTIME_NAMES)],
            adders,
        ),
        "fused_scores",
    )
    functions: list[tuple[ast.FunctionDef, bool | None]] = [
        (specialize(getattr(linear_templates, model_spec.head), model_spec.head, {}), False),
        (_fused_function("fused_rows", specs, groups, labels, model_spec.head), False),
    ]
    module_ast = kernel_module(
        f"Generated by willow: {described} -> linear scores -> {model_spec.head}, fused; runtime {digest}.",
        [
            (RUNTIME_MODULE, RUNTIME_NAMES),
            (scores_module.__name__, [function.name for function, _ in adders]),
        ],
        functions,
    )
    module, head_source = compile_module(module_ast, f"fused_{model_spec.head}")
    source = f"{scores_source}\n\n# ---- the row loop and the model's head ----\n\n{head_source}"
    run = module.fused_rows
    constants: list[Any] = [char_class_table()]
    offset = 0
    for spec in specs:
        coef_block = model_spec.coef_t[offset : offset + spec.n_features]  # rows of this vectorizer's columns
        constants += [spec.vocabulary, _weights(spec, coef_block), spec.stop_words]
        offset += spec.n_features
    constants.append(np.ascontiguousarray(model_spec.intercept, dtype=np.float64))
    width = model_spec.n_features
    single_text = [_single_text_encoder(spec) for spec in group_specs]

    def fused(raw_documents: Iterable[Any]) -> np.ndarray:
        if type(raw_documents) is list and len(raw_documents) == 1 and type(raw_documents[0]) is str:
            # One text (online serving): its code points, and no offsets (the kernel's one row).
            text = raw_documents[0]
            arguments = [part for encode in single_text for part in (encode(text), NO_OFFSETS)]
            return finish_output(model_spec, run(*arguments, *constants))
        documents = as_document_list(raw_documents)
        n_rows = len(documents)
        if n_rows == 0:
            raise ValueError(
                f"Found array with 0 sample(s) (shape=(0, {width})) while a minimum of 1 is required by "
                f"{model_spec.model_name}."
            )
        encoded = [prepare_documents(documents, spec) for spec in group_specs]
        workers = chunks.worker_threads()
        if n_rows < PARALLEL_MIN_ROWS or workers == 1:
            result = run(*[part for pair in encoded for part in pair], *constants)
        else:
            # Each chunk reads its rows through views of the offsets (positions stay absolute).
            def chunk(first: int, last: int) -> np.ndarray:
                arguments = [
                    part
                    for code_points, offsets in encoded
                    for part in (code_points, offsets[first : last + 1])
                ]
                return run(*arguments, *constants)

            result = np.concatenate(chunks.map_row_chunks(chunk, n_rows, workers))
        return finish_output(model_spec, result)

    names = " + ".join(type(v).__name__ for v in vectorizers)
    return CompiledOperator(
        name=f"{names} -> {model_spec.model_name}.{method}", source=source, function=fused
    )
