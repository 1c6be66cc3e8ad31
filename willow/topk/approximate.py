"""The top-K filter's approximate regressor, optionally served by a compiled or fused kernel.

:class:`ApproximateScorer` wraps the fitted estimator. With ``compile=`` on, :meth:`compile`
swaps its ``predict`` for a generated kernel and :meth:`fuse` scores raw texts with one kernel
(the selected text vectorizers plus a linear estimator); each kernel is kept only when it
reproduces the estimator on calibration rows (to 1e-9) and measured faster. Only the ranking of
the approximate scores matters, but the kernel must still reproduce them: the candidate ratio
was tuned on the estimator's own scores. Kernels are not pickled; a loaded plan builds them again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["ApproximateScorer"]


def _faster(
    kernel: Any, python: Callable[[], Any], compiled: Callable[[], Any], what: str
) -> tuple[Any, str]:
    """``(kernel, "")`` when ``compiled()`` measures faster than ``python()``, else ``(None, why)``."""
    from willow.compiler.profiling import median_seconds

    before, after = median_seconds(python), median_seconds(compiled)
    if after < before:
        return kernel, ""
    return None, f"the {what} measured slower ({after * 1e3:.2f} vs {before * 1e3:.2f} ms)"


class ApproximateScorer:
    """A fitted approximate regressor and, when they verified faster, its compiled kernels.

    ``compile_note`` / ``fuse_note`` say why a kernel is not used ("" when it is, or when it was
    never tried).
    """

    def __init__(self, estimator: Any) -> None:
        self.estimator_ = estimator
        self._kernel: Any = None
        self._fused: Any = None
        self.compile_note = ""
        self.fuse_note = ""

    @property
    def compiled(self) -> bool:
        return self._kernel is not None

    @property
    def fused(self) -> bool:
        return self._fused is not None

    def scores(self, features: Any) -> np.ndarray:
        """The approximate score of every row of ``features``."""
        predict = self._kernel or self.estimator_.predict
        return np.asarray(predict(features), dtype=np.float64).reshape(-1)

    def scores_on_device(self, features: Any) -> Any:
        """:meth:`scores`, left on the device when the kernel in use runs there (``device="cuda"``):
        top-K then selects its candidates on the device and only their positions come back."""
        kernel = self._kernel
        if getattr(kernel, "device", "cpu") == "cpu":
            return self.scores(features)
        from willow.gpu import runtime

        xp = runtime.array_module()
        return xp.asarray(kernel.output_device(features), dtype=xp.float64).reshape(-1)

    def scores_text(self, texts: Any) -> np.ndarray:
        """The approximate score of every text, through the fused kernel."""
        return np.asarray(self._fused(texts), dtype=np.float64).reshape(-1)

    def compile(self, lower: Any, X: Any = None, budget: Any = None) -> str:
        """Serve ``predict`` with a compiled kernel when it reproduces the estimator on ``X`` and,
        with ``X`` given, measures faster on it. Returns "" on success, otherwise why not."""
        from willow.cascades.approximate import verified_kernel
        from willow.compiler.compile_budget import budget_refusal

        refusal = budget_refusal(self.estimator_, budget)  # a CompileBudget; None: no limit
        if refusal is None:
            build = lambda: lower(self.estimator_, "predict")  # noqa: E731
            refusal, kernel = verified_kernel(build, X, X, self.estimator_, "predict")
            # a device kernel is kept whatever calibration batches measure (as compiled device
            # nodes are: they time per-call transfers and launches, not the batches it is for)
            if kernel is not None and X is not None and getattr(kernel, "device", "cpu") == "cpu":
                kernel, refusal = _faster(
                    kernel, lambda: self.estimator_.predict(X), lambda: kernel(X), "kernel"
                )
            self._kernel = kernel
        self.compile_note = refusal
        return refusal

    def fuse(
        self,
        vectorizers: list[Any],
        texts: Any = None,
        X: Any = None,
        unfused: Callable[[], Any] | None = None,
    ) -> str:
        """Score raw ``texts`` with one kernel (``vectorizers`` stacked into the estimator), when
        it reproduces ``estimator.predict(X)`` (``X``: the stacked features of ``texts``) and
        measures faster than ``unfused()`` (building the features and scoring them), when given.
        Returns "" on success, else why not."""
        from willow.cascades.approximate import verified_kernel
        from willow.compiler.lowering.fused import fuse_text_linear

        build = lambda: fuse_text_linear(vectorizers, self.estimator_, "predict")  # noqa: E731
        reason, kernel = verified_kernel(build, texts, X, self.estimator_, "predict")
        if kernel is not None and unfused is not None:
            kernel, reason = _faster(kernel, unfused, lambda: kernel(texts), "fused kernel")
        self._fused = kernel
        self.fuse_note = reason
        return reason

    @property
    def score_method(self) -> str:
        """What the kernel in use computes (for ``explain()``)."""
        return "vectorizers + predict, fused" if self.fused else "predict"

    @property
    def kernel_source(self) -> str | None:
        """Source of the kernel in use (fused first), for ``explain()``."""
        kernel = self._fused or self._kernel
        return None if kernel is None else kernel.source

    def rebuild_kernels(self, vectorizers: list[Any] | None = None) -> None:
        """After loading: compile (and fuse, with the live ``vectorizers``) again what was in use
        when the plan was saved. The lowering is deterministic, so the kernels are the verified
        ones (the vectorizers' content is checked by :func:`willow.load`)."""
        from willow.compiler.lowering import lower

        if self.__dict__.pop("compile_on_load", False):
            self.compile(lower)
        if self.__dict__.pop("fuse_on_load", False) and vectorizers is not None:
            self.fuse(vectorizers)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_kernel"] = self._kernel is not None
        state["_fused"] = self._fused is not None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.compile_on_load, self.fuse_on_load = bool(state["_kernel"]), bool(state["_fused"])
        self._kernel = self._fused = None

    def __repr__(self) -> str:
        return f"ApproximateScorer({self.estimator_!r})"
