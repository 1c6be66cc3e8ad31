"""Compiled text vectorizers against scikit-learn itself: same CSR structure, dtypes and values."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest
from conftest import data_file
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.feature_extraction.text import CountVectorizer, HashingVectorizer, TfidfVectorizer

from willow.compiler.lowering import NotLowerable, lower

# Characters that exercise every rule: case mapping that changes length (İ), final sigma, accents
# (precomposed and combining), CJK, emoji (outside the BMP), underscore, digits and every kind of
# whitespace sklearn treats specially.
ALPHABET = "abcdeABCDE xyz019_éÉçÇßİΣσςe\u0301日本語テキスト🙂🎉,.!?'-@\t\n\r\u3000\xa0\u2028"
TRAIN = [
    "The quick brown fox jumps over the lazy dog",
    "Ça va très bien, merci! Élan ÉCOLE école",
    "日本語 テキスト の 例 🙂 🙂🎉",
    "ΣΟΦΙΑ σοφία İstanbul istanbul ß straße",
    "ab ab cd_ef 12 345 e\u0301te",
    "tab\tseparated   spaces\u3000ideographic\xa0nbsp",
    "a b c d e abc abcd abcde xyz",
]

documents = st.lists(st.text(alphabet=ALPHABET, max_size=40), min_size=1, max_size=6)

CONFIGS = {
    "count_default": lambda: CountVectorizer(),
    "count_bigrams_stop_binary": lambda: CountVectorizer(
        ngram_range=(1, 2), stop_words=["the", "ab"], binary=True
    ),
    "count_english_upper": lambda: CountVectorizer(stop_words="english", lowercase=False, ngram_range=(2, 3)),
    "count_single_char_tokens": lambda: CountVectorizer(token_pattern=r"(?u)\b\w+\b", dtype=np.int32),
    "count_max_features": lambda: CountVectorizer(max_features=15, min_df=1, max_df=0.9),
    "count_fixed_vocabulary": lambda: CountVectorizer(vocabulary=["ab", "the", "日本語", "ab cd_ef", "zz"]),
    # a prefixed token pattern (@mentions), its vocabulary fixed: TRAIN has no mentions
    "count_mentions_bigrams": lambda: CountVectorizer(
        token_pattern=r"(?u)@\w\w+\b",
        ngram_range=(1, 2),
        stop_words=["@the"],
        vocabulary=["@ab", "@cd_ef", "@日本語", "@ab @cd_ef", "@the", "@istanbul", "@ab @ab"],
    ),
    "count_char_1_3_float": lambda: CountVectorizer(analyzer="char", ngram_range=(1, 3), dtype=np.float64),
    "tfidf_default": lambda: TfidfVectorizer(),
    "tfidf_word_1_2_sublinear": lambda: TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
    "tfidf_word_l1_noidf": lambda: TfidfVectorizer(norm="l1", use_idf=False, binary=True),
    "tfidf_word_nonorm_smooth_off": lambda: TfidfVectorizer(norm=None, smooth_idf=False),
    "tfidf_accents_unicode": lambda: TfidfVectorizer(strip_accents="unicode"),
    "tfidf_accents_ascii_char": lambda: TfidfVectorizer(
        strip_accents="ascii", analyzer="char", ngram_range=(2, 3)
    ),
    "tfidf_char_wb_2_5": lambda: TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5)),
    "tfidf_char_wb_1_3_l1": lambda: TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3), norm="l1"),
    "tfidf_char_4_6_float32": lambda: TfidfVectorizer(analyzer="char", ngram_range=(4, 6), dtype=np.float32),
    "hashing_default": lambda: HashingVectorizer(),
    "hashing_small_signed_bigrams": lambda: HashingVectorizer(n_features=32, ngram_range=(1, 2)),
    "hashing_char_wb_unsigned_l1": lambda: HashingVectorizer(
        analyzer="char_wb", ngram_range=(2, 4), n_features=64, alternate_sign=False, norm="l1"
    ),
    "hashing_char_binary_nonorm": lambda: HashingVectorizer(
        analyzer="char", n_features=16, binary=True, norm=None, stop_words="english"
    ),
}


@functools.cache
def compiled(config: str):
    vectorizer = CONFIGS[config]()
    vectorizer.fit(TRAIN)
    return vectorizer, lower(vectorizer, "transform")


def assert_same_csr(got, expected, rtol: float = 1e-12) -> None:
    assert type(got) is type(expected)
    assert got.shape == expected.shape
    assert got.dtype == expected.dtype
    assert got.indptr.dtype == expected.indptr.dtype and got.indices.dtype == expected.indices.dtype
    assert got.has_sorted_indices and expected.has_sorted_indices
    np.testing.assert_array_equal(got.indptr, expected.indptr)
    np.testing.assert_array_equal(got.indices, expected.indices)
    np.testing.assert_allclose(got.data, expected.data, rtol=rtol, atol=0)


def rtol_for(vectorizer) -> float:
    # float32 results are computed in float64 and rounded once; sklearn rounds at every step.
    return 1e-6 if np.dtype(vectorizer.dtype) == np.float32 else 1e-12


@pytest.mark.parametrize("config", sorted(CONFIGS))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(docs=documents)
def test_transform_matches_sklearn(config, docs):
    vectorizer, operator = compiled(config)
    assert_same_csr(operator(docs), vectorizer.transform(docs), rtol_for(vectorizer))


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_fixed_edge_cases_and_containers(config):
    vectorizer, operator = compiled(config)
    edge = ["", " ", "\t\n", "unseenword zzzz", "The THE the", "İ", "ς Σ", "🙂", "a", "x y"]
    edge += ["@ab @cd_ef x@ab @@ab @ @a @AB@ab", "@the @ab @日本語 @İstanbul @zzz", "@"]
    for docs in (
        edge,
        TRAIN,
        edge[:1],
        np.array(edge, dtype=object),
        pd.Series(edge, index=range(5, 5 + len(edge))),
    ):
        assert_same_csr(operator(docs), vectorizer.transform(docs), rtol_for(vectorizer))
    assert_same_csr(operator(np.array(edge)), vectorizer.transform(np.array(edge)), rtol_for(vectorizer))


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_batches_on_both_sides_of_the_parallel_threshold(config, monkeypatch):
    """Below PARALLEL_MIN_ROWS one kernel call, from it on chunks of rows on worker threads, whose
    stitched CSR is the single call's bit for bit."""
    from willow.compiler.lowering import chunks, text

    monkeypatch.setattr(chunks, "worker_threads", lambda: 3)  # threads even where Numba has one
    monkeypatch.setattr(text, "PARALLEL_MIN_CODE_POINTS", dict.fromkeys(text.PARALLEL_MIN_CODE_POINTS, 0))
    vectorizer, operator = compiled(config)
    edge = ["", " ", "\t\n", "unseenword zzzz", "The THE the", "İ", "ς Σ", "🙂", "a", "x y"]
    rows = [f"{doc} {i}" if i % 3 else doc for i, doc in enumerate((TRAIN + edge) * 20)]
    for n_rows in (text.PARALLEL_MIN_ROWS - 1, text.PARALLEL_MIN_ROWS, text.PARALLEL_MIN_ROWS + 37):
        docs = rows[:n_rows]
        assert_same_csr(operator(docs), vectorizer.transform(docs), rtol_for(vectorizer))
    chunked = operator(docs)
    monkeypatch.setattr(text, "PARALLEL_MIN_ROWS", len(docs) + 1)
    whole = operator(docs)
    for attribute in ("indptr", "indices", "data"):
        np.testing.assert_array_equal(getattr(chunked, attribute), getattr(whole, attribute))


