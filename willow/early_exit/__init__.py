"""Cascades inside a tree ensemble: staged evaluation with per-row early exit (issue 16).

:mod:`~willow.early_exit.staged` runs a compiled ensemble's tree kernels stage by stage and lets a
row leave once its decision is settled (exactly, by the remaining trees' leaf-value bounds, or
approximately, by a tuned margin; a regressor's once its value is within ``tolerance=``, proven
by the bounds or tuned on how far its score still moves); :mod:`~willow.early_exit.calibrate`
chooses the stages, tunes the thresholds and proves the plan on holdout rows; :mod:`~willow.early_exit.plan` is the result.
:mod:`~willow.early_exit.distilled` is the other model cascade: a distilled cheap model first,
whose "I don't know" rows go to the full ensemble; :mod:`~willow.early_exit.behind` puts it
behind a feature cascade, on the rows that cascade passes on, proven as one pipeline.
"""

from willow.early_exit.calibrate import EarlyExitToleranceError, ModelCascade, calibrate_early_exit
from willow.early_exit.distilled import DistilledCascade, DistilledPlan, calibrate_distilled
from willow.early_exit.plan import EarlyExitPlan
from willow.early_exit.staged import StagedTreeModel, stage_tree_model

__all__ = [
    "DistilledCascade",
    "DistilledPlan",
    "EarlyExitPlan",
    "EarlyExitToleranceError",
    "ModelCascade",
    "StagedTreeModel",
    "calibrate_distilled",
    "calibrate_early_exit",
    "stage_tree_model",
]
