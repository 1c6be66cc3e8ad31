"""Small batches of rows through a tree ensemble with QuickScorer-style leaf bitvectors.

The nested-``if`` kernels (``trees_codegen``) are fastest on batches, where each group's code stays
in the instruction cache while it runs over all rows. One row instead runs every group once: 500
trees x 63 leaves are ~600 KB of machine code fetched cold, with an unpredictable jump per split
(~40 us per row). This module scores small batches without per-model code (the kernel below is
compiled once and cached on disk) and without data-dependent jumps per split, after Lucchese et al.,
"QuickScorer" (SIGIR 2015):

Each tree keeps a bitvector of its leaves (bit ``j`` = ``j``-th leaf from the left), all set. A
split that sends the row right rules out the leaves of its left subtree; the row's leaf is the
leftmost leaf no such split ruled out (the lowest set bit). Splits are stored per feature sorted
by threshold, so for a feature value ``x`` the splits that send it right (``threshold < x``) are a
prefix, and their masks are AND-ed in one tight loop. The prefix is counted in two levels: the
thresholds that start each block of :data:`BLOCK` (a short, branch-free count), then the
thresholds below ``x`` in the one block that holds the boundary; a binary search's chain of
dependent loads measured ~90 ns per feature, most of a single row's time. Every feature's prefix
is counted before any is AND-ed: each AND loop's length then is known long before its exit
branch, which a new row mispredicts (2.7 us of 18 us per row when counting and AND-ing
alternated). A missing value (NaN,
or ``|x| <= 1e-35`` on a feature with LightGBM zero-as-missing splits) takes the exact per-split
rule of ``trees_codegen`` instead. Categorical splits are not ordered by a threshold: each is
tested per row with the generated code's bitset rule (LightGBM or HistGradientBoosting style).
Leaf values are added in tree order from the same doubles, so outputs are bit-identical to the
nested-``if`` kernels.

Supported: trees of at most 64 leaves (:func:`bitvector_tables` returns ``None`` otherwise, e.g.
for deep random forests).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
from numba import types
from numba.cpython.unsafe.numbers import trailing_zeros

from willow.compiler.kernel_cache import harden_module
from willow.compiler.lowering.signatures import compile_locked, readonly_array
from willow.compiler.lowering.trees_ir import (
    LGBM_ZERO_THRESHOLD,
    CategoricalSplit,
    Leaf,
    Node,
    NumericSplit,
    TreeEnsemble,
)

__all__ = ["BitvectorTables", "bitvector_tables", "compile_score_rows", "score_rows"]

DEFAULT_LEFT = 1  # entry flag: a missing value goes left
ZERO_MISSING = 2  # entry flag: |x| <= 1e-35 is missing too (LightGBM missing_type Zero)
MAX_LEAVES = 64
CATEGORICAL_LIGHTGBM = 4  # categorical split flag: LightGBM's rule
CATEGORICAL_SKLEARN = 8  # categorical split flag: HistGradientBoosting's rule
MAX_TREES = 1 << 16  # tree indices are uint16
ALL = (1 << 64) - 1
BLOCK = 16  # thresholds per block of the two-level prefix count
TAIL = 4  # splits AND-ed per step of the AND loop; its last step masks the ones past the prefix


@dataclass(frozen=True)
class BitvectorTables:
    """An ensemble's splits and leaves as the arrays :func:`score_rows` reads (in its order)."""

    feature_start: np.ndarray  # uint64[n_features + 1]: each feature's slice of the split arrays
    thresholds: np.ndarray  # float64[n_splits], ascending within a feature
    block_start: np.ndarray  # uint64[n_features + 1]: each feature's slice of ``block_firsts``
    block_firsts: np.ndarray  # float64: every BLOCK-th threshold of a feature, from its first
    # the split's tree, and the tree's leaves outside the split's left subtree; both end with
    # TAIL no-op entries (tree 0, all bits), read past a feature's last split by the masked tail
    trees: np.ndarray  # uint16[n_splits + TAIL]
    masks: np.ndarray  # uint64[n_splits + TAIL]
    flags: np.ndarray  # uint8[n_splits]: DEFAULT_LEFT | ZERO_MISSING
    zero_missing: np.ndarray  # bool[n_features]: the feature has a ZERO_MISSING split
    init: np.ndarray  # uint64[n_trees]: one bit per leaf
    value_start: np.ndarray  # int64[n_trees]: tree t's leaf j, output k is values[start + j * width + k]
    values: np.ndarray  # float64
    column_start: np.ndarray  # int64[n_trees + 1]: tree t writes columns[column_start[t]:column_start[t+1]]
    columns: np.ndarray  # int64
    # categorical splits, one row each: feature, tree, style (CATEGORICAL_*) | DEFAULT_LEFT,
    # and [left bitset start, known bitset start, end) into ``category_bits``
    category_splits: np.ndarray  # int64[n_categorical, 6]
    category_masks: np.ndarray  # uint64[n_categorical]
    category_bits: np.ndarray  # int64: 32-bit words, as in trees_codegen

    def arguments(self, base: np.ndarray) -> tuple[np.ndarray, ...]:
        """The tables and the ensemble's ``base`` scores as :func:`score_rows` takes them: one
        array per element type (``uint64``, ``float64``, ``int64`` with a header of section
        bounds, ``uint16``). Every array argument costs Numba's dispatcher ~0.15 us per call, so
        sixteen separate arrays were ~1.5 us of a single row's ~20 us then."""
        u64 = [self.feature_start, self.block_start, self.masks, self.init, self.category_masks]
        f64 = [self.thresholds, self.block_firsts, self.values, np.asarray(base, dtype=np.float64)]
        i64 = [
            self.value_start,
            self.column_start,
            self.columns,
            self.category_splits.ravel(),
            self.category_bits,
        ]
        u16 = [self.trees, self.flags, self.zero_missing]
        header_size = sum(len(group) + 1 for group in (u64, f64, i64, u16))  # section bounds
        header: list[int] = []
        for group, start in ((u64, 0), (f64, 0), (i64, header_size), (u16, 0)):
            header.extend(start + int(bound) for bound in np.cumsum([0] + [len(a) for a in group]))
        assert len(header) == header_size == 21  # the positions score_rows reads
        # each section converted before joining: mixing uint64 with int64 would give float64
        return tuple(
            np.concatenate([np.asarray(a).astype(dtype, copy=False) for a in group])
            for group, dtype in (
                (u64, np.uint64),
                (f64, np.float64),
                ([np.array(header), *i64], np.int64),
                (u16, np.uint16),
            )
        )


