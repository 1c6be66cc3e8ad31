"""A fresh clone of the repository, with nothing beside it, runs the benchmark CLI's smallest mode
and a data test: the data ships in data/ and nothing reads ../shared.

Only committed files are in a clone, so this checks what a user gets from ``git clone``. Skipped
outside a git checkout (an unpacked sdist) or without the ``git`` command.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.data


def _git_root() -> Path | None:
    if shutil.which("git") is None:
        return None
    done = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--show-toplevel"], capture_output=True, text=True
    )
    return Path(done.stdout.strip()) if done.returncode == 0 else None


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    root = _git_root()
    if root is None or root.resolve() != ROOT:
        pytest.skip(f"{ROOT} is not a git checkout")
    empty = tmp_path_factory.mktemp("fresh")  # nothing beside the clone: no ../shared
    target = empty / "willow"
    subprocess.run(["git", "clone", "--quiet", str(root), str(target)], check=True)
    assert sorted(p.name for p in empty.iterdir()) == ["willow"]
    return target


def _env(clone: Path, tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WILLOW_DATA_DIR", "PYTHONPATH")}
    env["PYTHONPATH"] = str(clone)  # the clone's willow and benchmarks, not the installed checkout
    env["WILLOW_BENCH_CACHE"] = str(tmp / "models")
    return env


def test_benchmark_smoke_mode_runs_in_a_fresh_clone(clone, tmp_path):
    out = tmp_path / "results"
    command = [
        sys.executable, "-m", "benchmarks", "toxic", "--scale", "smoke", "--accuracy-target", "0.95",
        "--targets", "0.95", "--repeats", "1", "--no-plots", "--no-progress", "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=clone, env=_env(clone, tmp_path), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert Path(results["data_dir"]) == clone / "data"
    (workload,) = results["workloads"]
    assert workload["name"] == "toxic" and "error" not in workload
    statuses = {v["name"]: v["status"] for v in workload["variants"]}
    assert statuses["original"] == statuses["compiled"] == "ok", statuses


def test_data_test_passes_in_a_fresh_clone(clone, tmp_path):
    command = [
        sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/test_data.py",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=clone, env=_env(clone, tmp_path), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "2 passed" in done.stdout and "skipped" not in done.stdout, done.stdout[-2000:]
