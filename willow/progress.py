"""A progress bar for calibration: which stage is running (tracing, costing, compiling, importance,
candidates, proof).

``calibrate(..., progress=None)`` shows it when someone is watching: stderr is a terminal, or the
code runs in a Jupyter kernel; never when the ``CI`` environment variable is set (``CI=true``, as
every CI service sets it). ``progress=True``/``False`` forces it either way. The bar is tqdm's
(``tqdm.auto``, a widget in notebooks), imported only when shown; without tqdm installed it
prints one line per stage to stderr instead.

Calibration code marks its stages with :func:`stage`, which does nothing outside a
:func:`calibration_progress` block, so the stages cost nothing when nobody watches.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
from collections.abc import Iterator
from typing import Any

__all__ = ["STAGES", "stage", "calibration_progress", "should_show"]

STAGES = ("tracing", "costing", "compiling", "importance", "candidates", "proof")
"""Calibration's stages, in the order they run (some are skipped by some plans)."""

_CURRENT: contextvars.ContextVar[_Bar | None] = contextvars.ContextVar("willow_progress", default=None)


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ipython = shell.get_ipython()  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - no running shell
        return False
    return type(ipython).__name__ == "ZMQInteractiveShell"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def should_show(progress: bool | None) -> bool:
    """Whether to show the bar: ``progress`` when given, else a terminal or notebook outside CI."""
    if progress is not None:
        return bool(progress)
    if _in_ci():
        return False
    if _in_notebook():
        return True
    stream = sys.stderr
    return bool(stream is not None and hasattr(stream, "isatty") and stream.isatty())


class _Bar:
    """tqdm over :data:`STAGES`, or one stderr line per stage without tqdm."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.done: list[str] = []
        self._tqdm: Any = None
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        self._tqdm = tqdm(
            total=len(STAGES), desc=f"willow: {title}", unit="stage", leave=False, file=sys.stderr
        )

    def stage(self, name: str) -> None:
        if name in self.done:
            return
        self.done.append(name)
        if self._tqdm is None:
            print(f"willow: {self.title}: {name}", file=sys.stderr, flush=True)
            return
        position = STAGES.index(name) if name in STAGES else self._tqdm.n
        self._tqdm.set_postfix_str(name, refresh=False)
        self._tqdm.update(max(position - self._tqdm.n, 0))
        self._tqdm.refresh()

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.update(self._tqdm.total - self._tqdm.n)
            self._tqdm.close()


def stage(name: str) -> None:
    """Mark the start of calibration stage ``name`` on the bar of the calibration in progress."""
    bar = _CURRENT.get()
    if bar is not None:
        bar.stage(name)


@contextlib.contextmanager
def calibration_progress(progress: bool | None, title: str) -> Iterator[bool]:
    """Show a progress bar for the calibration run inside the block (see :func:`should_show`);
    yields whether it is shown."""
    if not should_show(progress):
        yield False
        return
    bar = _Bar(title)
    token = _CURRENT.set(bar)
    try:
        yield True
    finally:
        _CURRENT.reset(token)
        bar.close()
