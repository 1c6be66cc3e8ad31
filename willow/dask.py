"""Run an :class:`~willow.OptimizedPipeline` over a ``dask.dataframe``, one partition at a time.

``willow.dask.predict(pipeline, ddf, model, columns="text")`` calls ``pipeline(model,
<partition's text column>)`` on every partition with ``map_partitions`` and returns a lazy dask
Series (``predict``) or DataFrame (``predict_proba``: one column per class) indexed like ``ddf``, in
partition order. The pipeline and the other arguments travel to the workers once per call, as
one graph key holding their pickle (a pickled pipeline carries its plan and rebuilds its
generated function and compiled kernels on the worker, see :mod:`willow.pickling`), not once per
partition. Each worker process keeps the few pipelines it unpickled last, keyed by the pickle's
SHA-256, so repeated calls with the same pipeline and arguments skip unpickling and kernel
loading.

This module imports dask; ``import willow`` does not import it (install ``willow[dask]``).
"""

from __future__ import annotations

import hashlib
import inspect
import pickle
import threading
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd

from willow.api import OptimizedPipeline

__all__ = ["predict"]

Columns = str | Sequence[str] | Mapping[str, str | Sequence[str]] | None


class _PartitionCall:
    """Calls the pipeline on one partition: the partition's columns go to the row parameters,
    the broadcast arguments to the others. Picklable; shipped to each worker once."""

    def __init__(
        self,
        pipeline: OptimizedPipeline,
        selection: dict[str, Any],
        arguments: dict[str, Any],
        meta: pd.Series | pd.DataFrame,
    ) -> None:
        self.pipeline = pipeline
        self.selection = selection  # row parameter -> None (whole partition), a column or columns
        self.arguments = arguments  # the other parameters, bound as in a call
        self.meta = meta

    def __call__(self, partition: pd.DataFrame | pd.Series) -> pd.Series | pd.DataFrame:
        if len(partition) == 0:
            return self.meta.iloc[:0].set_axis(partition.index[:0], axis=0)
        rows = {
            name: partition if column is None else partition[column]
            for name, column in self.selection.items()
        }
        output = self.pipeline(**{**self.arguments, **rows})
        return _as_pandas(output, partition.index, self.meta)


def _as_pandas(output: Any, index: pd.Index, meta: pd.Series | pd.DataFrame) -> pd.Series | pd.DataFrame:
    output = np.asarray(output)
    if output.shape[0] != len(index):
        raise ValueError(
            f"The pipeline returned {output.shape[0]} rows for a partition of {len(index)} rows; "
            "willow.dask.predict needs one output row per input row."
        )
    if isinstance(meta, pd.DataFrame):
        return pd.DataFrame(output.reshape(len(index), -1), index=index, columns=meta.columns)
    if output.ndim != 1:
        raise ValueError(
            f"The pipeline returned an array of shape {output.shape}, but meta is a Series; pass "
            "meta=<an empty DataFrame with one column per output column>."
        )
    return pd.Series(output, index=index, name=meta.name)


def _row_parameters(pipeline: OptimizedPipeline, selection: Columns) -> dict[str, Any]:
    """Which parameter gets which part of each partition."""
    if isinstance(selection, Mapping):
        return {str(name): column for name, column in selection.items()}
    graph = pipeline.graph_
    found = graph.row_parameters if graph is not None else ()
    if len(found) != 1:
        raise ValueError(
            f"{pipeline.__qualname__} has {'row parameters ' + str(list(found)) if found else 'no traced row parameter'}; "
            "say which parameter receives which columns of each partition with "
            "columns={'<parameter>': '<column>' or ['<columns>'] or None (the whole partition), ...}."
        )
    return {found[0]: selection}


def _check_columns(ddf: dd.DataFrame | dd.Series, selection: dict[str, Any]) -> None:
    for name, column in selection.items():
        if column is None:
            continue
        if isinstance(ddf, dd.Series):
            raise ValueError(
                f"columns= selects column(s) {column!r} for {name!r}, but the input is a dask Series; "
                "pass columns=None to give the Series itself, or a dask DataFrame."
            )
        wanted = [column] if isinstance(column, str) else list(column)
        missing = [c for c in wanted if c not in ddf.columns]
        if missing:
            raise KeyError(
                f"columns= asks for {missing} (for parameter {name!r}), which the dask DataFrame does "
                f"not have; its columns are {list(ddf.columns)}."
            )


def _bind_broadcast(pipeline: OptimizedPipeline, rows: dict[str, Any], args: tuple, kwargs: dict) -> dict:
    """Bind ``args``/``kwargs`` to the pipeline's parameters other than the row parameters."""
    signature = inspect.signature(pipeline.__wrapped__)
    unknown = [name for name in rows if name not in signature.parameters]
    if unknown:
        raise ValueError(
            f"columns= names parameter(s) {unknown} that {pipeline.__qualname__} does not have; its "
            f"parameters are {list(signature.parameters)}."
        )
    others = []
    for parameter in signature.parameters.values():
        if parameter.name in rows:
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                raise ValueError(f"A partition cannot be passed as *{parameter.name} or **{parameter.name}.")
            continue
        if parameter.kind == parameter.POSITIONAL_ONLY:
            raise ValueError(
                f"willow.dask.predict passes arguments by name, but {parameter.name!r} of "
                f"{pipeline.__qualname__} is positional-only."
            )
        others.append(parameter)
    try:
        bound = signature.replace(parameters=others).bind(*args, **kwargs)
    except TypeError as exc:
        raise TypeError(
            f"The arguments after ddf must be {pipeline.__qualname__}'s arguments other than the row "
            f"parameter(s) {list(rows)} (which each partition fills): {exc}."
        ) from None
    bound.apply_defaults()
    return dict(bound.arguments)


