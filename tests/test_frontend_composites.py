"""scikit-learn composites expanded by the front end: the normalized function gives exactly the
composite's own output (type, dtype, values, sparse structure, errors), and tracing sees one
feature group per FeatureUnion branch / ColumnTransformer transformer."""

from __future__ import annotations

import ast
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer, make_column_selector, make_column_transformer
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, Pipeline, make_pipeline, make_union
from sklearn.preprocessing import (
    FunctionTransformer,
    MinMaxScaler,
    OneHotEncoder,
    OrdinalEncoder,
    StandardScaler,
)

from willow.compiler.tracing import trace_pipeline
from willow.frontend import composites
from willow.frontend.driver import normalize

WORDS = ["good", "bad", "great", "awful", "plot", "actors", "film", "boring", "fun", "meh"]


def _texts(n: int, seed: int, unseen: bool = False) -> list[str]:
    rng = np.random.default_rng(seed)
    vocabulary = WORDS + (["zebra", "quux"] if unseen else [])
    return [" ".join(rng.choice(vocabulary, rng.integers(1, 6))) for _ in range(n)]


TEXTS = _texts(200, seed=0)
TEXT_LABELS = np.array(["good" in t or "great" in t for t in TEXTS])

TEXT_PIPE = Pipeline(
    [
        (
            "union",
            FeatureUnion(
                [
                    ("word", TfidfVectorizer()),
                    ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 3))),
                ]
            ),
        ),
        ("clf", LogisticRegression()),
    ]
).fit(TEXTS, TEXT_LABELS)

COLOURS = ["red", "green", "blue"]


def _frame(n: int, seed: int, unseen: bool = False, nan: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "age": rng.normal(40, 10, n),
            "income": rng.integers(0, 100, n),
            "colour": rng.choice(COLOURS + (["purple"] if unseen else []), n).astype(object),
            "flag": rng.integers(0, 2, n).astype(float),
            "score": rng.normal(0, 1, n),
            "text": [" ".join(rng.choice(WORDS, 3)) for _ in range(n)],
        }
    )
    if nan and n:
        frame.loc[0, "age"] = np.nan
    return frame


FRAME = _frame(300, seed=1)
FRAME_LABELS = ((FRAME["age"] > 40) ^ (FRAME["colour"] == "red")).to_numpy()

TABULAR = make_pipeline(
    ColumnTransformer(
        [
            ("num", StandardScaler(), ["age", "income"]),
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["colour"]),
            ("keep", "passthrough", ["flag"]),
        ],
        remainder=StandardScaler(),  # "score" (and "text" is dropped below)
    ),
    LogisticRegression(),
).fit(FRAME.drop(columns="text"), FRAME_LABELS)


