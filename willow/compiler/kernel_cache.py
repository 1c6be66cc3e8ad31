"""A kernel cache that repairs itself: checksummed, atomically written, locked Numba cache files.

Numba caches a compiled function as an index file (``.nbi``, the signatures it holds) and one
data file per signature (``.nbc``), both pickles. A damaged file (a disk error, a copy cut
short, a stray edit) makes Numba raise ``UnpicklingError`` when it loads the function, and a
silently flipped byte could even load wrong machine code. willow's kernels use
:class:`ChecksummedCacheFile` instead (installed per function by :func:`harden_module`, so a
user's own Numba functions keep Numba's format):

* every file starts with a marker and the SHA-256 of its content, checked on every read;
* a file that fails the check, or does not unpickle, is removed and treated as a cache miss:
  Numba compiles the function again and writes a fresh entry;
* files are written to a temporary name and moved into place (``os.replace``), so a reader
  never sees half a file, and saving an entry holds an exclusive file lock (``fcntl``), so two
  processes compiling the same function do not interleave their index updates.

Files written by plain Numba (no marker) are treated as damaged too: they are rebuilt once in
willow's format.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from numba.core.caching import IndexDataCacheFile

__all__ = ["ChecksummedCacheFile", "harden", "harden_module", "write_atomic", "file_lock", "seal", "unseal"]

_MARKER = b"willow-kernel-cache-1\n"
_DIGEST = 32


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive lock on ``path`` (created if missing) for the duration of the block.

    Uses ``fcntl.flock`` (POSIX); where that is missing the block runs unlocked, which only
    risks a lost cache entry (a later compile), never a damaged one: writes are atomic anyway.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def seal(payload: bytes) -> bytes:
    """``payload`` behind the marker and its SHA-256, as every willow kernel cache file is stored."""
    return _MARKER + hashlib.sha256(payload).digest() + payload


def unseal(raw: bytes) -> bytes | None:
    """The payload of a sealed file, or ``None`` when the marker or the checksum is wrong."""
    head = len(_MARKER) + _DIGEST
    if len(raw) < head or not raw.startswith(_MARKER):
        return None
    payload = raw[head:]
    if hashlib.sha256(payload).digest() != raw[len(_MARKER) : head]:
        return None
    return payload


def _discard(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


class ChecksummedCacheFile(IndexDataCacheFile):
    """Numba's index + data cache files, sealed with a SHA-256 and repaired when damaged."""

    def _read(self, path: str) -> bytes | None:
        """The checked payload of ``path`` (``FileNotFoundError`` when absent); a damaged file
        is removed and gives ``None``."""
        with open(path, "rb") as handle:
            raw = handle.read()
        payload = unseal(raw)
        if payload is None:
            _discard(path)
        return payload

    def _load_index(self) -> dict:
        try:
            payload = self._read(self._index_path)
        except FileNotFoundError:
            return {}
        if payload is None:
            return {}
        try:
            stream = io.BytesIO(payload)
            version = pickle.load(stream)
            if version != self._version:
                return {}
            stamp, overloads = pickle.loads(stream.read())
        except Exception:  # noqa: BLE001 - a sealed but unreadable index is damaged all the same
            _discard(self._index_path)
            return {}
        return overloads if stamp == self._source_stamp else {}

    def _save_index(self, overloads: dict) -> None:
        payload = pickle.dumps(self._version, protocol=-1) + self._dump((self._source_stamp, overloads))
        write_atomic(self._index_path, seal(payload))

    def _load_data(self, name: str) -> Any:
        path = self._data_path(name)
        payload = self._read(path)
        if payload is not None:
            try:
                return pickle.loads(payload)
            except Exception:  # noqa: BLE001 - a sealed but unreadable entry is damaged all the same
                _discard(path)
        # Numba's load() takes an OSError as "no entry": it compiles again and saves over it.
        raise OSError(f"willow kernel cache: damaged entry {path} removed; compiling again.")

    def _save_data(self, name: str, data: Any) -> None:
        write_atomic(self._data_path(name), seal(self._dump(data)))

    def save(self, key: Any, data: Any) -> None:
        """Save an entry under an exclusive lock (index read-modify-write and data file)."""
        os.makedirs(self._cache_path, exist_ok=True)
        with file_lock(self._index_path + ".lock"):
            super().save(key, data)


def harden(dispatcher: Any) -> None:
    """Give a ``numba.njit(cache=True)`` function willow's checksummed cache files (no-op for a
    function without a disk cache, or already hardened)."""
    cache = getattr(dispatcher, "_cache", None)
    plain = getattr(cache, "_cache_file", None)
    if plain is None or isinstance(plain, ChecksummedCacheFile):
        return
    cache._cache_file = ChecksummedCacheFile(
        cache_path=plain._cache_path,
        filename_base=plain._index_name[: -len(".nbi")],
        source_stamp=plain._source_stamp,
    )


def harden_module(module: ModuleType) -> None:
    """:func:`harden` every cached Numba function defined in ``module``."""
    from numba.core.dispatcher import Dispatcher

    for value in list(vars(module).values()):
        if isinstance(value, Dispatcher):
            harden(value)