def _default_meta(pipeline: OptimizedPipeline) -> pd.Series | pd.DataFrame:
    output = pipeline.__dict__.get("_output")
    if output is None:
        raise ValueError(
            f"{pipeline.__qualname__} is not calibrated, so willow does not know what it returns; "
            "pass meta= (e.g. pd.Series(dtype='int64') for labels, or an empty DataFrame with one "
            "column per class for predict_proba), or calibrate the pipeline first."
        )
    returned = getattr(output, "returned", None)  # what the function returns, not the model
    if returned is not None:
        dtype, width = returned
        if width is None:
            return pd.Series(np.empty(0, dtype=np.dtype(dtype)), name=pipeline.__name__)
        return pd.DataFrame(np.empty((0, width), dtype=np.dtype(dtype)), columns=list(range(width)))
    if output.n_columns is None:
        return pd.Series(np.empty(0, dtype=output.dtype), name=pipeline.__name__)
    classes = output.classes if output.classes is not None else range(output.n_columns)
    return pd.DataFrame(np.empty((0, output.n_columns), dtype=output.dtype), columns=list(classes))


def predict(
    pipeline: OptimizedPipeline,
    ddf: dd.DataFrame | dd.Series,
    *args: Any,
    columns: Columns = None,
    meta: pd.Series | pd.DataFrame | None = None,
    **kwargs: Any,
) -> dd.Series | dd.DataFrame:
    """The pipeline's output on every row of ``ddf``, computed partition by partition.

    Parameters
    ----------
    pipeline : a (calibrated or not) :class:`~willow.OptimizedPipeline`; an uncalibrated one runs
        the original function, so ``meta=`` is then needed.
    ddf : a ``dask.dataframe`` DataFrame or Series holding the rows.
    *args, **kwargs : the pipeline's other arguments (e.g. the model), as in a call without the
        row parameter(s); sent to every worker once.
    columns : what each partition passes to the pipeline's row parameter (the one parameter the
        traced features read row by row, e.g. ``comments`` of ``classify(model, comments)``):
        ``None`` (the whole partition, a pandas DataFrame or Series), a column name (a Series) or
        a list of names (a DataFrame). For pipelines with several row parameters, a mapping
        ``{parameter: None | column | [columns]}``.
    meta : the output's empty pandas shape; default from the calibrated plan: a Series of the
        labels' dtype for ``predict``, a DataFrame with one column per class for ``predict_proba``.

    Returns a lazy dask Series or DataFrame with ``ddf``'s index and partitions; ``.compute()``
    equals the pipeline's output on the same rows in one process (as a pandas object).
    """
    if not isinstance(pipeline, OptimizedPipeline):
        raise TypeError(
            f"willow.dask.predict expects a willow.OptimizedPipeline (a function decorated with "
            f"@willow.optimize), got {type(pipeline).__name__}."
        )
    if pipeline.query == "topk":
        raise ValueError(
            f'{pipeline.__qualname__} is a query="topk" pipeline: a top-K query ranks all rows '
            "together, so it cannot be answered partition by partition. Use a predict pipeline and "
            "rank its computed scores, or run pipeline.top_k on the collected rows."
        )
    if not isinstance(ddf, (dd.DataFrame, dd.Series)):
        raise TypeError(
            f"ddf must be a dask.dataframe DataFrame or Series, got {type(ddf).__module__}."
            f"{type(ddf).__name__}; wrap pandas data with dask.dataframe.from_pandas(data, npartitions=N) "
            "or call the pipeline directly."
        )
    selection = _row_parameters(pipeline, columns)
    _check_columns(ddf, selection)
    arguments = _bind_broadcast(pipeline, selection, args, kwargs)
    if meta is None:
        meta = _default_meta(pipeline)
    if not isinstance(meta, (pd.Series, pd.DataFrame)):
        raise TypeError(f"meta must be an empty pandas Series or DataFrame, got {type(meta).__name__}.")
    call = _PartitionCall(pipeline, selection, arguments, meta.iloc[:0])
    # One graph key for the pipeline and its arguments: each worker receives them once. An
    # explicit name avoids dask hashing (pickling) the model again to tokenize it.
    shipped = dask.delayed(_Shipped(call), name=f"willow-pipeline-{uuid.uuid4().hex}")
    return ddf.map_partitions(_apply, shipped, meta=call.meta, enforce_metadata=False)


class _Shipped:
    """A :class:`_PartitionCall` as pickled bytes and their digest; a worker unpickles the same
    bytes once and reuses the result across calls (see :func:`_unpickled`)."""

    def __init__(self, call: _PartitionCall) -> None:
        import cloudpickle

        self.payload = cloudpickle.dumps(call, protocol=pickle.HIGHEST_PROTOCOL)
        self.digest = hashlib.sha256(self.payload).hexdigest()


_CACHE: OrderedDict[str, _PartitionCall] = OrderedDict()
_CACHE_SIZE = 4
_CACHE_LOCK = threading.Lock()


def _unpickled(shipped: _Shipped) -> _PartitionCall:
    """The worker process's copy of ``shipped`` (unpickled once, least recently used dropped)."""
    with _CACHE_LOCK:
        call = _CACHE.get(shipped.digest)
        if call is None:
            call = pickle.loads(shipped.payload)
            _CACHE[shipped.digest] = call
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
        _CACHE.move_to_end(shipped.digest)
    return call


def _apply(partition: pd.DataFrame | pd.Series, shipped: _Shipped) -> pd.Series | pd.DataFrame:
    return _unpickled(shipped)(partition)