def _outcome(function, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return function(*args)
        except Exception as exc:  # noqa: BLE001 - compared below
            return (type(exc), str(exc))


def assert_identical(got, expected) -> None:
    """Same type, dtype, shape and values (NaN in the same places); CSR arrays equal."""
    assert type(got) is type(expected), (type(got), type(expected))
    if isinstance(expected, tuple):  # an exception
        assert got == expected
        return
    if isinstance(expected, pd.DataFrame):
        pd.testing.assert_frame_equal(got, expected, check_exact=True)
        return
    assert got.dtype == expected.dtype and got.shape == expected.shape
    if sp.issparse(expected):
        assert got.format == expected.format
        for name in ("indptr", "indices", "data"):
            np.testing.assert_array_equal(getattr(got, name), getattr(expected, name))
    else:
        np.testing.assert_array_equal(got, expected)


def _check(fn, arguments: dict, row_parameters: tuple[str, ...], inputs: list[dict]):
    """Normalize ``fn`` on ``arguments`` and compare it with ``fn`` on every input."""
    front = normalize(fn, arguments, row_parameters)
    assert front.rewritten, front.notes
    for call in [arguments, *inputs]:
        call = {**arguments, **call}
        assert_identical(_outcome(front.function, *call.values()), _outcome(fn, *call.values()))
    return front


def _groups(front) -> list[str]:
    graph = trace_pipeline(front.function, tree=front.tree, filename=front.filename)
    return [g.name for g in graph.groups]


# --------------------------------------------------------------------------- Pipeline(FeatureUnion)


def text_proba(texts):
    return TEXT_PIPE.predict_proba(texts)


def text_label(texts):
    labels = TEXT_PIPE.predict(texts)
    return labels


def text_score(texts):
    return TEXT_PIPE.decision_function(texts) > 0.5


TEXT_INPUTS = [
    {"texts": _texts(1, seed=2)},
    {"texts": _texts(40, seed=3, unseen=True)},
    {"texts": ["zebra quux"]},  # only unseen tokens
    {"texts": []},  # scikit-learn's own error for 0 rows
    {"texts": np.array(_texts(5, seed=4), dtype=object)},
]


@pytest.mark.parametrize("fn", [text_proba, text_label, text_score])
def test_pipeline_of_feature_union_is_exact(fn):
    front = _check(fn, {"texts": TEXTS[:50]}, ("texts",), TEXT_INPUTS)
    source = ast.unparse(front.tree)
    assert "union_word.transform(texts)" in source and "union_char.transform(texts)" in source
    assert ".hstack([X_union_word, X_union_char]).tocsr()" in source
    assert set(front.bindings) >= {"union_word", "union_char", "clf"}
    assert not front.guards  # globals: nothing passed by the caller to check
    if fn is text_proba:  # what follows the model call is another front-end pass's business
        assert _groups(front) == ["X_union_word", "X_union_char"]


def test_module_without_scipy_import_gets_a_binding():
    """The stacking call needs scipy.sparse: bound when the user's module has no name for it."""
    front = normalize(text_proba, {"texts": TEXTS[:20]}, ("texts",))
    stack = next(s for s in front.tree.body if "hstack" in ast.unparse(s))
    module = stack.value.func.value.func.value.id
    assert (front.bindings.get(module) or text_proba.__globals__.get(module)) is sp


# --------------------------------------------------------------------------- ColumnTransformer


def tabular_proba(frame, model):
    proba = model.predict_proba(frame)[:, 1]
    return proba


def tabular_direct(frame, model):
    return model.predict_proba(frame)


FRAME_INPUTS = [
    {"frame": _frame(1, seed=5).drop(columns="text")},
    {"frame": _frame(50, seed=6, unseen=True).drop(columns="text")},  # unseen colour: zeros
    {"frame": _frame(10, seed=7, nan=True).drop(columns="text")},  # NaN: the model's own error
    {"frame": _frame(0, seed=8).drop(columns="text")},  # 0 rows: scikit-learn's error
    {"frame": _frame(20, seed=9)},  # an extra column: selected by name, as scikit-learn does
]


def test_column_transformer_in_a_pipeline_passed_as_argument():
    arguments = {"frame": FRAME.drop(columns="text"), "model": TABULAR}
    front = _check(tabular_proba, arguments, ("frame",), FRAME_INPUTS)
    source = ast.unparse(front.tree)
    # label lists through frame_columns (by position where that is the same)
    assert "X_num = num.transform(frame_columns(columntransformer_input, ['age', 'income']))" in source
    assert "X_cat = cat.transform(frame_columns(columntransformer_input, ['colour'])).toarray()" in source
    assert "X_keep = frame_columns(columntransformer_input, ['flag'])" in source
    assert "X_remainder = remainder.transform(frame_columns(columntransformer_input, ['score']))" in source
    assert front.bindings["frame_columns"] is composites.frame_columns
    direct = normalize(tabular_direct, arguments, ("frame",))
    assert _groups(direct) == ["X_num", "X_cat", "X_keep", "X_remainder"]
    # every object taken from the argument is checked at each call, by its path
    paths = {g.name: g.path for g in front.guards}
    by_path = {g.path: g.name for g in front.guards}
    assert front.bindings[by_path["model"]] is TABULAR  # the pipeline itself, and each object in it
    assert paths["num"] == "model.steps[0][1].transformers_[0][1]"
    assert paths["logisticregression"] == "model.steps[1][1]"
    assert all(eval(g.path, {"model": TABULAR}) is front.bindings[g.name] for g in front.guards)


def selected_columns_proba(frame, model):
    return model.predict_proba(frame[["age", "income", "colour", "flag", "score"]])


def test_column_selections_by_position_equal_selections_by_label():
    """The composite's input ``frame[[...]]`` and each transformer's label list are taken through
    frame_columns: the same output for reordered columns, one and zero rows, duplicate labels (which
    fall back to ``frame[cols]``), a missing column (pandas' KeyError) and a non-frame input."""
    frame = FRAME.drop(columns="text")
    duplicated = pd.concat([frame.iloc[:5], FRAME[["text", "text"]].iloc[:5]], axis=1)  # "text" twice
    inputs = [
        {"frame": frame.iloc[:, ::-1]},  # reordered columns
        {"frame": frame.iloc[:1]},
        {"frame": frame.iloc[:0]},
        {"frame": duplicated},  # duplicate labels (not selected): frame[cols]
        {"frame": frame.drop(columns="colour")},  # pandas' KeyError, as written
        {"frame": {"age": [1.0]}},  # not a frame: indexed as written (TypeError)
    ]
    front = _check(selected_columns_proba, {"frame": frame, "model": TABULAR}, ("frame",), inputs)
    source = ast.unparse(front.tree)
    assert "X = frame_columns(frame, ['age', 'income', 'colour', 'flag', 'score'])" in source
    assert "num.transform(frame_columns(columntransformer_input, ['age', 'income']))" in source
    # the transformers' selections on the caller's frame itself (duplicates: see below)
    _check(tabular_direct, {"frame": frame, "model": TABULAR}, ("frame",), inputs[:3])
    frame_columns = composites.frame_columns
    for columns in (["colour", "age"], ["flag"], [], ["flag", "flag"], ["text"], ["nothing"]):
        for data in (frame, frame.iloc[:1], frame.iloc[:0], duplicated):
            assert_identical(_outcome(frame_columns, data, columns), _outcome(data.__getitem__, columns))
    array = frame[["age", "flag"]].to_numpy()
    assert_identical(_outcome(frame_columns, array, [0]), _outcome(array.__getitem__, [0]))


def test_duplicate_column_labels_raise_scikit_learn_s_own_error():
    """scikit-learn refuses a frame with duplicate column labels (narwhals' DuplicateError or a
    ValueError, by version) before selecting anything; the expansion checks the labels once and
    then runs the composite's own transform, so the same error (type and message) is raised:
    duplicates among unselected columns (which the selections alone would not notice), among
    selected ones, with 0 and 1 rows; an array input is not checked."""
    frame = FRAME.drop(columns="text")
    unselected = pd.concat([frame.iloc[:5], FRAME[["text", "text"]].iloc[:5]], axis=1)
    selected = pd.concat([frame, frame[["colour"]]], axis=1).iloc[:7]  # "colour" twice
    inputs = [{"frame": unselected}, {"frame": selected}, {"frame": selected.iloc[:1]}]
    inputs.append({"frame": selected.iloc[:0]})
    for fn in (tabular_direct, selected_columns_proba):
        front = _check(fn, {"frame": frame, "model": TABULAR}, ("frame",), inputs)
        assert front.bindings["unique_columns"] is composites.unique_columns
    expected = _outcome(tabular_direct, unselected, TABULAR)
    assert isinstance(expected, tuple) and issubclass(expected[0], ValueError)
    assert (
        composites.unique_columns(ARRAY, ARRAY_CT) is ARRAY
        and composites.unique_columns(frame, None) is frame
    )


class _DuplicatesAccepted:
    """A composite whose transform accepts duplicate labels (as a future version might)."""

    def transform(self, X):
        return X


def test_duplicate_labels_a_composite_accepts_raise_a_willow_error():
    from willow.errors import DuplicateColumnsError, WillowError

    duplicated = pd.DataFrame([[1, 2, 3]], columns=["a", "b", "a"])
    with pytest.raises(DuplicateColumnsError, match="found a more than once") as caught:
        composites.unique_columns(duplicated, _DuplicatesAccepted())
    assert isinstance(caught.value, (WillowError, ValueError))


def test_numeric_output_is_check_array():
    """A sparse ColumnTransformer's per-output check_array: the same object for a numeric sparse
    matrix with rows and columns, check_array's own result or error for everything else."""
    from sklearn.utils.validation import check_array

    csr = sp.random(4, 3, density=0.5, format="csr", random_state=0)
    numeric_output = composites.numeric_output
    assert numeric_output(csr) is csr
    cases = [
        csr.astype(np.int64),
        csr.tocsc(),
        csr[:0],  # 0 rows: check_array's error
        sp.csr_matrix((3, 0)),  # 0 columns: check_array's error
        csr.astype(bool),
        np.array([["1", "2"]], dtype=object),  # converted to float
        np.ones((2, 2)),
        FRAME[["age", "flag"]],
    ]
    for value in cases:
        expected = _outcome(lambda v: check_array(v, accept_sparse=True, ensure_all_finite=False), value)
        assert_identical(_outcome(numeric_output, value), expected)


SELECTED = make_column_transformer(
    (TfidfVectorizer(), "text"),  # a scalar column: 1-D strings for the vectorizer
    (StandardScaler(), make_column_selector(dtype_include=np.floating, pattern="^(age|score)$")),
    (OneHotEncoder(handle_unknown="ignore"), lambda frame: ["colour"]),
    ("drop", ["flag"]),
    remainder="passthrough",  # income
    sparse_threshold=1.0,
)
SELECTED.set_params(transformer_weights={"standardscaler": 0.5}).fit(FRAME)
SELECTED_PIPE = make_pipeline(SELECTED, LogisticRegression()).fit(FRAME, FRAME_LABELS)


def selected_features(frame):
    return SELECTED.transform(frame)


def selected_proba(frame):
    return SELECTED_PIPE.predict_proba(frame)


def test_column_transformer_selectors_weights_and_sparse_output():
    assert SELECTED.sparse_output_
    inputs = [
        {"frame": _frame(1, seed=10)},
        {"frame": _frame(30, seed=11, unseen=True, nan=True)},  # NaN kept by the scaler
        {"frame": _frame(0, seed=12)},  # check_array's 0-row error, as scikit-learn
    ]
    front = _check(selected_features, {"frame": FRAME}, ("frame",), inputs)
    source = ast.unparse(front.tree)
    assert "selected_tfidfvectorizer.transform(selected_input['text'])" in source  # 1-D, as _safe_indexing
    assert "selected_standardscaler.transform(frame_columns(selected_input, ['age', 'score']))" in source
    assert "selected_onehotencoder.transform(frame_columns(selected_input, ['colour']))" in source
    assert "X_selected_standardscaler * 0.5" in source
    # _hstack's check_array (numeric_output): on the vectorizer's (0 rows pass it) and the
    # passthrough frame, not on the scaler's output (always a float array, 0 rows refused by the
    # scaler itself)
    assert "numeric_output(X_selected_tfidfvectorizer)" in source
    assert "numeric_output(X_selected_remainder)" in source
    assert "numeric_output(X_selected_standardscaler" not in source
    assert "flag" not in source
    front = _check(selected_proba, {"frame": FRAME}, ("frame",), inputs)
    assert len(_groups(front)) == 4  # text, scaled, encoded, remainder


ARRAY_CT = ColumnTransformer(
    [
        ("first", StandardScaler(), slice(0, 2)),
        ("mask", FunctionTransformer(np.abs), [False, False, True, False]),
        ("one", StandardScaler(), [3]),
    ],
    remainder="drop",
)
ARRAY = np.random.default_rng(13).normal(size=(50, 4))
ARRAY_CT.fit(ARRAY)


def array_features(X):
    return ARRAY_CT.transform(X)


def test_column_transformer_on_arrays_by_position():
    inputs = [{"X": ARRAY[:1]}, {"X": ARRAY[:0]}, {"X": np.where(ARRAY > 1, np.nan, ARRAY)}]
    front = _check(array_features, {"X": ARRAY}, ("X",), inputs)
    source = ast.unparse(front.tree)
    assert "X[:, 0:2]" in source and "X[:, [False, False, True, False]]" in source
    assert "X[:, [3]]" in source


# --------------------------------------------------------------------------- nesting and access


class Doubler(TransformerMixin, BaseEstimator):
    """A custom transformer: stays one opaque call (its own group)."""

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        return np.asarray(X, dtype=float) * 2


NESTED = Pipeline(
    [
        ("prep", Pipeline([("scale", StandardScaler()), ("nothing", "passthrough"), ("none", None)])),
        (
            "union",
            make_union(
                StandardScaler(with_std=False),
                Doubler(),
                FeatureUnion(
                    [("drop", "drop"), ("copy", "passthrough"), ("abs", FunctionTransformer(np.abs))],
                    transformer_weights={"copy": 3, "abs": np.float32(0.5)},
                ),
            ),
        ),
        ("clf", LogisticRegression()),
    ]
).fit(ARRAY, ARRAY[:, 0] > 0)


def nested_proba(X):
    return NESTED.predict_proba(X)


def test_nested_composites_expand_recursively():
    inputs = [{"X": ARRAY[:1]}, {"X": ARRAY[:0]}, {"X": ARRAY[:7] * 100}]
    front = _check(nested_proba, {"X": ARRAY}, ("X",), inputs)
    source = ast.unparse(front.tree)
    assert "doubler.transform(" in source  # opaque, one statement
    assert "X_union_featureunion_copy = X_scale" in source  # 'passthrough': the input itself
    assert "X_union_featureunion_copy * 3" in source
    assert "X_union_featureunion_abs * union_featureunion_abs_weight" in source  # the numpy scalar
    assert len(_groups(front)) == 3  # scaler, doubler, the inner union (passthrough, weighted)


def named_steps_proba(texts):
    features = TEXT_PIPE.named_steps["union"].transform(texts)
    return TEXT_PIPE.named_steps["clf"].predict_proba(features)


def sliced_proba(texts):
    features = TEXT_PIPE[:-1].transform(texts)
    return TEXT_PIPE[-1].predict_proba(features)


@pytest.mark.parametrize("fn", [named_steps_proba, sliced_proba])
def test_steps_reached_by_name_or_index(fn):
    front = _check(fn, {"texts": TEXTS[:30]}, ("texts",), TEXT_INPUTS[:3])
    source = ast.unparse(front.tree)
    assert "clf.predict_proba(features)" in source  # the final step rebound to a plain name
    assert _groups(front) == ["X_union_word", "X_union_char"]


class Model:
    """An application object holding its pipeline as an attribute."""

    def __init__(self, pipe):
        self.pipe = pipe

    def predict(self, texts):
        return self.pipe.predict_proba(texts)[:, 1] > 0.3


def test_composite_as_an_attribute_of_an_argument():
    model = Model(TEXT_PIPE)
    front = normalize(Model.predict, {"self": model, "texts": TEXTS[:20]}, ("texts",))
    for inputs in TEXT_INPUTS[:3]:
        assert_identical(front.function(model, inputs["texts"]), model.predict(inputs["texts"]))
    assert {g.path for g in front.guards} >= {"self.pipe.steps[1][1]"}


# --------------------------------------------------------------------------- pandas output


PANDAS_CT = ColumnTransformer(
    [
        ("num", StandardScaler(), ["age", "income"]),
        ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), ["colour"]),
    ],
    remainder="passthrough",
).set_output(transform="pandas")
PANDAS_PIPE = make_pipeline(PANDAS_CT, LogisticRegression()).fit(FRAME.drop(columns="text"), FRAME_LABELS)
PANDAS_UNION = make_union(StandardScaler(), MinMaxScaler()).set_output(transform="pandas").fit(ARRAY)


