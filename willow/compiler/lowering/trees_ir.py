"""Plain node classes for tree ensembles: what every tree library lowers to before codegen.

The parsers (``trees_lightgbm``, ``trees_sklearn``) read fitted attributes only and produce a
:class:`TreeEnsemble`; ``trees_codegen`` turns it into kernel source. Each split carries the exact
routing rule of its library (how NaN, zero-as-missing and categories go), so codegen needs no
knowledge of where a tree came from.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["NumericSplit", "CategoricalSplit", "Leaf", "Node", "TreeEnsemble", "tree_depth"]

# LightGBM's kZeroThreshold (1e-35f) as the double it is compared in.
LGBM_ZERO_THRESHOLD = 1.0000000180025095e-35


@dataclass(frozen=True)
class NumericSplit:
    """``x[feature] <= threshold`` goes left.

    NaN goes left iff ``nan_left``. With ``zero_missing`` (LightGBM missing_type Zero), NaN and
    ``|x| <= 1e-35`` are both missing and go left iff ``nan_left``.
    """

    feature: int
    threshold: float
    nan_left: bool
    zero_missing: bool = False


@dataclass(frozen=True)
class CategoricalSplit:
    """Category sets: ``int(x)`` in ``left`` goes left.

    ``style="lightgbm"``: NaN, negative and out-of-int32 values go right (LightGBM casts with
    ``static_cast<int>``). ``style="sklearn"`` (HistGradientBoosting): NaN, negative values and
    categories not in ``known`` are missing and go left iff ``nan_left``; values are cast to uint8.
    """

    feature: int
    left: tuple[int, ...]
    style: str
    nan_left: bool = False
    known: tuple[int, ...] = ()


@dataclass(frozen=True)
class Leaf:
    """Leaf outputs: one value per output column the tree writes (see ``TreeEnsemble.tree_outputs``)."""

    values: tuple[float, ...]


@dataclass(frozen=True)
class Node:
    """An internal node: ``split`` routes a row to ``left`` or ``right``."""

    split: NumericSplit | CategoricalSplit
    left: Node | Leaf
    right: Node | Leaf


@dataclass(frozen=True)
class TreeEnsemble:
    """A fitted ensemble as plain data.

    raw[c] = (base[c] + sum of the trees' leaf values written to column c, added in tree order)
    / ``divisor``. Tree ``t`` adds ``leaf.values[j]`` to column ``tree_outputs[t][j]``.
    ``float32_input``: features are rounded to float32 before comparing (scikit-learn trees).
    Turning raw scores into the method's output (sigmoid, softmax, labels) is the operator's job.
    """

    trees: tuple[Node | Leaf, ...]
    tree_outputs: tuple[tuple[int, ...], ...]
    n_outputs: int
    n_features: int
    base: tuple[float, ...]
    divisor: float = 1.0
    float32_input: bool = False


def tree_depth(tree: Node | Leaf) -> int:
    """Depth of ``tree`` (a lone leaf has depth 0), without recursion."""
    best = 0
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, Node):
            stack.append((node.left, depth + 1))
            stack.append((node.right, depth + 1))
        else:
            best = max(best, depth)
    return best
