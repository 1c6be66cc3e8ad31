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
``(-score, position)``. When the model itself is the cost (a large tree ensemble on cheap
features), the cheap model can instead be the first trees of the same ensemble on every feature
(:mod:`willow.topk.prefix`; ``approximate_model="prefix"`` forces it). The candidate ratio
``c`` is tuned per K/N on bootstrap queries of ``query_size`` rows drawn from calibration rows,
so that precision@K (overlap with the original pipeline's own top K, divided by K) reaches
``precision_target`` in at least ``confidence`` of queries; it is then checked on held-out rows
(``TopKPlan.verified``). ``k >= N``, and any query whose candidates would be every row, is
answered exactly. ``.top_k(...)`` also works, exactly, on pipelines not optimized for top-K
queries.

With ``compile=`` (on by default) the plan runs the compiler pass first: the filter's feature
groups and the candidates' full pipeline use the generated kernels that verified and measured
faster (a text pipeline may score the candidates' raw texts with one fused kernel), and the
approximate model is compiled or fused the same way. ``save()`` / ``willow.load()`` keep top-K
plans like cascades. ``k=`` and ``return_scores=`` are the query's keywords: a function parameter
of either name is passed positionally (a keyword-only one is refused at decoration).
"""

from willow.topk.plan import RatioRow, TopKCandidate, TopKPlan
from willow.topk.ranking import check_k, top_positions

__all__ = ["TopKPlan", "TopKCandidate", "RatioRow", "top_positions", "check_k"]
