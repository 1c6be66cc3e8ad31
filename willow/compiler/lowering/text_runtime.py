"""Fixed Numba helpers the generated text kernels call: tokenising, hashing, vocabulary lookup.

Documents reach the kernels as one buffer of Unicode code points (``uint32``) plus row offsets,
after sklearn's own preprocessor (``str.lower``, accent stripping) ran on each document in Python,
so case mapping is exactly Python's. Character classes follow ``re`` semantics for ``str``
patterns: ``\\w`` is ``str.isalnum() or "_"`` and ``\\s`` is ``str.isspace()`` (the same as ``re``
for every code point; the tests check the whole range), held in one ``uint8`` table indexed by
code point and built once per process.

Every analyzer writes the text its n-grams are cut from into a small per-row buffer and returns
n-grams as ``(start, end)`` spans of it, so the vocabulary lookup and the feature hashing work on
one representation:

- ``word``: the kept tokens joined by single spaces (a word n-gram is then one contiguous span,
  exactly sklearn's ``" ".join(tokens[i:i + n])``);
- ``char``: the document with runs of two or more whitespace characters replaced by one space;
- ``char_wb``: each whitespace-separated word padded with a space on both sides.

The per-n-gram key, probe and term comparison are written out inside :func:`lookup_slots_into`
(:func:`_span_key` and :func:`_same_term` are their one-key twins, for building tables and stop
words): any call per n-gram, even one inlined at Numba IR level, pays reference counting on every
array, measured at several times the lookup itself. Per-row helpers are inlined
(``inline="always"``).

The vocabulary is an open-addressing hash table (linear probing) packed into one ``uint64`` array
(one kernel argument): ``[n_slots, keys..., references..., terms...]``. The probe reads only the
8-byte keys, so a 30,000-term vocabulary's probe array (512 KiB) stays in L2 cache; a hit's
reference holds the term's feature (low 32 bits) and the position of its code points (high 32
bits) in the terms section, ``uint32`` code points each prefixed by the term's length. Fused
kernels keep each slot's idf and coefficients in a separate ``float64`` array indexed by slot, so
scoring an n-gram touches one more cache line and no feature index. An n-gram of at most five
code points below U+1000 (most character n-grams) is its own key: length and code points packed into 63 bits, so key
equality *is* term equality. Any other n-gram's key is its 64-bit FNV-1a hash with the top bit
set, and a hit is confirmed by comparing code points with the stored term. Lookups are therefore
exact whatever the hash does. Feature hashing reproduces ``sklearn.utils.murmurhash3_32`` (seed 0,
signed) on the UTF-8 bytes of the n-gram.

Kernels that score many rows allocate their scratch once (:func:`scratch_size` for the longest row
of a chunk) and the ``*_into`` analyzers and :func:`lookup_slots_into` write into it: a single row
would otherwise pay a dozen allocations, as much as its n-gram lookups.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterable, Sequence

import numba
import numpy as np

from willow.compiler.kernel_cache import harden_module

KERNEL_HELPERS = (
    "word_spans",
    "char_spans",
    "char_wb_spans",
    "word_spans_into",
    "char_spans_into",
    "char_wb_spans_into",
    "lookup_spans",
    "lookup_slots_into",
    "lookup_columns_into",
    "hash_spans",
    "hash_spans_into",
    "sort_prefix",
    "row_bounds",
    "span_capacity",
    "scratch_size",
    "set_capacity",
)
"""The functions generated kernels call (imported by name into each generated module)."""

__all__ = [
    "WORD",
    "SPACE",
    "KERNEL_HELPERS",
    "char_class_table",
    "encode_documents",
    "build_term_table",
    "slot_weights",
    "empty_term_table",
    *KERNEL_HELPERS,
]

WORD = 1  # bit set in the class table for characters matched by re's \w
SPACE = 2  # bit set for characters matched by re's \s (== str.isspace)
MAX_CODE_POINT = 0x110000

FNV_OFFSET = np.uint64(14695981039346656037)
FNV_PRIME = np.uint64(1099511628211)
MASK32 = np.uint64(0xFFFFFFFF)
HASHED = np.uint64(1 << 63)  # marks a hashed (not packed) key: needs a code point comparison
EMPTY = np.uint64(0xFFFFFFFFFFFFFFFF)  # key of a free slot
FIBONACCI = np.uint64(0x9E3779B97F4A7C15)  # slot = (key * FIBONACCI) >> shift, the high bits mix well
PACK_MAX_LENGTH = 5
PACK_LIMIT = np.uint64(4096)
MURMUR_C1 = np.uint64(0xCC9E2D51)
MURMUR_C2 = np.uint64(0x1B873593)
MURMUR_N = np.uint64(0xE6546B64)
MURMUR_F1 = np.uint64(0x85EBCA6B)
MURMUR_F2 = np.uint64(0xC2B2AE35)


@functools.cache
def char_class_table() -> np.ndarray:
    """``uint8[0x110000]``: WORD | SPACE bits per code point, computed once per process."""
    chars = map(chr, range(MAX_CODE_POINT))
    word = np.fromiter((c.isalnum() for c in chars), dtype=np.uint8, count=MAX_CODE_POINT)
    word[ord("_")] = 1
    table = word * np.uint8(WORD)
    table[_space_code_points()] |= np.uint8(SPACE)
    table.setflags(write=False)
    return table


def _space_code_points() -> list[int]:
    # str.isspace is true only below U+3001; scanning that range is enough and cheap.
    return [c for c in range(0x3001) if chr(c).isspace()]


def encode_documents(documents: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """One ``uint32`` code point buffer for all documents plus ``int64`` row offsets (n + 1)."""
    n = len(documents)
    offsets = np.zeros(n + 1, dtype=np.int64)
    if n == 0:
        empty = np.zeros(0, dtype=np.uint32)
        empty.setflags(write=False)  # read-only as ``frombuffer``'s below: one Numba type, one compile
        return empty, offsets
    np.cumsum(np.fromiter(map(len, documents), dtype=np.int64, count=n), out=offsets[1:])
    joined = "".join(documents)
    code_points = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    return code_points, offsets


def build_term_table(terms: Iterable[str], features: Sequence[int] | np.ndarray) -> np.ndarray:
    """The packed hash table (see the module doc) mapping each of ``terms`` to its feature."""
    terms = list(terms)
    code_points, offsets = encode_documents(terms)
    if code_points.shape[0] + len(terms) >= 2**32 or (len(terms) and int(np.max(features)) >= 2**32):
        raise ValueError(f"A vocabulary of {len(terms)} terms is too large for a 32-bit reference table.")
    return _fill_table(code_points, offsets, np.asarray(features, dtype=np.int64))


def slot_weights(table: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """``columns`` (rows indexed by feature: an idf then coefficients) laid out by the table's slots,
    zero for free slots: what a fused kernel reads for the slot its probe found."""
    n_slots = int(table[0])
    keys = table[1 : 1 + n_slots]
    references = table[1 + n_slots : 1 + 2 * n_slots]
    occupied = keys != EMPTY
    weights = np.zeros((n_slots, columns.shape[1]))
    weights[occupied] = columns[(references[occupied] & MASK32).astype(np.int64)]
    return weights


def empty_term_table() -> np.ndarray:
    """A table that contains nothing (no stop words)."""
    return build_term_table([], [])


@numba.njit(cache=True, nogil=True, inline="always")
def _fnv(buf, start, end):
    h = FNV_OFFSET
    for k in range(start, end):
        h = (h ^ np.uint64(buf[k])) * FNV_PRIME
    return h


@numba.njit(cache=True, nogil=True, inline="always")
def _span_key(buf, start, end):
    """Exact packed key for short n-grams of code points below U+1000, else a flagged FNV-1a hash
    (never ``EMPTY``, which marks a free slot)."""
    length = end - start
    key = np.uint64(length)
    if length <= PACK_MAX_LENGTH:
        for k in range(length):
            c = np.uint64(buf[start + k])
            if c >= PACK_LIMIT:
                key = HASHED
                break
            key |= c << np.uint64(3 + 12 * k)
    else:
        key = HASHED
    if key == HASHED:
        key = _fnv(buf, start, end) | HASHED
        if key == EMPTY:
            key = EMPTY ^ np.uint64(1)
    return key


@numba.njit(cache=True, nogil=True, inline="always")
def _table_shift(n_slots):
    """``64 - log2(n_slots)``: slot = (key * FIBONACCI) >> shift keeps the well-mixed high bits."""
    bits = 0
    while (1 << bits) < n_slots:
        bits += 1
    return np.uint64(64 - bits)


@numba.njit(cache=True, nogil=True, inline="always")
def table_sections(table):
    """``(keys, references, terms)`` views of a packed table."""
    n_slots = np.int64(table[0])
    return (
        table[1 : 1 + n_slots],
        table[1 + n_slots : 1 + 2 * n_slots],
        table[1 + 2 * n_slots :].view(np.uint32),
    )


@numba.njit(cache=True)
def _fill_table(code_points, offsets, features):
    n_terms = offsets.shape[0] - 1
    n_slots = 2
    while 5 * n_slots < 8 * n_terms:  # at most 62.5% full: short probes, a small probe array
        n_slots *= 2
    shift = _table_shift(n_slots)
    n_words = 1 + 2 * n_slots + (code_points.shape[0] + n_terms + 1) // 2
    table = np.zeros(n_words, dtype=np.uint64)
    table[0] = n_slots
    keys, references, terms = table_sections(table)
    keys[:] = EMPTY
    for t in range(n_terms):
        start = offsets[t]
        end = offsets[t + 1]
        position = start + t  # each term's code points follow its length
        terms[position] = end - start
        terms[position + 1 : position + 1 + end - start] = code_points[start:end]
        key = _span_key(code_points, start, end)
        i = np.int64((key * FIBONACCI) >> shift)
        while keys[i] != EMPTY:
            i = (i + 1) & (n_slots - 1)
        keys[i] = key
        references[i] = (np.uint64(position) << np.uint64(32)) | np.uint64(features[t])
    return table


@numba.njit(cache=True, nogil=True)
def _same_term(table, reference, buf, start, end):
    """Rare path (hashed keys only): compare the stored term's code points with ``buf[start:end]``.

    The terms section is viewed here, not by the callers: a view costs more than a whole probe."""
    terms = table_sections(table)[2]
    position = np.int64(reference >> np.uint64(32))
    if terms[position] != end - start:
        return False
    for k in range(end - start):  # noqa: SIM110 - numba compiles loops, not generator expressions
        if terms[position + 1 + k] != buf[start + k]:
            return False
    return True


@numba.njit(cache=True, nogil=True)
def lookup_slot(table, buf, start, end):
    """Slot of the term equal to ``buf[start:end]``, or -1."""
    n_slots = np.int64(table[0])
    mask = n_slots - 1
    key = _span_key(buf, start, end)
    i = np.int64((key * FIBONACCI) >> _table_shift(n_slots))
    while table[1 + i] != EMPTY:
        if table[1 + i] == key and (
            (key & HASHED) == 0 or _same_term(table, table[1 + n_slots + i], buf, start, end)
        ):
            return i
        i = (i + 1) & mask
    return -1


@numba.njit(cache=True, nogil=True, inline="always")
def row_bounds(code_points, offsets, row):
    """``(start, end)`` of ``row`` in the code point buffer; empty ``offsets`` mean one row, all of it."""
    if offsets.shape[0] == 0:
        return 0, code_points.shape[0]
    return offsets[row], offsets[row + 1]


@numba.njit(cache=True, nogil=True, inline="always")
def span_capacity(longest, n_sizes):
    """Most n-grams (and buffer code points, for one size) a document of ``longest`` code points has:
    char_wb pads each word with two spaces, so its text is at most ``3 * longest + 2`` long."""
    return (3 * longest + 2) * n_sizes


@numba.njit(cache=True, nogil=True, inline="always")
def set_capacity(n):
    """Power-of-two size of the per-row open-addressing set that counts ``n`` n-grams."""
    size = 16
    while size < 2 * n:
        size *= 2
    return size


@numba.njit(cache=True, nogil=True)
def scratch_size(longest, n_sizes):
    """``int64`` scratch for one row of at most ``longest`` code points: two token arrays, span
    starts and ends, found slots, distinct slots and the counting set."""
    capacity = span_capacity(longest, n_sizes)
    return 2 * (longest + 1) + 4 * capacity + set_capacity(capacity)


@numba.njit(cache=True, nogil=True, inline="always")
def word_spans_into(
    code_points, start, end, char_class, min_token_length, token_prefix, stop_table, min_n, max_n,
    buf, token_starts, token_ends, span_starts, span_ends,
):  # fmt: skip
    """Word n-grams of one document: the tokens of ``(?u)\\b\\w{min_token_length,}\\b`` (with a
    ``token_prefix`` code point, not a word character, ``<prefix>\\w{min_token_length,}``: the
    prefix and the run of word characters right after it; ``-1`` for none) minus stop words,
    joined by single spaces into ``buf``; writes the spans and returns their number."""
    n_tokens = 0
    used = 0
    check_stops = stop_table.shape[0] > 1 + 2 * np.int64(stop_table[0])  # it holds terms
    k = start
    while k < end:
        if token_prefix >= 0:
            if code_points[k] != token_prefix or k + 1 >= end or char_class[code_points[k + 1]] & 1 == 0:
                k += 1
                continue
            token_start = k
            k += 1
        elif char_class[code_points[k]] & 1 == 0:
            k += 1
            continue
        else:
            token_start = k
        run_start = k
        while k < end and char_class[code_points[k]] & 1 != 0:
            k += 1
        if k - run_start < min_token_length:
            continue
        if check_stops and lookup_slot(stop_table, code_points, token_start, k) >= 0:
            continue
        if n_tokens > 0:
            buf[used] = 32
            used += 1
        token_starts[n_tokens] = used
        for q in range(token_start, k):
            buf[used] = code_points[q]
            used += 1
        token_ends[n_tokens] = used
        n_tokens += 1
    n_spans = 0
    for n in range(min_n, max_n + 1):
        for i in range(n_tokens - n + 1):
            span_starts[n_spans] = token_starts[i]
            span_ends[n_spans] = token_ends[i + n - 1]
            n_spans += 1
    return n_spans


@numba.njit(cache=True, nogil=True, inline="always")
def char_spans_into(code_points, start, end, char_class, min_n, max_n, buf, span_starts, span_ends):
    """Character n-grams of one document after sklearn's ``\\s\\s+ -> " "`` normalisation."""
    used = 0
    k = start
    while k < end:
        c = code_points[k]
        if char_class[c] & 2 != 0:
            run_start = k
            while k < end and char_class[code_points[k]] & 2 != 0:
                k += 1
            if k - run_start >= 2:
                buf[used] = 32
            else:
                buf[used] = c
            used += 1
        else:
            buf[used] = c
            used += 1
            k += 1
    n_spans = 0
    low = min_n
    if min_n == 1:
        for i in range(used):
            span_starts[n_spans] = i
            span_ends[n_spans] = i + 1
            n_spans += 1
        low = 2
    for n in range(low, min(max_n + 1, used + 1)):
        for i in range(used - n + 1):
            span_starts[n_spans] = i
            span_ends[n_spans] = i + n
            n_spans += 1
    return n_spans


