"""Willump's credit benchmark inference function (stanford-futuredata/Willump,
tests/benchmark_scripts/credit_batch.py, ``join_and_lgbm``) ported to UCI Adult.

Home Credit's five aggregate tables (bureau, previous applications, POS, instalments, credit
cards), all joined on the applicant id, become five per-key aggregate tables of the census rows
(joined on education, occupation, native country, workclass and relationship); the feature list
drops the join keys instead of the ids. Tables and the LightGBM classifier are arguments; the
helpers are the shape of Willump's credit_utils.py.
"""

import numpy
import pandas as pd


def willump_predict_function(model, X):
    if isinstance(X, pd.DataFrame):
        X = X.fillna(0)
    if len(X) == 0:
        return numpy.zeros(0, dtype=numpy.float64)
    else:
        return model.predict_proba(X, num_iteration=model.best_iteration_)[:, 1]


def willump_predict_proba_function(model, X):
    if isinstance(X, pd.DataFrame):
        X = X.fillna(0)
    return willump_predict_function(model, X)


def join_and_lgbm(df, bureau, prev, pos, ins, cc, clf):
    df = df.merge(prev, how="left", on="occupation")
    df = df.merge(bureau, how="left", on="education")
    df = df.merge(pos, how="left", on="native-country")
    df = df.merge(ins, how="left", on="workclass")
    df = df.merge(cc, how="left", on="relationship")
    feats = [
        f
        for f in df.columns
        if f not in ["Salary", "occupation", "education", "native-country", "workclass", "relationship"]
    ]
    valid_x = df[feats]
    oof_preds_proba = willump_predict_proba_function(clf, valid_x)
    return oof_preds_proba
