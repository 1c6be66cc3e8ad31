"""Property tests: random pipelines (group count, costs, widths, containers, models) and data.

Each example writes a small pipeline module with a random number of feature groups of random
per-row cost, calibrates it, and checks the invariants every plan must satisfy against the
original function on fresh rows.
"""

from __future__ import annotations

import importlib.util
import itertools

import numpy as np
import pytest
from equivalence import assert_cascade_equivalent, assert_same_as_original
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

import willow

_counter = itertools.count()

STACKERS = {
    "ndarray": ("np.hstack", "np.asarray"),
    "sparse": ("sp.hstack", "sp.csr_matrix"),
    "frame": ("pd.concat", "pd.DataFrame"),
}


def busy(block, loops):
    """A per-row Python loop of ``loops`` rounds: a feature group with a chosen cost."""
    out = np.array(block, dtype=float, copy=True)
    for r in range(len(out)):
        acc = 0.0
        for _ in range(loops):
            acc += float(np.sin(out[r, 0]))
        out[r, 0] += acc * 0.0
    return out


def write_pipeline(tmp_path, n_groups: int, costs: list[int], container: str):
    stacker, wrap = STACKERS[container]
    lines = [
        "import numpy as np",
        "import pandas as pd",
        "import scipy.sparse as sp",
        "from test_properties import busy",
        "",
        "def pipeline(model, x):",
    ]
    for i in range(n_groups):
        wrapped = f"{wrap}(busy(x[:, {2 * i}:{2 * i + 2}], {costs[i]}))"
        if container == "frame":
            wrapped = f"pd.DataFrame(busy(x[:, {2 * i}:{2 * i + 2}], {costs[i]}), columns=['g{i}a', 'g{i}b'])"
        lines.append(f"    g{i} = {wrapped}")
    names = ", ".join(f"g{i}" for i in range(n_groups))
    extra = ", axis=1" if container == "frame" else ""
    lines.append(f"    X = {stacker}([{names}]{extra})")
    if container == "sparse":
        lines.append("    X = X.tocsr()")
    if container == "frame":
        lines.append("    X = X.to_numpy()")
    lines.append("    return model.predict(X)")
    path = tmp_path / f"random_pipeline_{next(_counter)}.py"
    path.write_text("\n".join(lines) + "\n")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.pipeline


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n_groups=st.integers(2, 4),
    costs=st.lists(st.integers(0, 40), min_size=4, max_size=4),
    container=st.sampled_from(sorted(STACKERS)),
    informative=st.integers(0, 3),
    noise=st.floats(0.0, 1.0),
    tree=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_random_pipelines_keep_every_plan_invariant(
    tmp_path, n_groups, costs, container, informative, noise, tree, seed
):
    informative %= n_groups
    rng = np.random.default_rng(seed)
    n = 2600
    x = rng.normal(size=(n, 2 * n_groups))
    score = 3 * x[:, 2 * informative] + noise * x[:, (2 * informative + 2) % (2 * n_groups)]
    y = (score + 0.1 * rng.normal(size=n) > 0).astype(int)
    fn = write_pipeline(tmp_path, n_groups, costs, container)
    train, calib, test = np.split(np.arange(n), [600, 2200])
    estimator = (
        DecisionTreeClassifier(max_depth=4, random_state=0) if tree else LogisticRegression(max_iter=300)
    )
    model = estimator.fit(x[train], y[train])
    pipeline = willow.optimize(fn, accuracy_target=0.9, confidence=0.9, cost_repeats=2, importance_repeats=1)
    pipeline.calibrate(model, x[calib])
    plan = pipeline.plan_
    assert set(plan.group_seconds_per_row) == {f"g{i}" for i in range(n_groups)}
    assert all(v >= 0 for v in plan.group_seconds_per_row.values())
    if plan.cascade:
        assert 0 < len(plan.selected) < n_groups
        assert plan.lower_bound >= 0.9
        chosen = next(c for c in plan.candidates if c.groups == plan.selected)
        assert chosen.expected_seconds_per_row < (
            plan.compiled_seconds_per_row or plan.original_seconds_per_row
        )
        assert 0 < plan.confident_fraction <= 1
    else:
        assert plan.reason
        # without a cascade willow serves either the original or a compiled copy proven exact
        if pipeline.generated_source_ is not None:
            assert plan.compiled_nodes > 0 and "_willow.ops." in pipeline.generated_source_
            assert plan.agreement == 1.0
    assert_cascade_equivalent(pipeline, model, x[test])
    assert_cascade_equivalent(pipeline, model, x[test][:1])
    # 0 rows: a generated function runs the original too, and so fails the same way
    with pytest.raises(ValueError, match="0 sample"):
        fn(model, x[test][:0])
    assert_same_as_original(pipeline, model, x[test][:0])