@pytest.mark.parametrize("config", sorted(CONFIGS))
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(docs=documents)
def test_chunked_transform_matches_sklearn_on_any_batch(config, docs, monkeypatch):
    """Chunks forced on tiny batches: chunks of one row, empty rows, more threads than rows."""
    from willow.compiler.lowering import chunks, text

    vectorizer, operator = compiled(config)
    monkeypatch.setattr(text, "PARALLEL_MIN_ROWS", 1)
    monkeypatch.setattr(text, "PARALLEL_MIN_CODE_POINTS", dict.fromkeys(text.PARALLEL_MIN_CODE_POINTS, 0))
    monkeypatch.setattr(chunks, "worker_threads", lambda: 2)
    assert_same_csr(operator(docs), vectorizer.transform(docs), rtol_for(vectorizer))


@pytest.mark.parametrize(
    "config", ["count_default", "tfidf_default", "hashing_default", "count_mentions_bigrams"]
)
def test_zero_rows_behave_like_sklearn(config):
    vectorizer, operator = compiled(config)
    try:
        expected = vectorizer.transform([])
    except (ValueError, StopIteration):
        with pytest.raises(ValueError):
            operator([])
    else:
        assert_same_csr(operator([]), expected)


def test_a_single_string_is_refused_like_sklearn():
    _, operator = compiled("count_default")
    with pytest.raises(ValueError, match="string object received"):
        operator("not a list")


