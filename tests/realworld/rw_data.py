"""Data and fitted objects for the real-world pipeline battery (tests/realworld, benchmarks.styles).

Every dataset is read once per process from ``../shared/data`` (``WILLOW_DATA_DIR`` overrides it)
and split, seeded, into a *train* part (what the fitted objects learn from), a *calibration* pool
and a *fresh* pool (rows no fitted object and no calibration has seen). The fitted objects of each
dataset are built once per process (``functools.cache``): the pipeline modules read them as their
globals at import, as a user's module would load its pickled models.

Sizes are small on purpose (a train part of 1,500-4,000 rows): the battery must run in about a
minute and a half on 2 cores, Numba compilation included.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from benchmarks.data import data_available, data_path

__all__ = [
    "FILES",
    "available",
    "Split",
    "sms",
    "sms_fitted",
    "airline",
    "airline_fitted",
    "adult",
    "adult_fitted",
    "housing",
    "housing_fitted",
    "movielens",
    "movielens_fitted",
]

FILES = (
    "sms_spam.tsv",
    "airline_tweets.csv",
    "adult.data",
    "california_housing.csv",
    "movielens-small/ratings.csv",
    "movielens-small/movies.csv",
)


def available() -> bool:
    """Whether every dataset the battery reads is present."""
    return data_available(*FILES)


@dataclass(frozen=True)
class Split:
    """Seeded disjoint row positions: train (fitted objects), calibration pool and fresh pool."""

    train: np.ndarray
    calibration: np.ndarray
    fresh: np.ndarray


def _single_threaded(build):
    """Fit with one BLAS/OpenMP thread: on a shared 2-core machine, lbfgs over a sparse matrix
    with every core's threads spinning ran 30x slower than with one."""

    @functools.wraps(build)
    def wrapper():
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            return build()

    return wrapper


def _split(n: int, train: int, calibration: int, seed: int = 0) -> Split:
    order = np.random.default_rng(seed).permutation(n)
    return Split(
        train=np.sort(order[:train]),
        calibration=order[train : train + calibration],
        fresh=order[train + calibration :],
    )


# ---------------------------------------------------------------------------------------- SMS


@dataclass(frozen=True)
class Texts:
    frame: pd.DataFrame  # columns Label, SMS (pandas' own string dtype under pandas 3)
    texts: np.ndarray  # object array of str
    labels: np.ndarray
    split: Split


@functools.cache
def sms() -> Texts:
    """The SMS spam collection (5,574 messages): 1,500 train, 2,600 calibration, the rest fresh."""
    frame = pd.read_csv(data_path("sms_spam.tsv"), sep="\t")
    texts = frame["SMS"].astype(str).to_numpy(dtype=object)
    labels = frame["Label"].astype(str).to_numpy(dtype=object)
    return Texts(frame, texts, labels, _split(len(frame), 1500, 2600))


@dataclass(frozen=True)
class SmsFitted:
    word_vectorizer: Any
    char_vectorizer: Any
    classifier: Any  # LogisticRegression on hstack([words, chars]), labels "ham" / "spam"


@functools.cache
@_single_threaded
def sms_fitted() -> SmsFitted:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    data = sms()
    train = data.texts[data.split.train]
    word = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True).fit(train)
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2, sublinear_tf=True).fit(train)
    X = sp.hstack([word.transform(train), char.transform(train)]).tocsr()
    classifier = LogisticRegression(C=10, solver="liblinear").fit(X, data.labels[data.split.train])
    return SmsFitted(word, char, classifier)


# ------------------------------------------------------------------------------------ airline


@dataclass(frozen=True)
class Airline:
    frame: pd.DataFrame  # text, airline, user_timezone, airline_sentiment, retweet_count
    split: Split


@functools.cache
def airline() -> Airline:
    """US airline tweets (14,640): 2,000 train, 2,600 calibration, the rest fresh."""
    frame = pd.read_csv(data_path("airline_tweets.csv"))
    frame = frame[["text", "airline", "user_timezone", "retweet_count", "airline_sentiment"]]
    frame = frame.reset_index(drop=True)
    return Airline(frame, _split(len(frame), 2000, 2600))


@dataclass(frozen=True)
class AirlineFitted:
    title_vectorizer: Any  # word TF-IDF of the text
    color_vectorizer: Any  # char_wb TF-IDF of the text
    brand_vectorizer: Any  # binary counts of the @mentions in the text
    model: Any  # LogisticRegression, 3 classes (negative / neutral / positive)
    text_pipeline: Any  # make_pipeline(ColumnTransformer(text, airline, timezone), LogisticRegression)


