"""Chunked execution on worker threads: order, errors and CSR stitching like a serial loop."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import scipy.sparse as sp

from willow.compiler.lowering.chunks import chunk_bounds, map_chunks, stitch_csr


def test_chunk_bounds_cover_every_row_once():
    assert chunk_bounds(10, 4) == [0, 2, 5, 7, 10]
    assert chunk_bounds(3, 8) == [0, 1, 2, 3]  # never an empty chunk when rows are fewer
    assert chunk_bounds(0, 4) == [0, 0]


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_results_come_back_in_chunk_order(workers):
    bounds = chunk_bounds(1000, 7)
    threads = set()

    def chunk(first, last):
        threads.add(threading.get_ident())
        return np.arange(first, last).sum()

    assert map_chunks(chunk, bounds, workers) == [np.arange(a, b).sum() for a, b in zip(bounds, bounds[1:])]
    if workers == 1:
        assert threads == {threading.get_ident()}


def test_the_first_failing_chunk_raises_after_every_chunk_finished():
    done = []

    def chunk(first, last):
        if first in (200, 600):
            raise ValueError(f"chunk at {first}")
        done.append(first)
        return first

    with pytest.raises(ValueError, match="chunk at 200"):
        map_chunks(chunk, [0, 200, 400, 600, 800, 1000], 2)
    assert sorted(done) == [0, 400, 800]


def test_stitched_pieces_are_the_csr_of_all_rows():
    rng = np.random.default_rng(0)
    matrix = sp.random(50, 30, density=0.2, format="csr", random_state=rng)
    matrix.data[:5] = 0.0  # explicit zeros are kept as they are
    bounds = chunk_bounds(50, 4)
    pieces = [
        (part.indptr.astype(np.int64), part.indices.astype(np.int64), part.data)
        for part in (matrix[a:b] for a, b in zip(bounds, bounds[1:]))
    ]
    indptr, indices, values = stitch_csr(pieces)
    np.testing.assert_array_equal(indptr, matrix.indptr)
    np.testing.assert_array_equal(indices, matrix.indices)
    np.testing.assert_array_equal(values, matrix.data)


def _sums_in_a_forked_child() -> list:
    return map_chunks(lambda first, last: int(np.arange(first, last).sum()), chunk_bounds(100, 4), 2)


def test_a_forked_child_gets_its_own_threads():
    """The parent's pool threads do not exist in a forked child: it must not wait on them."""
    import multiprocessing

    map_chunks(lambda first, last: last - first, chunk_bounds(100, 4), 2)  # the parent's pool exists
    with multiprocessing.get_context("fork").Pool(1) as pool:
        result = pool.apply_async(_sums_in_a_forked_child).get(timeout=60)
    bounds = chunk_bounds(100, 4)
    assert result == [int(np.arange(a, b).sum()) for a, b in zip(bounds, bounds[1:])]


def test_concurrent_callers_with_different_thread_counts():
    """Callers asking for different thread counts at once never find the pool shut down under them
    (``RuntimeError: cannot schedule new futures after shutdown``)."""
    import time

    def chunk(first, last):
        time.sleep(0.0005)
        return last - first

    failures = []

    def caller(workers):
        try:
            for _ in range(30):
                assert sum(map_chunks(chunk, chunk_bounds(64, 8), workers)) == 64
        except BaseException as exc:  # noqa: BLE001 - collected and asserted on below
            failures.append(exc)

    threads = [threading.Thread(target=caller, args=(2 + i % 4,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:3]


def test_concurrent_callers_through_numba_thread_counts():
    """``numba.set_num_threads`` is per thread: pipelines served from threads with different
    counts share the pool safely."""
    import numba

    from willow.compiler.lowering.chunks import map_row_chunks, worker_threads

    failures = []

    def caller(threads):
        try:
            numba.set_num_threads(threads)
            for _ in range(20):
                pieces = map_row_chunks(lambda a, b: np.arange(a, b).sum(), 2000, worker_threads())
                assert sum(pieces) == np.arange(2000).sum()
        except BaseException as exc:  # noqa: BLE001 - collected and asserted on below
            failures.append(exc)

    counts = [1 + i % numba.config.NUMBA_NUM_THREADS for i in range(6)]
    threads = [threading.Thread(target=caller, args=(c,)) for c in counts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:3]
