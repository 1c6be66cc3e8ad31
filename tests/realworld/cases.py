"""The real-world battery's cases: which function, in which style, called how, on which rows.

A :class:`Case` names a pipeline function (``module:function``, or a decorated method), its style,
whether its features are text or tabular, how it is called (the other arguments a call passes
besides the rows) and where its rows come from. :func:`load` imports the function's module (so an
import-time failure, such as a refusal when a method is decorated, belongs to that case alone),
decorates it with ``willow.optimize`` and returns a :class:`Loaded` with the original and the
decorated callables. Shared by tests/realworld/test_realworld.py and ``benchmarks.styles``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tests.realworld import rw_data

__all__ = ["Case", "Loaded", "CASES", "ROWS", "load", "rows_for", "split_of"]


@dataclass(frozen=True)
class Case:
    name: str
    style: str
    kind: str  # "text" or "tabular": the speed target that applies (5x / 2x)
    target: str  # "module:function", or "module:Class.method" for a decorated method
    data: str  # which row source (see rows_for)
    arguments: Callable[[], tuple] | None = None  # the call's arguments, ROWS where the rows go
    options: dict[str, Any] = field(default_factory=dict)  # willow.optimize options (see CASCADE)
    cascade: bool = False  # calibrated on the large pool to serve and check a cascade
    min_groups: int = 1  # feature groups the issue asks the front end to find
    willump: bool = False
    # A refusal that remains (README, "Refusals that remain"): what its message must say. The case
    # is checked to be refused with that message, naming the file and line.
    refused: str | None = None


# Cascade cases check the cascade's logic on the served plan, whatever its speed (the battery does
# not time anything), so they alone may serve a proven cascade that is not faster.
CASCADE = {"require_faster": False, "accuracy_target": 0.95}


ROWS = object()  # marks where a case's rows go among its call's arguments


def _sms_arguments() -> tuple:
    f = rw_data.sms_fitted()
    return (ROWS, f.word_vectorizer, f.char_vectorizer)


def _sms_model_first() -> tuple:
    f = rw_data.sms_fitted()
    return (f.classifier, f.word_vectorizer, f.char_vectorizer, ROWS)


def _sms_dict() -> tuple:
    f = rw_data.sms_fitted()
    return (ROWS, {"word": f.word_vectorizer, "char": f.char_vectorizer, "classifier": f.classifier})


def _product_arguments() -> tuple:
    f = rw_data.airline_fitted()
    return (f.title_vectorizer, ROWS, f.color_vectorizer, f.brand_vectorizer)


def _credit_arguments() -> tuple:
    t = rw_data.adult_fitted().merge_tables
    clf = rw_data.adult_fitted().credit_model
    return (
        ROWS,
        t["education"],
        t["occupation"],
        t["native-country"],
        t["workclass"],
        t["relationship"],
        clf,
    )


def _music_arguments() -> tuple:
    from tests.realworld.willump import music

    return (ROWS, *music.merge_arguments())


def _instant_arguments() -> tuple:
    i = rw_data.adult_fitted().instant
    m = i["models"]
    return (ROWS, i["model"], m["svnu"], m["knn"], m["lr"], m["mlp"], m["svc"])


def _price_arguments() -> tuple:
    from tests.realworld.willump import price

    return (ROWS, *price.vectorizers)


W = "tests.realworld.willump."
S = "tests.realworld.styles:"
M = "tests.realworld.methods:"

CASES: dict[str, Case] = {
    c.name: c
    for c in [
        # --- Willump's benchmark inference functions, structure kept
        Case(
            "willump_toxic",
            "Willump toxic: vectorizers as arguments, helper predict",
            "text",
            W + "toxic:vectorizer_transform",
            "sms_array",
            _sms_arguments,
            willump=True,
            min_groups=2,
        ),
        Case(
            "willump_toxic_globals",
            "Willump toxic, vectorizers as globals",
            "text",
            W + "toxic:vectorizer_transform_globals",
            "sms_array",
            min_groups=2,
        ),
        Case(
            "willump_product",
            "Willump product: 3 vectorizers as arguments, Series input",
            "text",
            W + "product:vectorizer_transform",
            "airline_series",
            _product_arguments,
            willump=True,
            min_groups=3,
        ),
        Case(
            "willump_credit",
            "Willump credit: 5 merges of argument tables, helper predict_proba",
            "tabular",
            W + "credit:join_and_lgbm",
            "adult_credit",
            _credit_arguments,
            willump=True,
            min_groups=6,  # the row frame's own columns and one per merged table
        ),
        Case(
            "willump_music",
            "Willump music: 10 merges of argument tables and join columns",
            "tabular",
            W + "music:do_merge",
            "movielens",
            _music_arguments,
            willump=True,
            min_groups=2,
        ),
        Case(
            "willump_instant",
            "Willump instant: per-partition model lists stacked (adult analogue)",
            "tabular",
            W + "instant:predict_stacked_model",
            "adult_instant",
            _instant_arguments,
            willump=True,
            min_groups=2,
        ),
        Case(
            "willump_price",
            "Willump price: preprocess(df), .values, to_records, helper predict",
            "text",
            W + "price:predict_from_input",
            "housing",
            _price_arguments,
            willump=True,
            min_groups=2,
        ),
        # --- styles over SMS texts
        Case(
            "globals",
            "globals, return model.predict(X)",
            "text",
            S + "globals_predict",
            "sms_list",
            min_groups=2,
        ),
        Case(
            "arguments",
            "fitted objects as arguments",
            "text",
            S + "arguments_predict",
            "sms_list",
            _sms_model_first,
            min_groups=2,
        ),
        Case(
            "dict_of_models",
            "dict of fitted objects as an argument",
            "text",
            S + "dict_of_models",
            "sms_list",
            _sms_dict,
            min_groups=2,
        ),
        Case(
            "pipeline_feature_union",
            "Pipeline(FeatureUnion(word, char), LR).predict(texts)",
            "text",
            S + "union_pipeline_predict",
            "sms_list",
            min_groups=2,
        ),
        Case(
            "make_union_proba",
            "make_pipeline(make_union(...), LR).predict_proba(texts)",
            "text",
            S + "make_union_proba",
            "sms_list",
            min_groups=2,
        ),
        Case(
            "named_steps",
            "named_steps[...] of a Pipeline",
            "text",
            S + "named_steps_proba",
            "sms_list",
            min_groups=2,
        ),
        Case(
            "assigned_result",
            "preds = model.predict(X); return preds",
            "text",
            S + "assigned_result",
            "sms_list",
            min_groups=2,
        ),
        Case(
            "proba_threshold",
            "predict_proba(X)[:, 1] > 0.3 (cascade served)",
            "text",
            S + "proba_threshold",
            "sms_list",
            options=CASCADE,
            cascade=True,
            min_groups=2,
        ),
        Case("tolist", "model.predict(X).tolist()", "text", S + "tolist_result", "sms_list", min_groups=2),
        Case(
            "pd_series", "pd.Series(model.predict(X))", "text", S + "series_result", "sms_list", min_groups=2
        ),
        Case(
            "decision_function",
            "model.decision_function(X)",
            "text",
            S + "decision_function_result",
            "sms_list",
            min_groups=2,
        ),
        Case(
            "np_where",
            "np.where(proba[:, 1] > 0.5, 'spam', 'ham')",
            "text",
            S + "np_where_result",
            "sms_list",
            min_groups=2,
        ),
        Case(
            "empty_guard",
            "if len(texts) == 0: return []",
            "text",
            S + "empty_guard",
            "sms_list",
            min_groups=2,
        ),
        Case(
            "timer_block",
            "with timer(...): block around the features",
            "text",
            S + "timer_block",
            "sms_list",
            min_groups=2,
        ),
        Case(
            "logging_assert",
            "logging and an assert between the features",
            "text",
            S + "logging_and_assert",
            "sms_list",
            min_groups=2,
        ),
        Case(
            "predict_function",
            "predict_function(model, X) helper",
            "text",
            S + "predict_function_helper",
            "sms_list",
            min_groups=2,
        ),
        Case(
            "string_array_rows",
            "pandas StringArray rows (column.values)",
            "text",
            S + "string_array_rows",
            "sms_string_array",
            min_groups=2,
        ),
        Case(
            "column_values",
            "DataFrame rows, df[col].values inside",
            "text",
            S + "column_values",
            "sms_frame",
            min_groups=2,
        ),
        Case(
            "method",
            "@willow.optimize on predict(self, texts)",
            "text",
            M + "SpamFilter.predict",
            "sms_list",
            min_groups=2,
        ),
        Case(
            "sklearn_method",
            "sklearn-style estimator with a decorated predict",
            "text",
            M + "SpamClassifier.predict",
            "sms_list",
            min_groups=2,
        ),
        # --- airline: texts and columns
        Case(
            "argmax_multiclass",
            "np.argmax(predict_proba(X), axis=1), 3 classes",
            "text",
            S + "argmax_sentiment",
            "airline_list",
            min_groups=3,
        ),
        Case(
            "column_transformer_text",
            "make_pipeline(ColumnTransformer(text, one-hots), LR) on a frame",
            "text",
            S + "column_transformer_text",
            "airline_frame",
            min_groups=3,
        ),
        # --- adult: tables
        Case(
            "tabular_globals",
            "globals: numeric + encoder + lookups, hstack (cascade served)",
            "tabular",
            S + "tabular_globals",
            "adult",
            options=CASCADE,
            cascade=True,
            min_groups=5,
        ),
        Case(
            "make_features",
            "X = make_features(df) helper",
            "tabular",
            S + "make_features_helper",
            "adult",
            min_groups=5,
        ),
        Case(
            "predict_function_tabular",
            "make_features(df) + predict_function(model, X)",
            "tabular",
            S + "predict_function_tabular",
            "adult",
            min_groups=5,
        ),
        Case(
            "batched_helper",
            "make_features(df) + a helper predicting in batches (`if X.shape[0] > n`)",
            "tabular",
            S + "batched_helper",
            "adult",
            min_groups=5,
        ),
        Case(
            "column_transformer",
            "make_pipeline(ColumnTransformer(scaler, one-hot), LR)",
            "tabular",
            S + "column_transformer_scaled",
            "adult",
            min_groups=2,
        ),
        Case(
            "column_transformer_threshold",
            "Pipeline(make_column_transformer(...), LGBM) proba > 0.3",
            "tabular",
            S + "column_transformer_threshold",
            "adult",
            min_groups=2,
        ),
        Case(
            "frame_merges",
            "df.merge(...) chain + df['x'] = ..., df[FEATURES]",
            "tabular",
            S + "frame_merges",
            "adult",
            min_groups=3,
        ),
        Case(
            "frame_assign",
            "merges + df.assign(...) + fillna on MovieLens",
            "tabular",
            S + "frame_assign",
            "movielens",
            min_groups=3,
        ),
    ]
}


def rows_for(data: str, positions: np.ndarray) -> Any:
    """The row container of one data source at the given row positions."""
    if data.startswith("sms"):
        sms = rw_data.sms()
        if data == "sms_array":
            return sms.texts[positions]
        if data == "sms_list":
            return list(sms.texts[positions])
        if data == "sms_string_array":
            return sms.frame["SMS"].iloc[positions].values
        if data == "sms_frame":
            return sms.frame.iloc[positions]
    if data.startswith("airline"):
        frame = rw_data.airline().frame.iloc[positions]
        if data == "airline_series":
            return frame["text"]
        if data == "airline_list":
            return list(frame["text"])
        if data == "airline_frame":
            return frame
    if data.startswith("adult"):
        frame = rw_data.adult().frame.iloc[positions]
        if data == "adult":
            return frame
        if data == "adult_credit":
            return rw_data.credit_rows(frame)
        if data == "adult_instant":
            i = rw_data.adult_fitted().instant
            return rw_data.instant_rows(frame, i["scaler"], i["partitions"])
    if data == "housing":
        return rw_data.housing().frame.iloc[positions].copy()
    if data == "movielens":
        return rw_data.movielens().rows.iloc[positions][["userId", "movieId", "genre_max", "year"]]
    raise KeyError(f"unknown row source {data!r}")


def split_of(data: str) -> rw_data.Split:
    """The train / calibration / fresh split of a row source's dataset."""
    for prefix, dataset in (
        ("sms", rw_data.sms),
        ("airline", rw_data.airline),
        ("adult", rw_data.adult),
        ("housing", rw_data.housing),
        ("movielens", rw_data.movielens),
    ):
        if data.startswith(prefix):
            return dataset().split
    raise KeyError(f"unknown row source {data!r}")


