"""Compile a tree ensemble's group kernels, in parallel worker processes, into Numba's disk cache.

Each group's nested ``if``s are translated to LLVM IR directly (:mod:`trees_llvm`); most of the
remaining compile time is LLVM optimising and emitting that code, under Numba's process-wide
compiler lock, so threads cannot share the work and processes can. A group whose
machine code is already in the cache (the ``.nbi`` index next to its generated module) is loaded
directly; cold groups are compiled by worker processes that only import the generated module and
call its kernel once, which writes the cache; the parent then loads every group from the cache.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from willow.compiler.backend import kernel_cache_dir, load_generated_module, write_kernel_file
from willow.compiler.lowering.signatures import compile_locked, readonly_array, writable_array

__all__ = ["build_kernels"]


def _module_name(source: str, name_hint: str) -> str:
    import hashlib

    digest = hashlib.sha256(source.encode("utf-8")).hexdigest()[:20]
    safe_hint = "".join(c if c.isalnum() else "_" for c in name_hint)[:40]
    return f"willow_kernel_{safe_hint}_{digest}"


def _numba_index_dir() -> Path:
    """Where Numba keeps the index files of the generated modules: ``__pycache__`` beside them, or
    a folder under ``NUMBA_CACHE_DIR`` when that is set (Numba's own naming)."""
    from numba.core import config
    from numba.core.caching import UserProvidedCacheLocator

    directory = kernel_cache_dir()
    if config.CACHE_DIR:
        subpath = UserProvidedCacheLocator.get_suitable_cache_subpath(str(directory / "module.py"))
        return Path(config.CACHE_DIR) / subpath
    return directory / "__pycache__"


def _cached_modules() -> set[str]:
    """Names of the generated modules that have a Numba index in the cache (one folder listing)."""
    pycache = _numba_index_dir()
    if not pycache.is_dir():
        return set()
    return {p.name.split(".", 1)[0] for p in pycache.iterdir() if p.suffix == ".nbi"}


def _is_cached(source: str, name_hint: str, cached: set[str] | None = None) -> bool:
    """Whether ``source``'s module has compiled code in the cache (``cached``: the listing of
    :func:`_cached_modules`, to check many sources with one listing)."""
    return _module_name(source, name_hint) in (_cached_modules() if cached is None else cached)


def _warm(kernel: Callable[..., Any], dtype: np.dtype, n_features: int, n_outputs: int) -> None:
    """Compile ``kernel(X, out)`` once, for read-only ``dtype`` rows and a float64 ``out`` (both
    C-ordered), and lock it: writable rows run the same machine code (see ``signatures``), so a
    read-only input (pandas' ``to_numpy()``) does not compile the kernel a second time."""
    compile_locked(kernel, (readonly_array(dtype, 2), writable_array(np.float64, 2)))


def _compile_files(paths: Sequence[str], dtype: str, n_features: int, n_outputs: int) -> None:
    """Worker body: import each generated module file and compile its kernel into the cache."""
    # Compiling allocates many long-lived objects (the IR): with the collector on, it spends
    # time rescanning them. Collect between kernels instead.
    gc.disable()
    for path in paths:
        file = Path(path)
        source = file.read_text(encoding="utf-8")
        hint = file.stem.removeprefix("willow_kernel_").rsplit("_", 1)[0]
        module = load_generated_module(source, hint)
        _warm(module.kernel, np.dtype(dtype), n_features, n_outputs)
        gc.collect(0)


def _compile_in_processes(
    sources: Sequence[str], name_hint: str, dtype: np.dtype, n_features: int, n_outputs: int, n_jobs: int
) -> None:
    """Compile ``sources`` in ``n_jobs`` fresh interpreters (no fork: the parent may hold threads)."""
    directory = kernel_cache_dir()
    paths = []
    for source in sources:
        path = directory / f"{_module_name(source, name_hint)}.py"
        write_kernel_file(path, source)
        paths.append(str(path))
    env = dict(os.environ, WILLOW_CACHE_DIR=str(directory.parent))
    root = str(Path(__file__).resolve().parents[3])  # the folder holding the willow package
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    workers = []
    for k in range(n_jobs):
        chunk = paths[k::n_jobs]
        if chunk:
            command = [
                sys.executable,
                "-m",
                __name__,
                np.dtype(dtype).str,
                str(n_features),
                str(n_outputs),
                *chunk,
            ]
            workers.append(
                subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            )
    for worker in workers:
        _, err = worker.communicate()
        if worker.returncode != 0:
            raise RuntimeError(
                f"Compiling tree kernels in a worker failed:\n{err.decode(errors='replace')[-2000:]}"
            )


def build_kernels(
    sources: Sequence[str],
    name_hint: str,
    dtype: np.dtype,
    n_features: int,
    n_outputs: int,
    n_jobs: int | None = None,
    driver: bool = True,
) -> tuple[list[Callable[..., Any]], str | None]:
    """Import and compile every group module; return the functions to call, in order, and the
    driver module's source (None for a single group or without ``driver``).

    With ``driver``, several groups are tied together by one compiled driver (see
    ``build_driver_source``) and the list holds that single function. The driver saves a Python
    call per group on every batch, but compiling it re-optimises all the groups' code linked
    into one module in this process (~20 s for 500 trees x 63 leaves), so callers that have a
    faster path for small batches leave it out.

    ``n_jobs`` worker processes compile the groups missing from the cache (default: CPU count;
    1 compiles in this process).
    """
    n_jobs = n_jobs or os.cpu_count() or 1
    cached = _cached_modules()
    cold = [s for s in sources if not _is_cached(s, name_hint, cached)]
    if n_jobs > 1 and len(cold) > 1:
        _compile_in_processes(cold, name_hint, dtype, n_features, n_outputs, min(n_jobs, len(cold)))
    kernels = []
    driver_source = None
    if driver and len(sources) > 1:
        from willow.compiler.lowering.trees_codegen import build_driver_source

        driver_source = build_driver_source([_module_name(s, name_hint) for s in sources])
    # a cached driver holds the groups' machine code linked in: the groups' own modules are only
    # imported (the driver looks their kernels up), not loaded from Numba's cache one by one
    linked = driver_source is not None and _is_cached(driver_source, name_hint + "_driver", cached)
    was_enabled = gc.isenabled()
    gc.disable()  # see _compile_files
    try:
        for source in sources:
            module = load_generated_module(source, name_hint)
            if not linked:
                _warm(module.kernel, dtype, n_features, n_outputs)
            kernels.append(module.kernel)
            gc.collect(0)
        if driver_source is not None:
            driver = load_generated_module(driver_source, name_hint + "_driver")
            _warm(driver.predict, dtype, n_features, n_outputs)
            kernels = [driver.predict]
    finally:
        if was_enabled:
            gc.enable()
    return kernels, driver_source


if __name__ == "__main__":
    _compile_files(sys.argv[4:], sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
