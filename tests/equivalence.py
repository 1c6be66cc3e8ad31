"""One equivalence battery that every calibrated cascade must pass against its original function.

For a batch, it checks that the optimized output has the original's type, dtype and shape; that
every row the cascade sent through the full pipeline equals the original exactly (labels) or to
1e-9 relative (probabilities); and that every row the approximate model answered equals the
approximate model's own output. Which rows were answered approximately is recomputed here
independently of the generated code, from the traced graph.
"""

from __future__ import annotations

import ast

import numpy as np
import pytest

from willow.compiler.codegen import stack_expression
from willow.compiler.execution import StatementRunner, bind_arguments


def routed_rows(pipeline, args, kwargs):
    """(approximate output, boolean mask of rows the approximate model answers)."""
    graph = pipeline.graph_
    runner = StatementRunner(graph, getattr(pipeline, "traced_function", pipeline.__wrapped__))
    ns = runner.run(runner.namespace(bind_arguments(pipeline.__wrapped__, args, kwargs)))
    expression = compile(ast.Expression(stack_expression(graph, pipeline.plan_.selected)), "<test>", "eval")
    approx, confidence = pipeline._approximate.predict_with_confidence(eval(expression, ns))
    return approx, confidence >= pipeline.plan_.threshold


def assert_cascade_equivalent(pipeline, *args, **kwargs) -> float:
    """Run the battery on one batch; return the agreement with the original."""
    original = pipeline.__wrapped__(*args, **kwargs)
    optimized = pipeline(*args, **kwargs)
    assert type(optimized) is type(original)
    assert optimized.dtype == original.dtype, (optimized.dtype, original.dtype)
    assert optimized.shape == original.shape
    if not pipeline.is_calibrated or not pipeline.plan_.cascade:
        np.testing.assert_array_equal(optimized, original)
        return 1.0
    if len(original) == 0:
        return 1.0
    approx, confident = routed_rows(pipeline, args, kwargs)
    full = ~confident
    if pipeline.plan_.method == "predict":
        np.testing.assert_array_equal(optimized[full], original[full])
        np.testing.assert_array_equal(optimized[confident], approx[confident])
        agree = optimized == original
    else:
        np.testing.assert_allclose(optimized[full], original[full], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(optimized[confident], approx[confident], rtol=0, atol=0)
        agree = np.argmax(optimized, axis=1) == np.argmax(original, axis=1)
    return float(np.mean(agree))


def assert_same_as_original(pipeline, *args, **kwargs) -> None:
    """The pipeline does what its original does on this call: the same result (type, dtype,
    shape, values), or an exception of the same type (0-row and malformed batches)."""
    try:
        expected = pipeline.__wrapped__(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the optimized pipeline must raise the same
        with pytest.raises(type(exc)) as raised:
            pipeline(*args, **kwargs)
        assert str(raised.value) == str(exc)
        return
    got = pipeline(*args, **kwargs)
    assert type(got) is type(expected)
    assert getattr(got, "dtype", None) == getattr(expected, "dtype", None)
    assert np.shape(got) == np.shape(expected)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
