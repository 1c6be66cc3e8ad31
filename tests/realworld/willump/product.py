"""Willump's product benchmark inference function (stanford-futuredata/Willump,
tests/benchmark_scripts/product_batch.py, ``vectorizer_transform``) ported to the airline tweets.

Lazada's title / color / brand vectorizers over the product title become a word TF-IDF, a char
TF-IDF and an @mention counter over the tweet text; the input is the ``text`` column (a pandas
Series) and the 3-class sentiment LogisticRegression is the module global ``model``. The helper
is the shape of Willump's product_utils.py.
"""

import numpy
import scipy.sparse

from tests.realworld import rw_data

_fitted = rw_data.airline_fitted()
model = _fitted.model
title_vectorizer = _fitted.title_vectorizer
color_vectorizer = _fitted.color_vectorizer
brand_vectorizer = _fitted.brand_vectorizer


def willump_predict_function(model, X):
    if X.shape[0] == 0:
        return numpy.zeros(0, dtype=numpy.int64)
    else:
        return model.predict(X)


def vectorizer_transform(title_vect, input_df, color_vect, brand_vect):
    np_input = list(input_df.values)
    transformed_result = title_vect.transform(np_input)
    color_result = color_vect.transform(np_input)
    brand_result = brand_vect.transform(np_input)
    combined_result = scipy.sparse.hstack([transformed_result, color_result, brand_result], format="csr")
    predictions = willump_predict_function(model, combined_result)
    return predictions
