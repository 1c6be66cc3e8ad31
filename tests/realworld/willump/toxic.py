"""Willump's toxic benchmark inference function (stanford-futuredata/Willump,
tests/benchmark_scripts/toxic_batch.py, ``vectorizer_transform``) ported to the SMS spam data.

Structure kept as written there: the two vectorizers are arguments, the classifier is a module
global, the features are stacked with ``scipy.sparse.hstack(..., format="csr")`` and the
prediction goes through the project helper ``willump_predict_function`` (imported from
``toxic_utils``). ``vectorizer_transform_globals`` is the very same pipeline with the vectorizers
read from globals, to compare the two styles.
"""

import scipy.sparse

from tests.realworld import rw_data
from tests.realworld.willump.toxic_utils import willump_predict_function

_fitted = rw_data.sms_fitted()
classifier = _fitted.classifier
word_vectorizer, char_vectorizer = _fitted.word_vectorizer, _fitted.char_vectorizer


def vectorizer_transform(input_text, word_vect, char_vect):
    word_features = word_vect.transform(input_text)
    char_features = char_vect.transform(input_text)
    combined_features = scipy.sparse.hstack([word_features, char_features], format="csr")
    preds = willump_predict_function(classifier, combined_features)
    return preds


def vectorizer_transform_globals(input_text):
    word_features = word_vectorizer.transform(input_text)
    char_features = char_vectorizer.transform(input_text)
    combined_features = scipy.sparse.hstack([word_features, char_features], format="csr")
    preds = willump_predict_function(classifier, combined_features)
    return preds
