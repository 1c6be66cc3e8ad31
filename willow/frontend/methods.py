"""``@willow.optimize`` on a method: the pipeline seen through an instance.

A decorated ``def predict(self, texts)`` in a class body is one
:class:`~willow.OptimizedPipeline` shared by the class. Read through an instance
(``obj.predict``), the descriptor protocol gives a :class:`BoundPipeline`, which prepends the
instance to every call: ``obj.predict(texts)``, ``obj.predict.calibrate(texts)``,
``obj.predict.top_k(texts, k=10)``; ``explain()``, ``save()`` and the fitted attributes
(``plan_``...) are the pipeline's own. Calibration binds ``self.<attribute>`` objects like
globals (compiled, and checked at every call with the paths ``"self.<attribute>"``), so another
instance whose attributes are equal (by content) is served by the same plan, and one whose
attributes differ runs the original method with a warning.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from willow.api import OptimizedPipeline

__all__ = ["BoundPipeline"]


class BoundPipeline:
    """An :class:`~willow.OptimizedPipeline` bound to an instance (see the module doc)."""

    def __init__(self, pipeline: OptimizedPipeline, instance: Any) -> None:
        self.__func__ = pipeline
        self.__self__ = instance

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__func__(self.__self__, *args, **kwargs)

    def calibrate(self, *args: Any, y: Any = None, **kwargs: Any) -> BoundPipeline:
        """Calibrate the method on this instance's attributes and these arguments; return ``self``."""
        self.__func__.calibrate(self.__self__, *args, y=y, **kwargs)
        return self

    def top_k(self, *args: Any, k: int, return_scores: bool = False, **kwargs: Any) -> Any:
        """The pipeline's :meth:`~willow.OptimizedPipeline.top_k` with this instance as ``self``."""
        return self.__func__.top_k(self.__self__, *args, k=k, return_scores=return_scores, **kwargs)

    def tier(self, target: float) -> Any:
        """The pipeline's :meth:`~willow.OptimizedPipeline.tier` with this instance as ``self``."""
        serve, instance = self.__func__.tier(target), self.__self__

        def bound(*args: Any, **kwargs: Any) -> Any:
            return serve(instance, *args, **kwargs)

        bound.__name__, bound.__qualname__, bound.__doc__ = serve.__name__, serve.__qualname__, serve.__doc__
        bound.__signature__ = self.__signature__  # type: ignore[attr-defined]
        bound.tier = serve.tier  # type: ignore[attr-defined]
        return bound

    @property
    def __signature__(self) -> inspect.Signature:
        signature = inspect.signature(self.__func__.__wrapped__)
        return signature.replace(parameters=list(signature.parameters.values())[1:])

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__func__, name)

    def __repr__(self) -> str:
        return f"<bound {self.__func__!r} of {type(self.__self__).__name__}>"
