"""A LightGBM model's lowering inputs remembered on disk, so a second process never parses it.

Lowering a 500-tree x 63-leaf model in a process whose kernels are already in the cache spent
most of its time before loading them: ``Booster.dump_model()`` and its JSON (~0.8 s), building
the :class:`TreeEnsemble` from it (~0.5 s), grouping the trees (~0.5 s), pickling the ensemble
for ``trees_sources``' key (~0.35 s) and the bitvector tables (~0.9 s). All of it is a pure
function of the model's text (``Booster.model_to_string``, which holds every tree, the objective
and ``pandas_categorical``), the ``group_nodes`` option and the code that computes it, so
:func:`read_lightgbm` keys it by a SHA-256 of the three and keeps one entry file in the kernel
cache: the parsed model's output fields, the ensemble's shape, the ensemble itself as pickle bytes
(unpickled only when someone reads ``operator.ensemble``: materialising 62,500 nodes costs
~0.45 s), the tree groups, the names of the group module files and the bitvector tables.

The file is sealed as every kernel cache file is (:func:`~willow.compiler.kernel_cache.seal`:
a marker and the SHA-256 of the rest; the entry format's version is part of the key); a missing,
damaged or stale file (or a group module file that does not hold what its name says) is a miss, and the
caller parses the model and writes the entry again (:func:`write_lightgbm`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from willow.compiler.backend import kernel_cache_dir
from willow.compiler.kernel_cache import seal, unseal, write_atomic
from willow.compiler.lowering.trees_bitvector import BitvectorTables
from willow.compiler.lowering.trees_ir import TreeEnsemble
from willow.compiler.lowering.trees_sources import read_named_sources, source_names

__all__ = ["DeferredEnsemble", "WarmLightGBM", "read_lightgbm", "write_lightgbm", "model_key"]

_VERSION = b"willow-tree-warm-1\n"


@dataclass(frozen=True)
class DeferredEnsemble:
    """A :class:`TreeEnsemble`'s shape, with its trees kept as pickle bytes until :meth:`load`."""

    data: bytes
    n_trees: int
    n_outputs: int
    n_features: int
    base: tuple[float, ...]
    divisor: float
    float32_input: bool

    def load(self) -> TreeEnsemble:
        """The ensemble itself (with this object's ``divisor``, which ``raw`` lowering replaces)."""
        ensemble = pickle.loads(self.data)
        return (
            ensemble
            if ensemble.divisor == self.divisor
            else dataclasses.replace(ensemble, divisor=self.divisor)
        )


@dataclass(frozen=True)
class WarmLightGBM:
    """What lowering a LightGBM model needs besides its kernels, as read back from the cache."""

    ensemble: DeferredEnsemble
    transform: str
    sigmoid: float
    pandas_categorical: Any
    feature_names: tuple[str, ...]
    groups: list[range]
    sources: list[str]
    small: BitvectorTables | None


@lru_cache(maxsize=1)
def _code_digest() -> bytes:
    """The text of the modules whose code decides an entry's content: a change to any of them
    changes every key (``trees_sources`` covers the codegen modules)."""
    from willow.compiler.lowering import trees_bitvector, trees_lightgbm, trees_sources

    digest = hashlib.sha256(_VERSION)
    digest.update(trees_sources._codegen_digest())
    for module in (trees_bitvector, trees_lightgbm, trees_sources):
        digest.update(Path(module.__file__).read_bytes())
    digest.update(Path(__file__).read_bytes())
    return digest.digest()


def model_key(booster: Any, num_iteration: int | None, group_nodes: int) -> str:
    """SHA-256 of the model's text (its first ``num_iteration`` iterations), ``group_nodes`` and
    the code that parses, groups and renders it."""
    text = booster.model_to_string(
        num_iteration=num_iteration if num_iteration and num_iteration > 0 else None
    )
    digest = hashlib.sha256(_code_digest())
    digest.update(f"group_nodes={int(group_nodes)}\n".encode())
    digest.update(text.encode("utf-8"))
    return digest.hexdigest()


def _entry_path(key: str) -> Path:
    return kernel_cache_dir() / f"tree_warm_{key}.pkl"


def read_lightgbm(key: str, name_hint: str) -> WarmLightGBM | None:
    """The entry stored under ``key``, or None when it is missing, damaged, stale or names a
    group module file that is missing or does not hold what its name says."""
    try:
        payload = unseal(_entry_path(key).read_bytes())
    except OSError:
        return None
    if payload is None:
        return None
    try:
        fields = pickle.loads(payload)
        sources = read_named_sources(kernel_cache_dir(), fields.pop("source_names"), name_hint)
        if sources is None:
            return None
        fields["groups"] = [range(*g) for g in fields["groups"]]
        return WarmLightGBM(ensemble=DeferredEnsemble(**fields.pop("ensemble")), sources=sources, **fields)
    except Exception:  # an entry from another willow version: parse the model again
        return None


def write_lightgbm(
    key: str,
    name_hint: str,
    parsed: Any,
    groups: list[range],
    sources: list[str],
    small: BitvectorTables | None,
) -> None:
    """Remember ``parsed`` (a ``trees_lightgbm.LightGBMModel``) and what ``_compile`` derived from
    it under ``key``; the group module files must already be in the cache. An ensemble that does
    not pickle (a tree too deep for the pickler) is not remembered."""
    ensemble: TreeEnsemble = parsed.ensemble
    try:
        ensemble_data = pickle.dumps(ensemble, protocol=pickle.HIGHEST_PROTOCOL)
    except (RecursionError, pickle.PicklingError):
        return
    fields = {
        "ensemble": {
            "data": ensemble_data,
            "n_trees": len(ensemble.trees),
            "n_outputs": ensemble.n_outputs,
            "n_features": ensemble.n_features,
            "base": tuple(ensemble.base),
            "divisor": ensemble.divisor,
            "float32_input": ensemble.float32_input,
        },
        "transform": parsed.transform,
        "sigmoid": parsed.sigmoid,
        "pandas_categorical": parsed.pandas_categorical,
        "feature_names": parsed.feature_names,
        "groups": [(g.start, g.stop, g.step) for g in groups],
        "source_names": source_names(sources, name_hint),
        "small": small,
    }
    payload = pickle.dumps(fields, protocol=pickle.HIGHEST_PROTOCOL)
    write_atomic(_entry_path(key), seal(payload))
