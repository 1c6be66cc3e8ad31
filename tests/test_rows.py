"""Row counting, selection and shuffling on every supported container."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from willow.rows import n_rows, permute_rows, take_rows

DENSE = np.arange(24, dtype=float).reshape(6, 4)


def containers():
    yield "ndarray", DENSE
    yield "object-array", np.array([f"t{i}" for i in range(6)], dtype=object)
    yield "list", [f"t{i}" for i in range(6)]
    yield "tuple", tuple(range(6))
    for fmt in ("csr", "csc", "coo", "lil"):
        yield f"{fmt}_matrix", sp.csr_matrix(DENSE).asformat(fmt)
        yield f"{fmt}_array", sp.csr_array(DENSE).asformat(fmt)
    yield "frame-range", pd.DataFrame(DENSE, columns=list("abcd"))
    yield "frame-labels", pd.DataFrame(DENSE, columns=list("abcd"), index=[10, 3, 7, 1, 99, 5])
    yield "frame-strings", pd.DataFrame(DENSE, columns=list("abcd"), index=list("uvwxyz"))
    yield "series", pd.Series(np.arange(6) * 2.0, index=[5, 4, 3, 2, 1, 0])


def dense_rows(obj):
    if sp.issparse(obj):
        return obj.toarray()
    if isinstance(obj, (pd.DataFrame, pd.Series)):
        return obj.to_numpy()
    return np.asarray(obj)


@pytest.mark.parametrize(("name", "obj"), list(containers()))
def test_take_rows_keeps_type_format_and_values(name, obj):
    rows = np.array([4, 0, 0, 2])
    taken = take_rows(obj, rows)
    assert type(taken) is type(obj)
    if sp.issparse(obj):
        assert taken.format == obj.format
    assert n_rows(taken) == 4
    np.testing.assert_array_equal(dense_rows(taken), dense_rows(obj)[rows])
    empty = take_rows(obj, np.array([], dtype=int))
    assert n_rows(empty) == 0


def test_pandas_index_rules():
    labelled = pd.DataFrame({"a": range(4)}, index=[7, 8, 9, 10])
    assert list(take_rows(labelled, np.array([2, 0])).index) == [9, 7]
    positional = pd.DataFrame({"a": range(4)})
    assert isinstance(take_rows(positional, np.array([2, 0])).index, pd.RangeIndex)
    assert list(take_rows(positional, np.array([2, 0])).index) == [0, 1]


@pytest.mark.parametrize(("name", "obj"), list(containers()))
def test_permute_rows_keeps_labels_and_moves_values(name, obj):
    perm = np.array([5, 4, 3, 2, 1, 0])
    permuted = permute_rows(obj, perm)
    np.testing.assert_array_equal(dense_rows(permuted), dense_rows(obj)[perm])
    if isinstance(obj, (pd.DataFrame, pd.Series)):
        assert permuted.index.equals(obj.index)
        # the shuffle survives realignment on the index
        other = pd.DataFrame({"z": np.arange(6)}, index=obj.index)
        joined = pd.concat([permuted, other], axis=1)
        np.testing.assert_array_equal(
            joined.iloc[:, 0].to_numpy(),
            dense_rows(obj)[perm][:, 0] if dense_rows(obj).ndim == 2 else dense_rows(obj)[perm],
        )


@pytest.mark.parametrize("bad", [3, 2.5, {"a": 1}, np.float64(1.0), np.array(1.0)])
def test_n_rows_rejects_rowless_objects(bad):
    with pytest.raises(TypeError, match="Expected"):
        n_rows(bad)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 30),
    cols=st.integers(1, 5),
    density=st.floats(0.0, 1.0),
    data=st.data(),
)
def test_take_rows_matches_dense_indexing_for_random_sparse(n, cols, density, data):
    rng = np.random.default_rng(n * 31 + cols)
    dense = np.where(rng.random((n, cols)) < density, rng.normal(size=(n, cols)), 0.0)
    rows = np.array(data.draw(st.lists(st.integers(0, max(n - 1, 0)), max_size=10)) if n else [], dtype=int)
    for fmt in ("csr", "csc", "coo"):
        matrix = sp.csr_matrix(dense).asformat(fmt)
        np.testing.assert_array_equal(take_rows(matrix, rows).toarray(), dense[rows])
