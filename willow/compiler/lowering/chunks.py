"""Running a ``nogil`` kernel on chunks of rows in worker threads, for large batches.

A kernel compiled with ``nogil=True`` releases the GIL, so Python threads calling it on disjoint
row ranges run on separate cores. This is used instead of ``numba.prange`` where a kernel builds
variable-length output (the CSR of a text vectorizer): each chunk runs the unchanged serial
kernel and the pieces are stitched afterwards.

Threads rather than a ``prange`` kernel, because of what was measured on the 2-core development
machine while other processes used the cores: a Numba ``parallel=True`` region (OpenMP layer)
cost ~8 ms even for 8 multiplications (its worker threads spin while waiting, so a thread that
shares a core with another busy process holds it for a whole time slice), which made a chunked
``prange`` text kernel 0.02-0.6x as fast as the serial one on 256-5,000 rows, where these threads
(which sleep while waiting) ran at 0.7-1.05x. On two free cores the ``prange`` kernel measured
1.8-1.9x and the threads 1.6-1.8x for character n-grams but only 1.0-1.35x for word n-grams on
256-1,000 rows (a thread hand-off costs more than a ``prange`` chunk), hence the per-analyzer
minimum batch in :mod:`willow.compiler.lowering.text`. Threads also avoid a second,
``parallel=True`` compilation per kernel (~7 s cold).

The pool is created lazily, once per process (a forked child starts a new one: it inherits no
threads). A batch uses ``numba.get_num_threads()`` threads (a per-thread setting), so
``NUMBA_NUM_THREADS=1`` (one-thread workers, see the scale-out benchmark) keeps every batch on the
calling thread. Callers with different thread counts share one pool that only ever grows: a
larger count replaces it with a larger pool, and the old one is never shut down (a caller may
be submitting to it); its threads exit once no caller holds it. A caller waits for its chunks,
not for its helper tasks, so a helper queued behind another caller's work costs it nothing.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numba
import numpy as np

__all__ = ["worker_threads", "chunk_bounds", "row_chunk_bounds", "map_chunks", "map_row_chunks", "stitch_csr"]

T = TypeVar("T")

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_workers = 0


def _forget_pool() -> None:
    """In a forked child: the parent's pool threads do not exist there, and the lock may be held."""
    global _lock, _pool, _pool_workers
    _lock, _pool, _pool_workers = threading.Lock(), None, 0


os.register_at_fork(after_in_child=_forget_pool)


def worker_threads() -> int:
    """How many threads a chunked batch may use: Numba's thread count (``NUMBA_NUM_THREADS``)."""
    return int(numba.get_num_threads())


def _thread_pool(workers: int) -> ThreadPoolExecutor:
    global _pool, _pool_workers
    with _lock:
        if _pool is None or _pool_workers < workers:
            # never shut the old pool down: another caller may be submitting to it right now
            _pool = ThreadPoolExecutor(workers, thread_name_prefix="willow-chunk")
            _pool_workers = workers
        return _pool


def chunk_bounds(n_rows: int, n_chunks: int) -> list[int]:
    """``n_chunks + 1`` row positions splitting ``n_rows`` rows into near-equal chunks."""
    n_chunks = max(1, min(n_chunks, n_rows))
    return [chunk * n_rows // n_chunks for chunk in range(n_chunks + 1)]


CHUNKS_PER_THREAD = 4
"""Chunks per worker thread (but at least :data:`MIN_CHUNK_ROWS` rows each): a thread slowed by
another process then takes fewer of them, and the last one to finish holds up little work."""

MIN_CHUNK_ROWS = 64
"""Fewer rows than this per chunk would cost more in kernel calls and stitching than they save."""


def row_chunk_bounds(n_rows: int, workers: int) -> list[int]:
    """:func:`chunk_bounds` for a batch of ``n_rows`` rows on ``workers`` threads: at least one
    chunk per thread, up to :data:`CHUNKS_PER_THREAD` of at least :data:`MIN_CHUNK_ROWS` rows."""
    return chunk_bounds(n_rows, max(workers, min(CHUNKS_PER_THREAD * workers, n_rows // MIN_CHUNK_ROWS)))


def map_chunks(function: Callable[[int, int], T], bounds: Sequence[int], workers: int) -> list[T]:
    """``[function(first, last) for each chunk]``, in chunk order, on up to ``workers`` threads.

    The calling thread and ``workers - 1`` pool threads take the next unclaimed chunk until none is
    left, so a thread slowed by another process takes fewer chunks. Every chunk has finished when
    this returns or raises; an exception raised by a chunk is raised here (the first failing
    chunk's, in chunk order), as a serial loop over the chunks would raise it.
    """
    ranges = list(zip(bounds[:-1], bounds[1:]))
    if workers <= 1 or len(ranges) <= 1:
        return [function(first, last) for first, last in ranges]
    results: list[Any] = [None] * len(ranges)
    errors: list[BaseException | None] = [None] * len(ranges)
    claim = itertools.count()  # next() on it is atomic under the GIL
    finished = itertools.count(1)
    all_finished = threading.Event()

    def drain() -> None:
        for chunk in iter(claim.__next__, None):
            if chunk >= len(ranges):
                return
            try:
                results[chunk] = function(*ranges[chunk])
            except BaseException as exc:  # noqa: BLE001 - re-raised below, in chunk order
                errors[chunk] = exc
            if next(finished) == len(ranges):
                all_finished.set()

    pool = _thread_pool(workers - 1)
    for _ in range(min(workers, len(ranges)) - 1):
        pool.submit(drain)
    drain()
    all_finished.wait()
    for error in errors:
        if error is not None:
            raise error
    return results


def map_row_chunks(function: Callable[[int, int], T], n_rows: int, workers: int) -> list[T]:
    """:func:`map_chunks` over a batch of ``n_rows`` rows cut by :func:`row_chunk_bounds`."""
    return map_chunks(function, row_chunk_bounds(n_rows, workers), workers)


def stitch_csr(
    pieces: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One ``(indptr, indices, values)`` from the CSR pieces of consecutive row chunks."""
    if len(pieces) == 1:
        return pieces[0]
    starts = np.cumsum([0] + [piece[1].shape[0] for piece in pieces[:-1]])
    indptr = np.concatenate(
        [pieces[0][0][:1]] + [piece[0][1:] + start for piece, start in zip(pieces, starts)]
    )
    indices = np.concatenate([piece[1] for piece in pieces])
    values = np.concatenate([piece[2] for piece in pieces])
    return indptr, indices, values
