"""Decorated-pipeline builders shared by the tests.

Pipelines are defined at module level in a real file (willow traces source code), reading their
fitted transformers from module globals that the tests set.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp


def slow_features(values):
    """A deliberately costly per-row feature group (a Python loop), so cascades pay off."""
    matrix = np.asarray(values, dtype=float)
    rows = []
    for row in matrix:
        acc = 0.0
        for _ in range(20):
            acc = acc * 0.5 + float(np.tanh(row).sum())
        rows.append(np.concatenate([row, [acc]]))
    return np.array(rows).reshape(len(matrix), matrix.shape[1] + 1)


def numpy_pipeline(model, cheap, extra):
    a = cheap * 1.0
    b = slow_features(extra)
    X = np.hstack([a, b])
    return model.predict(X)


def numpy_proba_pipeline(model, cheap, extra):
    a = cheap * 1.0
    b = slow_features(extra)
    X = np.column_stack([a, b])
    return model.predict_proba(X)


def concatenate_pipeline(model, cheap, extra):
    return model.predict(np.concatenate([cheap + 0.0, slow_features(extra)], axis=1))


def frame_pipeline(model, frame):
    cheap = frame[["c0", "c1"]]
    slow = pd.DataFrame(slow_features(frame[[f"e{i}" for i in range(6)]]), index=frame.index).add_prefix("s")
    X = pd.concat([cheap, slow], axis=1)
    return model.predict(X.to_numpy())


def sparse_pipeline(model, cheap, extra):
    a = SPARSE_FORMAT(cheap)
    b = SPARSE_FORMAT(slow_features(extra))
    X = sp.hstack([a, b]).tocsr()
    return model.predict(X)


SPARSE_FORMAT = sp.csr_matrix


def sparse_rows_pipeline(model, rows):
    a = rows[:, :2].toarray()
    b = slow_features(rows[:, 2:].toarray())
    return model.predict(np.hstack([a, b]))


def text_pipeline(model, comments):
    words = WORDS.transform(comments)
    chars = CHARS.transform(comments)
    X = sp.hstack([words, chars]).tocsr()
    return model.predict(X)


def listed_text_pipeline(model, frame):
    """``text_pipeline`` on a Series whose texts a statement of its own lists (Willump's product)."""
    comments = list(frame.values)
    words = WORDS.transform(comments)
    chars = CHARS.transform(comments)
    X = sp.hstack([words, chars]).tocsr()
    return model.predict(X)


WORDS = None
CHARS = None


def lookup_pipeline(model, rows):
    """Lookups into fitted tables (reindex, map, merge) and fused elementwise arithmetic."""
    user = USER_TABLE.reindex(rows["user"]).to_numpy(dtype=float)
    item = (
        rows[["item"]]
        .merge(ITEM_TABLE, how="left", left_on="item", right_index=True)
        .drop(columns="item")
        .to_numpy(dtype=float)
    )
    city = rows["city"].map(CITY_RATES).to_numpy(dtype=float)[:, None]
    affinity = np.nansum(
        USER_TABLE.reindex(rows["user"]).to_numpy(dtype=float)
        * ITEM_TABLE.reindex(rows["item"]).to_numpy(dtype=float),
        axis=1,
        keepdims=True,
    )
    age = rows["t"].to_numpy(dtype=float)[:, None] - USER_TABLE.reindex(rows["user"]).to_numpy(dtype=float)
    scaled = np.log1p(np.abs(age)) * 0.5 + np.where(age > 0, 1.0, -1.0)
    X = np.hstack([user, item, city, affinity, scaled])
    return model.predict_proba(X)


USER_TABLE = None
ITEM_TABLE = None
CITY_RATES = None


def rebinding_pipeline(model, rows):
    """A statement that rebinds the name its own compiled expression reads."""
    x = rows["t"].to_numpy(dtype=float)
    x = np.where(x > 5.0, x * 2.0, -x)[:, None] - USER_TABLE.reindex(rows["user"]).to_numpy(dtype=float)
    X = np.hstack([x])
    return model.predict_proba(X)


def lookup_cascade_pipeline(model, rows, extra):
    """A cheap lookup group and a costly Python group: a cascade on the lookups pays off."""
    user = USER_TABLE.reindex(rows["user"]).to_numpy(dtype=float) * 2.0
    slow = slow_features(extra)
    X = np.hstack([user, slow])
    return model.predict_proba(X)


def frame_arithmetic_pipeline(model, rows):
    """Series arithmetic read as arrays, row reductions and a left merge keeping left columns."""
    ratios = np.column_stack([rows["a"] / rows["b"], rows["b"] / rows["a"], rows["a"] * 2.0 - rows["t"]])
    scaled = (rows["t"] / T_SCALE - rows["a"]).to_numpy(dtype=float)
    joined = rows[["item", "t"]].merge(ITEM_FRAME, how="left", on="item").to_numpy(dtype=float)
    spread = np.nanmax(joined * 2.0, axis=1, keepdims=True)
    total = np.nansum(ITEM_FRAME.set_index("item").reindex(rows["item"]).to_numpy(dtype=float) - 1.0, axis=1)
    cell = CELL_TABLE.reindex((rows["t"] / 0.5).round().astype(int)).to_numpy(dtype=float)
    X = np.hstack([ratios, scaled[:, None], joined, spread, total[:, None], cell])
    return model.predict(X)


T_SCALE = 2.0
ITEM_FRAME = None
CELL_TABLE = None
