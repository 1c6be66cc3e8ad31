"""Willump's music benchmark inference function (stanford-futuredata/Willump,
tests/benchmark_scripts/music_batch.py, ``do_merge``) ported to MovieLens small.

The WSDM music rows (user, song, artist, genre ...) become rating rows (userId, movieId, the
movie's first genre and year); every feature table and its join column are arguments, joined in
sequence with ``DataFrame.merge``: clusters of users and movies (KMeans over latent factors),
latent factors of users and movies (a truncated SVD of the history's ratings, Willump's ALS
factors), and play/like statistics per user cluster, movie cluster, user, movie, genre and year.
The LightGBM classifier (liked: rating >= 4) and ``FEATURES`` are module globals, as in Willump.
"""

import numpy as np

from tests.realworld import rw_data

_fitted = rw_data.movielens_fitted()
model = _fitted.model
FEATURES = _fitted.features


def willump_predict_function(model, X):
    if len(X) == 0:
        return np.zeros(0, dtype=np.float32)
    else:
        return model.predict(X)


def do_merge(
    combi,
    features_one,
    join_col_one,
    features_two,
    join_col_two,
    cluster_one,
    join_col_cluster_one,
    cluster_two,
    join_col_cluster_two,
    uc_features,
    uc_join_col,
    sc_features,
    sc_join_col,
    us_features,
    us_col,
    ss_features,
    ss_col,
    gs_features,
    gs_col,
    ys_features,
    ys_col,
):
    combi = combi.merge(cluster_one, how="left", on=join_col_cluster_one)
    combi = combi.merge(cluster_two, how="left", on=join_col_cluster_two)
    combi = combi.merge(features_one, how="left", on=join_col_one)
    combi = combi.merge(features_two, how="left", on=join_col_two)
    combi = combi.merge(uc_features, how="left", on=uc_join_col)
    combi = combi.merge(sc_features, how="left", on=sc_join_col)
    combi = combi.merge(us_features, how="left", on=us_col)
    combi = combi.merge(ss_features, how="left", on=ss_col)
    combi = combi.merge(gs_features, how="left", on=gs_col)
    combi = combi.merge(ys_features, how="left", on=ys_col)
    combi = combi[FEATURES]
    combi = combi.fillna(0)
    preds = willump_predict_function(model, combi)
    return preds


def merge_arguments():
    """do_merge's table arguments in its order (what Willump's add_features_and_predict loads)."""
    t = _fitted.tables
    order = [
        "features_one",
        "features_two",
        "cluster_one",
        "cluster_two",
        "uc_features",
        "sc_features",
        "us_features",
        "ss_features",
        "gs_features",
        "ys_features",
    ]
    return [x for name in order for x in t[name]]
