"""The decorator's knobs as one value: :class:`Options`, validated in one place.

``willow.optimize(accuracy_target=..., compile=..., ...)`` builds one :class:`Options` from its
keyword arguments (or takes ``options=Options(...)``); :class:`~willow.OptimizedPipeline` keeps it
as ``pipeline.options`` and reads every knob from it (``pipeline.compile`` is
``pipeline.options.compile``). The stages never see it whole: :meth:`Options.cascade_options`
and :meth:`Options.topk_options` hand cascade and top-K calibration the knobs they read, as their own option
types (:class:`~willow.cascades.calibration.CascadeOptions`,
:class:`~willow.topk.calibration.TopKOptions`), which also hold the internal knobs users do not set
(cost budgets, the holdout pass probability, bootstrap repeats).

Every knob is documented once, on :func:`willow.optimize`. A bad value raises
:class:`~willow.errors.OptionError` (a ``ValueError``) or :class:`~willow.errors.OptionTypeError`
(a ``TypeError``) at decoration, naming the argument, what it must be and what it got.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from willow.cascades import tiers
from willow.cascades.calibration import CascadeOptions
from willow.cascades.selection import DEFAULT_BUDGETS
from willow.cascades.tolerance import check_tolerance
from willow.errors import OptionError, OptionTypeError
from willow.gpu.runtime import check_device
from willow.topk.calibration import DEFAULT_FRACTIONS, TopKOptions
from willow.topk.query import QUERIES
from willow.topk.ranking import check_k

__all__ = ["Options", "COMPILE_OPTIONS", "EARLY_EXIT_OPTIONS", "check_fraction", "check_count"]

COMPILE_OPTIONS = (True, False, "eager", "all")
EARLY_EXIT_OPTIONS = (True, False, "exact")
PLANNER_KNOBS = (
    "confidence",
    "approximate_model",
    "split",
    "random_state",
    "cost_repeats",
    "importance_repeats",
    "exhaustive_max_groups",
    "max_candidates",
    "compile",
)
"""The knobs that cascade and top-K calibration both read, under the same names."""


def check_fraction(name: str, value: Any, *, upper_inclusive: bool) -> float:
    """``value`` as a float in (0, 1] (or (0, 1) when not ``upper_inclusive``)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise OptionTypeError(f"{name} must be a number, got {type(value).__name__} {value!r}.") from None
    ok = 0.0 < number <= 1.0 if upper_inclusive else 0.0 < number < 1.0
    if not ok:
        bounds = "(0, 1]" if upper_inclusive else "(0, 1)"
        raise OptionError(f"{name} must be in {bounds}, got {value!r}.")
    return number


