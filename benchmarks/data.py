"""Where the real datasets live, how workloads split them, and where trained models are cached.

The data ships with the repository, compressed, in ``data/`` at its root (sources and licences in
``data/README.md``); ``WILLOW_DATA_DIR`` points at another copy. A dataset is named by its plain
file name (``"sms_spam.tsv"``): :func:`data_path` finds it as is or as ``.xz``/``.gz`` beside it,
and pandas reads either directly (compression is inferred from the suffix). Trained models and fitted feature tables are
cached under the user's cache directory (``WILLOW_BENCH_CACHE``, default
``~/.cache/willow/benchmarks``), keyed by workload, the hash of the data files they were built
from and the training configuration, so a changed file or setting retrains.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import joblib
import numpy as np

__all__ = ["data_dir", "data_available", "data_path", "data_hash", "cache_dir", "cached", "split_positions"]

_DEFAULT_DATA = Path(__file__).resolve().parents[1] / "data"
# What a dataset may be stored as, in order of preference: as is, or compressed beside it.
_SUFFIXES = ("", ".xz", ".gz")


def data_dir() -> Path:
    """The folder holding the real datasets: the repository's ``data/`` (``WILLOW_DATA_DIR`` overrides)."""
    return Path(os.environ.get("WILLOW_DATA_DIR", _DEFAULT_DATA))


def _find(name: str) -> Path | None:
    root = data_dir()
    for suffix in _SUFFIXES:
        path = root / (name + suffix)
        if path.exists():
            return path
    return None


def data_available(*names: str) -> bool:
    """Whether every named dataset exists in :func:`data_dir` (as is or compressed)."""
    return data_dir().is_dir() and all(_find(name) is not None for name in names)


def data_path(name: str) -> Path:
    """Path of one dataset (possibly ``.xz``/``.gz``), with an error that says where it was looked for."""
    path = _find(name)
    if path is None:
        raise FileNotFoundError(
            f"Dataset {name!r} not found in {data_dir()} (looked for {name}, {name}.xz and {name}.gz). "
            "The repository ships the data in data/ at its root; restore it from git "
            "(`git checkout -- data`) or set WILLOW_DATA_DIR to a folder holding the files."
        )
    return path


_HASHES: dict[tuple[str, ...], str] = {}


def data_hash(names: Iterable[str]) -> str:
    """A short content hash of the named data files (remembered for the process)."""
    key = tuple(sorted(names))
    if key not in _HASHES:
        digest = hashlib.sha256()
        for name in key:
            digest.update(name.encode())
            digest.update(data_path(name).read_bytes())
        _HASHES[key] = digest.hexdigest()[:16]
    return _HASHES[key]


def cache_dir() -> Path:
    """Where trained benchmark models are kept (outside the repository)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "willow" / "benchmarks"
    return Path(os.environ.get("WILLOW_BENCH_CACHE", default))


def cached(
    workload: str,
    files: Iterable[str],
    config: dict[str, Any],
    build: Callable[[], Any],
    code: str | os.PathLike | None = None,
) -> Any:
    """``build()``'s result, cached by workload, data hash and ``config`` (a JSON-able dict).

    The key also holds the content of ``code`` (the workload's module, so an edited feature
    pipeline retrains) and the versions of the libraries whose objects are pickled. A cache that
    cannot be read or written (read-only home, stale pickle) only costs a retrain.
    """
    import lightgbm
    import sklearn

    key_parts = {
        "data": data_hash(files),
        "config": config,
        "code": hashlib.sha256(Path(code).read_bytes()).hexdigest() if code is not None else None,
        "versions": [sklearn.__version__, lightgbm.__version__, np.__version__],
    }
    key_text = json.dumps(key_parts, sort_keys=True, default=str)
    key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    path = cache_dir() / f"{workload}-{key}.joblib"
    if path.exists():
        try:
            return joblib.load(path)
        except Exception:  # noqa: BLE001 - a broken cache entry is rebuilt below
            pass
    value = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        joblib.dump(value, tmp)
        tmp.replace(path)
    except OSError:
        pass
    return value


def split_positions(n: int, sizes: Iterable[int], random_state: int = 0) -> list[np.ndarray]:
    """Disjoint, seeded random row positions of the given sizes (sorted within each part)."""
    sizes = list(sizes)
    if sum(sizes) > n:
        raise ValueError(f"Asked for {sum(sizes)} rows ({sizes}) from a dataset of {n} rows.")
    order = np.random.default_rng(random_state).permutation(n)
    parts, start = [], 0
    for size in sizes:
        parts.append(np.sort(order[start : start + size]))
        start += size
    return parts
