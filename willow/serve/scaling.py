"""Accuracy scaling under load (Proteus-style, opt-in): a faster proven tier instead of an SLO miss.

Every tier of a willow pipeline is proven against the original at its own accuracy target, so a
less strict tier is a less accurate but faster answer that still carries a guarantee. Before each
batch the batcher asks :meth:`AccuracyScaler.choose` which tier serves the requests that did not
pin one. The scaler predicts when the queue would be served at the current tier, from a
per-tier model of batch latency (:class:`ServiceModel`, fitted online on the batches each tier
served):

    predicted_ms = max(oldest request's wait + latency of the first batch, time to drain the queue)

When that exceeds the deadline (the SLO, or the head request's ``max_latency_ms``), it steps to
the next faster tier (unless that tier has measured no faster), never past the least strict one
declared. When the stricter tier above would meet the deadline with room to spare (predicted at
most ``down_margin`` of it), or has measured no slower than the current one, it steps back. One step per decision and at least ``dwell`` batches at a tier between steps, so a single
slow batch does not make it flap and each tier's latency model sees batches before it is used.
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["ServiceModel", "AccuracyScaler"]


class ServiceModel:
    """Batch latency of one tier as ``fixed_ms + per_row_ms * rows``, fitted by least squares on
    the last ``window`` batches (slope and intercept kept non-negative)."""

    def __init__(self, window: int = 64) -> None:
        self._rows: deque[int] = deque(maxlen=window)
        self._ms: deque[float] = deque(maxlen=window)
        self._fit: tuple[float, float] | None = None  # (fixed_ms, per_row_ms), refitted lazily

    def observe(self, rows: int, latency_ms: float) -> None:
        self._rows.append(int(rows))
        self._ms.append(float(latency_ms))
        self._fit = None

    @property
    def known(self) -> bool:
        return bool(self._rows)

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
    strictest; ``lowest`` is the least strict index it may use (default the last declared)."""

    def __init__(
        self, n_tiers: int, *, lowest: int | None = None, down_margin: float = 0.5, dwell: int = 2
    ) -> None:
        if n_tiers < 1:
            raise ValueError(f"n_tiers must be >= 1, got {n_tiers}.")
        self.lowest = n_tiers - 1 if lowest is None else int(lowest)
        if not 0 <= self.lowest < n_tiers:
            raise ValueError(f"lowest must be a tier index in [0, {n_tiers - 1}], got {lowest}.")
        if not 0 < down_margin <= 1:
            raise ValueError(f"down_margin must be in (0, 1], got {down_margin!r}.")
        self.models = [ServiceModel() for _ in range(n_tiers)]
        self.down_margin = float(down_margin)
        self.dwell = int(dwell)
        self.current = 0
        self._since_step = self.dwell  # the first decision may step at once

    def observe(self, tier: int, rows: int, latency_ms: float) -> None:
        """Record a batch that ``tier`` served."""
        self.models[tier].observe(rows, latency_ms)

    def predicted_ms(self, tier: int, queued_rows: int, oldest_wait_ms: float, batch_size: int) -> float:
        """When the queue would be served by ``tier`` (ms from now, see the module doc); NaN when
        the tier has served no batch yet."""
        model = self.models[tier]
        first = min(queued_rows, batch_size)
        batches = math.ceil(queued_rows / batch_size)
        return max(oldest_wait_ms + model.predict(first), batches * model.predict(batch_size))

    def choose(self, queued_rows: int, oldest_wait_ms: float, deadline_ms: float, batch_size: int) -> int:
        """The tier for the next batch, after at most one step from the current one."""
        self._since_step += 1
        current = self.current
        if self._since_step > self.dwell and queued_rows > 0:
            here = self.predicted_ms(current, queued_rows, oldest_wait_ms, batch_size)
            faster = math.nan
            if current < self.lowest:
                faster = self.predicted_ms(current + 1, queued_rows, oldest_wait_ms, batch_size)
            # A predicted miss (NaN, no model yet, compares False): try the next tier unless it
            # measured no faster. Back up when the stricter tier would now meet the deadline with
            # room to spare, or when it measured no slower than this one (nothing gained here).
            if current < self.lowest and here > deadline_ms and not faster >= here:
                self.current = current + 1
            elif current > 0:
                stricter = self.predicted_ms(current - 1, queued_rows, oldest_wait_ms, batch_size)
                if stricter <= deadline_ms * self.down_margin or stricter <= here:
                    self.current = current - 1
            if self.current != current:
                self._since_step = 0
        return self.current
