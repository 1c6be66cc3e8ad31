"""Willump's price benchmark inference function (stanford-futuredata/Willump,
tests/benchmark_scripts/price_batch.py, ``predict_from_input``) ported to California housing.

Mercari's item name, brand, category and description become the block's ocean proximity, a
coarse latitude/longitude district and a short listing-style description built from its numbers;
shipping and item condition become households and median age (the ``DictVectorizer`` records).
The Keras MLP is a Ridge regression on the scaled log price (module global ``model``);
``price_utils.willump_predict_function`` maps its output back to a price. Vectorizers are
arguments, as in Willump.
"""

from operator import itemgetter
from typing import Dict, List, Union  # noqa: UP035 - kept as in the ported module

import pandas as pd
import scipy.sparse
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer

from tests.realworld import rw_data
from tests.realworld.willump import price_utils
from tests.realworld.willump.price_utils import willump_predict_function


def preprocess(df: pd.DataFrame) -> pd.DataFrame:
    df["name"] = df["ocean_proximity"].fillna("") + " " + df["district"].fillna("")
    df["text"] = df["description"].fillna("") + " " + df["name"] + " " + df["ocean_proximity"].fillna("")
    return df[["name", "text", "households", "housing_median_age"]]


def on_field(f: Union[str, List[str]], *vec) -> Pipeline:  # noqa: UP006, UP007
    return make_pipeline(FunctionTransformer(itemgetter(f), validate=False), *vec)


def to_records(df: pd.DataFrame) -> List[Dict]:  # noqa: UP006
    return df.to_dict(orient="records")


def predict_from_input(model_input, name_vectorizer, text_vectorizer, dict_vectorizer):
    model_input = preprocess(model_input)
    name_input = model_input["name"].values
    name_vec = name_vectorizer.transform(name_input)
    text_input = model_input["text"].values
    text_vec = text_vectorizer.transform(text_input)
    valid_records = to_records(model_input[["households", "housing_median_age"]])
    dict_vec = dict_vectorizer.transform(valid_records)
    combined_vec = scipy.sparse.hstack([name_vec, dict_vec, text_vec], format="csr")
    preds = willump_predict_function(model, combined_vec)
    return preds


# The fitted objects, loaded last: rw_data trains them with this module's preprocess().
_fitted = rw_data.housing_fitted()
model = _fitted.model
price_utils.y_scaler = _fitted.y_scaler
vectorizers = (_fitted.name_vectorizer, _fitted.text_vectorizer, _fitted.dict_vectorizer)
