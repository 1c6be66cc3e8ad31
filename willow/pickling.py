"""How a pickled :class:`~willow.OptimizedPipeline` carries its original function.

A pipeline's pickle must bring back the very function it was calibrated for, in a process that
may never have defined it (a Dask worker, a fresh interpreter). Three cases:

- the function is importable as ``module.qualname``: pickled by reference (the receiving process
  imports the module, which must exist there with the same fitted globals);
- ``module.qualname`` is the decorated pipeline itself (``@willow.optimize`` at module level): a
  reference to that pipeline's ``__wrapped__`` function;
- anything else (a closure such as a benchmark's nested ``recommend``, a function defined in
  ``__main__`` or a notebook): pickled by value with cloudpickle, together with the globals and
  closure cells it reads (fitted vectorizers, lookup tables).
"""

from __future__ import annotations

import importlib
import pickle
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["FunctionByValue", "WrappedReference", "portable_function", "restore_function"]


class WrappedReference:
    """The original function of the pipeline importable as ``module.qualname``."""

    def __init__(self, module: str, qualname: str) -> None:
        self.module = module
        self.qualname = qualname

    def resolve(self) -> Callable:
        target: Any = importlib.import_module(self.module)
        for part in self.qualname.split("."):
            target = getattr(target, part)
        return target.__wrapped__


class FunctionByValue:
    """A function serialized by cloudpickle (code, referenced globals and closure cells)."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def resolve(self) -> Callable:
        return pickle.loads(self.payload)


def _lookup(module_name: str, qualname: str) -> Any:
    module = sys.modules.get(module_name)
    if module is None or "<locals>" in qualname:
        return None
    target: Any = module
    for part in qualname.split("."):
        target = getattr(target, part, None)
        if target is None:
            return None
    return target


def portable_function(fn: Callable) -> Any:
    """What a pipeline's pickle stores for its original function ``fn`` (see the module doc)."""
    module_name = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if module_name and qualname and module_name != "__main__":
        found = _lookup(module_name, qualname)
        if found is fn:
            return fn
        if getattr(found, "__wrapped__", None) is fn:
            return WrappedReference(module_name, qualname)
    try:
        import cloudpickle
    except ImportError:
        raise pickle.PicklingError(
            f"Cannot pickle the willow pipeline of {qualname}: the function is not importable by "
            f"name ({module_name}.{qualname}), so it must travel by value, which needs cloudpickle. "
            "Install it (pip install 'willow[dask]' or pip install cloudpickle), or define the "
            "function at module level in an importable module."
        ) from None
    return FunctionByValue(cloudpickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL))


def restore_function(stored: Any) -> Callable:
    """The function :func:`portable_function` stored."""
    if isinstance(stored, (WrappedReference, FunctionByValue)):
        return stored.resolve()
    return stored
