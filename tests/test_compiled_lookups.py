"""compile=True on a pipeline of table lookups and arithmetic feeding LightGBM."""

from __future__ import annotations

import ast
import pickle

import numpy as np
import pandas as pd
import pipelines
import pytest
from compiling import compile_traced, compiled_runner
from equivalence import assert_same_as_original
from lightgbm import LGBMClassifier

import willow

OPTIONS = dict(accuracy_target=0.97, confidence=0.95, cost_repeats=2, importance_repeats=1)


def _rows(rng: np.random.Generator, n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user": rng.integers(0, 60, n),  # users 50..59 are not in the table
            "item": rng.integers(100, 140, n),
            "city": rng.choice(["paris", "oslo", "lima", "rome"], n),  # rome is unseen
            "t": rng.normal(5.0, 2.0, n),
        }
    )


@pytest.fixture(scope="module")
def lookup_setup():
    rng = np.random.default_rng(3)
    # 10 columns: numpy sums rows of 8 or more pairwise in memory order, so np.nansum over a
    # compiled product is only bit-identical if the kernel's result has numpy's memory layout
    pipelines.USER_TABLE = pd.DataFrame(
        rng.normal(size=(50, 10)), index=pd.Index(np.arange(50), name="user"), columns=list("abcdefghij")
    )
    item = pd.DataFrame(rng.normal(size=(35, 10)), index=np.arange(100, 135), columns=list("klmnopqrst"))
    item.iloc[3, 1] = np.nan
    pipelines.ITEM_TABLE = item
    pipelines.CITY_RATES = {"paris": 0.5, "oslo": 2, "lima": np.nan}
    train, calib = _rows(rng, 800), _rows(rng, 1500)

    class Capture:
        def predict_proba(self, X):
            self.X = X
            return X

    capture = Capture()
    pipelines.lookup_pipeline(capture, train)
    labels = (np.nan_to_num(capture.X[:, 0]) + rng.normal(0, 0.5, len(train)) > 0).astype(int)
    model = LGBMClassifier(n_estimators=30, num_leaves=15, n_jobs=1, verbose=-1).fit(capture.X, labels)
    return model, calib, _rows(rng, 300)


def test_lookup_pipeline_compiles_and_matches_the_original(lookup_setup, tmp_path):
    model, calib, batch = lookup_setup
    pipeline = willow.optimize(pipelines.lookup_pipeline, cascade=False, compile="all", **OPTIONS)
    pipeline.calibrate(model, calib)
    compilation = pipeline._compilation
    report = compilation.report()
    expressions = [n for n in compilation.nodes if n.path is not None] + [
        s for s in compilation.skipped if "measured slower" in s.reason
    ]
    assert len(expressions) >= 7, report  # user, item merge, city map, product, age, 2 in scaled
    for rows in (batch, batch.iloc[:1]):
        expected = pipelines.lookup_pipeline(model, rows)
        # the compiled LightGBM model's probabilities are within 1e-9 (its sigmoid); features are exact
        np.testing.assert_allclose(pipeline(model, rows), expected, rtol=1e-12, atol=0)
    assert_same_as_original(pipeline, model, batch.iloc[:0])
    if any(n.path is not None for n in compilation.nodes):
        assert "Generated kernel for _willow.ops." in report and "def kernel(" in report
        path = tmp_path / "lookups.willow"
        pipeline.save(path)
        loaded = willow.load(path, pipelines.lookup_pipeline)
        np.testing.assert_array_equal(loaded(model, batch), pipeline(model, batch))
        assert (
            loaded.generated_source_ == pipeline.generated_source_
        )  # a front-end rewrite (X[[...]] by position) restores at the first call
    # a pickled pipeline (what Dask ships to a worker) rebuilds the same lookup kernels
    unpickled = pickle.loads(pickle.dumps(pipeline))
    np.testing.assert_array_equal(unpickled(model, batch), pipeline(model, batch))
    assert (
        unpickled.generated_source_ == pipeline.generated_source_
    )  # a front-end rewrite (X[[...]] by position) restores at the first call


def test_every_expression_kernel_reproduces_its_statement(lookup_setup):
    """Independent of timing: every verified expression kernel, forced in, gives the same output."""
    model, calib, batch = lookup_setup
    fn = pipelines.lookup_pipeline
    _, runner, result = compile_traced(fn, {"model": model, "rows": calib})
    compiled = [n for n in result.nodes if n.path is not None]
    originals = " ".join(n.original for n in compiled)
    assert len(compiled) == 7 and all(
        k in originals for k in (".reindex(", ".merge(", ".map(", "np.abs(age)")
    )
    assert "_willow.ops." in ast.unparse(result.graph.statements[3].node)  # inside np.nansum(...)
    report = result.report()
    assert "Generated kernel for _willow.ops.user_expr (array expression (1 lookups))" in report
    assert "reindex into `USER_TABLE` (50, 10) by dense position array" in report
    assert "map into `CITY_RATES` (3,) by a dict of its string labels" in report
    compiled_graph_runner = compiled_runner(result, fn)
    for rows in (batch, batch.iloc[:1], batch.iloc[:0]):
        arguments = {"model": model, "rows": rows}
        got = compiled_graph_runner.run(compiled_graph_runner.namespace(arguments))
        want = runner.run(runner.namespace(arguments))
        for name in ("user", "item", "city", "affinity", "age", "scaled", "X"):
            assert got[name].flags.f_contiguous == want[name].flags.f_contiguous
            assert got[name].shape == want[name].shape and got[name].dtype == want[name].dtype
            np.testing.assert_array_equal(got[name], want[name])  # bit-identical, NaN where pandas has NaN
        if len(rows):
            out = compiled_graph_runner.model_output(
                got
            )  # the compiled LightGBM model: to 1e-9 (its sigmoid)
            np.testing.assert_allclose(out, fn(model, rows), rtol=1e-12, atol=0)


