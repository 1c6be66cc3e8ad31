"""scikit-learn tree ensembles as :class:`TreeEnsemble`, read from fitted attributes only.

* ``RandomForest*`` / ``ExtraTrees*``: features rounded to float32, NaN follows
  ``tree_.missing_go_to_left``; classifiers average per-tree class frequencies (normalised per
  leaf exactly as ``DecisionTreeClassifier.predict_proba`` does), regressors average leaf values.
* ``GradientBoosting*``: ``init`` raw score plus ``learning_rate * value`` per tree (the product
  is precomputed: it is the same double ``predict_stages`` computes); its dense fast path ignores
  ``missing_go_to_left``, so NaN always goes right.
* ``HistGradientBoosting*``: float64 features after the model's own preprocessing, NaN follows
  ``missing_go_to_left``, categorical splits use ``raw_left_cat_bitsets`` with unknown and
  negative categories treated as missing (``_predictor.pyx``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from willow.compiler.lowering.base import NotLowerable
from willow.compiler.lowering.trees_ir import CategoricalSplit, Leaf, Node, NumericSplit, TreeEnsemble

__all__ = ["parse_forest", "parse_gradient_boosting", "parse_hist_gradient_boosting"]

_TREE_LEAF = -1


def _bits_to_categories(words: np.ndarray) -> tuple[int, ...]:
    return tuple(int(c) for c in range(32 * len(words)) if (int(words[c >> 5]) >> (c & 31)) & 1)


def _sklearn_tree(tree: Any, leaf_values: np.ndarray, honour_missing: bool) -> Node | Leaf:
    """Nested nodes of a fitted ``sklearn.tree._tree.Tree`` with ``leaf_values[node]`` at leaves."""
    left, right = tree.children_left, tree.children_right
    feature, threshold = tree.feature, tree.threshold
    missing_left = getattr(tree, "missing_go_to_left", None)
    built: dict[int, Node | Leaf] = {}
    # post-order without recursion (fully grown forests can be deep)
    stack = [(0, False)]
    while stack:
        node, expanded = stack.pop()
        if left[node] == _TREE_LEAF:
            built[node] = Leaf(tuple(float(v) for v in leaf_values[node]))
        elif expanded:
            nan_left = bool(missing_left[node]) if honour_missing and missing_left is not None else False
            split = NumericSplit(int(feature[node]), float(threshold[node]), nan_left=nan_left)
            built[node] = Node(split, built.pop(int(left[node])), built.pop(int(right[node])))
        else:
            stack.extend(((node, True), (int(left[node]), False), (int(right[node]), False)))
    return built[0]


def parse_forest(model: Any) -> TreeEnsemble:
    """A fitted ``RandomForest*`` / ``ExtraTrees*``: raw = per-tree outputs summed, divided by n."""
    if getattr(model, "n_outputs_", 1) != 1:
        raise NotLowerable("Multi-output forests are not supported; fit one model per output.")
    is_classifier = hasattr(model, "classes_")
    trees = []
    for estimator in model.estimators_:
        tree = estimator.tree_
        if is_classifier:
            proba = tree.value[:, 0, : model.n_classes_].astype(np.float64)
            normalizer = proba.sum(axis=1)[:, np.newaxis]
            normalizer[normalizer == 0.0] = 1.0
            leaf_values = proba / normalizer
        else:
            leaf_values = tree.value[:, 0, :1].astype(np.float64)
        trees.append(_sklearn_tree(tree, leaf_values, honour_missing=True))
    width = model.n_classes_ if is_classifier else 1
    return TreeEnsemble(
        trees=tuple(trees),
        tree_outputs=(tuple(range(width)),) * len(trees),
        n_outputs=width,
        n_features=int(model.n_features_in_),
        base=(0.0,) * width,
        divisor=float(len(model.estimators_)),
        float32_input=True,
    )


def parse_gradient_boosting(model: Any) -> TreeEnsemble:
    """A fitted ``GradientBoosting*``: raw = init + sum of learning_rate * leaf value, in order."""
    from sklearn.dummy import DummyClassifier, DummyRegressor

    n_features = int(model.n_features_in_)
    if isinstance(model.init_, str) and model.init_ == "zero":
        base = np.zeros(model.n_trees_per_iteration_)
    elif isinstance(model.init_, DummyClassifier | DummyRegressor):
        # the init estimator's raw prediction does not depend on the row
        base = model._raw_predict_init(np.zeros((1, n_features), dtype=np.float32))[0]
    else:
        raise NotLowerable(
            f"GradientBoosting with init={type(model.init_).__name__} is not supported; "
            "only the default init (or 'zero') has a row-independent starting score."
        )
    scale = float(model.learning_rate)
    trees, outputs = [], []
    for stage in model.estimators_:
        for k, estimator in enumerate(stage):
            tree = estimator.tree_
            leaf_values = scale * tree.value[:, 0, :1].astype(np.float64)
            trees.append(_sklearn_tree(tree, leaf_values, honour_missing=False))
            outputs.append((k,))
    width = int(model.n_trees_per_iteration_)
    return TreeEnsemble(
        trees=tuple(trees),
        tree_outputs=tuple(outputs),
        n_outputs=width,
        n_features=n_features,
        base=tuple(float(b) for b in base),
        float32_input=True,
    )


def _hist_tree(nodes: np.ndarray, left_bitsets: np.ndarray, known: dict[int, tuple[int, ...]]) -> Node | Leaf:
    built: dict[int, Node | Leaf] = {}
    stack = [(0, False)]
    while stack:
        index, expanded = stack.pop()
        node = nodes[index]
        if node["is_leaf"]:
            built[index] = Leaf((float(node["value"]),))
        elif expanded:
            feature = int(node["feature_idx"])
            nan_left = bool(node["missing_go_to_left"])
            if node["is_categorical"]:
                split: NumericSplit | CategoricalSplit = CategoricalSplit(
                    feature,
                    _bits_to_categories(left_bitsets[int(node["bitset_idx"])]),
                    style="sklearn",
                    nan_left=nan_left,
                    known=known[feature],
                )
            else:
                split = NumericSplit(feature, float(node["num_threshold"]), nan_left=nan_left)
            built[index] = Node(split, built.pop(int(node["left"])), built.pop(int(node["right"])))
        else:
            stack.extend(((index, True), (int(node["left"]), False), (int(node["right"]), False)))
    return built[0]


def parse_hist_gradient_boosting(model: Any) -> TreeEnsemble:
    """A fitted ``HistGradientBoosting*``: raw = baseline + sum of leaf values, in tree order."""
    known_bitsets, f_idx_map = model._bin_mapper.make_known_categories_bitsets()
    # feature indices in the trees refer to the preprocessed columns, like the bin mapper's
    is_categorical = model._bin_mapper.is_categorical
    if is_categorical is None:
        is_categorical = ()
    known = {
        int(f): _bits_to_categories(known_bitsets[int(f_idx_map[f])]) for f in np.flatnonzero(is_categorical)
    }
    trees, outputs = [], []
    for iteration in model._predictors:
        for k, predictor in enumerate(iteration):
            trees.append(_hist_tree(predictor.nodes, predictor.raw_left_cat_bitsets, known))
            outputs.append((k,))
    baseline = np.asarray(model._baseline_prediction, dtype=np.float64).ravel()
    return TreeEnsemble(
        trees=tuple(trees),
        tree_outputs=tuple(outputs),
        n_outputs=int(model.n_trees_per_iteration_),
        n_features=len(model._bin_mapper.n_bins_non_missing_),
        base=tuple(float(b) for b in baseline),
    )
