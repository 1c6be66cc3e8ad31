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


def extension_containers():
    """What pandas 3 and pyarrow hand a pipeline as a column of rows."""
    pa = pytest.importorskip("pyarrow")
    texts = ["t0", "t1", None, "t3", "t4", "t5"]
    yield "arrow-string-array", pd.Series(texts, dtype="str").values  # df[col].values, pandas 3
    yield "python-string-array", pd.array(texts, dtype="string[python]")
    yield "categorical", pd.Categorical(["a", "b", "a", "c", "b", "a"])
    yield "nullable-int", pd.array([1, None, 3, 4, 5, 6], dtype="Int64")
    yield "nullable-bool", pd.array([True, None, False, True, False, True], dtype="boolean")
    yield "index", pd.Index(texts)
    yield "range-index", pd.RangeIndex(10, 16)
    yield "arrow-array", pa.array(texts)
    yield "arrow-chunked", pa.chunked_array([texts[:2], texts[2:]])
    yield "string-ndarray", np.array([f"t{i}" for i in range(6)])


def as_list(obj):
    return obj.to_pylist() if hasattr(obj, "to_pylist") else list(obj)


@pytest.mark.parametrize(("name", "obj"), list(extension_containers()))
def test_extension_and_arrow_rows_keep_their_type(name, obj):
    from willow.rows import supports_rows

    assert supports_rows(obj) and n_rows(obj) == 6
    rows = np.array([4, 0, 0, 2])
    taken = take_rows(obj, rows)
    if not isinstance(obj, pd.RangeIndex):  # a RangeIndex's rows are an Index of the same labels
        assert type(taken) is type(obj)
    assert getattr(taken, "dtype", None) == getattr(obj, "dtype", None) or isinstance(obj, pd.RangeIndex)
    full = as_list(obj)
    assert as_list(taken) == [full[i] for i in rows]
    assert n_rows(take_rows(obj, np.array([], dtype=int))) == 0
    perm = np.array([5, 4, 3, 2, 1, 0])
    assert as_list(permute_rows(obj, perm)) == [full[i] for i in perm]


def test_unsupported_rows_name_every_container():
    with pytest.raises(TypeError, match="pyarrow Array or ChunkedArray, got dict"):
        n_rows({"a": 1})


WORDS = None
CHARS = None


def string_column_pipeline(model, texts):
    words = WORDS.transform(texts)
    chars = CHARS.transform(texts)
    X = sp.hstack([words, chars]).tocsr()
    return model.predict(X)


def test_string_array_rows_calibrate_and_serve(sms):
    """``df[col].values`` under pandas 3 (an ArrowStringArray) is accepted at calibration and at
    serving (cascade: counted, split and narrowed to the uncertain rows); 0 rows fail as the
    original fails (scikit-learn refuses an empty batch)."""
    global WORDS, CHARS
    from equivalence import assert_cascade_equivalent, assert_same_as_original
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    import willow

    texts, labels = sms
    frame = pd.DataFrame({"text": texts[:1500]}).astype({"text": "str"})
    column = frame["text"].values
    assert isinstance(column, pd.api.extensions.ExtensionArray)
    WORDS = TfidfVectorizer().fit(texts[:600])
    CHARS = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 3)).fit(texts[:600])
    train = sp.hstack([WORDS.transform(texts[:600]), CHARS.transform(texts[:600])]).tocsr()
    model = LogisticRegression(max_iter=300).fit(train, labels[:600])
    pipeline = willow.optimize(
        string_column_pipeline,
        compile=False,
        require_faster=False,
        accuracy_target=0.9,
        confidence=0.9,
        cost_repeats=1,
        importance_repeats=1,
    )
    pipeline.calibrate(model, column[600:])
    assert pipeline.plan_.cascade, pipeline.plan_.reason  # rows are split, permuted and narrowed
    for batch in (column[:40], column[:1], pd.array(list(texts[:5]), dtype="string[python]")):
        assert_cascade_equivalent(pipeline, model, batch)
    assert_same_as_original(pipeline, model, column[:0])
