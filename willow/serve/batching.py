"""Adaptive batching (Clipper, NSDI'17): requests queue, one pipeline call answers a batch of them.

Requests wait in one FIFO queue. A single batcher task takes as many of them as the current batch
size allows (counted in rows; a request is never split), runs the pipeline once on their rows,
and hands every request its own rows of the output, in order. While a batch runs, the next one
accumulates (in the sockets, read as soon as the batch is done): batching costs no added wait at
low load, and batches grow with load.

Batches run in the event loop's own thread by default. A worker thread (``threaded=True``) lets
the loop read requests during a batch, but in CPython the two threads then trade the GIL, and
the batch thread waits up to the switch interval (5 ms) each time it wants it back: measured on
toxic under load, 34 ms per batch of ~17 texts in a worker thread, 0.8 ms in the loop's thread.

The batch size follows Clipper's AIMD rule (:class:`AIMDController`): after each batch that was
cut short by the size limit, add ``step`` rows; when the p99 of recent batch latencies exceeds the
latency budget, multiply the size by ``backoff``. The budget is half the SLO by default: a request
arriving while a batch runs waits for it, then for its own, so batches of at most SLO/2 keep a
request within the SLO at any load the server can sustain.

Requests join a batch only with requests of the same row shape and a tier they accept: a request
that pinned a tier (``"tier"``) is served by that tier; the others by the tier the scaler
(:mod:`willow.serve.scaling`) currently serves, or any stricter one.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

__all__ = ["AIMDController", "AdaptiveBatcher", "BatchError", "Answer"]


class AIMDController:
    """Clipper's additive-increase, multiplicative-decrease batch size.

    ``observe(rows, latency_ms, saturated)`` after every batch: when the p99 of the last
    ``window`` batch latencies exceeds ``budget_ms``, the size drops to ``floor(size * backoff)``
    (at least 1) and the window restarts (the old latencies were measured at the old size); else,
    when the batch was ``saturated`` (more rows were waiting than the size let in), the size grows
    by ``step``, up to ``max_size``. ``fixed=True`` never changes the size (one request per call
    is ``AIMDController(..., initial=1, fixed=True)``).
    """

    def __init__(
        self,
        budget_ms: float,
        *,
        initial: int = 1,
        step: int = 4,
        backoff: float = 0.9,
        max_size: int = 4096,
        window: int = 32,
        fixed: bool = False,
    ) -> None:
        if not budget_ms > 0:
            raise ValueError(f"budget_ms must be > 0, got {budget_ms!r}.")
        if not 0 < backoff < 1:
            raise ValueError(f"backoff must be in (0, 1), got {backoff!r}.")
        if initial < 1 or step < 1 or max_size < initial or window < 1:
            raise ValueError(
                f"Expected 1 <= initial <= max_size, step >= 1 and window >= 1, got initial={initial}, "
                f"step={step}, max_size={max_size}, window={window}."
            )
        self.budget_ms = float(budget_ms)
        self.size = int(initial)
        self.step = int(step)
        self.backoff = float(backoff)
        self.max_size = int(max_size)
        self.fixed = bool(fixed)
        self._latencies: deque[float] = deque(maxlen=int(window))

    def p99_ms(self) -> float:
        """The p99 of the batch latencies observed at the current size (0 before any)."""
        if not self._latencies:
            return 0.0
        ordered = sorted(self._latencies)  # numpy's default (linear) percentile, without numpy's overhead
        position = 0.99 * (len(ordered) - 1)
        low = math.floor(position)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

    def observe(self, rows: int, latency_ms: float, saturated: bool) -> str:
        """Record one batch and adapt the size; returns ``"decrease"``, ``"increase"`` or ``"hold"``."""
        if self.fixed:
            return "hold"
        self._latencies.append(float(latency_ms))
        if self.p99_ms() > self.budget_ms:
            self.size = max(1, math.floor(self.size * self.backoff))
            self._latencies.clear()
            return "decrease"
        if saturated and self.size < self.max_size:
            self.size = min(self.max_size, self.size + self.step)
            return "increase"
        return "hold"


class BatchError(Exception):
    """The pipeline failed on a batch; every request of that batch gets this (a 500)."""


@dataclass
class Answer:
    """One request's own output rows, which tier answered, and how long it waited."""

    rows: list[Any]
    tier: int
    queue_ms: float
    batch_rows: int


@dataclass
class _Pending:
    rows: list[Any]
    key: Hashable
    tier: int | None
    deadline_ms: float
    arrived: float
    future: asyncio.Future = field(repr=False)