def bitvector_tables(ensemble: TreeEnsemble) -> BitvectorTables | None:
    """The tables for ``ensemble``, or ``None`` when a tree has more than 64 leaves."""
    if len(ensemble.trees) >= MAX_TREES:
        return None
    splits: list[tuple[int, float, int, int, int]] = []  # feature, threshold, tree, mask, flags
    categorical: list[tuple[int, int, int, int, int, int]] = []
    category_masks: list[int] = []
    category_bits: list[int] = []
    values: list[float] = []
    value_start: list[int] = []
    init: list[int] = []
    for t, tree in enumerate(ensemble.trees):
        leaves: list[Leaf] = []
        # iterative in-order walk: (node, first leaf of its subtree) -> leaves left to right
        stack: list[tuple[Node | Leaf, bool]] = [(tree, False)]
        pending: list[tuple[Node, int]] = []  # split nodes whose left subtree is being numbered
        while stack:
            node, left_done = stack.pop()
            if isinstance(node, Leaf):
                leaves.append(node)
                if len(leaves) > MAX_LEAVES:
                    return None
                continue
            if not left_done:
                pending.append((node, len(leaves)))
                stack.append((node, True))
                stack.append((node.left, False))
            else:
                split_node, first = pending.pop()
                assert split_node is node
                split = node.split
                left_leaves = (1 << len(leaves)) - (1 << first)
                if isinstance(split, NumericSplit):
                    flag = (DEFAULT_LEFT if split.nan_left else 0) | (
                        ZERO_MISSING if split.zero_missing else 0
                    )
                    splits.append((split.feature, float(split.threshold), t, ALL ^ left_leaves, flag))
                else:
                    assert isinstance(split, CategoricalSplit)
                    style = CATEGORICAL_LIGHTGBM if split.style == "lightgbm" else CATEGORICAL_SKLEARN
                    start = len(category_bits)
                    category_bits.extend(_words(split.left))
                    middle = len(category_bits)
                    category_bits.extend(_words(split.known))
                    flag = style | (DEFAULT_LEFT if split.nan_left else 0)
                    categorical.append((split.feature, t, flag, start, middle, len(category_bits)))
                    category_masks.append(ALL ^ left_leaves)
                stack.append((node.right, False))
        value_start.append(len(values))
        for leaf in leaves:
            values.extend(float(v) for v in leaf.values)
        init.append((1 << len(leaves)) - 1)
    splits.sort(key=lambda s: (s[0], s[1]))
    features = np.array([s[0] for s in splits], dtype=np.int64)
    flags = np.array([s[4] for s in splits], dtype=np.uint8)
    zero_missing = np.zeros(ensemble.n_features, dtype=np.bool_)
    zero_missing[features[(flags & ZERO_MISSING) != 0]] = True
    column_start = np.zeros(len(ensemble.trees) + 1, dtype=np.int64)
    np.cumsum([len(c) for c in ensemble.tree_outputs], out=column_start[1:])
    feature_start = np.searchsorted(features, np.arange(ensemble.n_features + 1))
    thresholds = np.array([s[1] for s in splits], dtype=np.float64)
    block_firsts = [thresholds[a:b:BLOCK] for a, b in zip(feature_start[:-1], feature_start[1:])]
    block_start = np.zeros(ensemble.n_features + 1, dtype=np.uint64)
    np.cumsum([len(b) for b in block_firsts], out=block_start[1:])
    return BitvectorTables(
        feature_start=feature_start.astype(np.uint64),
        thresholds=thresholds,
        block_start=block_start,
        block_firsts=np.concatenate([np.zeros(0), *block_firsts]),
        trees=np.array([s[2] for s in splits] + [0] * TAIL, dtype=np.uint16),
        masks=np.array([s[3] for s in splits] + [ALL] * TAIL, dtype=np.uint64),
        flags=flags,
        zero_missing=zero_missing,
        init=np.array(init, dtype=np.uint64),
        value_start=np.array(value_start, dtype=np.int64),
        values=np.array(values, dtype=np.float64),
        column_start=column_start,
        columns=np.array([c for cols in ensemble.tree_outputs for c in cols], dtype=np.int64),
        category_splits=np.array(categorical, dtype=np.int64).reshape(-1, 6),
        category_masks=np.array(category_masks, dtype=np.uint64),
        category_bits=np.array(category_bits, dtype=np.int64),
    )


