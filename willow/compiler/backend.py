"""Load generated kernel source as a real module, so Numba can cache what it compiles on disk.

``numba.njit(cache=True)`` only caches functions that live in a file. Generated kernels are
therefore rendered (with astor) to a ``.py`` file named after the hash of its source, inside
willow's kernel cache directory, and imported from there. A second process that generates the
same source finds the same file (left untouched, so Numba's cache index stays valid) and loads
the compiled machine code instead of compiling again. Damaged kernel files are written again and
Numba's cache files are checksummed and repaired (:mod:`willow.compiler.kernel_cache`).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import marshal
import os
import sys
from pathlib import Path
from types import CodeType, ModuleType

import astor

from willow.compiler.kernel_cache import harden_module, seal, unseal, write_atomic

__all__ = ["kernel_cache_dir", "render_module", "load_generated_module", "write_kernel_file"]


def kernel_cache_dir() -> Path:
    """Where generated kernel modules live: ``$WILLOW_CACHE_DIR/kernels`` or ``~/.cache/willow/kernels``."""
    root = os.environ.get("WILLOW_CACHE_DIR")
    base = Path(root) if root else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "willow"
    path = base / "kernels"
    path.mkdir(parents=True, exist_ok=True)
    return path


def render_module(module: ast.Module) -> str:
    """Readable source of a generated module."""
    return astor.to_source(ast.fix_missing_locations(module))


def load_generated_module(source: str, name_hint: str) -> ModuleType:
    """Import ``source`` as a module stored in the kernel cache (written once, atomically).

    ``name_hint`` becomes part of the file name so cached kernels are recognisable on disk.
    """
    digest = hashlib.sha256(source.encode("utf-8")).hexdigest()[:20]
    safe_hint = "".join(c if c.isalnum() else "_" for c in name_hint)[:40]
    module_name = f"willow_kernel_{safe_hint}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    directory = kernel_cache_dir()
    path = directory / f"{module_name}.py"
    write_kernel_file(path, source)
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        exec(_module_code(path, source), module.__dict__)  # what the loader's exec_module does
    except BaseException:
        del sys.modules[module_name]
        raise
    harden_module(module)  # checksummed, self-repairing Numba cache files for its kernels
    return module


def _module_code(path: Path, source: str) -> CodeType:
    """``source`` compiled as the module file ``path``, kept beside it as a checksummed marshal file.

    Python's own ``.pyc`` is not written under ``PYTHONDONTWRITEBYTECODE`` (common in container
    images), and compiling the nested ``if`` source of 500 trees x 63 leaves takes ~0.6 s, so a
    second process would pay it on every start. The file's name carries the module's name (the
    hash of its source) and the interpreter's cache tag (the bytecode format); a damaged file, or
    one compiled for another path (a copied cache folder: Numba finds its cache through
    ``co_filename``), is compiled and written again.
    """
    code_path = path.with_name(f"{path.stem}.{sys.implementation.cache_tag}.code")
    try:
        payload = unseal(code_path.read_bytes())
        code = None if payload is None else marshal.loads(payload)
        if isinstance(code, CodeType) and code.co_filename == str(path):
            return code
    except (OSError, ValueError, EOFError, TypeError):
        pass
    code = compile(source, str(path), "exec", dont_inherit=True)
    write_atomic(code_path, seal(marshal.dumps(code)))
    return code


def write_kernel_file(path: Path, source: str) -> None:
    """Make ``path`` hold exactly ``source``: a missing, damaged or half-written file (its name
    carries the hash of the source it must hold) is written again, atomically. A file that is
    already right is left untouched, so Numba's cache index for it stays valid."""
    data = source.encode("utf-8")
    try:
        if path.read_bytes() == data:
            return
    except FileNotFoundError:
        pass
    write_atomic(path, data)
