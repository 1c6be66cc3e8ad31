"""Accuracy scaling under load (Proteus-style, opt-in): a faster proven tier instead of an SLO miss.

Every tier of a willow pipeline is proven against the original at its own accuracy target, so a
less strict tier is a less accurate but faster answer that still carries a guarantee. Before each
batch the batcher asks :meth:`AccuracyScaler.choose` which tier serves the requests that did not
pin one. The scaler predicts when the queue would be served at a tier, from a per-tier model of
batch latency (:class:`ServiceModel`, fitted online on the batches that tier served):

    predicted_ms = max(oldest request's wait + latency of the first batch,
                       full batches x latency of a full batch + latency of the rest)

The rule, one decision per batch (the decision count is the scaler's clock; it reads no time):

- **Down.** When the prediction at the current tier exceeds the deadline (the SLO, or the head
  request's ``max_latency_ms``), step to the next faster tier, unless that tier has measured less
  than ``min_gain`` times faster for this queue, and on past it, in the same step, while the tier
  reached is still predicted to miss and the next one measured ``min_gain`` times faster (a
  growing queue reaches the tier that carries it at once); never past the least strict tier
  declared (``lowest``).
- **Up.** Step back to the stricter tier above when it has measured less than ``min_gain`` times
  slower at the next batch's size (little is gained here: tiers of about equal cost, such as tiers
  that serve one plan, would otherwise be alternated on measurement noise, each step a chance to
  cut a batch short), or when it would meet the deadline with room to spare (predicted
  at most ``down_margin`` of it) *and* would carry the recent load: the recent batches' rows
  and the rows still queued, costed at the stricter tier, take at most ``up_load`` of the time
  they arrived in (when the batcher passes ``now_ms``). The second test is the hysteresis: a short queue at the faster tier
  says little, since the faster tier is what kept it short.
- **Fresh estimates.** A tier's model is refitted only from batches that tier serves, so a tier
  the scaler left stops being measured, and an estimate taken during a burst (CPU contention,
  a huge queue) would otherwise stay forever and pin the scaler on the faster tier. So
  observations older than ``max_age`` decisions are forgotten (a tier with none left is unknown:
  stepping down tries it), and while at a faster tier the scaler serves one *probe* batch on the
  stricter tier above whenever that tier has not been measured for ``probe_every`` decisions and
  the probe is not predicted to miss the head's deadline (an unknown tier is probed regardless).
  A probe is stricter than the current tier, so it never serves below ``lowest``; it costs at most
  one batch in ``probe_every`` served by the stricter tier.

One move per decision and at least ``dwell`` batches at a tier between moves, so a single slow
batch does not make it flap and each tier's latency model sees batches before it is used.

Tiers known to serve one plan (``same_as``: for each tier, the strictest tier serving the same
plan, e.g. looser targets for which calibration proved no cascade of their own) are one step: the
scaler serves the strictest of them and never steps (or probes) among them.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

__all__ = ["ServiceModel", "AccuracyScaler"]


class ServiceModel:
    """Batch latency of one tier as ``fixed_ms + per_row_ms * rows``, fitted by least squares on
    the last ``window`` batches (slope and intercept kept non-negative). Each observation carries
    the scaler's clock (``at``) so that :meth:`expire` can forget stale ones."""

    def __init__(self, window: int = 64) -> None:
        self._rows: deque[int] = deque(maxlen=window)
        self._ms: deque[float] = deque(maxlen=window)
        self._at: deque[int] = deque(maxlen=window)
        self._fit: tuple[float, float] | None = None  # (fixed_ms, per_row_ms), refitted lazily

    def observe(self, rows: int, latency_ms: float, at: int = 0) -> None:
        self._rows.append(int(rows))
        self._ms.append(float(latency_ms))
        self._at.append(int(at))
        self._fit = None

    def expire(self, before: int) -> None:
        """Forget the observations made before clock ``before``."""
        while self._at and self._at[0] < before:
            self._rows.popleft()
            self._ms.popleft()
            self._at.popleft()
            self._fit = None

    @property
    def known(self) -> bool:
        return bool(self._rows)

    @property
    def newest(self) -> int | None:
        """The clock of the newest observation kept (None when there is none)."""
        return self._at[-1] if self._at else None

    def predict(self, rows: int) -> float:
        """Predicted latency (ms) of a batch of ``rows`` rows; NaN before any observation."""
        if not self._rows:
            return math.nan
        if self._fit is None:
            self._fit = self._least_squares()
        fixed, per_row = self._fit
        return fixed + per_row * rows

    def _least_squares(self) -> tuple[float, float]:
        n = len(self._rows)
        mean_rows = sum(self._rows) / n
        mean_ms = sum(self._ms) / n
        spread = sum((r - mean_rows) ** 2 for r in self._rows)
        if spread == 0:  # one batch size seen: latency proportional to rows
            return 0.0, mean_ms / mean_rows if mean_rows else 0.0
        covariance = sum((r - mean_rows) * (m - mean_ms) for r, m in zip(self._rows, self._ms))
        slope = max(0.0, covariance / spread)
        return max(0.0, mean_ms - slope * mean_rows), slope