@functools.cache
@_single_threaded
def airline_fitted() -> AirlineFitted:
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    data = airline()
    train = data.frame.iloc[data.split.train]
    texts = list(train["text"])
    title = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True).fit(texts)
    color = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 4), min_df=3, sublinear_tf=True).fit(texts)
    brand = CountVectorizer(token_pattern=r"@\w+", binary=True).fit(texts)
    X = sp.hstack([title.transform(texts), color.transform(texts), brand.transform(texts)], format="csr")
    model = LogisticRegression(C=2, max_iter=500).fit(X, train["airline_sentiment"].to_numpy(dtype=object))
    columns = ColumnTransformer(
        [
            ("text", TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True), "text"),
            ("airline", OneHotEncoder(handle_unknown="ignore"), ["airline"]),
            ("timezone", OneHotEncoder(handle_unknown="ignore", min_frequency=20), ["user_timezone"]),
        ]
    )
    text_pipeline = make_pipeline(columns, LogisticRegression(C=2, max_iter=500))
    text_pipeline.fit(
        train[["text", "airline", "user_timezone"]], train["airline_sentiment"].to_numpy(dtype=object)
    )
    return AirlineFitted(title, color, brand, model, text_pipeline)


# -------------------------------------------------------------------------------------- adult

NUMERIC = ["age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week"]
CATEGORICAL = ["workclass", "marital-status", "occupation", "relationship", "race", "sex", "native-country"]
KEYS = ["occupation", "education", "native-country", "workclass", "relationship"]


@dataclass(frozen=True)
class Adult:
    frame: pd.DataFrame  # the census rows, categories as str, target "rich" (Salary == ">50K")
    split: Split


@functools.cache
def adult() -> Adult:
    """UCI Adult (32,561 rows): 4,000 train, 3,000 calibration, the rest fresh."""
    frame = pd.read_csv(data_path("adult.data"), skipinitialspace=True)
    for column in [*CATEGORICAL, "education"]:
        frame[column] = frame[column].astype(str)
    frame["rich"] = (frame["Salary"] == ">50K").astype(np.int64)
    return Adult(frame, _split(len(frame), 4000, 3000))


def key_stats(train: pd.DataFrame, key: str, prefix: str) -> pd.DataFrame:
    """Per-``key`` size, >50K rate and means (a precomputed aggregate table, indexed by ``key``)."""
    grouped = train.groupby(key)
    return pd.DataFrame(
        {
            f"{prefix}_count": grouped.size().astype(float),
            f"{prefix}_rich_rate": grouped["rich"].mean(),
            f"{prefix}_mean_age": grouped["age"].mean(),
            f"{prefix}_mean_hours": grouped["hours-per-week"].mean(),
        }
    )


@dataclass(frozen=True)
class AdultFitted:
    tables: dict[str, pd.DataFrame]  # key -> aggregate table indexed by the key
    merge_tables: dict[str, pd.DataFrame]  # key -> the same table with the key as a column
    category_encoder: Any  # OrdinalEncoder of CATEGORICAL
    model: Any  # LGBMClassifier on make_features' layout (numeric, categories, 3 lookups)
    credit_model: Any  # LGBMClassifier on the credit port's merged frame
    scaled_pipeline: Any  # make_pipeline(ColumnTransformer(scaler, one-hot), LogisticRegression)
    tree_pipeline: Any  # Pipeline(ColumnTransformer(imputer+minmax, ordinal), LGBMClassifier)
    instant: dict[str, Any]  # the instant port's scaler, per-partition models and stacker


def adult_features(people: pd.DataFrame, fitted_tables: dict[str, pd.DataFrame], encoder: Any) -> np.ndarray:
    """The feature layout of the adult 'globals' pipelines, for training their model."""
    numeric = people[NUMERIC].to_numpy(dtype=float)
    categories = encoder.transform(people[CATEGORICAL])
    lookups = [
        fitted_tables[k].reindex(people[k]).to_numpy(dtype=float)
        for k in ("occupation", "education", "native-country")
    ]
    return np.hstack([numeric, categories, *lookups])


def credit_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The credit port's input rows: numeric columns, binary-coded sex, the join keys (as in
    Willump's credit, whose rows arrive preprocessed and are only joined inside the function)."""
    rows = frame[NUMERIC + KEYS].copy()
    rows["sex"] = (frame["sex"] == "Male").astype(np.int64)
    return rows


