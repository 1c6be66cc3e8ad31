"""Lowering scikit-learn text vectorizers (``CountVectorizer``, ``TfidfVectorizer``,
``HashingVectorizer``) ``.transform`` to generated Numba kernels.

Python keeps the two steps whose Unicode semantics are easiest to get wrong: sklearn's own
preprocessor (``str.lower`` and accent stripping) runs on each document, then the batch becomes one
code point buffer (:func:`text_runtime.encode_documents`). Tokenising, n-gram cutting, vocabulary
lookup or feature hashing, counting, tf-idf weighting and normalisation run in the kernel, which
returns the CSR arrays sklearn would build: same shape, dtypes, sorted indices and values. Batches
of :data:`PARALLEL_MIN_ROWS` rows or more are cut into chunks of rows that the same kernel runs on
several threads (it releases the GIL), stitched into the same CSR (:mod:`chunks`).

:func:`text_spec` reads a fitted vectorizer into a :class:`TextSpec` (raising
:class:`NotLowerable` for options that cannot be reproduced exactly); :func:`lower_text_vectorizer`
compiles ``transform``. :mod:`willow.compiler.lowering.fused` reuses the spec.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import sklearn
from sklearn.feature_extraction.text import CountVectorizer, HashingVectorizer, TfidfVectorizer

from willow.compiler.lowering import chunks, text_runtime, text_templates
from willow.compiler.lowering.astgen import compile_module, kernel_module, runtime_digest, specialize
from willow.compiler.lowering.base import CompiledOperator, NotLowerable
from willow.compiler.lowering.text_runtime import (
    build_term_table,
    char_class_table,
    empty_term_table,
    encode_documents,
)

__all__ = [
    "TextSpec",
    "text_spec",
    "prepare_documents",
    "lower_text_vectorizer",
    "TEXT_LOWERINGS",
    "PARALLEL_MIN_ROWS",
    "PARALLEL_MIN_CODE_POINTS",
]

RUNTIME_MODULE = "willow.compiler.lowering.text_runtime"
RUNTIME_NAMES = text_runtime.KERNEL_HELPERS

PARALLEL_MIN_ROWS = 256
"""Batches of this many rows or more, and of :data:`PARALLEL_MIN_CODE_POINTS` characters, run in
chunks on several threads (:mod:`chunks`); smaller ones on the calling thread, where handing work
to other threads costs more than it saves."""

PARALLEL_MIN_CODE_POINTS = {"word": 64_000, "char": 16_000, "char_wb": 16_000}
"""Characters a batch needs before chunks pay, per analyzer (a character costs several times more
in character n-grams than in word n-grams). Measured on 2 free cores with SMS messages: word
(1, 2)-grams 0.89x on 256 rows (22k characters) and 1.34x on 1,000 rows (83k); char_wb (2, 5)-grams
1.57x on 256 rows."""


# Token patterns the kernel tokenises itself: an optional ``(?u)``, an optional leading ``\b``, an
# optional one-character prefix that is not a word character (``@`` of ``@\w+``, ``#``...), a run of
# word characters of a minimum length (``\w+`` or ``\w\w+``) and an optional trailing ``\b``.
_TOKEN_PATTERN = re.compile(
    r"(?:\(\?u\))?(?P<boundary>\\b)?(?P<prefix>\\?[^\w\s])?(?P<run>\\w\\w\+|\\w\+)(?:\\b)?"
)
_RE_SPECIAL = set(".^$*+?{}[]|()\\")


def token_rule(pattern: str) -> tuple[int, int] | None:
    r"""``(min_token_length, prefix)`` of a token pattern the kernel reproduces, else ``None``.

    Every such pattern finds the maximal runs of word characters (``re``'s ``\w``) of at least
    ``min_token_length`` characters; with a ``prefix`` code point (``-1``: none) only the runs right
    after that character, the token being the prefix and the run (``@\w+`` finds ``@name``). A run
    always ends at a word boundary, so a trailing ``\b`` changes nothing; a leading ``\b`` does
    only in front of a run (before a non-word prefix it would demand a word character there).
    """
    match = _TOKEN_PATTERN.fullmatch(pattern)
    if match is None:
        return None
    length = 2 if match["run"] == r"\w\w+" else 1
    prefix_source = match["prefix"]
    if prefix_source is None:
        return length, -1
    if match["boundary"]:
        return None
    char = prefix_source[-1]
    if (len(prefix_source) == 1 and char in _RE_SPECIAL) or re.fullmatch(prefix_source, char) is None:
        return None
    return length, ord(char)


@dataclass(frozen=True, eq=False)
class TextSpec:
    """Everything a kernel needs from one fitted vectorizer.

    ``options`` are the compile-time constants of the templates; ``vocabulary``/``stop_words`` are
    packed term hash tables (see :mod:`text_runtime`); ``idf`` is empty unless ``USE_IDF``.
    """

    kind: str
    options: dict[str, Any]
    n_features: int
    dtype: np.dtype
    preprocess_key: tuple[bool, str | None]
    preprocess: Callable[[str], str] = field(repr=False)
    decode: Callable[[Any], Any] = field(repr=False)
    vocabulary: np.ndarray = field(repr=False)
    stop_words: np.ndarray = field(repr=False)
    idf: np.ndarray = field(repr=False)


def _refuse(vectorizer: Any, reason: str) -> NotLowerable:
    return NotLowerable(f"{type(vectorizer).__name__} cannot be compiled exactly: {reason}.")


def text_spec(vectorizer: Any) -> TextSpec:
    """Read a fitted vectorizer into a :class:`TextSpec`, or raise :class:`NotLowerable`."""
    v = vectorizer
    kind = {CountVectorizer: "count", TfidfVectorizer: "tfidf", HashingVectorizer: "hashing"}.get(type(v))
    if kind is None:
        raise NotLowerable(
            f"{type(v).__name__} is not a CountVectorizer, TfidfVectorizer or HashingVectorizer."
        )
    if v.input != "content":
        raise _refuse(v, f"input={v.input!r} reads files; only input='content' is supported")
    if callable(v.analyzer):
        raise _refuse(v, "a custom analyzer callable is opaque Python code")
    if v.analyzer not in ("word", "char", "char_wb"):
        raise _refuse(v, f"unknown analyzer {v.analyzer!r}")
    if v.preprocessor is not None:
        raise _refuse(v, "a custom preprocessor callable is opaque Python code")
    if callable(v.strip_accents):
        raise _refuse(v, "a custom strip_accents callable is opaque Python code")
    if v.strip_accents not in (None, "ascii", "unicode"):
        raise _refuse(v, f"unknown strip_accents {v.strip_accents!r}")
    min_n, max_n = v.ngram_range
    if not (1 <= min_n <= max_n):
        raise _refuse(v, f"invalid ngram_range {v.ngram_range!r}")
    min_token_length = 0
    token_prefix = -1
    stop_words = empty_term_table()
    if v.analyzer == "word":
        if v.tokenizer is not None:
            raise _refuse(v, "a custom tokenizer callable is opaque Python code")
        pattern = v.token_pattern
        rule = token_rule(pattern) if isinstance(pattern, str) else None
        if rule is None:
            raise _refuse(
                v,
                f"token_pattern {pattern!r} is not a compiled shape: runs of word characters "
                r"(\w+, \w\w+, optionally between \b) after an optional one-character prefix such as @ or #",
            )
        if re.compile(pattern).flags & re.ASCII:
            raise _refuse(v, "ASCII-only token patterns are not compiled")
        min_token_length, token_prefix = rule
        stops = v.get_stop_words()
        if stops:
            stop_words = build_term_table(sorted(stops), np.zeros(len(stops), dtype=np.int64))

    if kind == "hashing":
        n_features = int(v.n_features)
        vocabulary = empty_term_table()
        idf = np.zeros(0)
        options = dict(HASHING=True, N_FEATURES=n_features, ALTERNATE_SIGN=bool(v.alternate_sign))
        options.update(BINARY=bool(v.binary), SUBLINEAR_TF=False, USE_IDF=False, NORM=v.norm)
    else:
        if not hasattr(v, "vocabulary_"):
            raise NotLowerable(
                f"This {type(v).__name__} instance is not fitted yet: call 'fit' before compiling it."
            )
        terms = list(v.vocabulary_)
        n_features = len(terms)
        features = np.fromiter(v.vocabulary_.values(), np.int64, n_features)
        options = dict(HASHING=False, N_FEATURES=n_features, ALTERNATE_SIGN=False, BINARY=bool(v.binary))
        if kind == "tfidf":
            if np.dtype(v.dtype) not in (np.dtype(np.float32), np.dtype(np.float64)):
                raise _refuse(v, f"dtype {np.dtype(v.dtype)} is converted by sklearn with a warning")
            use_idf = bool(v.use_idf)
            if use_idf and not hasattr(v._tfidf, "idf_"):
                raise NotLowerable("This TfidfVectorizer instance is not fitted yet: call 'fit' first.")
            idf = np.asarray(v.idf_, dtype=np.float64) if use_idf else np.zeros(0)
            options.update(SUBLINEAR_TF=bool(v.sublinear_tf), USE_IDF=use_idf, NORM=v.norm)
        else:
            idf = np.zeros(0)
            options.update(SUBLINEAR_TF=False, USE_IDF=False, NORM=None)
        vocabulary = build_term_table(terms, features)
    if options["NORM"] not in (None, "l1", "l2"):
        raise _refuse(v, f"unknown norm {options['NORM']!r}")
    options.update(ANALYZER=v.analyzer, MIN_N=int(min_n), MAX_N=int(max_n), MIN_TOKEN_LENGTH=min_token_length)
    options.update(TOKEN_PREFIX=token_prefix)
    return TextSpec(
        kind=kind,
        options=options,
        n_features=n_features,
        dtype=np.dtype(v.dtype),
        preprocess_key=(bool(v.lowercase), v.strip_accents),
        preprocess=v.build_preprocessor(),
        decode=v.decode,
        vocabulary=vocabulary,
        stop_words=stop_words,
        idf=idf,
    )


def as_document_list(raw_documents: Any) -> list:
    """The documents of a list / tuple / numpy array / pandas Series as a list (sklearn's check first)."""
    if isinstance(raw_documents, str):
        raise ValueError("Iterable over raw text documents expected, string object received.")
    if hasattr(raw_documents, "tolist") and not isinstance(raw_documents, list):
        documents = raw_documents.tolist()
        return documents if isinstance(documents, list) else [documents]
    return list(raw_documents)


def prepare_documents(documents: Sequence[Any], spec: TextSpec) -> tuple[np.ndarray, np.ndarray]:
    """Run sklearn's decode + preprocessor on each document and encode the batch as code points.

    A batch of ``str`` is joined by NUL into one string, lowercased and encoded in one call each,
    the NULs giving the row offsets back (one join instead of a join, a split and a join again):
    all-ASCII batches (accent stripping and ``str.lower`` are per character and the identity on
    non-letters for ASCII) and any batch without accent stripping (see below). Anything else,
    and documents that hold a NUL themselves, go document by document.
    """
    if len(documents) == 1 and type(documents[0]) is str:
        # One document (online serving): the same steps without the batch bookkeeping.
        text = spec.preprocess(documents[0])
        code_points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        return code_points, np.array([0, code_points.shape[0]], dtype=np.int64)
    try:
        joined = "\x00".join(documents)
    except TypeError:
        joined = None
    # one NUL between documents and none inside one: the batch is one string, and the NULs
    # (code point 0, produced by no lowering) give the row offsets back
    if joined is not None and joined.count("\x00") == len(documents) - 1:
        lowercase, strip_accents = spec.preprocess_key
        if joined.isascii():  # accent stripping and str.lower are per character on ASCII
            lowered = joined.lower() if lowercase else joined
            return _split_batch(np.frombuffer(lowered.encode("ascii"), dtype=np.uint8), len(documents))
        if strip_accents is None:
            # ``str.lower`` of the whole batch: a NUL is neither cased nor case-ignorable, so the
            # one context-dependent mapping (final sigma) sees each document's ends as it does alone
            lowered = joined.lower() if lowercase else joined
            encoded = np.frombuffer(lowered.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
            return _split_batch(encoded, len(documents))
    preprocess, decode = spec.preprocess, spec.decode
    return encode_documents([preprocess(decode(d)) for d in documents])


def _split_batch(encoded: np.ndarray, n_documents: int) -> tuple[np.ndarray, np.ndarray]:
    """``encode_documents`` of a batch given as its NUL-joined code points (no NUL inside a
    document): the code points without the separators, as ``uint32``, and the row offsets."""
    separators = np.flatnonzero(encoded == 0)
    offsets = np.empty(n_documents + 1, dtype=np.int64)
    offsets[0] = 0
    offsets[1:-1] = separators - np.arange(separators.shape[0])
    offsets[-1] = encoded.shape[0] - separators.shape[0]
    if separators.shape[0]:
        encoded = np.delete(encoded, separators)
    code_points = encoded.astype(np.uint32, copy=False)
    # read-only like the code points of every other path (``frombuffer``): Numba types the flag,
    # and a writable buffer would compile every kernel a second time
    code_points.setflags(write=False)
    return code_points, offsets


def _kernel_arguments(spec: TextSpec) -> tuple[Any, ...]:
    return (char_class_table(), spec.vocabulary, spec.stop_words, spec.idf)


def _sparse_result(
    indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, shape: tuple[int, int], dtype
):
    """The CSR container sklearn would return (its ``sparse_interface`` config decides which class)."""
    index_dtype = np.int32 if indptr[-1] <= np.iinfo(np.int32).max else np.int64
    container = sp.csr_array if sklearn.get_config().get("sparse_interface") == "sparray" else sp.csr_matrix
    matrix = container(
        (values.astype(dtype, copy=False), indices.astype(index_dtype), indptr.astype(index_dtype)),
        shape=shape,
        copy=False,
    )
    matrix.has_sorted_indices = True
    return matrix


def lower_text_vectorizer(vectorizer: Any, method: str) -> CompiledOperator:
    """Compile ``vectorizer.transform``; the result takes the same documents and returns the same CSR."""
    if method != "transform":
        raise NotLowerable(f"Only {type(vectorizer).__name__}.transform is compiled, not {method!r}.")
    spec = text_spec(vectorizer)
    function = specialize(text_templates.transform_rows, "transform_rows", spec.options)
    module_ast = kernel_module(
        f"Generated by willow: {type(vectorizer).__name__}.transform "
        f"(analyzer={spec.options['ANALYZER']!r}, ngram_range=({spec.options['MIN_N']}, {spec.options['MAX_N']})); "
        f"runtime {runtime_digest(text_runtime)}.",
        [(RUNTIME_MODULE, RUNTIME_NAMES)],
        [(function, False)],
    )
    module, source = compile_module(module_ast, f"{type(vectorizer).__name__}_transform")
    kernel = module.transform_rows
    arguments = _kernel_arguments(spec)
    n_features = spec.n_features
    analyzer = spec.options["ANALYZER"]

    def transform(raw_documents: Iterable[Any]):
        documents = as_document_list(raw_documents)
        if not documents and spec.kind == "hashing":
            raise ValueError("Cannot vectorize empty sequence.")
        if not documents and spec.kind == "tfidf":
            raise ValueError(
                f"Found array with 0 sample(s) (shape=(0, {n_features})) while a minimum of 1 is "
                "required by TfidfTransformer."
            )
        code_points, offsets = prepare_documents(documents, spec)
        min_code_points = PARALLEL_MIN_CODE_POINTS[analyzer]
        n_rows, workers = len(documents), chunks.worker_threads()
        if n_rows < PARALLEL_MIN_ROWS or code_points.shape[0] < min_code_points or workers == 1:
            indptr, indices, values = kernel(code_points, offsets, *arguments)
        else:
            # Each chunk reads its rows through a view of ``offsets`` (positions stay absolute).
            def chunk(first: int, last: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
                return kernel(code_points, offsets[first : last + 1], *arguments)

            indptr, indices, values = chunks.stitch_csr(chunks.map_row_chunks(chunk, n_rows, workers))
        return _sparse_result(indptr, indices, values, (len(documents), n_features), spec.dtype)

    return CompiledOperator(name=f"{type(vectorizer).__name__}.transform", source=source, function=transform)


TEXT_LOWERINGS = {
    CountVectorizer: lower_text_vectorizer,
    TfidfVectorizer: lower_text_vectorizer,
    HashingVectorizer: lower_text_vectorizer,
}