@pytest.mark.parametrize(
    ("vectorizer", "reason"),
    [
        (CountVectorizer(analyzer=lambda s: s.split()), "analyzer callable"),
        (CountVectorizer(tokenizer=str.split, token_pattern=None), "tokenizer callable"),
        (CountVectorizer(preprocessor=str.upper), "preprocessor callable"),
        (CountVectorizer(token_pattern=r"[a-z]+"), "token_pattern"),
        (CountVectorizer(token_pattern=r".\w+"), "token_pattern"),
        (CountVectorizer(strip_accents=lambda s: s), "strip_accents callable"),
        (CountVectorizer(input="filename"), "input='filename'"),
    ],
)
def test_unsupported_options_are_refused_with_the_reason(vectorizer, reason):
    vectorizer.fit(TRAIN) if vectorizer.input == "content" else None
    with pytest.raises(NotLowerable, match=reason.replace("(", r"\(")):
        lower(vectorizer, "transform")


def test_token_patterns_the_kernel_reproduces():
    """Runs of word characters after an optional non-word prefix; anything else is refused."""
    from willow.compiler.lowering.text import token_rule

    assert token_rule(r"(?u)\b\w\w+\b") == (2, -1) and token_rule(r"\w+") == (1, -1)
    assert token_rule(r"@\w+") == (1, ord("@")) and token_rule(r"(?u)#\w\w+\b") == (2, ord("#"))
    assert token_rule(r"\$\w+") == (1, ord("$")) and token_rule(r"\.\w+") == (1, ord("."))
    for refused in (r"\b@\w+", r".\w+", r"@\w*", r"a\w+", r"@@\w+", r"(?i)@\w+", r"\d+", r"\s\w+"):
        assert token_rule(refused) is None, refused


def test_unfitted_vectorizer_is_refused():
    with pytest.raises(NotLowerable, match="not fitted"):
        lower(TfidfVectorizer(), "transform")


def test_source_is_the_generated_kernel():
    _, operator = compiled("tfidf_char_wb_2_5")
    assert operator.name == "TfidfVectorizer.transform"
    assert "def transform_rows(" in operator.source and "char_wb_spans" in operator.source
    assert "word_spans(" not in operator.source  # branches for other analyzers are folded away


@pytest.mark.data
def test_real_sms_text():
    sms = pd.read_csv(data_file("sms_spam.tsv"), sep="\t")["SMS"].astype(str)
    train, test = sms.iloc[:2000], sms.iloc[2000:3000]
    for vectorizer in (
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2),
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2),
        HashingVectorizer(n_features=2**12, ngram_range=(1, 2)),
    ):
        vectorizer.fit(train)
        assert_same_csr(lower(vectorizer, "transform")(test), vectorizer.transform(test))


def test_character_classes_match_re_for_every_code_point():
    import re

    from willow.compiler.lowering.text_runtime import SPACE, WORD, char_class_table

    table = char_class_table()
    word, space = re.compile(r"\w"), re.compile(r"\s")
    for code in range(0x110000):
        c = chr(code)
        assert bool(table[code] & WORD) == bool(word.match(c)), hex(code)
        assert bool(table[code] & SPACE) == bool(space.match(c)), hex(code)


@pytest.mark.parametrize(
    "options",
    [{}, {"lowercase": False}, {"strip_accents": "unicode"}, {"strip_accents": "ascii", "lowercase": False}],
    ids=str,
)
def test_batches_are_encoded_as_their_documents_one_by_one(options):
    """A batch is lowercased and encoded as one NUL-joined string, the NULs giving the row offsets
    back: the same code points and offsets as each document preprocessed and encoded alone
    (ASCII and not, empty documents first and last, final sigma, one-to-many lowerings), and
    documents holding a NUL themselves go document by document."""
    from willow.compiler.lowering.text import prepare_documents, text_spec
    from willow.compiler.lowering.text_runtime import encode_documents

    spec = text_spec(TfidfVectorizer(**options).fit(["a b c", "ab cd"]))
    batches = [
        ["a B", "", "CÉ ΣΑΣ x", ""],
        ["", ""],
        ["", "A"],
        ["Ab", "cD"],
        ["ΟΔΟΣ.", "İ ß ﬁ"],
        ["x\x00Y", "Z"],
        ["ÀB", "c\x00"],
        ["only one"],
        [],
    ]
    for batch in batches:
        got = prepare_documents(batch, spec)
        expected = encode_documents([spec.preprocess(d) for d in batch])
        for a, b in zip(got, expected):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)
