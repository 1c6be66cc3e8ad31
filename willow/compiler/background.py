"""Compile what did not fit calibration's time budget in the background, then switch to it.

``compile=True`` calibrates within a compile-time budget (:mod:`willow.compiler.compile_budget`):
objects whose estimated compile time exceeds it are *deferred*, and the pipeline serves the plan
calibration verified without them (Python or the other kernels). A :class:`BackgroundCompile`
then runs ``job`` on a daemon thread: the same calibration with ``compile="eager"`` (no budget),
whose kernels are each verified against the original on the calibration rows and whose plan is
verified on the holdout rows exactly as in the foreground (a compiled pipeline must reproduce the
original; a cascade must reach its bound; either must pass the speed gates). The heavy part,
LLVM compiling the tree kernels, runs in worker processes (see ``trees_build``), so serving in
the meantime keeps its cores' share. Once ``job`` returns, ``install`` switches the pipeline to
the new plan in one step (the serving function is the last attribute assigned, and calls read it
once), unless the pipeline was calibrated again meanwhile (:meth:`cancel`).

A failure (or a plan that cannot be built) leaves the verified plan serving, with a
``CompilationWarning`` and the reason in ``explain()``.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

__all__ = ["BackgroundCompile"]


class BackgroundCompile:
    """One background compilation: ``job()`` builds the eager calibration, ``install(result)``
    serves it."""

    def __init__(self, job: Callable[[], Any], install: Callable[[Any], None], what: str) -> None:
        self.what = what
        self.error: BaseException | None = None
        self.installed = False
        self.seconds: float | None = None
        self._job = job
        self._install = install
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._cancelled = False
        self._thread = threading.Thread(target=self._run, name=f"willow-compile-{what}", daemon=True)

    def start(self) -> BackgroundCompile:
        self._thread.start()
        return self

    def _run(self) -> None:
        from willow.compiler.compile_pass import CompilationWarning

        start = time.perf_counter()
        try:
            result = self._job()
            with self._lock:
                if not self._cancelled:
                    self._install(result)
                    self.installed = True
        except BaseException as exc:  # noqa: BLE001 - any failure keeps the verified plan serving
            self.error = exc
            warnings.warn(
                f"willow: compiling {self.what} in the background failed ({type(exc).__name__}: {exc}); "
                "the plan verified at calibration keeps serving.",
                CompilationWarning,
                stacklevel=1,
            )
        finally:
            self.seconds = time.perf_counter() - start
            self._job = None  # type: ignore[assignment] - free the calibration rows
            self._done.set()

    @property
    def pending(self) -> bool:
        """Whether the compilation is still running."""
        return not self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until it finished (``timeout`` seconds at most); return whether it finished."""
        return self._done.wait(timeout)

    def cancel(self) -> None:
        """Never install the result (the pipeline was calibrated again); the thread runs out."""
        with self._lock:
            self._cancelled = True

    def status(self) -> str:
        """One line for ``explain()``."""
        if self.pending:
            return (
                f"Compiling in the background: {self.what}; the plan above serves meanwhile "
                "(pipeline.wait_compiled() waits for it)."
            )
        if self.error is not None:
            return (
                f"Background compilation of {self.what} failed ({type(self.error).__name__}: "
                f"{self.error}); the plan verified at calibration serves."
            )
        if self._cancelled and not self.installed:
            return f"Background compilation of {self.what} was superseded by a new calibration."
        return f"Compiled in the background: {self.what} ({self.seconds:.1f} s after calibration); the plan above includes it."
