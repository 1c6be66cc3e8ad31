"""Stable content fingerprints of fitted objects (models, vectorizers, encoders, tables).

A plan records the fingerprint of every fitted object it depends on and checks it again when it
is loaded, unpickled or handed a new object, so the fingerprint must depend on the object's
*learned state* only: its class, parameters, fitted attributes (vocabularies, coefficients,
thresholds...), tree dumps, and nothing that changes from one process to the next. Hashing a
pickle does not meet that bar: a pickle holds whatever the object keeps, including process
state such as scikit-learn's ``TfidfVectorizer._stop_words_id`` (an ``id()``), so a plan saved in
one process would never match in the next.

The rule for what counts as process state (and is left out):

* a private attribute (leading underscore) whose name ends in ``_id`` and holds a plain ``int``.
  That is the naming convention for caching an ``id()`` (scikit-learn's ``_stop_words_id``);
  public ``*_id`` attributes (``pad_token_id``, ``class_id``) are data and are kept;
* values that are live handles: ``ctypes`` objects and pointers (a LightGBM ``Booster.handle``),
  threads, locks, files and modules. A booster is fingerprinted by its own model text
  (``model_to_string()`` / XGBoost ``save_raw()``), which *is* its learned state.

Everything else is walked structurally: arrays by dtype, shape and bytes (C order, so a view and
a loaded copy hash alike), mappings by sorted key, sets sorted, functions by module and qualified
name, estimators by class and ``__dict__`` (or ``__getstate__``). Objects the walk does not know
are hashed through their pickle, which is deterministic for plain data.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import pickle
import struct
import threading
import types
from typing import Any

import numpy as np

__all__ = ["fingerprint", "is_process_state"]

_MAX_DEPTH = 200


def is_process_state(name: str, value: Any) -> bool:
    """Whether the attribute ``name`` holding ``value`` is process state, not learned state.

    See the module docstring for the rule and why.
    """
    if name.startswith("_") and name.endswith("_id") and type(value) is int:
        return True
    return _is_handle(value)


def _is_handle(value: Any) -> bool:
    return isinstance(
        value,
        (
            ctypes._SimpleCData,
            ctypes._Pointer,
            ctypes.Structure,
            ctypes.Array,
            threading.Thread,
            type(threading.Lock()),
            type(threading.RLock()),
            io.IOBase,
            types.ModuleType,
        ),
    )


def fingerprint(obj: Any) -> str:
    """A hex SHA-256 of ``obj``'s learned state, equal across processes for equal objects."""
    digest = hashlib.sha256()
    _Walker(digest).walk(obj, 0)
    return digest.hexdigest()


