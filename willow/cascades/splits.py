"""Seeded train / tune / holdout split of the calibration rows.

The approximate model is fitted on *train*, feature values and the confidence threshold are
measured on *tune*, and the finished plan is verified once on *holdout*, which nothing else saw.

The split is made over distinct inputs (see :mod:`willow.cascades.duplicates`): every copy of one
input lands in the same part, so no holdout input has a copy in train or tune. Tune and holdout
then keep one row per distinct input: copies of one input get the same output from a
deterministic pipeline, so they are one observation, not several, and counting them would
overstate the evidence (with 4x oversampled rows, four times over). The holdout bound is thus a
bound on agreement per distinct input; with oversampled data those are the independent draws,
and with naturally repeated inputs it equals agreement per row unless repetition goes with
difficulty. Train keeps every copy (oversampling is a weighting the user chose for fitting).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from willow.cascades.bounds import min_rows_for_target
from willow.errors import CalibrationError

__all__ = ["CalibrationSplit", "split_rows", "cut_distinct"]


@dataclass(frozen=True)
class CalibrationSplit:
    """Row positions of each part of the calibration data."""

    train: np.ndarray
    tune: np.ndarray
    holdout: np.ndarray
    #: Calibration rows whose inputs repeat an earlier row's (0 when all rows are distinct).
    duplicate_rows: int = 0


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
    groups: np.ndarray | None = None,
) -> CalibrationSplit:
    """Shuffle the distinct inputs of ``n`` rows and cut them into train, tune and holdout.

    ``groups`` numbers each row's distinct input (:func:`~willow.cascades.duplicates.row_groups`;
    default: every row distinct). Parts are cut at the fractions of ``split`` by row count, whole
    inputs at a time; tune and holdout keep the first row of each input. Raises
    :class:`~willow.errors.CalibrationError` when tune or holdout would hold too few distinct
    inputs to ever prove ``accuracy_target`` at ``confidence``, saying how many are needed.
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
    train, tune, holdout, duplicate_rows = cut_distinct(n, n_train, n_tune, random_state, groups)
    distinct = n - duplicate_rows
    if len(tune) < needed or len(holdout) < needed or len(train) < min_train:
        repeated = f" ({n - distinct} of them repeating another row's inputs)" if distinct < n else ""
        raise CalibrationError(
            f"Calibration data too small to split: got {n} rows{repeated}, which split={split} cuts "
            f"into {len(train)} train rows and {len(tune)} tune and {len(holdout)} holdout rows with "
            f"distinct inputs. Proving accuracy_target={accuracy_target} at confidence={confidence} "
            f"needs at least {needed} distinct tune and {needed} distinct holdout rows (and "
            f"{min_train} train rows), so calibrate with at least {required_rows} rows of distinct inputs, or "
            "lower accuracy_target/confidence."
        )
    return CalibrationSplit(train=train, tune=tune, holdout=holdout, duplicate_rows=duplicate_rows)


def cut_distinct(
    n: int, n_train: int, n_tune: int, random_state: int | None, groups: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Shuffle the distinct inputs (``groups``, one number per row; ``None``: all distinct) and
    cut them, whole inputs at a time, at ``n_train`` and ``n_train + n_tune`` rows.

    Returns sorted positions of train (every row), tune and holdout (first row of each input),
    and how many rows repeat another row's input. With distinct rows this is exactly a seeded
    permutation of the rows cut at those counts.
    """
    groups = np.arange(n) if groups is None else np.asarray(groups)
    sizes = np.bincount(groups, minlength=int(groups.max()) + 1 if n else 0)
    order = np.random.default_rng(random_state).permutation(len(sizes))
    starts = np.cumsum(sizes[order]) - sizes[order]  # first row of each input, in shuffled order
    part_of_group = np.empty(len(sizes), dtype=np.int64)
    part_of_group[order] = np.searchsorted([n_train, n_train + n_tune], starts, side="right")
    part = part_of_group[groups]
    first = np.zeros(n, dtype=bool)
    first[np.unique(groups, return_index=True)[1]] = True
    train = np.flatnonzero(part == 0)
    tune = np.flatnonzero((part == 1) & first)
    holdout = np.flatnonzero((part == 2) & first)
    return train, tune, holdout, n - len(sizes)
