"""Group module sources of a tree ensemble, remembered on disk so a second process skips codegen.

Rendering the nested ``if`` source of 500 trees x 63 leaves (``trees_codegen``: build the syntax
tree, fill in locations, print it with astor) takes ~3.5 s, more than loading the compiled kernels
from Numba's cache. The sources are a pure function of the ensemble, the tree groups, the
``preload`` option and the code that renders them, so :func:`group_sources` keys them by a SHA-256
of all four and keeps, in the kernel cache, a small manifest: the names of the group module files
(each name ends in the hash of the file's content, see ``trees_build._module_name``). On a hit the
files are read back and each one's hash is checked against its name; anything missing, damaged
or stale is a miss, and the sources are rendered again (and the manifest rewritten).
"""

from __future__ import annotations

import hashlib
import pickle
import sys
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from willow.compiler.backend import kernel_cache_dir, write_kernel_file
from willow.compiler.kernel_cache import write_atomic
from willow.compiler.lowering.trees_build import _module_name
from willow.compiler.lowering.trees_codegen import build_group_source
from willow.compiler.lowering.trees_ir import TreeEnsemble

__all__ = ["group_sources", "read_named_sources", "source_names"]

_MANIFEST_VERSION = b"willow-tree-sources-1\n"


@lru_cache(maxsize=1)
def _codegen_digest() -> bytes:
    """The text of the modules whose code decides the rendered source (and the versions of the
    Python and astor that print it): a change to any of them changes every key."""
    import astor

    from willow.compiler import backend
    from willow.compiler.lowering import astgen, trees_codegen, trees_ir, trees_llvm

    digest = hashlib.sha256(_MANIFEST_VERSION)
    digest.update(f"{sys.version_info[:3]} astor {astor.__version__}".encode())
    for module in (backend, astgen, trees_codegen, trees_ir, trees_llvm):
        digest.update(Path(module.__file__).read_bytes())
    return digest.digest()


def _key(ensemble: TreeEnsemble, groups: Sequence[range], preload: bool) -> str | None:
    """SHA-256 of everything the sources depend on, or None when the ensemble does not pickle
    (a tree too deep for the pickler's recursion): then nothing is remembered."""
    try:
        data = pickle.dumps((ensemble, [(g.start, g.stop, g.step) for g in groups], preload), protocol=4)
    except (RecursionError, pickle.PicklingError):
        return None
    return hashlib.sha256(_codegen_digest() + data).hexdigest()


def _read_manifest(path: Path, name_hint: str, count: int) -> list[str] | None:
    """The sources listed in ``path``, each checked against the hash in its file name; None when
    the manifest or any file is missing, or a file does not hold what its name says."""
    try:
        names = path.read_text(encoding="utf-8").split()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    if len(names) != count:
        return None
    return read_named_sources(path.parent, names, name_hint)


def read_named_sources(directory: Path, names: Sequence[str], name_hint: str) -> list[str] | None:
    """The group module files ``directory/<name>.py``, each checked against the hash in its name
    (see ``trees_build._module_name``); None when one is missing or does not hold what its name says."""
    sources = []
    for name in names:
        try:
            source = (directory / f"{name}.py").read_text(encoding="utf-8")
        except (FileNotFoundError, UnicodeDecodeError):
            return None
        if _module_name(source, name_hint) != name:
            return None
        sources.append(source)
    return sources


def source_names(sources: Sequence[str], name_hint: str) -> list[str]:
    """The module (file) names of ``sources`` in the kernel cache."""
    return [_module_name(source, name_hint) for source in sources]


def group_sources(
    ensemble: TreeEnsemble, groups: Sequence[range], name_hint: str, preload: bool = True
) -> list[str]:
    """``[build_group_source(ensemble, g, preload) for g in groups]``, read from the kernel cache
    when an earlier process rendered the same ensemble's groups (see the module docstring).

    The group module files are written into the cache as well (``name_hint`` as in
    ``trees_build``), so the manifest only ever names files that were complete when it was written.
    """
    key = _key(ensemble, groups, preload)
    path = kernel_cache_dir() / f"tree_sources_{key}.txt"
    if key is not None:
        cached = _read_manifest(path, name_hint, len(groups))
        if cached is not None:
            return cached
    sources = [build_group_source(ensemble, g, preload) for g in groups]
    if key is not None:
        names = source_names(sources, name_hint)
        for name, source in zip(names, sources):
            write_kernel_file(path.parent / f"{name}.py", source)
        write_atomic(path, "\n".join(names).encode("utf-8"))
    return sources