def pandas_frame(frame):
    return PANDAS_CT.transform(frame)


def pandas_proba(frame):
    return PANDAS_PIPE.predict_proba(frame)


def pandas_union(X):
    return PANDAS_UNION.transform(X)


def test_pandas_output_is_concatenated_and_named_as_scikit_learn_does():
    frames = [
        {"frame": _frame(1, seed=30).drop(columns="text")},
        {"frame": _frame(40, seed=31, unseen=True, nan=True).drop(columns="text").set_axis(range(100, 140))},
    ]
    front = _check(pandas_frame, {"frame": FRAME.drop(columns="text")}, ("frame",), frames)
    source = ast.unparse(front.tree)
    assert "pd.concat([X_pandas_ct_num, X_pandas_ct_cat, X_pandas_ct_remainder], axis=1)" in source
    assert "X_pandas_ct.set_axis(pandas_ct_columns, axis=1)" in source
    _check(pandas_proba, {"frame": FRAME.drop(columns="text")}, ("frame",), frames)
    front = _check(pandas_union, {"X": ARRAY}, ("X",), [{"X": ARRAY[:1]}, {"X": ARRAY[:9] * 5}])
    assert "pd.concat([X_pandas_union_standardscaler, X_pandas_union_minmaxscaler], axis=1)" in ast.unparse(
        front.tree
    )