@dataclass
class Loaded:
    """One case, imported and decorated: ``original(rows)`` and ``optimized(rows)`` call the
    function with the case's other arguments; ``pipeline`` is the OptimizedPipeline."""

    case: Case
    pipeline: Any
    original: Callable[[Any], Any]
    optimized: Callable[[Any], Any]
    calibrate: Callable[[Any], Any]


def _caller(case: Case, fn: Callable) -> Callable[[Any], Any]:
    arguments = case.arguments() if case.arguments is not None else (ROWS,)

    def call(rows: Any) -> Any:
        return fn(*[rows if a is ROWS else a for a in arguments])

    return call


def load(case: Case, options: dict[str, Any] | None = None) -> Loaded:
    """Import the case's function and decorate it with ``willow.optimize(**options)`` (default:
    the case's own options, which are the defaults unless the case checks a cascade). A decorated
    method is used as its class decorated it (default options), through a fresh instance."""
    import willow

    module_name, qualname = case.target.split(":")
    module = importlib.import_module(module_name)
    if "." in qualname:
        class_name, method = qualname.split(".")
        cls = getattr(module, class_name)
        instance = _instance(cls)
        pipeline = cls.__dict__[method]
        bound = getattr(instance, method)
        original = pipeline.__wrapped__.__get__(instance, cls)
        return Loaded(
            case, pipeline, _caller(case, original), _caller(case, bound), _caller(case, bound.calibrate)
        )
    fn = getattr(module, qualname)
    pipeline = willow.optimize(**(case.options if options is None else options))(fn)
    return Loaded(
        case, pipeline, _caller(case, fn), _caller(case, pipeline), _caller(case, pipeline.calibrate)
    )


def _instance(cls: type) -> Any:
    from threadpoolctl import threadpool_limits

    f = rw_data.sms_fitted()
    if cls.__name__ == "SpamFilter":
        return cls(f.word_vectorizer, f.char_vectorizer, f.classifier)
    data = rw_data.sms()
    with threadpool_limits(1):
        return cls().fit(data.texts[data.split.train], data.labels[data.split.train])
