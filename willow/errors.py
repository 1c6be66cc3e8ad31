"""willow's exception hierarchy.

Every error willow raises on purpose derives from :class:`WillowError` and from the builtin that
matches its meaning, so ``except TypeError`` / ``except ValueError`` keep working for callers who do
not know willow. Messages say what was expected, what was found and what to do.
"""

from __future__ import annotations


class WillowError(Exception):
    """Base class of all errors raised by willow."""


class UnsupportedPipelineError(WillowError, TypeError):
    """The decorated function has a shape willow cannot analyse or cascade.

    Raised at decoration or calibration time. The message names the line and the reason, and the
    fallback: ``willow.optimize(..., strict=False)`` runs the function unoptimized with a warning.
    """


class NotCalibratedError(WillowError, AttributeError):
    """A fitted attribute (``plan_``, ``costs_``...) was read before ``calibrate`` was called."""


class CalibrationError(WillowError, ValueError):
    """Calibration data or options cannot produce a plan (too few rows, bad labels...)."""


class PlanMismatchError(WillowError, ValueError):
    """A saved plan does not belong to this function or to this willow version."""


class TableError(WillowError, RuntimeError):
    """A feature table (:mod:`willow.tables`) cannot answer a lookup: a bad frame or schema, a
    table never loaded, a stored row of the wrong size. The message names the table and key."""


class TableUnavailableError(TableError, ConnectionError):
    """A remote feature table's server did not answer (down, refused, timed out).

    The message names the server (``host:port``), the table's key prefix and the first key of
    the batch that failed, and what to do: start the server, raise ``socket_timeout``, or pass
    ``fallback=`` to serve lookups from another table while the server is away.
    """


class UnsupportedPipelineWarning(UserWarning):
    """``strict=False`` fell back to running the original function unoptimized."""


class ModelChangedWarning(UserWarning):
    """The model passed at call time is not the one the plan was calibrated with."""


class TableFallbackWarning(UserWarning):
    """A remote feature table was unavailable and a lookup was answered by its ``fallback``."""


class UnsavablePlanError(WillowError, TypeError):
    """``save()`` met something a plan file cannot store without pickle (a custom estimator
    class, a lambda ``score=``...). The message names it and what to do."""


class DeviceUnavailableError(WillowError, RuntimeError):
    """``device="cuda"`` was asked for but this process cannot run CUDA kernels (no CuPy, no NVIDIA
    GPU, and Numba's CUDA simulator is off). The message names what is missing and how to install
    the ``gpu`` extra (``pip install willow[gpu]``)."""


class UnknownTierError(WillowError, KeyError, ValueError):
    """``pipeline.tier(target)`` named an accuracy tier the pipeline did not declare in
    ``accuracy_target``. The message lists the declared tiers. It is a ``KeyError`` (a lookup by
    target) and a ``ValueError`` (a bad argument), so either ``except`` catches it."""

    def __str__(self) -> str:  # KeyError would show the message quoted, as a key
        return str(self.args[0]) if self.args else ""


class OptionError(WillowError, ValueError):
    """An option of ``willow.optimize`` (:class:`willow.options.Options`) has a value it cannot
    take. The message names the option, what it must be and what it got."""


class OptionTypeError(OptionError, TypeError):
    """An option of ``willow.optimize`` has the wrong type (a string for a number, an object
    without ``fit()`` for ``approximate_model``...), or an unknown option was passed."""


class DuplicateColumnsError(WillowError, ValueError):
    """An expanded ``ColumnTransformer`` received a DataFrame with duplicate column labels, which
    the composite's own ``transform`` accepted, but the expansion selects by label and cannot
    reproduce. A served pipeline then runs the original function; the message names the labels."""
