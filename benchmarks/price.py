"""price: house-value regression with a text category and aggregate lookups; used for top-K.

On the real California housing census data: the raw numeric columns, ratios derived from them,
a one-hot of the ``ocean_proximity`` text category, and three aggregate lookups computed on the
train split (per ocean proximity, per 0.25-degree location cell, per housing-age decade), stacked
with ``numpy.hstack`` into an LGBMRegressor predicting ``median_house_value``. The question a
top-K query asks here: which K block groups are the most valuable?
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from lightgbm import LGBMRegressor
from sklearn.preprocessing import OneHotEncoder

import willow
from benchmarks.data import cached, data_path, split_positions
from benchmarks.workload import Prepared, Sizes, feature_matrix

NAME = "price"
FILES = ("california_housing.csv",)
SIZES = {
    "smoke": Sizes(train=1500, calibrate=500, test=150, point_rows=5),
    "quick": Sizes(train=6000, calibrate=3000, test=2000, point_rows=100),
    "full": Sizes(train=6000, calibrate=9000, test=5000, point_rows=200),
}
TOP_K = {"smoke": 10, "quick": 50, "full": 100}
NUMERIC = (
    "longitude",
    "latitude",
    "housing_median_age",
    "total_rooms",
    "total_bedrooms",
    "population",
    "households",
    "median_income",
)
CELL_DEGREES = 0.25


def make_pipeline(fitted: dict[str, Any], **options: Any) -> willow.OptimizedPipeline:
    """The user's inference function, decorated with ``willow.optimize(**options)``."""
    proximity_encoder = fitted["proximity_encoder"]
    proximity_table = fitted["proximity"]
    cell_table = fitted["cell"]
    age_table = fitted["age"]

    @willow.optimize(**options)
    def appraise(model, blocks):
        numeric = blocks[list(NUMERIC)].to_numpy(dtype=float)
        ratios = np.column_stack(
            [
                blocks["total_rooms"] / blocks["households"],
                blocks["total_bedrooms"] / blocks["total_rooms"],
                blocks["population"] / blocks["households"],
            ]
        )
        proximity = proximity_encoder.transform(blocks[["ocean_proximity"]]).toarray()
        proximity_stats = proximity_table.reindex(blocks["ocean_proximity"]).to_numpy(dtype=float)
        cell_stats = cell_table.reindex(
            (blocks["latitude"] / CELL_DEGREES).round().astype(int) * 10000
            + (blocks["longitude"] / CELL_DEGREES).round().astype(int)
        ).to_numpy(dtype=float)
        age_stats = age_table.reindex((blocks["housing_median_age"] // 10).astype(int)).to_numpy(dtype=float)
        X = np.hstack([numeric, ratios, proximity, proximity_stats, cell_stats, age_stats])
        return model.predict(X)

    return appraise


def _cell(frame: pd.DataFrame) -> pd.Series:
    return (frame["latitude"] / CELL_DEGREES).round().astype(int) * 10000 + (
        frame["longitude"] / CELL_DEGREES
    ).round().astype(int)


def _aggregate(train: pd.DataFrame, key: pd.Series, prefix: str) -> pd.DataFrame:
    grouped = train.groupby(key.to_numpy())
    return pd.DataFrame(
        {
            f"{prefix}_count": grouped.size(),
            f"{prefix}_mean_value": grouped["median_house_value"].mean(),
            f"{prefix}_mean_income": grouped["median_income"].mean(),
        }
    ).astype(float)


def _train(train: pd.DataFrame):
    fitted = {
        "proximity_encoder": OneHotEncoder(handle_unknown="ignore").fit(train[["ocean_proximity"]]),
        "proximity": _aggregate(train, train["ocean_proximity"], "proximity"),
        "cell": _aggregate(train, _cell(train), "cell"),
        "age": _aggregate(train, (train["housing_median_age"] // 10).astype(int), "age"),
    }
    model = LGBMRegressor(n_estimators=200, learning_rate=0.05, num_leaves=31, n_jobs=1, verbose=-1)

    features = feature_matrix(make_pipeline(fitted).__wrapped__, train, "predict")
    model.fit(features, train["median_house_value"].to_numpy())
    return fitted, model


def prepare(scale: str = "quick", random_state: int = 0) -> Prepared:
    sizes = SIZES[scale]
    frame = pd.read_csv(data_path("california_housing.csv"))
    frame["ocean_proximity"] = frame["ocean_proximity"].astype(str)
    train, calibration, test = split_positions(
        len(frame), [sizes.train, sizes.calibrate, sizes.test], random_state
    )
    config = {"train": train.size, "seed": random_state, "version": 1}
    fitted, model = cached(
        NAME, FILES, config, lambda: _train(frame.iloc[train].reset_index(drop=True)), code=__file__
    )
    values = frame["median_house_value"].to_numpy(dtype=float)
    rows = frame.drop(columns=["median_house_value"])
    return Prepared(
        name=NAME,
        task="regression",
        model=model,
        make_pipeline=lambda **options: make_pipeline(fitted, **options),
        calibration_rows=rows.iloc[calibration].reset_index(drop=True),
        calibration_labels=values[calibration],
        test_rows=rows.iloc[test].reset_index(drop=True),
        test_labels=values[test],
        groups=("numeric", "ratios", "proximity", "proximity_stats", "cell_stats", "age_stats"),
        description="California housing: numeric + ratios + one-hot ocean_proximity + 3 aggregate "
        "lookups -> LGBMRegressor.predict; top-K most valuable blocks",
        sizes=sizes,
        top_k=TOP_K[scale],
        # The top-K filter: a small LightGBM regressor on the cheap groups (a clone of the full
        # 200-tree model would cost as much per row as the model it filters for).
        topk_options={
            "approximate_model": LGBMRegressor(n_estimators=30, num_leaves=15, n_jobs=1, verbose=-1)
        },
        details={"model": "LGBMRegressor(n_estimators=200)", "rows_in_file": len(frame)},
    )