def _words(categories: tuple[int, ...]) -> list[int]:
    """32-bit bitset words of ``categories`` (``trees_codegen``'s layout); none for an empty set."""
    if not categories:
        return []
    words = [0] * (max(categories) // 32 + 1)
    for c in categories:
        words[c >> 5] |= 1 << (c & 31)
    return words


@numba.njit(cache=True, nogil=True, inline="always")
def _in_bits(bits, start, end, category):
    word = start + (category >> 5)
    return word < end and (bits[word] >> (category & 31)) & 1 == 1


@numba.njit(cache=True, nogil=True, inline="always")
def _categorical_left(x, flag, bits, left, known, end):
    """``trees_codegen``'s rule for a categorical split: True when the row goes left."""
    if flag & CATEGORICAL_LIGHTGBM:
        # static_cast<int>: (-1, 0) truncates to 0; NaN / <= -1 / >= 2**31 go right
        return x > -1.0 and x < 2147483648.0 and _in_bits(bits, left, known, int(x))
    # HistGradientBoosting: uint8 categories; NaN, negative and unknown ones are missing
    non_negative = x >= 0.0
    byte = (int(x) & 255) if non_negative else 0
    in_left = non_negative and _in_bits(bits, left, known, byte)
    if flag & DEFAULT_LEFT:
        return not non_negative or in_left or not _in_bits(bits, known, end, byte)
    return in_left


@numba.njit(cache=True, nogil=True)
def score_rows(X, divisor, u64, f64, i64, u16):
    """``(base + sum of leaf values in tree order) / divisor`` per row, shape (rows, outputs);
    ``u64, f64, i64, u16`` are :meth:`BitvectorTables.arguments`."""
    feature_start = u64[i64[0] : i64[1]]
    block_start = u64[i64[1] : i64[2]]
    masks = u64[i64[2] : i64[3]]
    init = u64[i64[3] : i64[4]]
    category_masks = u64[i64[4] : i64[5]]
    thresholds = f64[i64[6] : i64[7]]
    block_firsts = f64[i64[7] : i64[8]]
    values = f64[i64[8] : i64[9]]
    base = f64[i64[9] : i64[10]]
    value_start = i64[i64[11] : i64[12]]
    column_start = i64[i64[12] : i64[13]]
    columns = i64[i64[13] : i64[14]]
    category_splits = i64[i64[14] : i64[15]].reshape((-1, 6))
    category_bits = i64[i64[15] : i64[16]]
    trees = u16[i64[17] : i64[18]]
    flags = u16[i64[18] : i64[19]]
    zero_missing = u16[i64[19] : i64[20]]
    n_trees = init.shape[0]
    n_outputs = base.shape[0]
    n_features = feature_start.shape[0] - 1
    out = np.empty((X.shape[0], n_outputs))
    bits = np.empty(max(n_trees, 1), dtype=np.uint64)  # the tail's no-op entries touch bits[0]
    stops = np.empty(n_features, dtype=np.uint64)
    one = np.uint64(1)
    step = np.uint64(TAIL)
    one_column = n_outputs == 1 and columns.shape[0] == n_trees
    for i in range(X.shape[0]):
        bits[:n_trees] = init
        for f in range(n_features):  # each feature's prefix [first, stops[f]) of splits sending x right
            x = X[i, f]
            first = feature_start[f]
            end = feature_start[f + 1]
            stops[f] = first
            if x != x or (zero_missing[f] != 0 and not (abs(x) > LGBM_ZERO_THRESHOLD)):
                for q in range(first, end):
                    flag = flags[q]
                    missing = x != x or ((flag & ZERO_MISSING) != 0 and not (abs(x) > LGBM_ZERO_THRESHOLD))
                    right = (flag & DEFAULT_LEFT) == 0 if missing else not (x <= thresholds[q])
                    if right:
                        bits[trees[q]] &= masks[q]
            else:
                # stop = first split with x <= threshold: blocks whose first threshold is below x,
                # then the thresholds below x in the last of them (independent compares, no chain)
                below = np.uint64(0)
                for b in range(block_start[f], block_start[f + 1]):
                    below += one if block_firsts[b] < x else np.uint64(0)
                stop = first
                if below > 0:
                    stop = first + (below - one) * np.uint64(BLOCK)
                    block_end = min(stop + np.uint64(BLOCK), end)
                    for q in range(stop, block_end):
                        stop += one if thresholds[q] < x else np.uint64(0)
                stops[f] = stop
        for f in range(n_features):  # unsigned indices: no negative-index wraparound
            q = feature_start[f]
            stop = stops[f]
            full = q + ((stop - q) & ~(step - one))
            while q < full:  # TAIL splits per step: one exit branch per feature, no remainder loop
                for k in range(TAIL):
                    bits[trees[q + np.uint64(k)]] &= masks[q + np.uint64(k)]
                q += step
            for k in range(TAIL):  # the last 0..TAIL-1 splits; the rest AND all bits (no-ops)
                last = q + np.uint64(k)
                bits[trees[last]] &= masks[last] | (np.uint64(0) if last < stop else ~np.uint64(0))
        for c in range(category_splits.shape[0]):
            x = X[i, category_splits[c, 0]]
            flag = category_splits[c, 2]
            left = category_splits[c, 3]
            known = category_splits[c, 4]
            if not _categorical_left(x, flag, category_bits, left, known, category_splits[c, 5]):
                bits[category_splits[c, 1]] &= category_masks[c]
        if one_column:  # every tree writes one value to the one output: no column indirection
            total = base[0]
            for t in range(n_trees):
                total += values[value_start[t] + np.int64(trailing_zeros(bits[t]))]
            out[i, 0] = total
        else:  # the row of out accumulates (no scratch array to allocate per call)
            for k in range(n_outputs):
                out[i, k] = base[k]
            for t in range(n_trees):
                leaf = trailing_zeros(bits[t])
                width = column_start[t + 1] - column_start[t]
                start = value_start[t] + leaf * width
                for k in range(width):
                    out[i, columns[column_start[t] + k]] += values[start + k]
        if divisor != 1.0:
            for k in range(n_outputs):
                out[i, k] = out[i, k] / divisor
    return out


harden_module(sys.modules[__name__])  # checksummed, self-repairing cache files


def compile_score_rows(dtype: Any) -> None:
    """Compile :func:`score_rows` for ``dtype`` rows (from the disk cache when it is there), with
    every input array typed read-only, and lock it (see ``signatures``): writable and read-only
    rows, and tables loaded either way, run one machine code per row dtype."""
    compile_locked(
        score_rows,
        (
            readonly_array(dtype, 2),
            types.float64,
            readonly_array(np.uint64, 1),
            readonly_array(np.float64, 1),
            readonly_array(np.int64, 1),
            readonly_array(np.uint16, 1),
        ),
    )