def check_count(name: str, value: Any, minimum: int) -> int:
    """``value`` when it is an integer (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise OptionError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return value


def _one_of(value: Any, allowed: tuple) -> bool:
    return any(value is option or value == option for option in allowed)


@dataclass(frozen=True)
class Options:
    """Every knob of ``willow.optimize``, with its defaults (documented there).

    Built with keyword arguments; the values are checked and normalized on construction
    (``split`` and ``row_args`` become tuples, a tier sequence a tuple of floats...), so an
    ``Options`` that exists is a valid one. It is frozen: change a knob with
    ``dataclasses.replace(options, compile=False)``, which checks again.
    """

    accuracy_target: float | tuple[float, ...] = 0.99
    confidence: float = 0.95
    approximate_model: Any = None
    split: tuple[float, float, float] = (0.5, 0.25, 0.25)
    random_state: int | None = 0
    strict: bool = True
    row_args: tuple[str, ...] | None = None
    cost_repeats: int = 5
    importance_repeats: int = 3
    exhaustive_max_groups: int = 4
    max_candidates: int = 16
    compile: bool | str = True
    cascade: bool = True
    require_faster: bool = True
    query: str = "predict"
    k: int | None = None
    precision_target: float = 0.95
    query_size: int | None = None
    score: Any = None
    k_fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    monitor: float | None = None
    device: str = "cpu"
    tolerance: float | Callable | None = None
    early_exit: bool | str = "exact"

    def __post_init__(self) -> None:
        def set_(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        query = self.query
        set_(  # one target (a float) or accuracy tiers (a tuple, strictest first)
            "accuracy_target",
            tiers.check_targets(self.accuracy_target)
            if tiers.declares_tiers(self.accuracy_target)
            else check_fraction("accuracy_target", self.accuracy_target, upper_inclusive=True),
        )
        if query == "topk" and isinstance(self.accuracy_target, tuple):
            raise OptionError(
                f"accuracy_target={self.accuracy_target} declares accuracy tiers, which cascades "
                'serve; query="topk" is tuned by precision_target instead. Pass one accuracy_target.'
            )
        set_("confidence", check_fraction("confidence", self.confidence, upper_inclusive=False))
        if isinstance(self.approximate_model, str) and self.approximate_model == "prefix":
            if query != "topk":
                raise OptionError(
                    'approximate_model="prefix" (a prefix of the model\'s own tree ensemble as the '
                    f'top-K filter) needs query="topk", got query={query!r}.'
                )
        elif self.approximate_model is not None and not hasattr(self.approximate_model, "fit"):
            raise OptionTypeError(
                "approximate_model must be an unfitted scikit-learn-style estimator with fit(), got "
                f"{type(self.approximate_model).__name__}."
            )
        set_("split", tuple(self.split))
        set_("strict", bool(self.strict))
        set_("row_args", tuple(self.row_args) if self.row_args is not None else None)
        check_count("cost_repeats", self.cost_repeats, 1)
        check_count("importance_repeats", self.importance_repeats, 1)
        check_count("exhaustive_max_groups", self.exhaustive_max_groups, 0)
        check_count("max_candidates", self.max_candidates, 1)
        if not _one_of(self.compile, COMPILE_OPTIONS):
            raise OptionError(f"compile must be True, False, 'eager' or 'all', got {self.compile!r}.")
        set_("cascade", bool(self.cascade))
        set_("require_faster", bool(self.require_faster))
        if query not in QUERIES:
            raise OptionError(f"query must be one of {QUERIES}, got {query!r}.")
        if query == "topk" and self.k is None:
            raise OptionTypeError('query="topk" needs k=<the number of rows a call returns>, e.g. k=100.')
        set_("k", check_k(self.k) if self.k is not None else None)
        set_(
            "precision_target",
            check_fraction("precision_target", self.precision_target, upper_inclusive=True),
        )
        if self.query_size is not None:
            check_count("query_size", self.query_size, 1)
        set_("k_fractions", tuple(self.k_fractions))
        if self.monitor is not None:
            set_("monitor", check_fraction("monitor", self.monitor, upper_inclusive=True))
        set_("device", check_device(self.device))
        set_("tolerance", check_tolerance(self.tolerance, query))
        if not _one_of(self.early_exit, EARLY_EXIT_OPTIONS):
            raise OptionError(
                f"early_exit must be 'exact' (the default: exits that cannot change the decision), "
                f"True (also exits tuned to accuracy_target, proven on holdout rows) or False, got "
                f"{self.early_exit!r}."
            )

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The knobs' names, in declaration order (the keys of ``get_params()``)."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def build(cls, options: Options | None = None, **keywords: Any) -> Options:
        """``options`` when given (then ``keywords`` must be empty), else ``Options(**keywords)``;
        an unknown keyword raises a ``TypeError`` naming it and the known ones."""
        unknown = sorted(set(keywords) - set(cls.names()))
        if unknown:
            raise OptionTypeError(
                f"willow.optimize got unknown keyword argument(s) {', '.join(unknown)}; the options "
                f"are {', '.join(cls.names())}."
            )
        if options is None:
            return cls(**keywords)
        if not isinstance(options, cls):
            raise OptionTypeError(
                f"options must be a willow.options.Options, got {type(options).__name__} {options!r}."
            )
        if keywords:
            raise OptionTypeError(
                f"willow.optimize got options= and keyword argument(s) {', '.join(sorted(keywords))}; "
                "pass one or the other (e.g. dataclasses.replace(options, ...))."
            )
        return options

    def params(self) -> dict[str, Any]:
        """Every knob by name (what ``OptimizedPipeline.get_params()`` returns, and plan files
        store)."""
        return {name: getattr(self, name) for name in self.names()}

    def _planner_knobs(self) -> dict[str, Any]:
        """The knobs cascade and top-K calibration both read, by name."""
        return {name: getattr(self, name) for name in PLANNER_KNOBS}

    def cascade_options(self) -> CascadeOptions:
        """The knobs cascade calibration reads (for the strictest accuracy tier)."""
        return CascadeOptions(
            **self._planner_knobs(),
            accuracy_target=tiers.strictest(self.accuracy_target),
            budgets=DEFAULT_BUDGETS,
            cascade=self.cascade,
            require_faster=self.require_faster,
            tolerance=self.tolerance,
            early_exit=self.early_exit,
        )

    def topk_options(self) -> TopKOptions:
        """The knobs top-K calibration reads."""
        return TopKOptions(
            **self._planner_knobs(),
            k=self.k,
            precision_target=self.precision_target,
            query_size=self.query_size,
            score=self.score,
            fractions=self.k_fractions,
        )