def test_replaced_table_falls_back_to_the_original(lookup_setup):
    model, calib, batch = lookup_setup
    # require_faster=False: the guard is tested, not the speed gate (which a loaded machine can
    # make serve the original, and then nothing warns)
    pipeline = willow.optimize(
        pipelines.lookup_pipeline, cascade=False, compile="all", require_faster=False, **OPTIONS
    )
    pipeline.calibrate(model, calib)
    if not any(expr == "USER_TABLE" for expr, _ in pipeline._compilation.guarded):
        pytest.skip("no USER_TABLE lookup measured faster than pandas on this machine")
    original = pipelines.USER_TABLE
    try:
        pipelines.USER_TABLE = original * 2.0
        with pytest.warns(willow.ModelChangedWarning):
            out = pipeline(model, batch)
        np.testing.assert_array_equal(out, pipelines.lookup_pipeline(model, batch))
    finally:
        pipelines.USER_TABLE = original


def test_a_kernel_that_fails_to_compile_stays_python_with_a_warning(lookup_setup, monkeypatch):
    from willow.compiler import compile_pass
    from willow.compiler.lowering import arithmetic_codegen

    model, calib, batch = lookup_setup

    def broken(expression, node, namespace):
        raise RuntimeError("simulated Numba failure")

    monkeypatch.setattr(arithmetic_codegen, "compile_expression", broken)
    with pytest.warns(compile_pass.CompilationWarning, match="simulated Numba failure"):
        pipeline = willow.optimize(pipelines.lookup_pipeline, cascade=False, compile="all", **OPTIONS)
        pipeline.calibrate(model, calib)
    assert not any(n.path is not None for n in pipeline._compilation.nodes)
    assert "compilation failed: RuntimeError" in pipeline._compilation.report()
    np.testing.assert_allclose(pipeline(model, batch), pipelines.lookup_pipeline(model, batch), rtol=1e-12)


def test_saved_expression_recipes_compile_again_and_check_tables(lookup_setup):
    from willow.compiler.compile_pass import apply_compilation
    from willow.compiler.lowering import lower

    model, calib, batch = lookup_setup
    fn = pipelines.lookup_pipeline
    graph, _, result = compile_traced(fn, {"model": model, "rows": calib})
    recipes = [r for r in result.recipes if "path" in r]
    assert len(recipes) == 7
    rebuilt = apply_compilation(graph, recipes, lower, fn)
    expected = [ast.unparse(st.node) for st in result.graph.statements]
    assert [ast.unparse(st.node) for st in rebuilt.graph.statements] == expected
    for node in rebuilt.nodes:
        values = [
            eval(
                compile(ast.Expression(a), "<t>", "eval"),
                {**vars(pipelines), "rows": batch, "age": np.ones((len(batch), 3))},
            )
            for a in node.arguments
        ]
        original = next(n for n in result.nodes if n.attribute == node.attribute)
        np.testing.assert_array_equal(node.operator(*values), original.operator(*values))
    original_table = pipelines.ITEM_TABLE
    try:
        pipelines.ITEM_TABLE = original_table + 1.0
        with pytest.raises(willow.PlanMismatchError, match="ITEM_TABLE"):
            apply_compilation(graph, recipes, lower, fn)
    finally:
        pipelines.ITEM_TABLE = original_table


def test_a_statement_rebinding_its_operand_is_verified_on_the_old_value(lookup_setup):
    import warnings

    class Capture:
        def predict_proba(self, X):
            return X

    model, calib, batch = lookup_setup
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, _, result = compile_traced(pipelines.rebinding_pipeline, {"model": Capture(), "rows": calib})
    compiled = [n.original for n in result.nodes if n.path is not None]
    assert compiled == [
        "np.where(x > 5.0, x * 2.0, -x)[:, None] - USER_TABLE.reindex(rows['user']).to_numpy(dtype=float)"
    ]


def test_cascade_over_compiled_lookups(lookup_setup):
    from equivalence import assert_cascade_equivalent

    rng = np.random.default_rng(11)
    n = 3400
    rows = _rows(rng, n)
    extra = rng.normal(size=(n, 3))
    user_value = pipelines.USER_TABLE["a"].reindex(rows["user"]).to_numpy()
    y = ((np.nan_to_num(user_value, nan=-1.0) + 0.3 * extra[:, 0]) > 0).astype(int)
    features = np.hstack(
        [
            pipelines.USER_TABLE.reindex(rows["user"]).to_numpy(dtype=float) * 2.0,
            pipelines.slow_features(extra),
        ]
    )
    train, calib, test = slice(0, 800), slice(800, 3000), slice(3000, n)
    model = LGBMClassifier(n_estimators=20, num_leaves=7, n_jobs=1, verbose=-1).fit(features[train], y[train])
    # require_faster=False: whether the cascade also measures faster is timing
    options = dict(OPTIONS, accuracy_target=0.9, confidence=0.9, require_faster=False)
    pipeline = willow.optimize(pipelines.lookup_cascade_pipeline, **options)
    pipeline.calibrate(model, rows.iloc[calib].reset_index(drop=True), extra[calib])
    assert pipeline.plan_.cascade, pipeline.plan_.reason
    assert any(n.path is not None for n in pipeline._compilation.nodes) or any(
        "measured slower" in s.reason for s in pipeline._compilation.skipped
    )
    batch_rows, batch_extra = rows.iloc[test].reset_index(drop=True), extra[test]
    assert assert_cascade_equivalent(pipeline, model, batch_rows, batch_extra) >= 0.85
    assert_cascade_equivalent(pipeline, model, batch_rows.iloc[:1], batch_extra[:1])