@numba.njit(cache=True, nogil=True, inline="always")
def char_wb_spans_into(code_points, start, end, char_class, min_n, max_n, buf, span_starts, span_ends):
    """sklearn's ``_char_wb_ngrams``: n-grams inside each space-padded whitespace-separated word."""
    used = 0
    n_spans = 0
    k = start
    while k < end:
        if char_class[code_points[k]] & 2 != 0:
            k += 1
            continue
        base = used
        buf[used] = 32
        used += 1
        while k < end and char_class[code_points[k]] & 2 == 0:
            buf[used] = code_points[k]
            used += 1
            k += 1
        buf[used] = 32
        used += 1
        w_len = used - base
        for n in range(min_n, max_n + 1):
            offset = 0
            span_starts[n_spans] = base
            span_ends[n_spans] = base + min(n, w_len)
            n_spans += 1
            while offset + n < w_len:
                offset += 1
                span_starts[n_spans] = base + offset
                span_ends[n_spans] = base + offset + n
                n_spans += 1
            if offset == 0:
                break
    return n_spans


@numba.njit(cache=True, nogil=True)
def _span_arrays(length, n_sizes):
    capacity = span_capacity(length, n_sizes)
    return (
        np.empty(3 * length + 2, dtype=np.uint32),
        np.empty(capacity, dtype=np.int64),
        np.empty(capacity, dtype=np.int64),
    )


