"""Helpers imported by tests/frontend_core_pipelines.py: project code in another module, with its
own globals (SCALE here differs from the caller module's SCALE)."""

from __future__ import annotations

import numpy as np

SCALE = 2.0


def scaled(values):
    """Reads this module's SCALE, not the caller's."""
    out = np.asarray(values, dtype=float) * SCALE
    return out


def level3(values):
    return level4(values) + 1.0


def level4(values):
    return level5(values) * 3.0


def level5(values):
    return np.asarray(values, dtype=float)