# --------------------------------------------------------------------------- left alone


def test_what_cannot_be_expanded_exactly_stays_one_call_with_a_note():
    import sklearn

    with sklearn.config_context(enable_metadata_routing=True):
        front = normalize(text_proba, {"texts": TEXTS[:20]}, ("texts",))
    assert not front.rewritten
    assert any("metadata routing" in note for note in front.notes)


def conditional(texts, fast):
    if fast:
        return TEXT_PIPE.predict(texts)
    return TEXT_PIPE.predict_proba(texts)


def test_calls_not_reached_at_calibration_stay_one_call():
    front = normalize(conditional, {"texts": TEXTS[:10], "fast": False}, ("texts",))
    assert any("did not reach" in note for note in front.notes)
    assert_identical(front.function(TEXTS[:5], False), conditional(TEXTS[:5], False))
    # `fast` is a constant argument: bound at calibration and guarded at every call
    assert any(guard.path == "fast" for guard in front.guards)


# --------------------------------------------------------------------------- compiled


def test_expanded_column_transformer_compiles_each_transformer():
    """The compile pass lowers every expanded step (scaler, encoder, model); the compiled pipeline
    gives the original's probabilities (the model's kernel to 1e-12, the steps exactly)."""
    from compiling import compiled_runner

    from willow.compiler.compile_pass import compile_graph
    from willow.compiler.execution import StatementRunner
    from willow.compiler.lowering import lower

    arguments = {"frame": FRAME.drop(columns="text"), "model": TABULAR}
    front = normalize(tabular_direct, arguments, ("frame",))
    graph = trace_pipeline(front.function, tree=front.tree, filename=front.filename)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no kernel may disagree with the original
        warnings.filterwarnings("ignore", category=FutureWarning)
        result = compile_graph(graph, StatementRunner(graph, front.function), arguments, lower)
    names = sorted(node.operator.name for node in result.nodes)
    assert names == [
        "LogisticRegression.predict_proba",
        "OneHotEncoder.transform",
        "StandardScaler.transform",
        "StandardScaler.transform",
    ]
    runner = compiled_runner(result, front.function)
    for frame in (_frame(1, seed=40), _frame(300, seed=41, unseen=True)):
        frame = frame.drop(columns="text")
        _, got = runner.run_all({"frame": frame, "model": TABULAR})
        np.testing.assert_allclose(got, tabular_direct(frame, TABULAR), rtol=0, atol=1e-12)