@numba.njit(cache=True, nogil=True)
def word_spans(code_points, start, end, char_class, min_token_length, token_prefix, stop_table, min_n, max_n):
    """:func:`word_spans_into` with its own arrays: ``(buf, span_starts, span_ends)``."""
    buf, span_starts, span_ends = _span_arrays(end - start, max_n - min_n + 1)
    tokens = np.empty(2 * (end - start + 1), dtype=np.int64)
    n = word_spans_into(
        code_points, start, end, char_class, min_token_length, token_prefix, stop_table, min_n, max_n,
        buf, tokens[: end - start + 1], tokens[end - start + 1 :], span_starts, span_ends,
    )  # fmt: skip
    return buf, span_starts[:n], span_ends[:n]


@numba.njit(cache=True, nogil=True)
def char_spans(code_points, start, end, char_class, min_n, max_n):
    """:func:`char_spans_into` with its own arrays: ``(buf, span_starts, span_ends)``."""
    buf, span_starts, span_ends = _span_arrays(end - start, max_n - min_n + 1)
    n = char_spans_into(code_points, start, end, char_class, min_n, max_n, buf, span_starts, span_ends)
    return buf, span_starts[:n], span_ends[:n]


@numba.njit(cache=True, nogil=True)
def char_wb_spans(code_points, start, end, char_class, min_n, max_n):
    """:func:`char_wb_spans_into` with its own arrays: ``(buf, span_starts, span_ends)``."""
    buf, span_starts, span_ends = _span_arrays(end - start, max_n - min_n + 1)
    n = char_wb_spans_into(code_points, start, end, char_class, min_n, max_n, buf, span_starts, span_ends)
    return buf, span_starts[:n], span_ends[:n]


