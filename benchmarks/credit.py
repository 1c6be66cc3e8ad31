"""credit: tabular classification with aggregate tables joined per row (UCI Adult).

Willump's "credit" workload (a Kaggle-style table plus per-key aggregate tables) on the real 1994
census extract: the row's own numeric columns and ordinal-coded categories are two groups; six
more groups each join one aggregate table computed on the train split (per occupation, education,
native country, workclass, marital status and relationship: size, >50K rate, mean age, hours and
capital gain). A LightGBM classifier returns the probability of ``Salary == ">50K"``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from lightgbm import LGBMClassifier
from sklearn.preprocessing import OrdinalEncoder

import willow
from benchmarks.data import cached, data_path, split_positions
from benchmarks.workload import Prepared, Sizes, feature_matrix

NAME = "credit"
FILES = ("adult.data",)
SIZES = {
    "smoke": Sizes(train=1500, calibrate=500, test=150, point_rows=5),
    "quick": Sizes(train=6000, calibrate=3000, test=2000, point_rows=100),
    "full": Sizes(train=12000, calibrate=12000, test=8000, point_rows=200),
}
NUMERIC = ("age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week")
CATEGORICAL = ("workclass", "marital-status", "occupation", "relationship", "race", "sex", "native-country")
AGGREGATED = ("occupation", "education", "native-country", "workclass", "marital-status", "relationship")


def make_pipeline(fitted: dict[str, Any], **options: Any) -> willow.OptimizedPipeline:
    """The user's inference function, decorated with ``willow.optimize(**options)``."""
    category_encoder = fitted["categories"]
    occupation_table = fitted["occupation"]
    education_table = fitted["education"]
    country_table = fitted["native-country"]
    workclass_table = fitted["workclass"]
    marital_table = fitted["marital-status"]
    relationship_table = fitted["relationship"]

    @willow.optimize(**options)
    def approve(model, people):
        numeric = people[list(NUMERIC)].to_numpy(dtype=float)
        categories = category_encoder.transform(people[list(CATEGORICAL)])
        occupation = occupation_table.reindex(people["occupation"]).to_numpy(dtype=float)
        education = education_table.reindex(people["education"]).to_numpy(dtype=float)
        country = country_table.reindex(people["native-country"]).to_numpy(dtype=float)
        workclass = workclass_table.reindex(people["workclass"]).to_numpy(dtype=float)
        marital = marital_table.reindex(people["marital-status"]).to_numpy(dtype=float)
        relationship = relationship_table.reindex(people["relationship"]).to_numpy(dtype=float)
        X = np.hstack([numeric, categories, occupation, education, country, workclass, marital, relationship])
        return model.predict_proba(X)

    return approve


def _load() -> pd.DataFrame:
    frame = pd.read_csv(data_path("adult.data"), skipinitialspace=True)
    for column in {*CATEGORICAL, *AGGREGATED}:
        frame[column] = frame[column].astype(str)
    return frame


def aggregate_table(train: pd.DataFrame, key: str) -> pd.DataFrame:
    """Per-``key`` size, >50K rate and means, as a Kaggle pipeline would precompute them."""
    rich = (train["Salary"] == ">50K").astype(float)
    grouped = train.assign(rich=rich).groupby(key)
    table = pd.DataFrame(
        {
            f"{key}_count": grouped.size(),
            f"{key}_rich_rate": grouped["rich"].mean(),
            f"{key}_mean_age": grouped["age"].mean(),
            f"{key}_mean_hours": grouped["hours-per-week"].mean(),
            f"{key}_mean_gain": grouped["capital-gain"].mean(),
        }
    )
    return table.astype(float)


def _train(train: pd.DataFrame):
    fitted = {
        "categories": OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1).fit(
            train[list(CATEGORICAL)]
        )
    }
    for key in AGGREGATED:
        fitted[key] = aggregate_table(train, key)
    model = LGBMClassifier(n_estimators=200, learning_rate=0.05, num_leaves=31, n_jobs=1, verbose=-1)
    features = make_pipeline(fitted).__wrapped__
    model.fit(feature_matrix(features, train), (train["Salary"] == ">50K").astype(int).to_numpy())
    return fitted, model


def prepare(scale: str = "quick", random_state: int = 0) -> Prepared:
    sizes = SIZES[scale]
    frame = _load()
    train, calibration, test = split_positions(
        len(frame), [sizes.train, sizes.calibrate, sizes.test], random_state
    )
    config = {"train": train.size, "seed": random_state, "version": 1}
    fitted, model = cached(
        NAME, FILES, config, lambda: _train(frame.iloc[train].reset_index(drop=True)), code=__file__
    )
    labels = (frame["Salary"] == ">50K").astype(int).to_numpy()
    rows = frame.drop(columns=["Salary"])
    return Prepared(
        name=NAME,
        task="binary",
        model=model,
        make_pipeline=lambda **options: make_pipeline(fitted, **options),
        calibration_rows=rows.iloc[calibration].reset_index(drop=True),
        calibration_labels=labels[calibration],
        test_rows=rows.iloc[test].reset_index(drop=True),
        test_labels=labels[test],
        groups=(
            "numeric",
            "categories",
            "occupation",
            "education",
            "country",
            "workclass",
            "marital",
            "relationship",
        ),
        description="UCI Adult: numeric + ordinal-coded columns and 6 joined aggregate tables -> "
        "LGBMClassifier.predict_proba (Salary > 50K)",
        sizes=sizes,
        # The cascade's cheap model: a 30-tree LightGBM rather than a clone of the full model,
        # which costs as much per row as the full model on these cheap lookup features.
        optimize_options={
            "approximate_model": LGBMClassifier(n_estimators=30, num_leaves=15, n_jobs=1, verbose=-1)
        },
        details={
            "positive_class": 1,
            "model": "LGBMClassifier(n_estimators=200)",
            "rows_in_file": len(frame),
        },
    )
