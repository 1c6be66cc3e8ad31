"""LightGBM models (``Booster``, ``LGBMClassifier``, ``LGBMRegressor``) as :class:`TreeEnsemble`.

Reads ``Booster.dump_model()`` (doubles printed with 17 significant digits, so thresholds and
leaf values round-trip exactly) and reproduces LightGBM's routing rules (``tree.h``):

* numerical, missing_type None: NaN is replaced by 0.0, then ``x <= threshold``;
* missing_type Zero: NaN and ``|x| <= 1e-35f`` go to the default side;
* missing_type NaN: NaN goes to the default side, zero is compared as usual;
* categorical: NaN, values whose ``static_cast<int>`` is negative and categories outside the
  bitset go right; listed categories go left.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from willow.compiler.lowering.base import NotLowerable
from willow.compiler.lowering.trees_ir import CategoricalSplit, Leaf, Node, NumericSplit, TreeEnsemble

__all__ = ["LightGBMModel", "parse_lightgbm"]

# objective name -> output transform of Booster.predict (raw_score=False)
_TRANSFORMS = {
    "regression": "identity",
    "regression_l1": "identity",
    "huber": "identity",
    "fair": "identity",
    "quantile": "identity",
    "mape": "identity",
    "binary": "sigmoid",
    "multiclass": "softmax",
    "multiclassova": "ova_sigmoid",
    "poisson": "exp",
    "gamma": "exp",
    "tweedie": "exp",
    "cross_entropy": "xentropy",
}


@dataclass(frozen=True)
class LightGBMModel:
    """A parsed LightGBM model: the trees plus how ``predict`` turns raw scores into outputs."""

    ensemble: TreeEnsemble
    transform: str
    sigmoid: float
    pandas_categorical: Any
    feature_names: tuple[str, ...]


def _parse_node(node: dict[str, Any]) -> Node | Leaf:
    if "leaf_coeff" in node:
        raise NotLowerable("LightGBM linear trees (linear_tree=True) are not supported.")
    if "leaf_value" in node:
        return Leaf((float(node["leaf_value"]),))
    feature = int(node["split_feature"])
    if node["decision_type"] == "==":
        categories = tuple(sorted(int(c) for c in str(node["threshold"]).split("||")))
        split: NumericSplit | CategoricalSplit = CategoricalSplit(feature, categories, style="lightgbm")
    elif node["decision_type"] == "<=":
        threshold = float(node["threshold"])
        missing = node["missing_type"]
        default_left = bool(node["default_left"])
        if missing == "None":
            split = NumericSplit(feature, threshold, nan_left=threshold >= 0.0)  # NaN is read as 0.0
        elif missing == "NaN":
            split = NumericSplit(feature, threshold, nan_left=default_left)
        elif missing == "Zero":
            split = NumericSplit(feature, threshold, nan_left=default_left, zero_missing=True)
        else:
            raise NotLowerable(f"LightGBM split with missing_type {missing!r} is not supported.")
    else:
        raise NotLowerable(f"LightGBM split with decision_type {node['decision_type']!r} is not supported.")
    return Node(split, _parse_node(node["left_child"]), _parse_node(node["right_child"]))


def parse_lightgbm(booster: Any, num_iteration: int | None = None) -> LightGBMModel:
    """Parse a fitted ``lightgbm.Booster`` (first ``num_iteration`` iterations; all when None/<=0).

    Raises :class:`NotLowerable` for objectives whose output transform is not reproduced
    (custom objectives, lambdarank...) and linear trees.
    """
    dump = booster.dump_model(num_iteration=num_iteration if num_iteration and num_iteration > 0 else None)
    objective = str(dump.get("objective", "")).split()
    name = objective[0] if objective else "custom"
    if name not in _TRANSFORMS:
        raise NotLowerable(
            f"LightGBM objective {name!r} is not supported; expected one of {sorted(_TRANSFORMS)}."
        )
    sigmoid = 1.0
    for token in objective[1:]:
        if token.startswith("sigmoid:"):
            sigmoid = float(token.split(":", 1)[1])
    per_iteration = int(dump["num_tree_per_iteration"])
    trees = []
    outputs = []
    for info in dump["tree_info"]:
        trees.append(_parse_node(info["tree_structure"]))
        outputs.append((int(info["tree_index"]) % per_iteration,))
    n_iterations = len(trees) // per_iteration if per_iteration else 0
    divisor = float(n_iterations) if dump.get("average_output") and n_iterations > 0 else 1.0
    ensemble = TreeEnsemble(
        trees=tuple(trees),
        tree_outputs=tuple(outputs),
        n_outputs=per_iteration,
        n_features=int(dump["max_feature_idx"]) + 1,
        base=(0.0,) * per_iteration,
        divisor=divisor,
    )
    return LightGBMModel(
        ensemble=ensemble,
        transform=_TRANSFORMS[name],
        sigmoid=sigmoid,
        pandas_categorical=dump.get("pandas_categorical"),
        feature_names=tuple(dump.get("feature_names", ())),
    )


def lightgbm_output(raw: np.ndarray, transform: str, sigmoid: float) -> np.ndarray:
    """LightGBM's objective ``ConvertOutput`` applied to raw scores of shape (n, n_outputs)."""
    if transform == "identity":
        return raw
    if transform in ("sigmoid", "ova_sigmoid"):
        return 1.0 / (1.0 + np.exp(-sigmoid * raw))
    if transform == "xentropy":
        return 1.0 / (1.0 + np.exp(-raw))
    if transform == "exp":
        return np.exp(raw)
    if transform == "softmax":
        shifted = np.exp(raw - raw.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)
    raise AssertionError(transform)