@numba.njit(cache=True, nogil=True, inline="always")
def lookup_slots_into(table, buf, span_starts, span_ends, n_spans, keys, found):
    """Write the slot of every span that is a known term to ``found`` (unknown spans are dropped);
    returns how many.

    The key, the probe and the term comparison are written out here rather than called: no array
    crosses a function boundary per n-gram (each crossing, inlined or not, costs reference
    counting, measured at twice the whole lookup), and the terms are read from their ``uint64``
    words rather than through a ``uint32`` view (a view costs more than a probe). Keys are
    computed in a first pass and probed in a second, short one, so the CPU has several
    independent table reads (cache misses on a large vocabulary) in flight at once.
    """
    n_slots = np.int64(table[0])
    mask = n_slots - 1
    shift = _table_shift(n_slots)
    terms_start = 1 + 2 * n_slots
    for q in range(n_spans):
        start = span_starts[q]
        end = span_ends[q]
        length = end - start
        key = np.uint64(length)
        if length <= PACK_MAX_LENGTH:
            for k in range(length):
                c = np.uint64(buf[start + k])
                if c >= PACK_LIMIT:
                    key = HASHED
                    break
                key |= c << np.uint64(3 + 12 * k)
        else:
            key = HASHED
        if key == HASHED:
            h = FNV_OFFSET
            for k in range(start, end):
                h = (h ^ np.uint64(buf[k])) * FNV_PRIME
            key = h | HASHED
            if key == EMPTY:
                key = EMPTY ^ np.uint64(1)
        keys[q] = key
    n = 0
    for q in range(n_spans):
        key = keys[q]
        i = np.int64((key * FIBONACCI) >> shift)
        while True:
            slot_key = table[1 + i]
            if slot_key == EMPTY:
                break
            if slot_key == key:
                same = True
                if key & HASHED:  # confirm: the stored term's length then code points
                    start = span_starts[q]
                    length = span_ends[q] - start
                    position = np.int64(table[1 + n_slots + i] >> np.uint64(32))
                    for k in range(length + 1):
                        expected = np.uint64(length) if k == 0 else np.uint64(buf[start + k - 1])
                        j = position + k  # the k-th uint32 of the term, inside a uint64 word
                        if (table[terms_start + (j >> 1)] >> np.uint64(32 * (j & 1))) & MASK32 != expected:
                            same = False
                            break
                if same:
                    found[n] = i
                    n += 1
                    break
            i = (i + 1) & mask
    return n


