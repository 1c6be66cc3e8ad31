"""willow.topk: answer "which K rows score highest?" faster than scoring every row.

A top-K plan scores every row with a cheap approximate model on a few inexpensive feature groups,
keeps the ``c * K`` best candidates, runs the full pipeline on those only and returns the exact
top K among them. The candidate ratio ``c`` is tuned at calibration so that precision@K (overlap
with the original pipeline's own top K) reaches ``precision_target`` with probability
``confidence`` on queries of the declared size, and checked on held-out rows.
"""

from willow.topk.plan import RatioRow, TopKCandidate, TopKPlan
from willow.topk.ranking import check_k, top_positions

__all__ = ["TopKPlan", "TopKCandidate", "RatioRow", "top_positions", "check_k"]