class _Walker:
    """Feeds a canonical encoding of an object graph into a hash (cycles become back-references)."""

    def __init__(self, digest: Any) -> None:
        self.digest = digest
        self.stack: dict[int, int] = {}

    def put(self, tag: str, payload: bytes = b"") -> None:
        self.digest.update(tag.encode() + b"\x00" + struct.pack("<Q", len(payload)) + payload)

    def walk(self, obj: Any, depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise RecursionError(f"fingerprint: object nested deeper than {_MAX_DEPTH} levels.")
        if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
            self.put(type(obj).__name__, repr(obj).encode() if not isinstance(obj, bytes) else obj)
            return
        if isinstance(obj, np.generic):
            self.put("np." + obj.dtype.str, np.asarray(obj).tobytes())
            return
        key = id(obj)
        if key in self.stack:  # a cycle: refer to the enclosing object by its depth
            self.put("ref", str(self.stack[key]).encode())
            return
        self.stack[key] = depth
        try:
            self._walk_container(obj, depth + 1)
        finally:
            del self.stack[key]

    def _walk_container(self, obj: Any, depth: int) -> None:
        if isinstance(obj, np.ndarray):
            self._array(obj, depth)
        elif isinstance(obj, (list, tuple)):
            self.put(type(obj).__name__, str(len(obj)).encode())
            for item in obj:
                self.walk(item, depth)
        elif isinstance(obj, dict):
            self.put("dict", str(len(obj)).encode())
            for k, v in sorted(obj.items(), key=lambda kv: _sort_key(kv[0])):
                self.walk(k, depth)
                self.walk(v, depth)
        elif isinstance(obj, (set, frozenset)):
            self.put(type(obj).__name__, str(len(obj)).encode())
            for item in sorted(obj, key=_sort_key):
                self.walk(item, depth)
        elif isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, type)):
            self.put("callable", f"{getattr(obj, '__module__', '')}.{obj.__qualname__}".encode())
        elif _is_handle(obj):
            self.put("handle", type(obj).__qualname__.encode())
        elif _model_text(obj) is not None:
            self.put("model", type(obj).__qualname__.encode() + b":" + _model_text(obj))
        elif _is_pandas(obj):
            self._pandas(obj, depth)
        elif _is_sparse(obj):
            csr = obj.tocsr(copy=True)
            csr.sum_duplicates()
            csr.sort_indices()
            self.put("sparse", f"{obj.format}{csr.shape}".encode())
            for part in (csr.data, csr.indices, csr.indptr):
                self._array(part, depth)
        else:
            self._object(obj, depth)

    def _array(self, arr: np.ndarray, depth: int) -> None:
        self.put("ndarray", f"{arr.dtype.str}{arr.shape}".encode())
        if arr.dtype.hasobject:
            for item in arr.ravel(order="C"):
                self.walk(item, depth)
        else:
            self.put("data", np.ascontiguousarray(arr).tobytes())

    def _pandas(self, obj: Any, depth: int) -> None:
        import pandas as pd

        if isinstance(obj, pd.DataFrame):
            self.put("DataFrame", str(obj.shape).encode())
            self.walk([str(c) for c in obj.columns], depth)
            self.walk([str(t) for t in obj.dtypes], depth)
            self.walk(obj.index.to_numpy(), depth)
            for column in range(obj.shape[1]):
                self.walk(obj.iloc[:, column].to_numpy(), depth)
        elif isinstance(obj, pd.Series):
            self.put("Series", f"{obj.name}{obj.dtype}".encode())
            self.walk(obj.index.to_numpy(), depth)
            self.walk(obj.to_numpy(), depth)
        else:  # an Index, Categorical...
            self.put(type(obj).__qualname__, str(getattr(obj, "dtype", "")).encode())
            self.walk(np.asarray(obj), depth)

    def _object(self, obj: Any, depth: int) -> None:
        cls = type(obj)
        self.put("object", f"{cls.__module__}.{cls.__qualname__}".encode())
        state = _state(obj)
        if state is None:
            try:
                self.put("pickle", pickle.dumps(obj, protocol=4))
            except Exception as exc:
                raise TypeError(
                    f"Cannot fingerprint a {cls.__qualname__}: it has no __dict__ and cannot be "
                    f"pickled ({type(exc).__name__}: {exc})."
                ) from exc
            return
        if isinstance(state, dict):
            state = {k: v for k, v in state.items() if not (isinstance(k, str) and is_process_state(k, v))}
        self.walk(state, depth)


def _state(obj: Any) -> Any:
    """The object's own state: ``__getstate__()`` when the class defines one, else ``__dict__``
    (plus ``__slots__``); ``None`` when there is neither."""
    getstate = getattr(type(obj), "__getstate__", None)
    if getstate is not None and getstate is not getattr(object, "__getstate__", None):
        try:
            return obj.__getstate__()
        except Exception:  # noqa: BLE001 - fall back on the attributes
            pass
    state: dict[str, Any] | None = dict(vars(obj)) if hasattr(obj, "__dict__") else None
    slots = [s for c in type(obj).__mro__ for s in getattr(c, "__slots__", ()) if isinstance(s, str)]
    if slots:
        state = state or {}
        for name in slots:
            if hasattr(obj, name) and name not in ("__dict__", "__weakref__"):
                state[name] = getattr(obj, name)
    return state


def _model_text(obj: Any) -> bytes | None:
    """A booster's own serialized model (LightGBM, XGBoost), which is its learned state."""
    module = type(obj).__module__ or ""
    if module.startswith("lightgbm") and hasattr(obj, "model_to_string"):
        return obj.model_to_string().encode()
    if module.startswith("xgboost") and hasattr(obj, "save_raw") and not hasattr(obj, "get_booster"):
        return bytes(obj.save_raw())
    return None


def _is_pandas(obj: Any) -> bool:
    return (type(obj).__module__ or "").startswith("pandas")


def _is_sparse(obj: Any) -> bool:
    module = type(obj).__module__ or ""
    return module.startswith("scipy.sparse") and hasattr(obj, "tocsr")


def _sort_key(value: Any) -> tuple[str, str]:
    return (type(value).__name__, repr(value))
