"""Shared fixtures: small deterministic datasets, real-data paths and an isolated kernel cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session", autouse=True)
def _kernel_cache(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Generated kernels go to pytest's cache folder (kept between local runs, so Numba compiles
    each kernel once), or to a session temporary folder without one; never to the user's home."""
    cache = getattr(request.config, "cache", None)
    folder = cache.mkdir("willow-kernels") if cache is not None else tmp_path_factory.mktemp("willow-kernels")
    patch = pytest.MonkeyPatch()
    patch.setenv("WILLOW_CACHE_DIR", str(folder))
    yield
    patch.undo()


def data_file(name: str) -> Path:
    """Path of a real dataset shipped in the repository's ``data/`` (``.xz``; ``WILLOW_DATA_DIR``
    overrides the folder); skips the test only when the file was removed from the checkout."""
    from benchmarks.data import data_available, data_dir, data_path

    if not data_available(name):
        pytest.skip(f"real dataset {name} is not in {data_dir()}")
    return data_path(name)


@pytest.fixture(scope="session")
def sms():
    """The SMS spam collection as (texts as an object array, labels)."""
    import pandas as pd

    frame = pd.read_csv(data_file("sms_spam.tsv"), sep="\t")
    return frame["SMS"].astype(str).to_numpy(dtype=object), frame["Label"].to_numpy(dtype=object)


@pytest.fixture
def cascade_pays(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline's measured cost per row taken as 3x what it measured, so that a feature
    cascade (or a top-K plan) on a tiny test model is expected to pay whatever the machine's
    load: a test of what happens once one serves must not depend on that noisy comparison."""
    from willow.compiler.profiling import CostProfile

    measured = CostProfile.total_seconds_per_row
    monkeypatch.setattr(CostProfile, "total_seconds_per_row", property(lambda c: 3 * measured.fget(c)))


@pytest.fixture
def kernels_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every compiled kernel kept whatever it measured against the Python it replaces: on a tiny
    test model (an elementwise product, a 30-tree ensemble) that per-statement race is a coin
    flip on a loaded machine, and a test of what the kernels compute must not depend on it."""
    from willow.cascades import calibration

    monkeypatch.setattr(
        calibration, "keep_faster", lambda compilation, graph, python, compiled: (compilation, compiled)
    )


def make_tabular(n: int, seed: int = 0, n_classes: int = 2):
    """Rows with an informative cheap block and a weaker wide block, plus labels.

    ``cheap`` (2 columns) decides most labels; ``extra`` (6 columns) refines the rest.
    """
    rng = np.random.default_rng(seed)
    cheap = rng.normal(size=(n, 2))
    extra = rng.normal(size=(n, 6))
    score = 3.0 * cheap[:, 0] + 1.5 * cheap[:, 1] + 0.3 * extra[:, 0] - 0.2 * extra[:, 1]
    if n_classes == 2:
        y = (score > 0).astype(np.int64)
    else:
        edges = np.quantile(score, np.linspace(0, 1, n_classes + 1)[1:-1]) if n else []
        y = np.searchsorted(edges, score).astype(np.int64)
    return cheap, extra, y
