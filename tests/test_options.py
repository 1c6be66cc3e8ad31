"""The decorator's knobs as one value (willow.options.Options): checked in one place, the same
from keywords or from ``options=``, read through by the pipeline, round-tripped by get_params."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest

import willow
from willow.errors import OptionError, OptionTypeError, WillowError
from willow.options import Options


def predict(model, X):
    return model.predict(np.hstack([X * 1.0]))


@pytest.mark.parametrize(
    ("kwargs", "error", "expected", "found"),
    [
        (dict(confidence=1.0), OptionError, "confidence must be in (0, 1)", "got 1.0"),
        (dict(accuracy_target="high"), OptionTypeError, "accuracy_target must be a number", "str 'high'"),
        (dict(precision_target=0), OptionError, "precision_target must be in (0, 1]", "got 0"),
        (dict(monitor=2.0), OptionError, "monitor must be in (0, 1]", "got 2.0"),
        (dict(max_candidates=True), OptionError, "max_candidates must be an integer >= 1", "got True"),
        (dict(exhaustive_max_groups=-1), OptionError, "exhaustive_max_groups must be an integer >= 0", "-1"),
        (dict(query_size=0), OptionError, "query_size must be an integer >= 1", "got 0"),
        (dict(compile="fast"), OptionError, "compile must be True, False, 'eager' or 'all'", "got 'fast'"),
        (dict(early_exit="fast"), OptionError, "early_exit must be 'exact'", "got 'fast'"),
        (dict(query="rank"), OptionError, "query must be one of ('predict', 'topk')", "got 'rank'"),
        (dict(query="topk"), OptionTypeError, 'query="topk" needs k=', "e.g. k=100"),
        (dict(approximate_model="lr"), OptionTypeError, "approximate_model must be an unfitted", "got str"),
        (dict(colour="red"), OptionTypeError, "unknown keyword argument(s) colour", "the options are"),
    ],
)
def test_a_bad_option_names_the_argument_what_it_must_be_and_what_it_got(kwargs, error, expected, found):
    builds = [lambda: Options.build(**kwargs), lambda: willow.OptimizedPipeline(predict, **kwargs)]
    if "colour" not in kwargs:  # optimize() itself refuses an unknown keyword, as any function does
        builds.append(lambda: willow.optimize(predict, **kwargs))
    for build in builds:
        with pytest.raises(error) as raised:
            build()
        message = str(raised.value)
        assert expected in message and found in message
        assert isinstance(raised.value, WillowError)
        assert isinstance(raised.value, TypeError if error is OptionTypeError else ValueError)


def test_options_are_normalized_frozen_and_checked_again_on_replace():
    options = Options(split=[0.6, 0.2, 0.2], row_args=["X"], accuracy_target=[0.99, 0.9], strict=0)
    assert options.split == (0.6, 0.2, 0.2) and options.row_args == ("X",)
    assert options.accuracy_target == (0.99, 0.9) and options.strict is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.compile = False  # type: ignore[misc]
    with pytest.raises(OptionError, match="cost_repeats must be an integer >= 1, got 0"):
        dataclasses.replace(options, cost_repeats=0)
    assert pickle.loads(pickle.dumps(options)) == options


def test_options_object_and_keywords_build_the_same_pipeline():
    keywords = dict(accuracy_target=0.9, compile=False, cost_repeats=2, query="topk", k=3)
    from_keywords = willow.optimize(predict, **keywords)
    from_options = willow.optimize(options=Options(**keywords))(predict)
    direct = willow.OptimizedPipeline(predict, options=Options(**keywords))
    params = from_keywords.get_params()
    assert list(params) == list(Options.names()) == list(Options().params())
    assert params == from_options.get_params() == direct.get_params()
    assert (
        from_keywords.compile is False
        and from_keywords.k == 3
        and from_options.options == Options(**keywords)
    )
    with pytest.raises(AttributeError):
        from_keywords.compile = True  # read-only: the knobs live in .options
    with pytest.raises(OptionTypeError, match="got options= and keyword argument.s. cost_repeats"):
        willow.optimize(predict, options=Options(), cost_repeats=3)
    with pytest.raises(OptionTypeError, match="options must be a willow.options.Options, got dict"):
        willow.optimize(predict, options=dict(compile=False))  # type: ignore[arg-type]


def test_a_pipeline_pickled_before_options_existed_still_unpickles():
    pipeline = willow.optimize(predict, compile=False, cost_repeats=2)
    state = pipeline.__getstate__()
    legacy = dict(state["attributes"])
    legacy.update(legacy.pop("options").params())  # the old layout: one attribute per knob
    restored = willow.OptimizedPipeline.__new__(willow.OptimizedPipeline)
    restored.__setstate__({**state, "attributes": legacy})
    assert restored.get_params() == pipeline.get_params()
    assert restored.options == pipeline.options


def test_the_planners_get_their_knobs_from_one_options():
    options = Options(accuracy_target=(0.99, 0.9), cost_repeats=2, compile=False, k_fractions=[0.1])
    cascade = options.cascade_options()
    assert cascade.accuracy_target == 0.99 and cascade.cost_repeats == 2 and cascade.compile is False
    topk = dataclasses.replace(options, accuracy_target=0.9, query="topk", k=5).topk_options()
    assert topk.k == 5 and topk.fractions == (0.1,) and topk.cost_repeats == 2 and topk.compile is False