@numba.njit(cache=True, nogil=True, inline="always")
def lookup_columns_into(table, buf, span_starts, span_ends, n_spans, keys, found):
    """:func:`lookup_slots_into`, then each found slot replaced by its term's feature."""
    n = lookup_slots_into(table, buf, span_starts, span_ends, n_spans, keys, found)
    n_slots = np.int64(table[0])
    for q in range(n):
        found[q] = np.int64(table[1 + n_slots + found[q]] & MASK32)
    return n


@numba.njit(cache=True, nogil=True)
def lookup_spans(table, buf, span_starts, span_ends):
    """Vocabulary feature of every span that is a known term (unknown spans are dropped)."""
    n_spans = span_starts.shape[0]
    found = np.empty(n_spans, dtype=np.int64)
    n = lookup_columns_into(table, buf, span_starts, span_ends, n_spans, np.empty(n_spans, np.uint64), found)
    return found[:n]


@numba.njit(cache=True, nogil=True, inline="always")
def sort_prefix(values, n):
    """Sort ``values[:n]`` in place without allocating: insertion sort for the few n-grams of a
    short document, Numba's in-place sort beyond."""
    if n > 24:
        values[:n].sort()
        return
    for i in range(1, n):
        value = values[i]
        j = i - 1
        while j >= 0 and values[j] > value:
            values[j + 1] = values[j]
            j -= 1
        values[j + 1] = value


