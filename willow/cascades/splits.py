"""Seeded train / tune / holdout split of the calibration rows.

The approximate model is fitted on *train*, feature values and the confidence threshold are
measured on *tune*, and the finished plan is verified once on *holdout*, which nothing else saw.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from willow.cascades.bounds import min_rows_for_target
from willow.errors import CalibrationError

__all__ = ["CalibrationSplit", "split_rows"]


@dataclass(frozen=True)
class CalibrationSplit:
    """Row positions of each part of the calibration data."""

    train: np.ndarray
    tune: np.ndarray
    holdout: np.ndarray


def _validate_fractions(split: tuple[float, float, float]) -> tuple[float, float, float]:
    try:
        parts = tuple(float(p) for p in split)
    except TypeError as exc:
        raise ValueError(f"split must be three fractions (train, tune, holdout), got {split!r}.") from exc
    if len(parts) != 3 or any(p <= 0 for p in parts):
        raise ValueError(
            f"split must be three positive fractions (train, tune, holdout), got {split!r}; "
            "for example split=(0.5, 0.25, 0.25)."
        )
    total = sum(parts)
    return parts[0] / total, parts[1] / total, parts[2] / total


def split_rows(
    n: int,
    split: tuple[float, float, float],
    accuracy_target: float,
    confidence: float,
    random_state: int | None,
) -> CalibrationSplit:
    """Shuffle ``n`` row positions and cut them into train, tune and holdout.

    Raises :class:`~willow.errors.CalibrationError` when tune or holdout would be too small to
    ever prove ``accuracy_target`` at ``confidence``, saying how many calibration rows are needed.
    """
    train_f, tune_f, holdout_f = _validate_fractions(split)
    needed = min_rows_for_target(accuracy_target, confidence) or 1
    min_train = 4
    required = max(
        needed / tune_f,
        needed / holdout_f,
        min_train / train_f,
    )
    required_rows = int(np.ceil(required)) + 2
    n_tune = int(round(n * tune_f))
    n_holdout = int(round(n * holdout_f))
    n_train = n - n_tune - n_holdout
    if n_tune < needed or n_holdout < needed or n_train < min_train:
        raise CalibrationError(
            f"Calibration data too small to split: got {n} rows, which split={split} cuts into "
            f"{n_train} train, {n_tune} tune and {n_holdout} holdout rows. Proving "
            f"accuracy_target={accuracy_target} at confidence={confidence} needs at least "
            f"{needed} tune and {needed} holdout rows (and {min_train} train rows), so calibrate "
            f"with at least {required_rows} rows, or lower accuracy_target/confidence."
        )
    order = np.random.default_rng(random_state).permutation(n)
    return CalibrationSplit(
        train=np.sort(order[:n_train]),
        tune=np.sort(order[n_train : n_train + n_tune]),
        holdout=np.sort(order[n_train + n_tune :]),
    )
