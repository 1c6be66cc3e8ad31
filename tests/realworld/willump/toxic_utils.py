"""The toxic port's project helpers (the shape of Willump's toxic_utils.py): the prediction goes
through a helper that answers an empty batch without calling the model."""

import numpy as np


def willump_predict_function(model, X):
    if X.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    else:
        return model.predict(X)


def willump_predict_proba_function(model, X):
    if X.shape[0] == 0:
        return np.zeros(0, dtype=np.float64)
    else:
        return model.predict_proba(X)[:, 1]
