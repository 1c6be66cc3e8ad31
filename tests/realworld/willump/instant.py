"""Willump's instant benchmark inference function (stanford-futuredata/Willump,
tests/benchmark_scripts/instant_batch.py, ``predict_stacked_model``; its data is Kaggle's Instant
Gratification) ported to UCI Adult, the closest analogue we have: the rows are scaled numeric
columns with the partition number (here ``relationship``, 6 values, instead of
``wheezy-copper-turtle-magic``, 512) as the last column; every first-level "model" is a list of
per-partition models (GaussianNB, KNN, LogisticRegression, MLP and a decision tree standing in
for NuSVC, KNN, LR, MLP and SVC); a LogisticRegression stacks four of them. The helpers are the
shape of Willump's instant_utils.py.
"""

import numpy as np

NUM_PARTITIONS = 6
PARTITION_INDEX = -1


def model_prediction(X, model):
    preds = np.zeros(len(X), dtype=np.float64)
    if X.shape[0] == 0:
        return preds.reshape(-1, 1)
    else:
        for i in range(NUM_PARTITIONS):
            partition_indices = np.nonzero(X[:, PARTITION_INDEX] == i)[0]
            if len(partition_indices) > 0:
                preds[partition_indices] = model[i].predict_proba(X[partition_indices, :-1])[:, 1]
        return preds.reshape(-1, 1)


def willump_predict_function(model, X):
    if X.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    else:
        return model.predict(X)


def predict_stacked_model(X, model, clf_svnu, clf_knn, clf_lr, clf_mlp, clf_svc):
    pred_svnu = model_prediction(X, clf_svnu)
    # pred_knn = model_prediction(X, clf_knn)
    pred_lr = model_prediction(X, clf_lr)
    pred_mlp = model_prediction(X, clf_mlp)
    pred_svc = model_prediction(X, clf_svc)
    combined_pred = np.hstack([pred_svnu, pred_lr, pred_mlp, pred_svc])
    preds = willump_predict_function(model, combined_pred)
    return preds
