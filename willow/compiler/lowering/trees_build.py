"""Compile a tree ensemble's group kernels, in parallel worker processes, into Numba's disk cache.

Numba spends most of a tree's compile time in its Python front end (bytecode analysis, type
inference, lowering), which holds the GIL; threads cannot share it, processes can. A group whose
machine code is already in the cache (the ``.nbi`` index next to its generated module) is loaded
directly; cold groups are compiled by worker processes that only import the generated module and
call its kernel once, which writes the cache; the parent then loads every group from the cache.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from willow.compiler.backend import kernel_cache_dir, load_generated_module

__all__ = ["build_kernels"]


def _module_name(source: str, name_hint: str) -> str:
    import hashlib

    digest = hashlib.sha256(source.encode("utf-8")).hexdigest()[:20]
    safe_hint = "".join(c if c.isalnum() else "_" for c in name_hint)[:40]
    return f"willow_kernel_{safe_hint}_{digest}"


def _is_cached(source: str, name_hint: str) -> bool:
    pycache = kernel_cache_dir() / "__pycache__"
    name = _module_name(source, name_hint)
    return pycache.is_dir() and any(
        p.name.startswith(name + ".") and p.suffix == ".nbi" for p in pycache.iterdir()
    )


def _warm(kernel: Callable[..., Any], dtype: np.dtype, n_features: int, n_outputs: int) -> None:
    """Compile ``kernel`` for the exact argument types the operator calls it with."""
    kernel(np.zeros((1, n_features), dtype=dtype), np.zeros((1, n_outputs)))


def _compile_in_worker(source: str, name_hint: str, dtype: str, n_features: int, n_outputs: int) -> None:
    gc.freeze()  # Numba's front end allocates many objects; a full GC per pass costs more than the work
    module = load_generated_module(source, name_hint)
    _warm(module.kernel, np.dtype(dtype), n_features, n_outputs)


def build_kernels(
    sources: Sequence[str],
    name_hint: str,
    dtype: np.dtype,
    n_features: int,
    n_outputs: int,
    n_jobs: int | None = None,
) -> list[Callable[..., Any]]:
    """Import and compile every group module; return their ``kernel`` functions in order.

    ``n_jobs`` worker processes compile the groups missing from the cache (default: CPU count;
    1 compiles in this process).
    """
    n_jobs = n_jobs or os.cpu_count() or 1
    cold = [s for s in sources if not _is_cached(s, name_hint)]
    if n_jobs > 1 and len(cold) > 1:
        env_dir = os.environ.get("WILLOW_CACHE_DIR")
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            max_workers=min(n_jobs, len(cold)),
            mp_context=context,
            initializer=_set_cache_dir,
            initargs=(env_dir,),
        ) as pool:
            futures = [
                pool.submit(_compile_in_worker, s, name_hint, np.dtype(dtype).str, n_features, n_outputs)
                for s in cold
            ]
            for f in futures:
                f.result()
    kernels = []
    frozen = False
    for source in sources:
        module = load_generated_module(source, name_hint)
        if not frozen and not _is_cached(source, name_hint):
            gc.collect()
            gc.freeze()
            frozen = True
        _warm(module.kernel, dtype, n_features, n_outputs)
        kernels.append(module.kernel)
    if frozen:
        gc.unfreeze()
    return kernels


def _set_cache_dir(directory: str | None) -> None:
    if directory is not None:
        os.environ["WILLOW_CACHE_DIR"] = directory
    Path(kernel_cache_dir()).mkdir(parents=True, exist_ok=True)
