"""The kernel cache repairs itself: damaged or half-written entries are rebuilt, never fatal.

Each step runs in a fresh interpreter (a process only reads Numba's disk cache the first time
it compiles a function), against a cache folder of its own.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pipelines
from sklearn.linear_model import LogisticRegression

import willow
from willow.compiler.backend import kernel_cache_dir

ROOT = Path(__file__).resolve().parents[1]

KERNEL = textwrap.dedent(
    """
    import numba


    @numba.njit(cache=True, nogil=True)
    def kernel(x):
        return x * 2.0 + 1.0
    """
)

LOADER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])
    from willow.compiler.backend import load_generated_module
    module = load_generated_module(open(sys.argv[2]).read(), "cache_test")
    result = module.kernel(20.0)
    stats = module.kernel.stats
    print(result, stats.cache_hits.total(), stats.cache_misses.total())
    """
)


def _run(script: Path, *args: str, cache: Path) -> str:
    env = dict(os.environ, WILLOW_CACHE_DIR=str(cache))
    env.pop("NUMBA_CACHE_DIR", None)
    done = subprocess.run(
        [sys.executable, str(script), str(ROOT), *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def _entries(cache: Path, suffix: str) -> list[Path]:
    return sorted((cache / "kernels" / "__pycache__").glob(f"*{suffix}"))


def test_damaged_entries_are_removed_and_rebuilt(tmp_path):
    cache = tmp_path / "cache"
    (tmp_path / "kernel.py").write_text(KERNEL)
    (tmp_path / "loader.py").write_text(LOADER)
    load = lambda: _run(tmp_path / "loader.py", str(tmp_path / "kernel.py"), cache=cache)  # noqa: E731
    assert load() == "41.0 0 1"  # compiled and cached
    assert load() == "41.0 1 0"  # loaded from the cache
    kernel_file = next((cache / "kernels").glob("*.py"))
    _flip(_entries(cache, ".nbc")[0])
    _truncate(kernel_file)
    assert load() == "41.0 0 1"  # the damaged entry was detected, removed and compiled again
    assert kernel_file.read_text() == KERNEL  # and the half-written kernel file written again
    _entries(cache, ".nbi")[0].write_bytes(b"\x80\x04not a pickle")
    assert load() == "41.0 0 1"
    _truncate(_entries(cache, ".nbc")[0])
    assert load() == "41.0 0 1"
    assert load() == "41.0 1 0"  # the rebuilt entry serves the next process
    assert not list((cache / "kernels").rglob("*.tmp"))


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


SERVER = textwrap.dedent(
    """
    import pickle, sys
    sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests"]
    import willow, pipelines
    folder = sys.argv[2]
    inputs = pickle.load(open(folder + "/inputs.pkl", "rb"))
    pipeline = willow.load(folder + "/plan.willow", pipelines.numpy_proba_pipeline)
    pickle.dump(pipeline(*inputs), open(folder + "/out.pkl", "wb"))
    """
)


def test_load_with_a_damaged_cache_rebuilds_it(tmp_path):
    rng = np.random.default_rng(0)
    cheap, extra = rng.normal(size=(1200, 2)), rng.normal(size=(1200, 6))
    y = (cheap[:, 0] + 0.3 * extra[:, 0] > 0).astype(int)
    model = LogisticRegression().fit(np.hstack([cheap, pipelines.slow_features(extra)])[:400], y[:400])
    pipeline = willow.optimize(
        pipelines.numpy_proba_pipeline,
        cascade=False,
        accuracy_target=0.9,
        confidence=0.9,
        cost_repeats=1,
        require_faster=False,  # the cache is under test, not the speed gate (timing)
    ).calibrate(model, cheap[400:1100], extra[400:1100])
    assert pipeline.plan_.compiled_nodes >= 1, pipeline.plan_.reason
    pipeline.save(tmp_path / "plan.willow")
    inputs = (model, cheap[1100:], extra[1100:])
    (tmp_path / "inputs.pkl").write_bytes(pickle.dumps(inputs))
    # this plan's kernel files, copied to a cache of their own and damaged there
    kernels = tmp_path / "cache" / "kernels"
    (kernels / "__pycache__").mkdir(parents=True)
    source = kernel_cache_dir()
    for path in [
        *source.glob("willow_kernel_linear*.py"),
        *(source / "__pycache__").glob("willow_kernel_linear*"),
    ]:
        if path.name.endswith(".tmp"):
            continue  # a file another test process (pytest -n) is writing: gone once moved into place
        shutil.copy(path, kernels / path.relative_to(source))
    damaged = [*kernels.glob("__pycache__/*.nbi"), *kernels.glob("__pycache__/*.nbc")]
    assert damaged
    for path in damaged:
        _truncate(path)
    (tmp_path / "server.py").write_text(SERVER)
    _run(tmp_path / "server.py", str(tmp_path), cache=tmp_path / "cache")
    served = pickle.loads((tmp_path / "out.pkl").read_bytes())
    np.testing.assert_allclose(served, pipeline(*inputs), rtol=1e-12, atol=0)
    # the entries this plan read were rebuilt (others in the copy, for kernels it does not call, stay)
    assert any(path.exists() and path.read_bytes().startswith(b"willow-kernel-cache-1\n") for path in damaged)
