"""Serving-time monitor: checks a served cascade against the full pipeline on a sample of rows.

A cascade's guarantee is proven on held-out calibration rows, so it covers rows drawn like them.
Served rows may drift (another population, a feature table going stale); the monitor notices.
With ``willow.optimize(..., monitor=0.01)`` the monitor samples a random ``fraction`` of the rows
each call serves through the cascade (each row independently, at most ``max_rows_per_call`` per
call) and keeps them with the cascade's answers; once ``check_rows`` (100) sampled rows are
pending, that call also runs the pipeline without the cascade (the compiled pipeline, which
calibration verified reproduces the original exactly, or the original when nothing was compiled)
on them, in one call (so its fixed per-call cost is paid once per 100 sampled rows, and no call
does more than one such run), and counts how often the cascade agreed.

The counts feed an anytime-valid confidence sequence for the agreement rate: Robbins' beta-binomial
mixture (H. Robbins, "Statistical methods related to the law of the iterated logarithm", Ann.
Math. Statist. 41, 1970; the conjugate-mixture bound of S. R. Howard, A. Ramdas, J. McAuliffe,
J. Sekhon, "Time-uniform, nonparametric, nonasymptotic confidence sequences", Ann. Statist. 49,
2021, section 3). For each candidate rate ``p`` the mixture likelihood ratio
``M_t(p) = B(a + S, b + F) / B(a, b) / (p^S (1 - p)^F)`` (``S`` agreements, ``F`` disagreements
among the ``t`` sampled rows, a Beta(a, b) mixing prior centred on the target) is a nonnegative
martingale with mean 1 when the rate is ``p``, so by Ville's inequality the set
``{p : M_t(p) < 1 / alpha}`` covers the true rate at every ``t`` simultaneously with probability
at least ``1 - alpha``. Looking after every call, and stopping whenever, therefore stays honest.

The monitor reports that set's ends as ``lower_bound`` and ``upper_bound``. It falls back when the
*upper* bound drops below ``accuracy_target``: then it is confident (at ``confidence``) that the
cascade agrees with the pipeline on fewer rows than promised. (The lower bound starts at 0 and
only rises with evidence, so "lower bound below target" would fire on the first calls of every
healthy cascade.) If the cascade's agreement on the served rows stays at or above the target, the
chance that the monitor ever falls back, over the whole serving lifetime, is at most
``1 - confidence``. On fallback it warns once (:class:`~willow.errors.MonitorFallbackWarning`),
and every later call runs the pipeline without the cascade until
:meth:`~willow.OptimizedPipeline.recalibrate_from_monitor` (or ``calibrate``) builds a new plan.
It keeps the most recent sampled rows (at most ``keep_rows``) for that recalibration.
"""

from __future__ import annotations

import datetime as _dt
import inspect
import math
import threading
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.special import betaln

from willow.errors import CalibrationError
from willow.rows import n_rows, take_rows

__all__ = [
    "MonitorState",
    "ServingMonitor",
    "MonitorFallbackWarning",
    "agreement_bounds",
    "excludes",
    "concat_rows",
    "attach",
]

PRIOR_STRENGTH = 10.0
"""a + b of the Beta mixing prior (its mean is the target); any fixed prior keeps the bound valid,
this one makes it tight near the target."""


class MonitorFallbackWarning(UserWarning):
    """The serving-time monitor found the cascade below its accuracy target and switched to the
    pipeline without the cascade."""


def _prior(target: float) -> tuple[float, float]:
    return max(PRIOR_STRENGTH * target, 1e-3), max(PRIOR_STRENGTH * (1.0 - target), 1e-3)