class AccuracyScaler:
    """Pick the tier for the next batch (see the module doc). ``n_tiers`` tiers, index 0 the
    strictest; ``lowest`` is the least strict index it may use (default the last declared).
    ``load_window`` batches make the recent load that a step up must carry."""

    def __init__(
        self,
        n_tiers: int,
        *,
        lowest: int | None = None,
        down_margin: float = 0.5,
        dwell: int = 2,
        up_load: float = 0.7,
        probe_every: int = 16,
        max_age: int = 32,
        load_window: int = 32,
        min_gain: float = 1.25,
        same_as: Sequence[int] | None = None,
    ) -> None:
        if n_tiers < 1:
            raise ValueError(f"n_tiers must be >= 1, got {n_tiers}.")
        self.lowest = n_tiers - 1 if lowest is None else int(lowest)
        if not 0 <= self.lowest < n_tiers:
            raise ValueError(f"lowest must be a tier index in [0, {n_tiers - 1}], got {lowest}.")
        if not 0 < down_margin <= 1:
            raise ValueError(f"down_margin must be in (0, 1], got {down_margin!r}.")
        if not 0 < up_load <= 1:
            raise ValueError(f"up_load must be in (0, 1], got {up_load!r}.")
        if not min_gain >= 1:
            raise ValueError(f"min_gain must be >= 1, got {min_gain!r}.")
        same = list(range(n_tiers)) if same_as is None else [int(i) for i in same_as]
        if len(same) != n_tiers or any(not 0 <= j <= i for i, j in enumerate(same)):
            raise ValueError(
                f"same_as must give each of the {n_tiers} tiers the index of a tier at least as strict, "
                f"got {same_as!r}."
            )
        if not 1 <= probe_every < max_age or load_window < 1:
            raise ValueError(
                f"Expected 1 <= probe_every < max_age and load_window >= 1, got probe_every={probe_every}, "
                f"max_age={max_age}, load_window={load_window}."
            )
        self.models = [ServiceModel() for _ in range(n_tiers)]
        self.down_margin = float(down_margin)
        self.dwell = int(dwell)
        self.up_load = float(up_load)
        self.probe_every = int(probe_every)
        self.max_age = int(max_age)
        self.min_gain = float(min_gain)
        # the tiers the scaler may serve: the strictest of each plan, down to ``lowest``
        self.steps = [i for i in range(self.lowest + 1) if same[i] == i]
        self.current = 0
        self._since_step = self.dwell  # the first decision may step at once
        self._clock = 0  # decisions made
        self._last_probe = -self.probe_every
        self._started: float | None = None  # now_ms of the batch last chosen, until it is observed
        # recent batches: (start ms, rows, None) when the scaler chose the tier, else (None, rows, ms)
        self._recent: deque[tuple[float | None, int, float | None]] = deque(maxlen=int(load_window))

    def observe(self, tier: int, rows: int, latency_ms: float) -> None:
        """Record a batch that ``tier`` served."""
        self.models[tier].observe(rows, latency_ms, self._clock)
        if self._started is not None:
            self._recent.append((self._started, int(rows), None))
        else:  # a batch of pinned requests: its tier is not ours to change, its time is spent
            self._recent.append((None, int(rows), float(latency_ms)))
        self._started = None

    def predicted_ms(self, tier: int, queued_rows: int, oldest_wait_ms: float, batch_size: int) -> float:
        """When the queue would be served by ``tier`` (ms from now, see the module doc); NaN when
        the tier has no latency estimate."""
        model = self.models[tier]
        full, rest = divmod(queued_rows, batch_size)
        drain = full * model.predict(batch_size) + (model.predict(rest) if rest else 0.0)
        return max(oldest_wait_ms + model.predict(min(queued_rows, batch_size)), drain)

    def load(self, tier: int, now_ms: float, queued_rows: int = 0) -> float:
        """The fraction of the time since the oldest recent batch started that ``tier`` would have
        spent serving the recent batches and the ``queued_rows`` still waiting (NaN when unknown: no
        clock, too few batches, or no estimate for ``tier``). The queue counts because a server
        past its capacity serves only what it can: its served rows alone would understate the
        load by the backlog that keeps growing."""
        starts = [start for start, _, _ in self._recent if start is not None]
        if len(self._recent) < 8 or not starts or not now_ms > starts[0]:
            return math.nan
        model = self.models[tier]
        busy = sum(model.predict(rows) if ms is None else ms for _, rows, ms in self._recent)
        busy += model.predict(queued_rows) if queued_rows > 0 else 0.0
        return busy / (now_ms - starts[0])

    def choose(
        self,
        queued_rows: int,
        oldest_wait_ms: float,
        deadline_ms: float,
        batch_size: int,
        now_ms: float | None = None,
    ) -> int:
        """The tier for the next batch: the current one after at most one move (up one tier, or
        down one or more), or a probe of the stricter tier above it. ``now_ms`` (any monotonic clock in ms) enables the load test of a
        step up; without it a step up needs only the deadline test."""
        self._clock += 1
        self._since_step += 1
        self._started = now_ms
        for model in self.models:
            model.expire(self._clock - self.max_age)
        current = self.current
        if queued_rows <= 0:
            return current
        first = min(queued_rows, batch_size)
        faster, stricter = self._next(current, +1), self._next(current, -1)
        if self._since_step > self.dwell:
            here = self.predicted_ms(current, queued_rows, oldest_wait_ms, batch_size)
            if stricter is not None and self._gain(stricter, current, first) < self.min_gain:
                self.current = stricter  # little gained here (before trying a tier further down)
            # A predicted miss (NaN, no model yet, compares False): try the next tier unless it
            # measured less than min_gain times faster at this batch size (an unknown one is tried).
            elif (
                faster is not None
                and here > deadline_ms
                and not self._gain(current, faster, first) < self.min_gain
            ):
                self.current = self._meets(faster, queued_rows, oldest_wait_ms, deadline_ms, batch_size)
            elif stricter is not None and self._may_step_up(
                stricter, queued_rows, oldest_wait_ms, deadline_ms, batch_size, now_ms
            ):
                self.current = stricter
            if self.current != current:
                self._since_step = 0
                return self.current
        if stricter is not None and self._clock - self._last_probe >= self.probe_every:
            newest = self.models[stricter].newest
            stale = newest is None or self._clock - newest >= self.probe_every
            if stale and not oldest_wait_ms + self.models[stricter].predict(first) > deadline_ms:
                self._last_probe = self._clock
                return stricter
        return current

    def _meets(
        self, tier: int, queued_rows: int, oldest_wait_ms: float, deadline_ms: float, batch_size: int
    ) -> int:
        """From ``tier`` (a faster tier than the current one), the strictest tier at or below it
        predicted to meet the deadline: a growing queue reaches the tier that carries it in one
        step, not one tier per ``dwell`` batches. It passes a tier only for one measured at least
        ``min_gain`` times faster, and stops at a tier with no estimate (to try it)."""
        first = min(queued_rows, batch_size)
        while (faster := self._next(tier, +1)) is not None:
            if not self.predicted_ms(tier, queued_rows, oldest_wait_ms, batch_size) > deadline_ms:
                break  # meets it, or unknown (NaN)
            if self._gain(tier, faster, first) < self.min_gain:
                break
            tier = faster
        return tier

    def _next(self, tier: int, direction: int) -> int | None:
        """The tier the scaler would step to from ``tier``: the next faster (``direction=+1``) or
        stricter (``-1``) one it may serve (one per plan, never past ``lowest``); None at the end."""
        if direction > 0:
            return next((s for s in self.steps if s > tier), None)
        return next((s for s in reversed(self.steps) if s < tier), None)

    def _gain(self, slower: int, faster: int, rows: int) -> float:
        """How many times faster tier ``faster`` measured than tier ``slower`` on a batch of
        ``rows`` rows (NaN when either has no estimate; a NaN compares False)."""
        fast = self.models[faster].predict(rows)
        return self.models[slower].predict(rows) / fast if fast > 0 else math.inf

    def _may_step_up(
        self,
        stricter: int,
        queued_rows: int,
        oldest_wait_ms: float,
        deadline_ms: float,
        batch_size: int,
        now_ms: float | None,
    ) -> bool:
        fits = self.predicted_ms(stricter, queued_rows, oldest_wait_ms, batch_size)
        if not fits <= deadline_ms * self.down_margin:
            return False
        # the load test when the load is known (a clock, 8 batches): a NaN load compares False
        return now_ms is None or not self.load(stricter, now_ms, queued_rows) > self.up_load