@functools.cache
@_single_threaded
def adult_fitted() -> AdultFitted:
    from lightgbm import LGBMClassifier
    from sklearn.compose import ColumnTransformer, make_column_transformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import MinMaxScaler, OneHotEncoder, OrdinalEncoder, StandardScaler

    data = adult()
    train = data.frame.iloc[data.split.train]
    y = train["rich"].to_numpy()
    tables = {key: key_stats(train, key, key.replace("-", "_")) for key in KEYS}
    merge_tables = {key: table.rename_axis(key).reset_index() for key, table in tables.items()}
    encoder = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1).fit(train[CATEGORICAL])
    lgbm = dict(n_estimators=60, num_leaves=15, learning_rate=0.1, n_jobs=1, verbose=-1, random_state=0)
    model = LGBMClassifier(**lgbm).fit(adult_features(train, tables, encoder), y)

    merged = credit_rows(train)
    for key in KEYS:
        merged = merged.merge(merge_tables[key], how="left", on=key)
    feats = [f for f in merged.columns if f not in KEYS]
    credit_model = LGBMClassifier(**lgbm).fit(merged[feats].fillna(0), y)

    scaled = make_pipeline(
        ColumnTransformer(
            [
                ("numeric", StandardScaler(), NUMERIC),
                ("categories", OneHotEncoder(handle_unknown="ignore"), CATEGORICAL),
            ]
        ),
        LogisticRegression(max_iter=2000),
    ).fit(train[NUMERIC + CATEGORICAL], y)
    tree = Pipeline(
        [
            (
                "columns",
                make_column_transformer(
                    (make_pipeline(SimpleImputer(), MinMaxScaler()), NUMERIC),
                    (OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1), CATEGORICAL),
                    remainder="drop",
                ),
            ),
            ("model", LGBMClassifier(**lgbm)),
        ]
    ).fit(train, y)
    return AdultFitted(tables, merge_tables, encoder, model, credit_model, scaled, tree, _instant(train))


INSTANT_PARTITION = "relationship"


def instant_rows(frame: pd.DataFrame, scaler: Any, partitions: list[str]) -> np.ndarray:
    """The instant port's input: scaled numeric columns, then the partition number (last column),
    as Willump's instant rows arrive (scaled, with the partition column appended)."""
    scaled = scaler.transform(frame[NUMERIC].to_numpy(dtype=float))
    partition = pd.Categorical(frame[INSTANT_PARTITION], categories=partitions).codes.astype(float)
    return np.append(scaled, partition.reshape(-1, 1), 1)


def _instant(train: pd.DataFrame) -> dict[str, Any]:
    """Per-partition models (one per relationship value) of five kinds and a stacking model.

    The analogue of Willump's "instant" (Kaggle Instant Gratification: per-partition NuSVC, KNN,
    LogisticRegression, MLP and SVC stacked by a LogisticRegression), on adult's numeric columns
    partitioned by ``relationship``.
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import GaussianNB
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier

    partitions = sorted(train[INSTANT_PARTITION].unique())
    scaler = StandardScaler().fit(train[NUMERIC].to_numpy(dtype=float))
    half = len(train) // 2
    first, second = train.iloc[:half], train.iloc[half:]
    X = instant_rows(first, scaler, partitions)
    y = first["rich"].to_numpy()
    kinds = {
        "svnu": lambda: GaussianNB(),
        "knn": lambda: KNeighborsClassifier(n_neighbors=15),
        "lr": lambda: LogisticRegression(max_iter=1000),
        "mlp": lambda: MLPClassifier(hidden_layer_sizes=(8,), solver="lbfgs", max_iter=200, random_state=0),
        "svc": lambda: DecisionTreeClassifier(max_depth=4, random_state=0),
    }
    models: dict[str, list[Any]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for kind, make in kinds.items():
            per_partition = []
            for i in range(len(partitions)):
                rows = X[:, -1] == i
                labels = y[rows]
                if len(np.unique(labels)) < 2:  # one class only: a constant model still answers
                    labels = labels.copy()
                    labels[:1] = 1 - labels[:1]
                per_partition.append(make().fit(X[rows, :-1], labels))
            models[kind] = per_partition
    from tests.realworld.willump import instant  # the port's own helper builds the stacked input

    X2 = instant_rows(second, scaler, partitions)
    stacked = np.hstack([instant.model_prediction(X2, models[k]) for k in ("svnu", "lr", "mlp", "svc")])
    stacker = LogisticRegression().fit(stacked, second["rich"].to_numpy())
    return {"scaler": scaler, "partitions": partitions, "models": models, "model": stacker}


# ------------------------------------------------------------------------------------ housing


@dataclass(frozen=True)
class Housing:
    frame: pd.DataFrame  # california housing + district / description strings
    split: Split


def _describe(frame: pd.DataFrame) -> pd.Series:
    """A short listing-style description built from the block's numbers (the analogue of
    Mercari's free-text item description)."""
    rooms = (frame["total_rooms"] / frame["households"]).round().clip(1, 9).astype(int).astype(str)
    beds = (frame["total_bedrooms"] / frame["households"]).round().clip(0, 4)
    income = frame["median_income"].round().clip(0, 12).astype(int).astype(str)
    people = (frame["population"] / frame["households"]).round().clip(1, 6).astype(int).astype(str)
    beds_text = beds.map(lambda b: "beds unknown" if np.isnan(b) else f"beds {int(b)}")
    return "rooms " + rooms + " " + beds_text + " income " + income + " people " + people


