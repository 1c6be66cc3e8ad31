"""The front end: turn an inference function as people write it into willow's idiom.

Tracing (:mod:`willow.compiler.tracing`) understands one shape: straight-line statements that
build feature groups, stack them and end in ``<model>.predict(X)``. The front end sits before it
and rewrites the function's syntax tree, at calibration time when the real objects are known, so
that pipelines written with scikit-learn composites, helper functions, fitted objects passed as
arguments, methods and whole-frame pandas reach tracing in that shape. Each rewrite is a *pass*
(:data:`willow.frontend.context.FrontEndPass`) in its own module; :mod:`willow.frontend.driver`
runs them in order and builds the normalized function.

The normalized function computes exactly what the original computes (tests check this on every
pass); objects a pass resolved (a Pipeline's steps, an argument's fitted vectorizer, ``self.model``)
become names bound in its closure, and every one that came from an argument or attribute is
checked at each call (:class:`willow.frontend.context.ObjectGuard`).
"""

from willow.frontend.context import FrontEndContext, FrontEndPass, ObjectGuard, Unresolved

__all__ = ["FrontEndContext", "FrontEndPass", "ObjectGuard", "Unresolved"]