def _excess(agreed: int, sampled: int, confidence: float, target: float) -> Callable[[float], float]:
    """``p -> log M_t(p) - log(1 / alpha)``: the rate ``p`` is outside the confidence set where it
    is >= 0. Convex in ``p``, lowest at ``agreed / sampled``."""
    a, b = _prior(target)
    disagreed = sampled - agreed
    mixture = float(betaln(a + agreed, b + disagreed) - betaln(a, b)) - math.log(1.0 / (1.0 - confidence))

    def excess(p: float) -> float:
        if (p <= 0.0 and agreed) or (p >= 1.0 and disagreed):
            return math.inf
        value = mixture
        if agreed:
            value -= agreed * math.log(p)
        if disagreed:
            value -= disagreed * math.log1p(-p)
        return value

    return excess


def excludes(agreed: int, sampled: int, confidence: float, target: float, rate: float) -> bool:
    """Whether the confidence set after ``agreed`` of ``sampled`` excludes the agreement ``rate``
    (one evaluation: what the monitor checks after each call, with ``rate`` = the target)."""
    return sampled > 0 and _excess(agreed, sampled, confidence, target)(rate) >= 0.0


def agreement_bounds(agreed: int, sampled: int, confidence: float, target: float) -> tuple[float, float]:
    """The anytime-valid confidence set ``[lower, upper]`` for the agreement rate after ``agreed``
    agreements among ``sampled`` checked rows, at level ``confidence`` (see the module doc);
    ``target`` centres the mixing prior."""
    if sampled == 0:
        return 0.0, 1.0
    excess = _excess(agreed, sampled, confidence, target)

    def edge(inside: float, out: float) -> float:
        for _ in range(48):  # bisection to 2**-48: one crossing on each side of the centre
            middle = 0.5 * (inside + out)
            if excess(middle) >= 0.0:
                out = middle
            else:
                inside = middle
        return inside

    centre = agreed / sampled
    lower = edge(centre, 0.0) if excess(0.0) >= 0.0 else 0.0
    upper = edge(centre, 1.0) if excess(1.0) >= 0.0 else 1.0
    return lower, upper


@dataclass(frozen=True)
class MonitorState:
    """What the monitor has seen (``pipeline.monitor_``).

    ``state`` is ``"watching"`` (the cascade serves), ``"fallen back"`` (the pipeline without the
    cascade serves, since ``since``) or ``"stopped"`` (checking failed; ``reason`` says why, the
    cascade keeps serving). ``rows_sampled`` counts the rows checked against the pipeline (and
    ``rows_pending`` those sampled but not yet checked); ``agreement`` is the fraction of checked
    rows on which the cascade agreed with it; ``lower_bound`` / ``upper_bound`` its anytime-valid
    confidence set; ``rows_kept`` the checked rows kept for ``recalibrate_from_monitor()``.
    """

    state: str
    since: _dt.datetime
    calls: int
    rows_seen: int
    rows_sampled: int
    rows_agreed: int
    agreement: float
    lower_bound: float
    upper_bound: float
    accuracy_target: float
    confidence: float
    fraction: float
    rows_pending: int
    rows_kept: int
    reason: str = ""

    def describe(self) -> str:
        return (
            f"monitor {self.state} since {self.since.isoformat(timespec='seconds')}: "
            f"{self.rows_sampled} of {self.rows_seen} served rows checked ({self.fraction:.2%} sampled), "
            f"agreement {self.agreement:.4f}, {self.confidence:.0%} confidence sequence "
            f"[{self.lower_bound:.4f}, {self.upper_bound:.4f}] (target {self.accuracy_target})"
            + (f"; {self.reason}" if self.reason else "")
        )


def concat_rows(parts: list[Any]) -> Any:
    """The rows of ``parts`` (same container type) stacked in order."""
    first = parts[0]
    if isinstance(first, np.ndarray):
        return np.concatenate(parts, axis=0)
    if sp.issparse(first):
        return sp.vstack(parts, format=first.format)
    if isinstance(first, (pd.DataFrame, pd.Series)):
        return pd.concat(parts, ignore_index=isinstance(first.index, pd.RangeIndex))
    if isinstance(first, list):
        return [row for part in parts for row in part]
    if isinstance(first, tuple):
        return tuple(row for part in parts for row in part)
    raise TypeError(f"Cannot stack rows of a {type(first).__name__}.")