@numba.njit(cache=True, nogil=True, inline="always")
def _rotl32(x, r):
    return ((x << np.uint64(r)) | (x >> np.uint64(32 - r))) & MASK32


@numba.njit(cache=True, nogil=True, inline="always")
def _murmur3_32(data, length):
    """MurmurHash3_x86_32 with seed 0 of ``data[:length]`` (bytes), as a signed 32-bit int."""
    h1 = np.uint64(0)
    n_blocks = length // 4
    for b in range(n_blocks):
        i = 4 * b
        k1 = (
            np.uint64(data[i])
            | (np.uint64(data[i + 1]) << np.uint64(8))
            | (np.uint64(data[i + 2]) << np.uint64(16))
            | (np.uint64(data[i + 3]) << np.uint64(24))
        )
        k1 = (k1 * MURMUR_C1) & MASK32
        k1 = _rotl32(k1, 15)
        k1 = (k1 * MURMUR_C2) & MASK32
        h1 ^= k1
        h1 = _rotl32(h1, 13)
        h1 = (h1 * np.uint64(5) + MURMUR_N) & MASK32
    tail = 4 * n_blocks
    remainder = length & 3
    k1 = np.uint64(0)
    if remainder >= 3:
        k1 ^= np.uint64(data[tail + 2]) << np.uint64(16)
    if remainder >= 2:
        k1 ^= np.uint64(data[tail + 1]) << np.uint64(8)
    if remainder >= 1:
        k1 ^= np.uint64(data[tail])
        k1 = (k1 * MURMUR_C1) & MASK32
        k1 = _rotl32(k1, 15)
        k1 = (k1 * MURMUR_C2) & MASK32
        h1 ^= k1
    h1 ^= np.uint64(length)
    h1 ^= h1 >> np.uint64(16)
    h1 = (h1 * MURMUR_F1) & MASK32
    h1 ^= h1 >> np.uint64(13)
    h1 = (h1 * MURMUR_F2) & MASK32
    h1 ^= h1 >> np.uint64(16)
    signed = np.int64(h1)
    if signed >= 2147483648:
        signed -= 4294967296
    return signed


