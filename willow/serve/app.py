"""The ASGI app (Starlette): ``POST /predict``, ``GET /health``, ``GET /plan``, ``GET /metrics``.

``POST /predict`` takes ``{"rows": [...]}`` (or the bare list), the rows in the JSON shape of the
pipeline's row argument (see :mod:`willow.serve.endpoint`), and optionally ``"tier"`` (an accuracy
target the pipeline was calibrated for) and ``"max_latency_ms"`` (this request's deadline, instead
of the server's SLO, for the accuracy scaler). It answers ``{"predictions": [...], "tier": ...,
"latency_ms": ..., "queue_ms": ..., "batch_rows": ...}``: this request's own rows, the tier that
answered them, and the batch they were served in. Malformed requests get a 4xx that says what was
expected; a pipeline exception is a 500 for the requests of that batch only.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Hashable
from typing import Any

from willow.cascades.runtime import early_exit_counts
from willow.serve.batching import AdaptiveBatcher, AIMDController, BatchError
from willow.serve.endpoint import RequestError, ServedPipeline, json_default
from willow.serve.metrics import ServeMetrics
from willow.serve.scaling import AccuracyScaler

__all__ = ["create_app"]


def create_app(
    served: ServedPipeline,
    *,
    slo_ms: float = 50.0,
    batching: bool = True,
    scale_accuracy: bool = False,
    max_batch_rows: int = 4096,
    budget_fraction: float = 0.5,
    warm_up: bool = True,
    threaded: bool = False,
) -> Any:
    """A Starlette app serving ``served`` behind an adaptive batcher.

    ``slo_ms``: the p99 latency objective. ``batching=False`` calls the pipeline once per request
    (fixed batch size 1: the baseline). ``scale_accuracy``: let the scaler serve faster tiers under
    load (needs a pipeline with several tiers). The AIMD budget for a batch is ``budget_fraction``
    of the SLO (see :mod:`willow.serve.batching`). ``warm_up``: at startup, run every tier on the
    pipeline's ``example`` rows at a few batch sizes (:meth:`ServedPipeline.warm_up`), so that no
    request waits for a kernel to compile or load. ``threaded``: run batches in a worker thread
    instead of the event loop's (see :mod:`willow.serve.batching` for why not by default).
    """
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    if not slo_ms > 0:
        raise ValueError(f"slo_ms must be > 0, got {slo_ms!r}.")
    metrics = ServeMetrics()
    controller = AIMDController(
        slo_ms * budget_fraction, initial=1, max_size=max_batch_rows if batching else 1, fixed=not batching
    )
    scaler = (
        AccuracyScaler(len(served.targets), same_as=served.same_as)
        if scale_accuracy and len(served.targets) > 1
        else None
    )

    def run(tier: int, key: Hashable, rows: list[Any]) -> list[Any]:
        before = early_exit_counts()
        try:
            return served.call(tier, rows, key)  # type: ignore[arg-type]
        finally:
            after = early_exit_counts()
            metrics.early_exits(after[0] - before[0], after[1] - before[1])

    def on_batch(
        tier: int, rows: int, requests: int, queue_ms: list[float], service_ms: float, ok: bool
    ) -> None:
        metrics.batch(served.label(tier), rows, requests, queue_ms, service_ms, ok)
        metrics.state(controller.size, served.targets[batcher.current_tier])

    batcher = AdaptiveBatcher(run, controller, scaler=scaler, on_batch=on_batch, threaded=threaded)

    def answer(body: dict[str, Any], status: int, started: float | None = None) -> Response:
        metrics.request(status, None if started is None else time.perf_counter() - started)
        text = json.dumps(body, default=json_default, allow_nan=False)
        return Response(text, status_code=status, media_type="application/json")

    async def predict(request: Request) -> Response:
        started = time.perf_counter()
        try:
            rows, tier, deadline_ms = _parse(await request.body(), served, slo_ms)
            shape = served.shape_of(rows)
        except RequestError as exc:
            return answer({"error": str(exc)}, exc.status)
        try:
            result = await batcher.submit(rows, shape, tier=tier, deadline_ms=deadline_ms)
        except BatchError as exc:
            return answer({"error": str(exc)}, 500, started)
        latency_ms = (time.perf_counter() - started) * 1e3
        try:
            return answer(
                {
                    "predictions": result.rows,
                    "tier": served.targets[result.tier],
                    "latency_ms": round(latency_ms, 3),
                    "queue_ms": round(result.queue_ms, 3),
                    "batch_rows": result.batch_rows,
                },
                200,
                started,
            )
        except (TypeError, ValueError) as exc:
            return answer({"error": f"The pipeline's output cannot be sent as JSON: {exc}."}, 500, started)

    async def health(request: Request) -> Response:
        return JSONResponse(
            {
                "status": "ok",
                "pipeline": served.name,
                "queued_rows": batcher.queued_rows,
                "batch_size": controller.size,
                "tier": served.targets[batcher.current_tier],
                "tiers": list(served.targets),
                "slo_ms": slo_ms,
                "scale_accuracy": scaler is not None,
            }
        )

    async def plan(request: Request) -> Response:
        return JSONResponse(
            {"pipeline": served.name, "tiers": list(served.targets), "explain": served.explain()}
        )

    async def prometheus(request: Request) -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any):
        await batcher.start()
        if warm_up:
            await batcher.run_in_worker(served.warm_up)
        try:
            yield
        finally:
            await batcher.stop()

    app = Starlette(
        routes=[
            Route("/predict", predict, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/plan", plan, methods=["GET"]),
            Route("/metrics", prometheus, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    app.state.metrics = metrics
    return app


def _parse(body: bytes, served: ServedPipeline, slo_ms: float) -> tuple[list[Any], int | None, float]:
    """A /predict body as (rows, pinned tier index or None, deadline in ms); RequestError else."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(f'The body is not valid JSON ({exc}); send {{"rows": [...]}}.') from None
    if isinstance(payload, list):
        return payload, None, slo_ms
    if not isinstance(payload, dict):
        raise RequestError(f'Expected a JSON object {{"rows": [...]}}, got {type(payload).__name__}.')
    unknown = sorted(set(payload) - {"rows", "tier", "max_latency_ms"})
    if unknown:
        raise RequestError(
            f'Unknown keys {unknown}; a request has "rows", and optionally "tier" and "max_latency_ms".'
        )
    if "rows" not in payload:
        raise RequestError('The request has no "rows": send {"rows": [...]} with one entry per row.')
    tier = payload.get("tier")
    index = None if tier is None else served.tier_index(tier)
    deadline = payload.get("max_latency_ms", slo_ms)
    if (
        isinstance(deadline, bool)
        or not isinstance(deadline, (int, float))
        or not deadline > 0
        or math.isinf(deadline)
    ):
        raise RequestError(f'"max_latency_ms" must be a positive number of milliseconds, got {deadline!r}.')
    return payload["rows"], index, float(deadline)
