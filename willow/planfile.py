"""Plan files without pickle: what :meth:`OptimizedPipeline.save` writes and :func:`willow.load` reads.

A plan file is one zip container holding

- ``manifest.json``: the plan state (:meth:`OptimizedPipeline._plan_state`: the plan, the cost
  profile, the output description, the options, the compile recipes, the top-K state) as tagged
  JSON, plus the container format, the willow version and the function's source fingerprint;
- ``arrays.npz``: every numeric, boolean or string array, read back with ``allow_pickle=False``;
- ``models/m<i>.skops``: each fitted scikit-learn estimator, written by :mod:`skops.io` and read
  back with skops' default trusted types plus :data:`TRUSTED_SKOPS_TYPES` (tree node storage,
  whose node indices willow checks after loading, see :func:`check_trees`); any other type is
  refused;
- ``models/m<i>.lgb.txt``: each LightGBM booster as LightGBM's own model text (the scikit-learn
  wrapper's other attributes go into the manifest);
- ``seal.json``: the SHA-256 of the other members' content (names and bytes, in a fixed order)
  and, when saved with ``key=``, an HMAC-SHA256 of the same content under that key.

Loading checks the seal before it parses anything, and refuses, with a
:class:`~willow.PlanMismatchError` saying why, a file that is not such a container, is truncated
or damaged, was edited after it was saved (a changed threshold changes the digest), or, when a
``key=`` is given, is unsigned or signed with another key. Nothing in a plan file is executed:
JSON objects become only the classes listed in :data:`DATACLASSES` and :data:`OBJECTS`, arrays
cannot hold Python objects, and estimators go through skops' audited loader. A ``score=``
callable of a top-K plan (or a ``tolerance=`` callable) is stored by name and looked up, at load time, among the globals of the
function passed to :func:`willow.load` (so a file can only name a function the user's own module
defines).

Pickling a pipeline (for Dask, ``__getstate__``) does not use this module: it carries the same
plan state as a pickle, for processes that trust each other.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import importlib
import io
import json
import os
import types
import zipfile
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np

from willow._version import __version__
from willow.errors import PlanMismatchError, UnsavablePlanError

__all__ = [
    "CONTAINER",
    "TRUSTED_SKOPS_TYPES",
    "UnsavablePlanError",
    "write_plan",
    "read_plan",
    "check_trees",
]

CONTAINER = "willow-plan-file/2"
MANIFEST, ARRAYS, SEAL = "manifest.json", "arrays.npz", "seal.json"
MAX_MEMBER_BYTES = 2**31  # a member declaring more than 2 GiB is refused before it is read

TRUSTED_SKOPS_TYPES = (
    "sklearn.tree._tree.Tree",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
)
"""Types skops does not trust by default that a plan file may hold. skops flags them because a
crafted node array could index out of bounds; :func:`check_trees` checks every node index after
loading and refuses the file otherwise."""

DATACLASSES = (
    "willow.cascades.plan:CascadePlan",
    "willow.cascades.plan:CandidateResult",
    "willow.cascades.outputs:OutputSpec",
    "willow.cascades.tolerance:ToleranceSpec",
    "willow.compiler.profiling:CostProfile",
    "willow.compiler.profiling:StatementCost",
    "willow.compiler.profiling:GroupCost",
    "willow.topk.plan:TopKPlan",
    "willow.early_exit.plan:EarlyExitPlan",
    "willow.early_exit.distilled:DistilledPlan",
    "willow.topk.plan:RatioRow",
    "willow.topk.plan:TopKCandidate",
    "willow.topk.scores:ScoreSpec",
)
"""Frozen dataclasses a plan file may hold, rebuilt field by field with their constructor."""

OBJECTS = (
    "willow.cascades.approximate:ApproximateModel",
    "willow.cascades.tolerance:RegressionApproximateModel",
    "willow.topk.approximate:ApproximateScorer",
    "willow.topk.prefix:PrefixFilter",
)
"""Classes a plan file may hold through their ``__getstate__`` / ``__setstate__`` (what their
pickle holds; ``__setstate__`` compiles the kernels again)."""

LIGHTGBM = ("LGBMClassifier", "LGBMRegressor", "LGBMRanker", "LGBMModel")


def _name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _resolve_class(name: Any, allowed: tuple[str, ...]) -> type:
    if not isinstance(name, str) or name not in allowed:
        raise PlanMismatchError(f"the file names a class {name!r} that a willow plan never holds")
    module, qualname = name.split(":")
    return getattr(importlib.import_module(module), qualname)


# ---------------------------------------------------------------------------------------- encoding


class _Encoder:
    """Turns a plan state into JSON-able data, collecting arrays and model files on the way."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}
        self.members: dict[str, bytes] = {}

    def encode(self, value: Any, where: str) -> Any:
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, np.generic):
            return self._scalar(value, where)
        if isinstance(value, (int, float)) and type(value) in (int, float):
            return value
        if isinstance(value, np.ndarray):
            return self._array(value, where)
        if isinstance(value, np.dtype):
            return {"$": "dtype", "descr": _dtype_descr(value, where)}
        if isinstance(value, tuple):
            return {"$": "tuple", "items": [self.encode(v, f"{where}[{i}]") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [self.encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, frozenset):
            items = sorted(value, key=repr)
            return {"$": "frozenset", "items": [self.encode(v, where) for v in items]}
        if isinstance(value, dict):
            return self._dict(value, where)
        if dataclasses.is_dataclass(value) and _name(type(value)) in DATACLASSES:
            fields = {
                f.name: self.encode(getattr(value, f.name), f"{where}.{f.name}")
                for f in dataclasses.fields(value)
            }
            return {"$": "dataclass", "class": _name(type(value)), "fields": fields}
        if _name(type(value)) in OBJECTS:
            state = value.__getstate__()
            return {"$": "object", "class": _name(type(value)), "state": self._dict(state, where)}
        if type(value).__module__.startswith("lightgbm"):
            return self._lightgbm(value, where)
        if _is_sklearn_estimator(value):
            return self._sklearn(value, where)
        if isinstance(value, types.FunctionType):
            return self._function(value, where)
        raise UnsavablePlanError(
            f"Cannot save this plan: {where} is a {type(value).__module__}.{type(value).__qualname__}, "
            "which a willow plan file cannot store without pickle (it stores plain data, arrays, "
            "scikit-learn estimators and LightGBM models). Pickle the pipeline instead, only between "
            "processes that trust each other, or recalibrate after loading."
        )

    def _scalar(self, value: np.generic, where: str) -> Any:
        return {"$": "scalar", "dtype": _dtype_descr(value.dtype, where), "value": value.item()}

    def _array(self, value: np.ndarray, where: str) -> Any:
        if value.dtype.hasobject:
            items = [self.encode(v, f"{where}[...]") for v in value.reshape(-1).tolist()]
            return {"$": "objects", "shape": list(value.shape), "items": items}
        if value.dtype.kind not in "biufcUSMm":
            raise UnsavablePlanError(f"Cannot save this plan: {where} is an array of dtype {value.dtype}.")
        name = f"a{len(self.arrays)}"
        self.arrays[name] = value
        return {"$": "array", "name": name}

    def _dict(self, value: dict, where: str) -> Any:
        if isinstance(value, defaultdict):
            value = dict(value)
        if all(isinstance(k, str) and k != "$" for k in value):
            return {k: self.encode(v, f"{where}[{k!r}]") for k, v in value.items()}
        return {
            "$": "dict",
            "items": [[self.encode(k, where), self.encode(v, f"{where}[{k!r}]")] for k, v in value.items()],
        }

    def _member(self, suffix: str, data: bytes) -> str:
        name = f"models/m{len(self.members)}.{suffix}"
        self.members[name] = data
        return name

    def _sklearn(self, value: Any, where: str) -> Any:
        import skops.io as sio

        try:
            data = sio.dumps(value)
        except Exception as exc:  # noqa: BLE001 - skops refuses many custom types; say which
            raise UnsavablePlanError(
                f"Cannot save this plan: {where} ({type(value).__name__}) cannot be written by "
                f"skops.io ({type(exc).__name__}: {exc})."
            ) from exc
        untrusted = [t for t in sio.get_untrusted_types(data=data) if t not in TRUSTED_SKOPS_TYPES]
        if untrusted:
            raise UnsavablePlanError(
                f"Cannot save this plan: {where} ({type(value).__name__}) holds types that a plan "
                f"file would have to trust blindly on load: {untrusted}. Use an estimator made of "
                "scikit-learn's own types (or a LightGBM model) as the approximate model, or pickle "
                "the pipeline between processes that trust each other."
            )
        return {"$": "sklearn", "member": self._member("skops", data)}

    def _lightgbm(self, value: Any, where: str) -> Any:
        import lightgbm

        if isinstance(value, lightgbm.Booster):
            text = value.model_to_string(num_iteration=-1)
            return {"$": "booster", "member": self._member("lgb.txt", text.encode("utf-8"))}
        cls = type(value)
        if cls.__name__ not in LIGHTGBM or getattr(lightgbm, cls.__name__, None) is not cls:
            raise UnsavablePlanError(f"Cannot save this plan: {where} is a {cls.__qualname__}.")
        attributes = {k: v for k, v in value.__dict__.items() if k != "_Booster"}
        booster = value.__dict__.get("_Booster")
        return {
            "$": "lightgbm",
            "class": cls.__name__,
            "attributes": self._dict(attributes, where),
            "booster": None if booster is None else self._lightgbm(booster, where),
        }

    def _function(self, value: types.FunctionType, where: str) -> Any:
        if "<" in value.__qualname__ or "." in value.__qualname__:
            raise UnsavablePlanError(
                f"Cannot save this plan: {where} is the function {value.__qualname__}, which a plan "
                "file stores by name; define it at module level, beside the pipeline function."
            )
        return {"$": "function", "module": value.__module__, "name": value.__qualname__}


def _dtype_descr(dtype: np.dtype, where: str) -> Any:
    if dtype.hasobject and dtype != np.dtype(object):
        raise UnsavablePlanError(f"Cannot save this plan: {where} has a structured object dtype {dtype}.")
    return np.lib.format.dtype_to_descr(dtype)


def _is_sklearn_estimator(value: Any) -> bool:
    try:
        from sklearn.base import BaseEstimator
    except ImportError:  # pragma: no cover - scikit-learn is a core dependency
        return False
    return isinstance(value, BaseEstimator)


# ---------------------------------------------------------------------------------------- decoding


class _Decoder:
    """Rebuilds a plan state from its manifest, arrays and model files (see the module doc)."""

    def __init__(self, arrays: Any, members: dict[str, bytes], namespace: dict[str, Any]) -> None:
        self.arrays = arrays
        self.members = members
        self.namespace = namespace

    def decode(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.decode(v) for v in value]
        if not isinstance(value, dict):
            return value
        tag = value.get("$")
        if tag is None:
            return {k: self.decode(v) for k, v in value.items()}
        decoder = self._DECODERS.get(tag) if isinstance(tag, str) else None
        if decoder is None:
            raise PlanMismatchError(f"the manifest holds an unknown entry kind {tag!r}")
        return decoder(self, value)

    def _tuple(self, value: dict) -> tuple:
        return tuple(self.decode(v) for v in _list(value, "items"))

    def _frozenset(self, value: dict) -> frozenset:
        return frozenset(self.decode(v) for v in _list(value, "items"))

    def _dict(self, value: dict) -> dict:
        items = _list(value, "items")
        if not all(isinstance(item, list) and len(item) == 2 for item in items):
            raise PlanMismatchError("a dictionary entry of the manifest is not a [key, value] pair")
        return {self.decode(k): self.decode(v) for k, v in items}

    def _dtype(self, value: dict) -> np.dtype:
        return _dtype_from(value.get("descr"))

    def _scalar(self, value: dict) -> np.generic:
        dtype = _dtype_from(value.get("dtype"))
        if dtype.hasobject:
            raise PlanMismatchError("a scalar of the manifest claims an object dtype")
        return np.array(value.get("value"), dtype=dtype)[()]

    def _array(self, value: dict) -> np.ndarray:
        name = value.get("name")
        if not isinstance(name, str) or name not in self.arrays:
            raise PlanMismatchError(f"the manifest names an array {name!r} that arrays.npz does not hold")
        return self.arrays[name]

    def _objects(self, value: dict) -> np.ndarray:
        shape, items = value.get("shape"), [self.decode(v) for v in _list(value, "items")]
        out = np.empty(len(items), dtype=object)
        out[:] = items
        return out.reshape(shape)

    def _dataclass(self, value: dict) -> Any:
        cls = _resolve_class(value.get("class"), DATACLASSES)
        fields = value.get("fields")
        expected = {f.name for f in dataclasses.fields(cls)}
        required = {
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        if not isinstance(fields, dict) or not set(fields) <= expected or not required <= set(fields):
            found = sorted(fields) if isinstance(fields, dict) else type(fields).__name__
            raise PlanMismatchError(
                f"{cls.__name__} in the manifest has fields {found}, expected {sorted(expected)}"
            )
        return cls(**{k: self.decode(v) for k, v in fields.items()})

    def _object(self, value: dict) -> Any:
        cls = _resolve_class(value.get("class"), OBJECTS)
        state = self.decode(value.get("state"))
        if not isinstance(state, dict):
            raise PlanMismatchError(f"the state of {cls.__name__} in the manifest is not a dictionary")
        obj = cls.__new__(cls)
        obj.__setstate__(state)
        return obj

    def _sklearn(self, value: dict) -> Any:
        import skops.io as sio

        data = self._read_member(value, ".skops")
        found = sio.get_untrusted_types(data=data)
        refused = [t for t in found if t not in TRUSTED_SKOPS_TYPES]
        if refused:
            raise PlanMismatchError(f"an estimator in the file holds types willow does not trust: {refused}")
        estimator = sio.loads(data, trusted=list(found))
        check_trees(estimator)
        return estimator

    def _booster(self, value: dict) -> Any:
        import lightgbm

        text = self._read_member(value, ".lgb.txt").decode("utf-8")
        return lightgbm.Booster(model_str=text)

    def _lightgbm(self, value: dict) -> Any:
        import lightgbm

        name = value.get("class")
        if name not in LIGHTGBM:
            raise PlanMismatchError(f"the file names a LightGBM class {name!r} that willow does not load")
        cls = getattr(lightgbm, name)
        attributes = self.decode(value.get("attributes"))
        if not isinstance(attributes, dict):
            raise PlanMismatchError(f"the attributes of {name} in the manifest are not a dictionary")
        estimator = cls.__new__(cls)
        estimator.__dict__.update(attributes)
        booster = value.get("booster")
        if booster is not None:
            estimator._Booster = self.decode(booster)
        return estimator

    def _function(self, value: dict) -> Any:
        name = value.get("name")
        found = self.namespace.get(name) if isinstance(name, str) else None
        if not isinstance(found, types.FunctionType) or found.__qualname__ != name:
            raise PlanMismatchError(
                f"the plan's score= or tolerance= is the function {value.get('module')}.{name}, which the pipeline "
                "function's module does not define; define it there before loading the plan"
            )
        return found

    def _read_member(self, value: dict, suffix: str) -> bytes:
        member = value.get("member")
        if not isinstance(member, str) or not member.endswith(suffix) or member not in self.members:
            raise PlanMismatchError(f"the manifest names a model file {member!r} that the file does not hold")
        return self.members[member]


_Decoder._DECODERS = {
    tag: getattr(_Decoder, f"_{tag}")
    for tag in (
        "tuple",
        "frozenset",
        "dict",
        "dtype",
        "scalar",
        "array",
        "objects",
        "dataclass",
        "object",
        "sklearn",
        "booster",
        "lightgbm",
        "function",
    )
}


def _list(value: dict, key: str) -> list:
    items = value.get(key)
    if not isinstance(items, list):
        raise PlanMismatchError(f"a {value.get('$')} entry of the manifest has no list {key!r}")
    return items


def _dtype_from(descr: Any) -> np.dtype:
    try:
        if isinstance(descr, list):
            descr = [tuple(d) for d in descr]
        return np.lib.format.descr_to_dtype(descr)
    except Exception as exc:
        raise PlanMismatchError(f"the manifest holds an invalid dtype {descr!r}") from exc


def check_trees(estimator: Any) -> None:
    """Refuse an estimator whose tree node storage could index out of bounds when predicting.

    Checks every ``sklearn.tree._tree.Tree`` (decision trees, forests, gradient boosting) and
    every histogram gradient boosting ``TreePredictor`` reachable through the estimator's
    attributes: a child index must point to a later node of the same tree (so no cycles and no
    index past the end), a split's feature must be one of the model's features, and a categorical
    split's bitset must exist.
    """
    from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor
    from sklearn.tree._tree import Tree

    n_features = getattr(estimator, "n_features_in_", None)
    seen: set[int] = set()

    def visit(value: Any, depth: int) -> None:
        if depth > 6 or id(value) in seen:
            return
        seen.add(id(value))
        if isinstance(value, Tree):
            _check_sklearn_tree(value)
        elif isinstance(value, TreePredictor):
            _check_predictor(value, n_features)
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item, depth + 1)
        elif isinstance(value, np.ndarray) and value.dtype.hasobject:
            for item in value.reshape(-1):
                visit(item, depth + 1)
        elif hasattr(value, "__dict__") and not isinstance(value, type):
            for item in vars(value).values():
                visit(item, depth + 1)

    visit(estimator, 0)


def _check_children(left: np.ndarray, right: np.ndarray, internal: np.ndarray, what: str) -> None:
    n = len(left)
    index = np.arange(n)
    ok = (left[internal] > index[internal]) & (left[internal] < n)
    ok &= (right[internal] > index[internal]) & (right[internal] < n)
    if not ok.all():
        raise PlanMismatchError(f"a {what} in the file has child indices outside its {n} nodes")


def _check_sklearn_tree(tree: Any) -> None:
    left, right = np.asarray(tree.children_left), np.asarray(tree.children_right)
    feature = np.asarray(tree.feature)
    n = tree.node_count
    if not (len(left) == len(right) == len(feature) == n == np.asarray(tree.value).shape[0]):
        raise PlanMismatchError("a decision tree in the file has node arrays of different lengths")
    internal = left != -1
    if not np.array_equal(internal, right != -1):
        raise PlanMismatchError("a decision tree in the file has a node with only one child")
    _check_children(left, right, internal, "decision tree")
    if ((feature[internal] < 0) | (feature[internal] >= tree.n_features)).any():
        raise PlanMismatchError("a decision tree in the file splits on a feature it does not have")


def _check_predictor(predictor: Any, n_features: int | None) -> None:
    nodes = predictor.nodes
    internal = ~nodes["is_leaf"].astype(bool)
    _check_children(nodes["left"].astype(np.int64), nodes["right"].astype(np.int64), internal, "boosted tree")
    feature = nodes["feature_idx"][internal].astype(np.int64)
    if (feature < 0).any() or (n_features is not None and (feature >= n_features).any()):
        raise PlanMismatchError("a boosted tree in the file splits on a feature it does not have")
    categorical = internal & nodes["is_categorical"].astype(bool)
    bitsets = nodes["bitset_idx"][categorical].astype(np.int64)
    limit = min(len(predictor.raw_left_cat_bitsets), len(predictor.binned_left_cat_bitsets))
    if ((bitsets < 0) | (bitsets >= limit)).any():
        raise PlanMismatchError("a boosted tree in the file has a categorical split without its bitset")


# ---------------------------------------------------------------------------------------- container


def _key_bytes(key: bytes | str | None) -> bytes | None:
    if key is None:
        return None
    if isinstance(key, str):
        key = key.encode("utf-8")
    if not isinstance(key, (bytes, bytearray)) or not key:
        raise ValueError(f"key must be a non-empty bytes or str, got {type(key).__name__} {key!r}.")
    return bytes(key)


def _canonical(members: dict[str, bytes]) -> bytes:
    """What the seal covers: every member's name and SHA-256, in name order."""
    return b"".join(
        name.encode("utf-8") + b"\0" + hashlib.sha256(members[name]).digest() for name in sorted(members)
    )


def write_plan(path: str | os.PathLike, state: dict[str, Any], key: bytes | str | None = None) -> None:
    """Write the plan ``state`` (from ``OptimizedPipeline._plan_state``) to ``path``.

    With ``key`` the seal also holds an HMAC-SHA256 under it, which :func:`read_plan` with the same
    key requires. The file is written to a temporary name first and renamed, so a crash never
    leaves half a plan under ``path``.
    """
    key_bytes = _key_bytes(key)
    encoder = _Encoder()
    manifest = {
        "container": CONTAINER,
        "willow_version": __version__,
        "function": state.get("function"),
        "source_fingerprint": state.get("source_fingerprint"),
        "state": encoder.encode(state, "the plan"),
    }
    arrays = io.BytesIO()
    np.savez(arrays, allow_pickle=False, **encoder.arrays)
    members = {
        MANIFEST: json.dumps(manifest, indent=1).encode("utf-8"),
        ARRAYS: arrays.getvalue(),
        **encoder.members,
    }
    canonical = _canonical(members)
    seal = {
        "container": CONTAINER,
        "members": sorted(members),
        "sha256": hashlib.sha256(canonical).hexdigest(),
        "hmac_sha256": None
        if key_bytes is None
        else hmac.new(key_bytes, canonical, hashlib.sha256).hexdigest(),
    }
    members[SEAL] = json.dumps(seal, indent=1, sort_keys=True).encode("utf-8")
    target = os.fspath(path)
    temporary = f"{target}.{os.getpid()}.tmp"
    try:
        with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, data in members.items():
                archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def read_plan(
    path: str | os.PathLike, key: bytes | str | None = None, namespace: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The plan state saved in ``path`` by :func:`write_plan`, after checking its seal.

    ``namespace`` holds the globals a stored ``score=`` function is looked up in (the pipeline
    function's). Raises :class:`~willow.PlanMismatchError` saying why for any file it will not
    load: not a plan file, damaged, edited, unsigned or wrongly signed when ``key`` is given, made
    by another willow version, or holding anything but plain data, arrays and trusted estimators.
    """
    key_bytes = _key_bytes(key)
    where = repr(os.fspath(path))
    members = _read_members(path, where)
    seal = _parse_json(members.pop(SEAL), SEAL, where)
    if not isinstance(seal, dict) or seal.get("container") != CONTAINER:
        raise PlanMismatchError(
            f"{where} is not a willow plan file (its seal names no {CONTAINER} container)."
        )
    if seal.get("members") != sorted(members):
        raise PlanMismatchError(
            f"{where} was altered after it was saved: it holds {sorted(members)}, but its seal lists "
            f"{seal.get('members')}. Save the plan again from the calibrated pipeline."
        )
    canonical = _canonical(members)
    if not hmac.compare_digest(str(seal.get("sha256")), hashlib.sha256(canonical).hexdigest()):
        raise PlanMismatchError(
            f"{where} is damaged or was edited after it was saved: its content does not match the "
            "SHA-256 in its seal. Save the plan again from the calibrated pipeline."
        )
    if key_bytes is not None:
        signature = seal.get("hmac_sha256")
        if not isinstance(signature, str):
            raise PlanMismatchError(
                f"{where} is not signed, but load() was given a key: only a plan saved with "
                "save(path, key=...) under the same key is accepted. Save it again with the key."
            )
        expected = hmac.new(key_bytes, canonical, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(signature, expected):
            raise PlanMismatchError(
                f"{where} is signed with another key than the one given to load() (its HMAC-SHA256 "
                "does not match): it was not saved by whoever holds this key, or was altered since."
            )
    manifest = _parse_json(members[MANIFEST], MANIFEST, where)
    if not isinstance(manifest, dict) or manifest.get("container") != CONTAINER:
        raise PlanMismatchError(f"{where} is not a willow plan file (expected a {CONTAINER} manifest).")
    if manifest.get("willow_version") != __version__:
        raise PlanMismatchError(
            f"{where} was saved by willow {manifest.get('willow_version')}, but this is willow "
            f"{__version__}. Recalibrate the pipeline with this version and save it again."
        )
    try:
        with np.load(io.BytesIO(members[ARRAYS]), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        models = {name: data for name, data in members.items() if name.startswith("models/")}
        state = _Decoder(arrays, models, namespace or {}).decode(manifest.get("state"))
    except PlanMismatchError as exc:
        raise PlanMismatchError(f"{where} cannot be loaded: {exc}.") from exc
    except Exception as exc:  # noqa: BLE001 - a sealed file that still does not decode: say so, never crash raw
        raise PlanMismatchError(
            f"{where} cannot be loaded: its content does not describe a willow plan "
            f"({type(exc).__name__}: {exc}). Save the plan again from the calibrated pipeline."
        ) from exc
    if not isinstance(state, dict):
        raise PlanMismatchError(f"{where} cannot be loaded: its manifest holds no plan state.")
    return state


def _read_members(path: str | os.PathLike, where: str) -> dict[str, bytes]:
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            names = [info.filename for info in infos]
            if len(set(names)) != len(names):
                raise PlanMismatchError(f"{where} holds the same member twice, so it was crafted or altered.")
            if SEAL not in names:
                raise PlanMismatchError(f"{where} is not a willow plan file (it has no {SEAL}).")
            if any(info.file_size > MAX_MEMBER_BYTES for info in infos):
                raise PlanMismatchError(f"{where} declares a member over {MAX_MEMBER_BYTES} bytes.")
            return {info.filename: archive.read(info) for info in infos}
    except PlanMismatchError:
        raise
    except FileNotFoundError:
        raise
    except zipfile.BadZipFile as exc:
        raise PlanMismatchError(
            f"{where} is not a willow plan file, or is truncated or damaged ({exc}). Plan files are "
            "written by OptimizedPipeline.save()."
        ) from exc
    except Exception as exc:  # noqa: BLE001 - zip damage surfaces as many builtin errors
        raise PlanMismatchError(
            f"{where} is not a willow plan file, or is truncated or damaged ({type(exc).__name__}: {exc})."
        ) from exc


def _parse_json(data: bytes, member: str, where: str) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise PlanMismatchError(f"{where} is damaged: its {member} is not valid JSON ({exc}).") from exc


def loader_namespace(fn: Callable) -> dict[str, Any]:
    """The globals a stored ``score=`` function is looked up in: the pipeline function's."""
    return dict(getattr(fn, "__globals__", {}))
