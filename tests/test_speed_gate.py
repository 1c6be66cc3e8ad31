"""The speed gate's decision (willow.compiler.speed_gate) on synthetic timings: no wall clock.

Paired timings are given as lists (``original[k]`` beside ``optimized[k]``); ``measure_speed`` is
driven by a fake sampler that hands out one prepared round per call, so the number of rounds it
asks for is checked exactly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from willow.compiler import speed_gate
from willow.compiler.speed_gate import allowed_losses, faster_beyond_noise, measure_speed


def rounds_of(monkeypatch, rounds):
    """Make ``measure_speed`` draw the prepared ``rounds`` (each [original, optimized]) in order;
    returns the list of calls made, one per round."""
    calls = []

    def sampler(fns, repeats):
        assert len(fns) == 2
        for fn in fns:
            fn()
        calls.append(repeats)
        original, optimized = rounds[len(calls) - 1]
        return [list(original), list(optimized)]

    monkeypatch.setattr(speed_gate, "interleaved_samples", sampler)
    return calls


def test_the_sign_test_allows_more_failing_pairs_as_pairs_accumulate():
    alpha = speed_gate.GATE_ALPHA / speed_gate.GATE_ROUNDS
    assert [allowed_losses(n, alpha) for n in (5, 6, 7, 14, 21)] == [-1, 0, 0, 2, 5]
    # the allowance is the binomial tail at one half, never above alpha
    for n in range(1, 30):
        j = allowed_losses(n, 0.05)
        tail = sum(math.comb(n, i) for i in range(j + 1)) / 2**n if j >= 0 else 0.0
        assert tail <= 0.05
        assert sum(math.comb(n, i) for i in range(j + 2)) / 2**n > 0.05


def test_a_clear_speedup_is_served_and_parity_is_not():
    original = [10.0, 10.2, 10.4, 10.1, 9.9, 10.3, 10.0]
    clear = faster_beyond_noise(original, [5.0, 5.1, 5.3, 4.9, 5.0, 5.2, 5.1])
    assert clear.faster and clear.decided and clear.wins == 7 and clear.needed == 7
    assert clear.speedup == pytest.approx(10.0 / 5.0, rel=0.05)
    same = faster_beyond_noise(original, original)
    assert not same.faster and same.decided  # median ratio 1: refused at once, no more rounds
    # a speedup below the margin (3% in every pair) is not served, however steady
    small = faster_beyond_noise(original, [t * 0.97 for t in original])
    assert not small.faster and small.decided
    assert "not faster beyond the timing noise" in small.describe()
    with pytest.raises(ValueError, match="at least one timing"):
        faster_beyond_noise([], [1.0])
    with pytest.raises(ValueError, match="paired timings"):
        faster_beyond_noise([1.0, 2.0], [1.0])


def test_load_drift_that_hits_both_alike_does_not_flip_the_verdict():
    # the machine's load swings 1x..5x between pairs; each pair sees the same load
    load = [1.0, 1.0, 3.0, 5.0, 1.2, 4.0, 2.0]
    original = [10.0 * f for f in load]
    faster = faster_beyond_noise(original, [6.0 * f for f in load])
    # the spread of each side alone overlaps (the old quartile rule refused this plan) ...
    assert np.quantile([6.0 * f for f in load], 0.75) > np.quantile(original, 0.25)
    # ... but every pair says 0.6x
    assert faster.faster and faster.ratio_median == pytest.approx(0.6)
    # the same drift never makes an equally fast or a slower plan look faster
    for factor in (1.0, 1.02, 1.3):
        verdict = faster_beyond_noise(original, [10.0 * factor * f for f in load])
        assert not verdict.faster and verdict.decided


def test_a_slower_plan_is_never_served_whatever_the_noise():
    rng = np.random.default_rng(0)
    for _ in range(500):
        n = int(rng.integers(1, 30))
        load = rng.uniform(1.0, 5.0, n)
        original = 10.0 * load * rng.uniform(0.9, 1.1, n)
        # slower in every pair (by 0-50%), with its own noise on top
        optimized = original * rng.uniform(1.0, 1.5, n)
        verdict = faster_beyond_noise(list(original), list(optimized), rounds=3)
        assert not verdict.faster and verdict.decided
        # and slower at the median with noisy pairs: some pairs win, never enough
        optimized = original * rng.uniform(0.7, 1.5, n)
        verdict = faster_beyond_noise(list(original), list(optimized))
        assert not verdict.faster or np.median(optimized / original) < 1.0 - speed_gate.GATE_MARGIN


def test_overlap_asks_for_more_rounds_and_a_steady_speedup_is_then_served(monkeypatch):
    # like the session's credit case (medians 11.39 vs 7.98 ms, but the compiled 75th percentile
    # above the original's 25th): three compiled runs of seven hit by load spikes
    original = [11.39, 10.50, 11.8, 12.3, 11.0, 10.4, 10.9]
    spiky = [7.98, 7.6, 11.96, 12.5, 7.9, 11.5, 7.7]
    assert np.quantile(spiky, 0.75) > np.quantile(original, 0.25)  # the ranges overlap
    first = faster_beyond_noise(original, spiky)
    assert first.wins == 4 and first.ratio_median < 0.95  # the median says faster ...
    assert not first.faster and not first.decided  # ... not significant yet: more pairs
    one_spike = [7.98, 7.6, 7.9, 12.5, 7.9, 7.5, 7.7]
    calls = rounds_of(monkeypatch, [(original, spiky), (original, one_spike), (original, one_spike)])
    verdict = measure_speed(lambda: None, lambda: None, 7)
    # 4 + 6 = 10 wins of 14 is not enough (12 needed); 16 of 21 is
    assert calls == [7, 7, 7] and verdict.faster and verdict.pairs == 21 and verdict.rounds == 3
    assert "in 16 of 21 interleaved pairs" in verdict.describe() and "(3 rounds)" in verdict.describe()
    assert verdict.speedup == pytest.approx(11.0 / 7.9, rel=0.05)


def test_a_speedup_that_stays_inside_the_noise_is_refused_after_the_last_round(monkeypatch):
    # medians say faster, but only 4 pairs of 7 win in every round: never significant
    original = [10.0] * 7
    optimized = [8.0, 8.0, 8.0, 8.0, 10.5, 10.0, 11.0]
    calls = rounds_of(monkeypatch, [(original, optimized)] * 3)
    verdict = measure_speed(lambda: None, lambda: None, 7)
    assert calls == [7, 7, 7] and not verdict.faster and not verdict.decided
    assert verdict.pairs == 21 and verdict.wins == 12 and verdict.needed == 16
    assert "still undecided after 3 rounds" in verdict.describe()


def test_a_refusal_or_a_clear_win_takes_one_round(monkeypatch):
    calls = rounds_of(monkeypatch, [([10.0] * 7, [10.5] * 7)])
    assert not measure_speed(lambda: None, lambda: None, 7).faster and calls == [7]
    calls = rounds_of(monkeypatch, [([10.0] * 7, [4.0] * 7)])
    assert measure_speed(lambda: None, lambda: None, 7).faster and calls == [7]


def test_no_new_round_past_the_time_budget(monkeypatch):
    original, optimized = [10.0] * 7, [8.0, 8.0, 8.0, 8.0, 10.5, 10.0, 11.0]
    calls = rounds_of(monkeypatch, [(original, optimized)] * 3)
    verdict = measure_speed(lambda: None, lambda: None, 7, max_seconds=0.0)
    assert calls == [7] and not verdict.faster and not verdict.decided


def test_interleaved_samples_alternates_which_function_runs_first():
    order = []
    samples = speed_gate.interleaved_samples([lambda: order.append("a"), lambda: order.append("b")], 4)
    assert order == ["a", "b"] + ["a", "b", "b", "a", "a", "b", "b", "a"]  # warm-ups, then pairs
    assert [len(s) for s in samples] == [4, 4] and all(t >= 0 for s in samples for t in s)