class AdaptiveBatcher:
    """Queue requests and answer them in batches, one pipeline call per batch.

    ``run(tier, key, rows)`` runs the pipeline (tier ``tier``) on the concatenated rows of one
    batch (all of shape ``key``) and returns one output per row, one batch at a time, in the event
    loop's thread (``threaded=False``) or in one worker thread. ``controller`` sets the batch size; ``scaler`` (optional,
    :class:`~willow.serve.scaling.AccuracyScaler`) picks the tier of requests that did not pin
    one, else tier 0 serves them. ``on_batch(tier, rows, requests, queue_ms, service_ms)`` is told
    about every batch (metrics).
    """

    def __init__(
        self,
        run: Callable[[int, Hashable, list[Any]], list[Any]],
        controller: AIMDController,
        *,
        scaler: Any = None,
        on_batch: Callable[..., None] | None = None,
        threaded: bool = False,
    ) -> None:
        self._run = run
        self.threaded = bool(threaded)
        self.controller = controller
        self.scaler = scaler
        self._on_batch = on_batch
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    @property
    def current_tier(self) -> int:
        return self.scaler.current if self.scaler is not None else 0

    async def start(self) -> None:
        """Start the batcher task (in the running event loop)."""
        if self._task is None:
            self._wake = asyncio.Event()
            if self.threaded:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="willow-batch")
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def run_in_worker(self, function: Callable[[], Any]) -> Any:
        """Run ``function`` in the batch thread (e.g. a warm-up, so thread-local state such as
        OpenMP thread pools is set up where batches will run)."""
        await self.start()
        if not self.threaded:
            return function()
        return await asyncio.get_running_loop().run_in_executor(self._executor, function)

    async def stop(self) -> None:
        """Stop the batcher; requests still queued get a :class:`BatchError`."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.set_exception(BatchError("The server is shutting down."))
        self._queued_rows = 0
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def submit(self, rows: list[Any], key: Hashable, *, tier: int | None, deadline_ms: float) -> Answer:
        """Queue one request's rows and wait for its own output rows."""
        if self._task is None:
            await self.start()
        assert self._wake is not None
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(rows, key, tier, float(deadline_ms), time.perf_counter(), future))
        self._queued_rows += len(rows)
        self._wake.set()
        return await future

    def _take_batch(self, now: float) -> tuple[int, list[_Pending], bool]:
        """The next batch: the head request and the queued requests that may join it, in order,
        up to the batch size; also whether requests that could have joined were left (saturated)."""
        head = self._queue[0]
        size = self.controller.size
        current = self.current_tier
        if self.scaler is not None and head.tier is None:
            waiting_ms = (now - head.arrived) * 1e3
            current = self.scaler.choose(self._queued_rows, waiting_ms, head.deadline_ms, size, now * 1e3)
        tier = head.tier if head.tier is not None else current
        queue = self._queue
        batch: list[_Pending] = []
        skipped: list[_Pending] = []  # requests that may not join this batch keep their places
        rows = 0
        saturated = False
        while queue:
            pending = queue[0]
            joins = (pending.key is head.key or pending.key == head.key) and (
                pending.tier == tier or (pending.tier is None and tier <= current)
            )
            if not joins:
                skipped.append(queue.popleft())
            elif batch and rows + len(pending.rows) > size:
                saturated = True
                break
            else:
                batch.append(queue.popleft())
                rows += len(pending.rows)
        queue.extendleft(reversed(skipped))
        self._queued_rows -= rows
        return tier, batch, saturated

    async def _loop(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            started = time.perf_counter()
            tier, batch, saturated = self._take_batch(started)
            rows = [row for pending in batch for row in pending.rows]
            try:
                if self.threaded:
                    outputs = await loop.run_in_executor(self._executor, self._run, tier, batch[0].key, rows)
                else:
                    outputs = self._run(tier, batch[0].key, rows)
                error = None
            except Exception as exc:  # one batch fails; the server keeps serving the next
                outputs, error = None, exc
            service_ms = (time.perf_counter() - started) * 1e3
            self.controller.observe(len(rows), service_ms, saturated)
            if self.scaler is not None and error is None:
                self.scaler.observe(tier, len(rows), service_ms)
            offset = 0
            queue_ms = []
            for pending in batch:
                waited = (started - pending.arrived) * 1e3
                queue_ms.append(waited)
                if pending.future.done():  # the client went away
                    continue
                if error is not None:
                    pending.future.set_exception(
                        BatchError(
                            f"The pipeline raised {type(error).__name__}: {error} (on a batch of "
                            f"{len(batch)} requests, {len(rows)} rows)."
                        )
                    )
                else:
                    own = outputs[offset : offset + len(pending.rows)]
                    pending.future.set_result(Answer(own, tier, waited, len(rows)))
                offset += len(pending.rows)
            if self._on_batch is not None:
                self._on_batch(tier, len(rows), len(batch), queue_ms, service_ms, error is None)
            if not self.threaded and self._queue:  # an empty queue awaits the next request anyway
                await self._settle()

    async def _settle(self, rounds: int = 8) -> None:
        """Hand the event loop back after a batch run in its thread, so that it sends the answers
        just set and reads the requests that arrived meanwhile, before the next batch is cut.

        Without this the batcher cut batch after batch from the queue it had, without an ``await``,
        until the queue was empty: under load no answer left and no new request was read until the
        whole backlog was served (every answer waited for the last batch of the backlog). One loop
        round sends the answers; a request read from a socket needs a round or two more to reach
        :meth:`submit`, so this yields until two rounds in a row queue nothing new (at most
        ``rounds``; a round without I/O costs microseconds)."""
        quiet, seen = 0, len(self._queue)
        for _ in range(rounds):
            await asyncio.sleep(0)
            quiet = quiet + 1 if len(self._queue) == seen else 0
            seen = len(self._queue)
            if quiet >= 2:
                return
