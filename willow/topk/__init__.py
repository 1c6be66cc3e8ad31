"""willow.topk: answer "which K rows score highest?" faster than scoring every row.

Usage::

    @willow.optimize(query="topk", k=100, precision_target=0.95, confidence=0.95, query_size=50_000)
    def classify(model, comments):
        words = word_vectorizer.transform(comments)
        chars = char_vectorizer.transform(comments)
        X = sp.hstack([words, chars]).tocsr()
        return model.predict_proba(X)

    classify.calibrate(model, calibration_comments)     # plans and checks the top-K filter
    top = classify(model, comments)                      # positions of the 100 best rows, best first
    top, scores = classify.top_k(model, comments, k=20, return_scores=True)   # any K
    print(classify.explain())                            # plan, ratio table, guarantee, source

A top-K plan scores every row with a cheap approximate regressor on a few inexpensive feature
groups (trained on the full model's scores), keeps the ``ceil(c * K)`` best rows as candidates,
runs the full pipeline on those only and returns the exact top K among them, ranked by
``(-score, position)``. The candidate ratio ``c`` is tuned per K/N on bootstrap queries of
``query_size`` rows drawn from calibration rows, so that precision@K (overlap with the original
pipeline's own top K, divided by K) reaches ``precision_target`` in at least ``confidence`` of
queries; it is then checked on held-out rows (``TopKPlan.verified``). ``k >= N``, and any query
whose candidates would be every row, is answered exactly. ``.top_k(...)`` also works, exactly, on
pipelines not optimized for top-K queries.
"""

from willow.topk.plan import RatioRow, TopKCandidate, TopKPlan
from willow.topk.ranking import check_k, top_positions

__all__ = ["TopKPlan", "TopKCandidate", "RatioRow", "top_positions", "check_k"]