@numba.njit(cache=True, nogil=True, inline="always")
def _utf8(buf, start, end, out):
    n = 0
    for k in range(start, end):
        c = buf[k]
        if c < 0x80:
            out[n] = c
            n += 1
        elif c < 0x800:
            out[n] = 0xC0 | (c >> 6)
            out[n + 1] = 0x80 | (c & 0x3F)
            n += 2
        elif c < 0x10000:
            out[n] = 0xE0 | (c >> 12)
            out[n + 1] = 0x80 | ((c >> 6) & 0x3F)
            out[n + 2] = 0x80 | (c & 0x3F)
            n += 3
        else:
            out[n] = 0xF0 | (c >> 18)
            out[n + 1] = 0x80 | ((c >> 12) & 0x3F)
            out[n + 2] = 0x80 | ((c >> 6) & 0x3F)
            out[n + 3] = 0x80 | (c & 0x3F)
            n += 4
    return n


@numba.njit(cache=True, nogil=True, inline="always")
def _hashed_column(buf, start, end, n_features, alternate_sign, scratch):
    """``(column, negative)`` of sklearn's ``FeatureHasher`` for the n-gram ``buf[start:end]``;
    ``scratch`` holds its UTF-8 bytes (at least ``4 * (end - start)``)."""
    h = _murmur3_32(scratch, _utf8(buf, start, end, scratch))
    if h == -2147483648:
        column = (2147483647 - (n_features - 1)) % n_features
    else:
        column = abs(h) % n_features
    return column, alternate_sign and h < 0


@numba.njit(cache=True, nogil=True)
def hash_spans(buf, span_starts, span_ends, n_features, alternate_sign):
    """sklearn ``FeatureHasher`` columns and signs (+1 / -1) of every span."""
    n = span_starts.shape[0]
    columns = np.empty(n, dtype=np.int64)
    signs = np.empty(n, dtype=np.float64)
    longest = 0
    for i in range(n):
        longest = max(longest, span_ends[i] - span_starts[i])
    scratch = np.empty(4 * longest, dtype=np.uint8)
    for i in range(n):
        column, negative = _hashed_column(
            buf, span_starts[i], span_ends[i], n_features, alternate_sign, scratch
        )
        columns[i] = column
        signs[i] = -1.0 if negative else 1.0
    return columns, signs


@numba.njit(cache=True, nogil=True, inline="always")
def hash_spans_into(buf, span_starts, span_ends, n_spans, n_features, alternate_sign, scratch, out):
    """:func:`hash_spans` into ``out``: ``2 * column + 1`` for a negative sign, ``2 * column`` else
    (so sorting keeps a column's n-grams together); returns ``n_spans``."""
    for i in range(n_spans):
        column, negative = _hashed_column(
            buf, span_starts[i], span_ends[i], n_features, alternate_sign, scratch
        )
        out[i] = 2 * column + (1 if negative else 0)
    return n_spans


harden_module(sys.modules[__name__])  # checksummed, self-repairing cache files