@functools.cache
def housing() -> Housing:
    """California housing (20,640 blocks): 3,000 train, 3,000 calibration, the rest fresh."""
    frame = pd.read_csv(data_path("california_housing.csv"))
    frame["district"] = (
        "lat"
        + frame["latitude"].round().astype(int).astype(str)
        + " lon"
        + frame["longitude"].round().astype(int).astype(str)
    )
    frame["description"] = _describe(frame)
    return Housing(frame, _split(len(frame), 3000, 3000))


@dataclass(frozen=True)
class HousingFitted:
    name_vectorizer: Any
    text_vectorizer: Any
    dict_vectorizer: Any
    model: Any  # Ridge on the scaled log1p price
    y_scaler: Any


@functools.cache
@_single_threaded
def housing_fitted() -> HousingFitted:
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    from tests.realworld.willump import price

    data = housing()
    train = price.preprocess(data.frame.iloc[data.split.train].copy())
    name = TfidfVectorizer(token_pattern=r"\w+").fit(train["name"].values)
    text = TfidfVectorizer(token_pattern=r"\w+", ngram_range=(1, 2)).fit(train["text"].values)
    records = DictVectorizer().fit(price.to_records(train[["households", "housing_median_age"]]))
    X = sp.hstack(
        [
            name.transform(train["name"].values),
            records.transform(price.to_records(train[["households", "housing_median_age"]])),
            text.transform(train["text"].values),
        ],
        format="csr",
    )
    y_scaler = StandardScaler()
    target = y_scaler.fit_transform(
        np.log1p(data.frame["median_house_value"].iloc[data.split.train].to_numpy().reshape(-1, 1))
    )
    model = Ridge(alpha=1.0).fit(X, target[:, 0])
    return HousingFitted(name, text, records, model, y_scaler)


# ---------------------------------------------------------------------------------- movielens


@dataclass(frozen=True)
class Movielens:
    rows: pd.DataFrame  # rating rows after the history: userId, movieId, genre_max, year, liked
    history: pd.DataFrame  # the oldest 60% of ratings: what the feature tables are built from
    split: Split


@functools.cache
def movielens() -> Movielens:
    """MovieLens small: the oldest 60,000 ratings build tables; of the rest, 4,000 train the model,
    3,000 are the calibration pool and the others fresh."""
    ratings = pd.read_csv(data_path("movielens-small/ratings.csv")).sort_values("timestamp", kind="stable")
    movies = pd.read_csv(data_path("movielens-small/movies.csv"))
    movies["genre_max"] = movies["genres"].str.split("|").str[0].astype(str)
    year = movies["title"].map(lambda t: re.search(r"\((\d{4})\)\s*$", t))
    movies["year"] = year.map(lambda m: float(m.group(1)) if m else np.nan)
    history = ratings.iloc[:60000].merge(movies[["movieId", "genre_max", "year"]], on="movieId", how="left")
    rest = ratings.iloc[60000:].merge(movies[["movieId", "genre_max", "year"]], on="movieId", how="left")
    rest["liked"] = (rest["rating"] >= 4).astype(np.int64)
    rows = rest[["userId", "movieId", "genre_max", "year", "liked"]].reset_index(drop=True)
    return Movielens(rows, history, _split(len(rows), 4000, 3000))