PREPROCESSED = make_pipeline(
    ColumnTransformer(
        [
            ("log", FunctionTransformer(np.log1p), ["flag", "income"]),
            ("imputed", make_pipeline(SimpleImputer(strategy="median"), MinMaxScaler()), ["age"]),
            ("codes", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1), ["colour"]),
        ]
    ),
    LogisticRegression(),
).fit(_frame(300, seed=42, nan=True), FRAME_LABELS)


def preprocessed_proba(frame):
    return PREPROCESSED.predict_proba(frame)


def test_new_preprocessing_lowerings_compile_inside_an_expanded_pipeline():
    from compiling import compiled_runner

    from willow.compiler.compile_pass import compile_graph
    from willow.compiler.execution import StatementRunner
    from willow.compiler.lowering import lower

    arguments = {"frame": _frame(200, seed=43, nan=True)}
    front = normalize(preprocessed_proba, arguments, ("frame",))
    graph = trace_pipeline(front.function, tree=front.tree, filename=front.filename)
    assert [g.name for g in graph.groups] == ["X_log", "X_minmaxscaler", "X_codes"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no kernel may disagree with the original
        warnings.filterwarnings("ignore", category=FutureWarning)
        result = compile_graph(graph, StatementRunner(graph, front.function), arguments, lower)
    assert sorted(node.operator.name for node in result.nodes) == [
        "FunctionTransformer.transform",
        "LogisticRegression.predict_proba",
        "MinMaxScaler.transform",
        "OrdinalEncoder.transform",
        "SimpleImputer.transform",
    ]
    runner = compiled_runner(result, front.function)
    for frame in (_frame(1, seed=44), _frame(100, seed=45, unseen=True, nan=True)):
        _, got = runner.run_all({"frame": frame})
        np.testing.assert_allclose(got, preprocessed_proba(frame), rtol=0, atol=1e-12)


LIST_PIPE = make_pipeline(ARRAY_CT, LogisticRegression()).fit(ARRAY, ARRAY[:, 1] > 0)


def list_proba(rows):
    return LIST_PIPE.predict_proba(rows)


def test_a_nested_composite_that_cannot_be_expanded_stays_one_call():
    """A ColumnTransformer given lists (scikit-learn converts them) stays one opaque step: nothing
    it would have bound is left behind."""
    rows = ARRAY[:20].tolist()
    front = _check(list_proba, {"rows": rows}, ("rows",), [{"rows": ARRAY[:1].tolist()}])
    assert "X_columntransformer = columntransformer.transform(rows)" in ast.unparse(front.tree)
    assert set(front.bindings) == {"columntransformer", "logisticregression"}
    assert any("stays one `.transform()` call" in note for note in front.notes)