class ServingMonitor:
    """Serves calls through a cascade while checking a sample of its rows (see the module doc).

    ``cascade`` and ``fallback`` take the pipeline function's own arguments; ``labels_agree(a, b)``
    says, per row, whether two outputs make the same prediction; ``row_parameters`` names the
    arguments holding one entry per row.
    """

    def __init__(
        self,
        fn: Callable,
        cascade: Callable,
        fallback: Callable,
        labels_agree: Callable[[Any, Any], np.ndarray],
        row_parameters: tuple[str, ...],
        *,
        fraction: float,
        accuracy_target: float,
        confidence: float,
        max_rows_per_call: int = 1000,
        check_rows: int = 100,
        keep_rows: int = 20_000,
        random_state: int | None = 0,
    ) -> None:
        self._signature = inspect.signature(fn)
        self._cascade, self._fallback, self._agree = cascade, fallback, labels_agree
        self._row_parameters = tuple(row_parameters)
        self.fraction, self.accuracy_target, self.confidence = fraction, accuracy_target, confidence
        self.max_rows_per_call, self.check_rows, self.keep_rows = max_rows_per_call, check_rows, keep_rows
        self._rng = np.random.default_rng(random_state)
        self._lock = threading.Lock()
        self._kept: deque[tuple[dict[str, Any], int]] = deque()
        self._kept_rows = 0
        self._pending: list[tuple[dict[str, Any], np.ndarray]] = []
        self._pending_rows = 0
        self._last_arguments: dict[str, Any] = {}
        self._state, self._reason = "watching", ""
        self._since = _dt.datetime.now(_dt.UTC)
        self._calls = self._seen = self._sampled = self._agreed = 0

    @property
    def fallen_back(self) -> bool:
        return self._state == "fallen back"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._state == "fallen back":
            return self._fallback(*args, **kwargs)
        output = self._cascade(*args, **kwargs)
        if self._state != "watching":
            return output
        try:
            self._check(args, kwargs, output)
        except Exception as exc:  # noqa: BLE001 - checking must never break a served call
            self._state, self._since = "stopped", _dt.datetime.now(_dt.UTC)
            self._reason = f"checking failed ({type(exc).__name__}: {exc}); the cascade keeps serving"
            warnings.warn(
                f"willow's serving monitor stopped: {self._reason}.", MonitorFallbackWarning, stacklevel=3
            )
        return output

    def _check(self, args: tuple, kwargs: dict, output: Any) -> None:
        total = n_rows(output)
        with self._lock:
            self._calls += 1
            self._seen += total
            count = min(int(self._rng.binomial(total, self.fraction)) if total else 0, self.max_rows_per_call)
            positions = np.sort(self._rng.choice(total, size=count, replace=False)) if count else None
        if positions is None:  # most calls: nothing sampled, nothing more to do
            return
        bound = self._signature.bind(*args, **kwargs)
        bound.apply_defaults()
        sampled = {
            name: take_rows(bound.arguments[name], positions)
            for name in self._row_parameters
            if name in bound.arguments
        }
        others = {k: v for k, v in bound.arguments.items() if k not in self._row_parameters}
        with self._lock:
            self._pending.append((sampled, take_rows(np.asarray(output), positions)))
            self._pending_rows += count
            if self._pending_rows < self.check_rows:
                return
            pending, self._pending, self._pending_rows = self._pending, [], 0
        # one call of the pipeline without the cascade on every pending sampled row
        rows = {name: concat_rows([part[name] for part, _ in pending]) for name in pending[0][0]}
        bound.arguments.update(rows)
        reference = np.asarray(self._fallback(*bound.args, **bound.kwargs))
        served = np.concatenate([out for _, out in pending], axis=0)
        agree = np.asarray(self._agree(served, reference))
        checked = len(agree)
        with self._lock:
            self._sampled += checked
            self._agreed += int(agree.sum())
            self._keep(rows, checked, others)
            below = self._agreed < self.accuracy_target * self._sampled and excludes(
                self._agreed, self._sampled, self.confidence, self.accuracy_target, self.accuracy_target
            )
            fell = below and self._state == "watching"
            if fell:
                self._state, self._since = "fallen back", _dt.datetime.now(_dt.UTC)
        if fell:
            warnings.warn(
                f"willow's serving monitor is {self.confidence:.0%} confident that the cascade now "
                f"agrees with the full pipeline on fewer than {self.accuracy_target} of rows "
                f"({self._agreed} of {self._sampled} checked rows agreed): the served rows no longer "
                "look like the calibration rows. Serving the pipeline without the cascade from now "
                "on; call recalibrate_from_monitor() to plan a cascade for the new rows.",
                MonitorFallbackWarning,
                stacklevel=4,
            )

    def _keep(self, rows: dict[str, Any], count: int, others: dict[str, Any]) -> None:
        self._last_arguments = others
        self._kept.append((rows, count))
        self._kept_rows += count
        while self._kept and self._kept_rows - self._kept[0][1] >= self.keep_rows:
            self._kept_rows -= self._kept.popleft()[1]

    def kept_arguments(self) -> dict[str, Any]:
        """The kept checked rows (the oldest dropped first beyond ``keep_rows``) as the function's
        arguments, with the other arguments of the most recent check (the model...)."""
        with self._lock:
            if not self._kept:
                raise CalibrationError(
                    "The serving monitor has not kept any rows yet: serve more calls (it checks a "
                    f"{self.fraction:.2%} sample of their rows, {self.check_rows} at a time) before "
                    "recalibrate_from_monitor()."
                )
            parts = [rows for rows, _ in self._kept]
            others = dict(self._last_arguments)
        return {**others, **{name: concat_rows([part[name] for part in parts]) for name in parts[0]}}

    @property
    def state(self) -> MonitorState:
        with self._lock:
            sampled = self._sampled
            lower, upper = agreement_bounds(self._agreed, sampled, self.confidence, self.accuracy_target)
            return MonitorState(
                state=self._state,
                since=self._since,
                calls=self._calls,
                rows_seen=self._seen,
                rows_sampled=sampled,
                rows_agreed=self._agreed,
                agreement=self._agreed / sampled if sampled else float("nan"),
                lower_bound=lower,
                upper_bound=upper,
                accuracy_target=self.accuracy_target,
                confidence=self.confidence,
                fraction=self.fraction,
                rows_pending=self._pending_rows,
                rows_kept=self._kept_rows,
                reason=self._reason,
            )


def attach(
    pipeline: Any, plan: Any, output: Any, fingerprint: str, cascade: Callable, compilation: Any
) -> ServingMonitor:
    """The monitor of a freshly installed cascade of ``pipeline`` (``monitor=`` set): its fallback
    is the compiled pipeline without the cascade (the original when nothing was compiled)."""
    from willow.cascades.calibration import build_cascade
    from willow.cascades.runtime import ModelGuard

    fallback: Callable = pipeline.__wrapped__
    if compilation is not None:
        fallback, _ = build_cascade(
            compilation.graph,
            pipeline.__wrapped__,
            None,
            plan.threshold,
            None,
            output,
            ModelGuard(fingerprint),
            compilation,
        )
    return ServingMonitor(
        pipeline.__wrapped__,
        cascade,
        fallback,
        output.agreement,
        pipeline.graph_.row_parameters,
        fraction=pipeline.monitor,
        accuracy_target=plan.accuracy_target,
        confidence=pipeline.confidence,
        random_state=pipeline.random_state,
    )