def scol_features(history: pd.DataFrame, col: str, prefix: str, positive: bool = True) -> pd.DataFrame:
    """Play counts, liked counts and their ratios per value of ``col`` (with ``col`` a column)."""
    liked = history["rating"] >= 4
    group = history.groupby(col)
    tmp = pd.DataFrame({f"{prefix}played": group.size().astype(np.float64)})
    if positive:
        tmp[f"{prefix}played_pos"] = (
            history[liked].groupby(col).size().reindex(tmp.index).fillna(0).astype(float)
        )
    tmp[f"{prefix}played_rel"] = tmp[f"{prefix}played"] / tmp[f"{prefix}played"].max()
    tmp[f"{prefix}played_rel_global"] = tmp[f"{prefix}played"] / len(history)
    if positive:
        tmp[f"{prefix}played_pos_rel"] = tmp[f"{prefix}played_pos"] / tmp[f"{prefix}played_pos"].max()
        tmp[f"{prefix}played_ratio"] = tmp[f"{prefix}played_pos"] / tmp[f"{prefix}played"]
    tmp.index.name = col
    return tmp.reset_index()


@dataclass(frozen=True)
class MovielensFitted:
    tables: dict[str, tuple[pd.DataFrame, str]]  # do_merge's (features, join column) pairs
    features: list[str]
    model: Any  # LGBMClassifier (liked = rating >= 4) on the merged FEATURES


LATENT = 8
CLUSTERS = 8


@functools.cache
@_single_threaded
def movielens_fitted() -> MovielensFitted:
    from lightgbm import LGBMClassifier
    from sklearn.cluster import KMeans
    from sklearn.decomposition import TruncatedSVD

    data = movielens()
    history = data.history
    users = {u: i for i, u in enumerate(sorted(history["userId"].unique()))}
    items = {m: i for i, m in enumerate(sorted(history["movieId"].unique()))}
    matrix = sp.csr_matrix(
        (history["rating"].to_numpy() - 3.0, (history["userId"].map(users), history["movieId"].map(items))),
        shape=(len(users), len(items)),
    )
    svd = TruncatedSVD(n_components=LATENT, random_state=0).fit(matrix)
    user_factors = svd.transform(matrix)
    item_factors = svd.components_.T
    features_uf = pd.DataFrame(user_factors, columns=[f"uf_{i}" for i in range(LATENT)]).assign(
        userId=list(users)
    )
    features_sf = pd.DataFrame(item_factors, columns=[f"sf_{i}" for i in range(LATENT)]).assign(
        movieId=list(items)
    )
    user_cluster = KMeans(CLUSTERS, n_init=3, random_state=0).fit_predict(user_factors)
    item_cluster = KMeans(CLUSTERS, n_init=3, random_state=0).fit_predict(item_factors)
    cluster_one = pd.DataFrame({"userId": list(users), f"cluster_userId_{CLUSTERS}": user_cluster})
    cluster_two = pd.DataFrame({"movieId": list(items), f"cluster_movieId_{CLUSTERS}": item_cluster})
    clustered = history.merge(cluster_one, on="userId").merge(cluster_two, on="movieId")
    tables = {
        "features_one": (features_uf, "userId"),
        "features_two": (features_sf, "movieId"),
        "cluster_one": (cluster_one, "userId"),
        "cluster_two": (cluster_two, "movieId"),
        "uc_features": (
            scol_features(clustered, f"cluster_userId_{CLUSTERS}", "uc_"),
            f"cluster_userId_{CLUSTERS}",
        ),
        "sc_features": (
            scol_features(clustered, f"cluster_movieId_{CLUSTERS}", "sc_"),
            f"cluster_movieId_{CLUSTERS}",
        ),
        "us_features": (scol_features(history, "userId", "u_", positive=False), "userId"),
        "ss_features": (scol_features(history, "movieId", "s_", positive=False), "movieId"),
        "gs_features": (scol_features(history, "genre_max", "gmax_"), "genre_max"),
        "ys_features": (scol_features(history, "year", "y_"), "year"),
    }
    features = [
        *[f"sf_{i}" for i in range(LATENT)],
        *[f"uf_{i}" for i in range(LATENT)],
    ]
    for name in ("sc_features", "uc_features", "us_features", "ss_features", "gs_features", "ys_features"):
        table, col = tables[name]
        features += [c for c in table.columns if c != col]
    train = data.rows.iloc[data.split.train]
    merged = train
    for name in (
        "cluster_one",
        "cluster_two",
        "features_one",
        "features_two",
        "uc_features",
        "sc_features",
        "us_features",
        "ss_features",
        "gs_features",
        "ys_features",
    ):
        table, col = tables[name]
        merged = merged.merge(table, how="left", on=col)
    model = LGBMClassifier(
        n_estimators=60, num_leaves=15, learning_rate=0.1, n_jobs=1, verbose=-1, random_state=0
    )
    model.fit(merged[features].fillna(0), train["liked"].to_numpy())
    return MovielensFitted(tables, features, model)
