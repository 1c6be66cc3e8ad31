"""Token patterns written without ``\\b`` (``\\w+``, ``\\w\\w+``, as Willump's price vectorizers
use) are the same runs of word characters as the compiled ``\\b\\w+\\b`` patterns: compiled, and
equal to scikit-learn on punctuation, Unicode, digits, underscores, 1 row and unseen words."""

from __future__ import annotations

import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from test_lowering_text import assert_same_csr

from willow.compiler.lowering import lower

TRAIN = ["near bay district_12", "INLAND  île-de-france x", "a b c, d.e", "紅 色 ß straße 42nd"]
DOCS = ["near bay, ocean!", "x y z unseen_word", "", "île ß—straße 42 a", "__ _ 9"]


@pytest.mark.parametrize("pattern", [r"\w+", r"\w\w+", r"(?u)\w+"])
def test_runs_of_word_characters_without_boundaries(pattern):
    vectorizer = TfidfVectorizer(token_pattern=pattern).fit(TRAIN)  # the kernels of other tests
    operator = lower(vectorizer, "transform")
    for docs in (DOCS, DOCS[:1], TRAIN):
        assert_same_csr(operator(docs), vectorizer.transform(docs))
