"""OneHotEncoder.transform compiled for string categories: scikit-learn's exact output, warnings
and errors on every input, compiled or not."""

from __future__ import annotations

import ast
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import sklearn
from sklearn.preprocessing import OneHotEncoder

from willow.compiler.lowering import lower
from willow.compiler.lowering.base import NotLowerable

COLOURS = ["red", "green", "blue", "", "grün", "紅"]
SIZES = ["S", "M", "L", "XL"]


def _frame(n: int, seed: int = 0, unknown: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    colours = rng.choice(COLOURS + (["purple"] if unknown else []), n)
    # object columns (pandas 3 would infer its "str" dtype: tested separately)
    return pd.DataFrame({"colour": colours, "size": rng.choice(SIZES, n)}, dtype=object)


TRAIN = _frame(400, seed=1)

OPTIONS = [
    {},
    {"handle_unknown": "ignore"},
    {"handle_unknown": "infrequent_if_exist"},
    {"handle_unknown": "warn"},
    {"handle_unknown": "ignore", "drop": "first"},
    {"drop": "if_binary"},
    {"drop": ["green", "M"]},
    {"handle_unknown": "ignore", "sparse_output": False},
    {"handle_unknown": "ignore", "dtype": np.float32},
    {"handle_unknown": "ignore", "dtype": np.int64, "sparse_output": False},
]


def assert_same_result(got, expected) -> None:
    """Same container, dtype, shape and values; for CSR the same arrays and index dtypes."""
    assert type(got) is type(expected)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    if sp.issparse(expected):
        assert got.format == expected.format == "csr"
        for name in ("indptr", "indices", "data"):
            a, b = getattr(got, name), getattr(expected, name)
            assert a.dtype == b.dtype, name
            np.testing.assert_array_equal(a, b)
    else:
        np.testing.assert_array_equal(got, expected)


def _outcome(function, X):
    """The result, or the exception type and message, and the warnings raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = function(X)
        except Exception as exc:  # noqa: BLE001 - compared below
            result = (type(exc), str(exc))
    return result, [(w.category, str(w.message)) for w in caught]


def assert_same_outcome(op, encoder, X) -> None:
    got, got_warnings = _outcome(op, X)
    expected, expected_warnings = _outcome(encoder.transform, X)
    assert got_warnings == expected_warnings
    if isinstance(expected, tuple):
        assert got == expected
    else:
        assert_same_result(got, expected)


@pytest.mark.parametrize("options", OPTIONS, ids=[str(o) for o in OPTIONS])
def test_transform_equals_scikit_learn(options):
    encoder = OneHotEncoder(**options).fit(TRAIN)
    op = lower(encoder, "transform")
    for X in (
        _frame(1, seed=2),  # one row: the dict path
        _frame(37, seed=3),
        _frame(3000, seed=4),  # beyond the dict: pandas get_indexer
        _frame(1, seed=5, unknown=True),
        _frame(3000, seed=6, unknown=True),  # ignore: zeros; error / warn / drop: scikit-learn
        _frame(50, seed=7).astype("str"),  # pandas' default string columns
        _frame(300, seed=7, unknown=True).astype("str"),
        _frame(50, seed=8, unknown=True).astype(pd.StringDtype("python")),
        _frame(300, seed=8).astype(pd.StringDtype("python")),
    ):
        assert_same_outcome(op, encoder, X)


def test_other_inputs_run_scikit_learn():
    encoder = OneHotEncoder(handle_unknown="ignore").fit(TRAIN)
    op = lower(encoder, "transform")
    with_nan = _frame(20, seed=9)
    with_nan.loc[3, "colour"] = np.nan
    with_none = _frame(20, seed=9)
    with_none.loc[4, "size"] = None
    numbers = _frame(20, seed=9)
    numbers.loc[5, "colour"] = 7
    string_nan = _frame(20, seed=10).astype("str")
    string_nan.loc[2, "size"] = None
    string_na = _frame(20, seed=10).astype(pd.StringDtype("python"))
    string_na.loc[2, "colour"] = pd.NA
    for X in (
        with_nan,
        with_none,
        numbers,
        string_nan,
        string_na,
        _frame(5)[["size", "colour"]],  # other column order: scikit-learn's feature-name error
        _frame(5).rename(columns={"size": "sizes"}),
        _frame(0),  # scikit-learn refuses 0 rows
        _frame(5).to_numpy(),  # an array: scikit-learn warns about the missing feature names
        [["red", "S"]],
    ):
        assert_same_outcome(op, encoder, X)


def test_output_settings_read_at_call_time():
    encoder = OneHotEncoder(handle_unknown="ignore").fit(TRAIN)
    op = lower(encoder, "transform")
    X = _frame(30, seed=11)
    assert isinstance(op(X), sp.csr_matrix)
    with sklearn.config_context(sparse_interface="sparray"):
        assert isinstance(op(X), sp.csr_array)
        assert_same_result(op(X), encoder.transform(X))
    dense = OneHotEncoder(handle_unknown="ignore", sparse_output=False).fit(TRAIN)
    dense_op = lower(dense, "transform")
    dense.set_output(transform="pandas")  # after lowering: the call sees it
    got = dense_op(X)
    assert isinstance(got, pd.DataFrame)
    pd.testing.assert_frame_equal(got, dense.transform(X))


@pytest.mark.parametrize(
    "encoder, reason",
    [
        (OneHotEncoder().fit(TRAIN.to_numpy()), "fitted on an array"),
        (OneHotEncoder().fit(pd.DataFrame({"n": [1.0, np.nan, 3.0]})), "neither all str nor finite"),
        (
            OneHotEncoder().fit(pd.DataFrame({"c": ["a", None, "b"]}, dtype=object)),
            "neither all str nor finite",
        ),
        (OneHotEncoder().fit(pd.DataFrame({"b": [True, False]})), "neither all str nor finite"),
        (OneHotEncoder(), "not fitted"),
    ],
)
def test_not_lowerable(encoder, reason):
    with pytest.raises(NotLowerable, match=reason):
        lower(encoder, "transform")
    with pytest.raises(NotLowerable, match="only transform"):
        lower(OneHotEncoder().fit(TRAIN), "inverse_transform")


def test_explain_source_describes_the_operator():
    op = lower(OneHotEncoder(handle_unknown="ignore", drop="first").fit(TRAIN), "transform")
    assert op.name == "OneHotEncoder.transform" and not op.generated
    assert "'colour' (6 categories, one dropped)" in op.source
    assert "unknown categories run scikit-learn" in op.source


def test_string_frames_never_call_scikit_learn(monkeypatch):
    """The compiled path itself answers (scikit-learn's transform is not called behind it)."""
    encoder = OneHotEncoder(handle_unknown="ignore", drop=None).fit(TRAIN)
    dropping = OneHotEncoder(drop="first").fit(TRAIN)
    cases = [
        (encoder, _frame(1, seed=12)),
        (encoder, _frame(3000, seed=13, unknown=True)),
        (encoder, _frame(300, seed=14, unknown=True).astype("str")),
        (dropping, _frame(40, seed=15)),
    ]
    for fitted, X in cases:
        op = lower(fitted, "transform")
        expected = fitted.transform(X)
        monkeypatch.setattr(fitted, "transform", lambda *a: pytest.fail("scikit-learn was called"))
        assert_same_result(op(X), expected)
        monkeypatch.undo()


COLOUR_ENCODER = OneHotEncoder(handle_unknown="ignore").fit(TRAIN[["colour"]])
SIZE_ENCODER = OneHotEncoder(drop="first").fit(TRAIN[["size"]])


def encoded_pipeline(model, frame):
    colour = COLOUR_ENCODER.transform(frame[["colour"]])
    size = SIZE_ENCODER.transform(frame[["size"]])
    X = sp.hstack([colour, size]).tocsr()
    return model.predict_proba(X)


def test_encoders_compiled_inside_a_pipeline():
    from compiling import compile_traced, compiled_runner
    from sklearn.linear_model import LogisticRegression

    features = sp.hstack(
        [COLOUR_ENCODER.transform(TRAIN[["colour"]]), SIZE_ENCODER.transform(TRAIN[["size"]])]
    )
    labels = (TRAIN["colour"].isin(["red", "grün"]) ^ (TRAIN["size"] == "L")).to_numpy()
    model = LogisticRegression().fit(features, labels)
    _, _, result = compile_traced(encoded_pipeline, {"model": model, "frame": _frame(200, seed=16)})
    names = {node.operator.name for node in result.nodes}
    assert names >= {"OneHotEncoder.transform"} and len(result.nodes) >= 2
    assert "Compiled operator for _willow.ops." in result.report()
    runner = compiled_runner(result, encoded_pipeline)
    for frame in (_frame(1, seed=17), _frame(500, seed=18, unknown=False), _frame(80, seed=19).astype("str")):
        _, got = runner.run_all({"model": model, "frame": frame})
        # the model call is compiled too: probabilities to 1e-12 (the encoders' parts are exact)
        np.testing.assert_allclose(got, encoded_pipeline(model, frame), rtol=0, atol=1e-12)


def dense_encoded_pipeline(model, frame):
    colour = COLOUR_ENCODER.transform(frame[["colour"]]).toarray()
    size = SIZE_ENCODER.transform(frame[["size"]]).toarray()
    X = np.hstack([colour, size])
    return model.predict_proba(X)


def test_a_method_called_on_the_result_keeps_running_on_the_compiled_call():
    """``enc.transform(df).toarray()``: the transform is compiled, ``.toarray()`` still runs on its
    result; a saved plan's recipe rebuilds the same statement."""
    from compiling import compile_traced, compiled_runner
    from sklearn.linear_model import LogisticRegression

    from willow.compiler.compile_pass import CHAINED_CALL, apply_compilation

    features = np.hstack(
        [
            COLOUR_ENCODER.transform(TRAIN[["colour"]]).toarray(),
            SIZE_ENCODER.transform(TRAIN[["size"]]).toarray(),
        ]
    )
    model = LogisticRegression().fit(features, TRAIN["colour"].isin(["red", "blue"]).to_numpy())
    graph, _, result = compile_traced(dense_encoded_pipeline, {"model": model, "frame": _frame(200, seed=20)})
    encoders = [node for node in result.nodes if node.operator.name == "OneHotEncoder.transform"]
    assert len(encoders) == 2 and all(node.call_path == CHAINED_CALL for node in encoders)
    statements = [ast.unparse(st.node) for st in result.graph.statements]
    assert statements[0] == "colour = _willow.ops.colour_transform(frame[['colour']]).toarray()"
    rebuilt = apply_compilation(graph, result.recipes, lower, dense_encoded_pipeline)
    assert [ast.unparse(st.node) for st in rebuilt.graph.statements] == statements
    for compiled in (result, rebuilt):
        runner = compiled_runner(compiled, dense_encoded_pipeline)
        for frame in (_frame(1, seed=21), _frame(300, seed=22, unknown=True)):
            _, got = runner.run_all({"model": model, "frame": frame})
            np.testing.assert_allclose(got, dense_encoded_pipeline(model, frame), rtol=0, atol=1e-12)


class _CountingSource:
    """A global object willow cannot lower, whose method must run only as often as the code says."""

    def __init__(self) -> None:
        self.calls = 0

    def fetch(self, frame):
        self.calls += 1
        return frame[["colour"]]


SOURCE = _CountingSource()


def fetching_pipeline(model, frame):
    colour = SOURCE.fetch(frame).copy()
    encoded = COLOUR_ENCODER.transform(colour).toarray()
    size = SIZE_ENCODER.transform(frame[["size"]]).toarray()
    X = np.hstack([encoded, size])
    return model.predict_proba(X)


def test_chained_calls_on_objects_without_a_lowering_run_once():
    from compiling import compile_traced
    from sklearn.linear_model import LogisticRegression

    features = np.hstack(
        [
            COLOUR_ENCODER.transform(TRAIN[["colour"]]).toarray(),
            SIZE_ENCODER.transform(TRAIN[["size"]]).toarray(),
        ]
    )
    model = LogisticRegression().fit(features, TRAIN["size"].isin(["S", "M"]).to_numpy())
    SOURCE.calls = 0
    _, _, result = compile_traced(fetching_pipeline, {"model": model, "frame": _frame(50, seed=23)})
    # only the statement's own run: no second call of a method willow cannot compile anyway
    assert SOURCE.calls == 1
    assert any(skip.original.startswith("colour = SOURCE.fetch") for skip in result.skipped)
    assert len([n for n in result.nodes if n.operator.name == "OneHotEncoder.transform"]) == 2


def _numeric_frame(n: int, seed: int, unknown: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 12 if unknown else 9, n) * 7 - 20  # integer categories, negative too
    prices = rng.choice([0.5, -0.0, 2.25, 1e9, -3.0] + ([7.75] if unknown else []), n)
    return pd.DataFrame({"code": codes, "price": prices, "colour": rng.choice(COLOURS, n).astype(object)})


NUMERIC_TRAIN = _numeric_frame(400, seed=30)


@pytest.mark.parametrize("options", OPTIONS, ids=[str(o) for o in OPTIONS])
def test_numeric_categories_equal_scikit_learn(options):
    if "drop" in options and isinstance(options["drop"], list):
        options = {**options, "drop": [1, 2.25, "red"]}
    encoder = OneHotEncoder(**options).fit(NUMERIC_TRAIN)
    op = lower(encoder, "transform")
    with_inf = _numeric_frame(20, seed=31)
    with_inf.loc[2, "price"] = np.inf
    with_nan = _numeric_frame(20, seed=32)
    with_nan.loc[3, "price"] = np.nan
    for X in (
        _numeric_frame(1, seed=33),
        _numeric_frame(500, seed=34),
        _numeric_frame(500, seed=35, unknown=True),
        _numeric_frame(30, seed=36).astype({"code": np.int32, "price": np.float32}),
        _numeric_frame(30, seed=37).astype({"code": np.float64}),  # floats against integer categories
        _numeric_frame(30, seed=38).astype({"code": "Int64"}),  # nullable integers
        with_inf,  # scikit-learn refuses infinity
        with_nan,  # NaN: unknown, or scikit-learn's error
    ):
        assert_same_outcome(op, encoder, X)


def test_numeric_categories_compiled_path(monkeypatch):
    encoder = OneHotEncoder(handle_unknown="ignore").fit(NUMERIC_TRAIN)
    op = lower(encoder, "transform")
    positive_zero = _numeric_frame(50, seed=42)
    positive_zero["price"] = 0.0  # the fitted category is -0.0: equal, as in scikit-learn
    for X in (_numeric_frame(1, seed=40), _numeric_frame(2000, seed=41, unknown=True), positive_zero):
        expected = encoder.transform(X)
        monkeypatch.setattr(encoder, "transform", lambda *a: pytest.fail("scikit-learn was called"))
        assert_same_result(op(X), expected)
        monkeypatch.undo()


# ---- infrequent categories (min_frequency / max_categories) and a NaN category (missing values)

ZONES = ["a"] * 30 + ["b"] * 20 + ["c"] * 3 + ["d"] * 2 + [None] * 8


def _zones(values, size_seed: int = 0, dtype: object = "str") -> pd.DataFrame:
    values = list(values)
    sizes = np.random.default_rng(size_seed).choice(SIZES, len(values)).tolist()
    if dtype == "str":
        return pd.DataFrame({"zone": pd.array(values, dtype="str"), "size": pd.array(sizes, dtype="str")})
    # object columns whose missing values are float NaN (or None: scikit-learn keeps those)
    return pd.DataFrame({"zone": values, "size": sizes}, dtype=object)


ZONE_TRAIN = _zones(ZONES)
INFREQUENT_OPTIONS = [
    {"handle_unknown": "ignore", "min_frequency": 5},
    {"handle_unknown": "infrequent_if_exist", "min_frequency": 5},
    {"handle_unknown": "infrequent_if_exist", "max_categories": 2, "sparse_output": False},
    {"handle_unknown": "ignore", "max_categories": 3, "drop": "first"},
    {"handle_unknown": "error", "min_frequency": 4},
    {"handle_unknown": "warn", "min_frequency": 4},
    {"handle_unknown": "ignore"},  # NaN category, no infrequent ones
]


@pytest.mark.parametrize("options", INFREQUENT_OPTIONS, ids=[str(o) for o in INFREQUENT_OPTIONS])
def test_infrequent_and_missing_categories_equal_scikit_learn(options):
    encoder = OneHotEncoder(**options).fit(ZONE_TRAIN)
    op = lower(encoder, "transform")
    known = ["a", "b", "c", "d", None, "a"]
    unseen = ["zz", None, "c", "b", "", "d"]
    for X in (
        _zones(known[:1]),  # one row
        _zones(["c"]),  # one infrequent row
        _zones([None], size_seed=1),  # one missing row
        _zones(known, size_seed=2),
        _zones(unseen, size_seed=3),  # unknown: zeros, the infrequent column, or scikit-learn
        _zones(known * 80, size_seed=4),  # beyond the dict: pyarrow / get_indexer
        _zones(known, size_seed=5, dtype=object),
        _zones([np.nan if v is None else v for v in unseen], size_seed=6, dtype=object),
        _zones(unseen, size_seed=7, dtype=object),  # None: runs scikit-learn
        _zones(known, size_seed=8).astype(pd.StringDtype("python")),  # pd.NA: runs scikit-learn
        _zones(known).iloc[:0],  # zero rows: scikit-learn's own answer
    ):
        assert_same_outcome(op, encoder, X)


def test_missing_values_without_a_nan_category_are_unknown():
    encoder = OneHotEncoder(handle_unknown="ignore", min_frequency=3).fit(_zones(["a", "a", "a", "b", "c"]))
    op = lower(encoder, "transform")
    for X in (_zones(["a", None, "b", "zz"]), _zones([np.nan, "c"], dtype=object)):
        assert_same_outcome(op, encoder, X)


def test_infrequent_and_missing_frames_never_call_scikit_learn(monkeypatch):
    """Infrequent, missing and (with "ignore" / "infrequent_if_exist") unknown values are encoded
    by the compiled path itself."""
    cases = [
        ({"handle_unknown": "ignore", "min_frequency": 5}, _zones(["a", None, "c", "zz", "d"] * 3)),
        ({"handle_unknown": "infrequent_if_exist", "min_frequency": 5}, _zones(["zz", None, "c", "b"])),
        (
            {"handle_unknown": "infrequent_if_exist", "max_categories": 2},
            _zones([np.nan, "a", "q"], dtype=object),
        ),
    ]
    for options, X in cases:
        fitted = OneHotEncoder(**options).fit(ZONE_TRAIN)
        op = lower(fitted, "transform")
        expected = fitted.transform(X)
        monkeypatch.setattr(fitted, "transform", lambda *a: pytest.fail("scikit-learn was called"))
        assert_same_result(op(X), expected)
        monkeypatch.undo()


def test_large_pyarrow_string_batches_are_matched_in_pyarrow(monkeypatch):
    """Beyond the dict, pandas' pyarrow-backed ``str`` columns are matched by pyarrow itself
    (``index_in``, no pandas ``isna`` or key index): unseen values, missing values as the NaN
    category or as unknown, the same result as scikit-learn without calling it; ``pd.NA``
    missing values (``string[pyarrow]``) still run scikit-learn, as before."""
    from willow.compiler.lowering.lookups import KeyIndex

    values = ["a", None, "c", "zz", "d", "b", ""] * 60
    for fitted in (
        OneHotEncoder(handle_unknown="ignore", min_frequency=5).fit(ZONE_TRAIN),  # a NaN category
        OneHotEncoder(handle_unknown="ignore").fit(_zones(["a", "a", "b", "c"])),  # none: unknown
    ):
        op = lower(fitted, "transform")
        na_frame = _zones(values).astype(pd.StringDtype("pyarrow", na_value=pd.NA))
        for X in (_zones(values), _zones([v for v in values if v is not None]), na_frame):
            assert_same_outcome(op, fitted, X)
        X = _zones(values)
        expected = fitted.transform(X)
        monkeypatch.setattr(fitted, "transform", lambda *a: pytest.fail("scikit-learn was called"))
        monkeypatch.setattr(KeyIndex, "rows", lambda *a: pytest.fail("the key index was used"))
        assert_same_result(op(X), expected)
        monkeypatch.undo()
