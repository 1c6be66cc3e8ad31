"""``python -m benchmarks.serving_peers {litserve,ray} --workload toxic --port N``: a peer server.

The comparison :mod:`benchmarks.serving` draws: LitServe and Ray Serve serving the workload's
*original* pipeline (the undecorated function, ``pipeline.__wrapped__``), with their own dynamic
batching (at most ``--max-batch`` requests, ``--batch-wait-ms`` to fill a batch), on
``POST /predict`` with the same JSON requests and answers as :mod:`willow.serve`
(``{"rows": [...]}`` -> ``{"predictions": [...]}``; the rows are decoded by the same
:class:`~willow.serve.ServedPipeline`, so only the server differs). It runs as its own process
(Ray starts several), started and stopped by the benchmark, possibly with another interpreter
(``--peer-python``: a virtual environment holding the ``serve-compare`` extra). Each server
package is imported only in that process, and only for the server asked for (LitServe's API
lives in :mod:`benchmarks.serving_litserve`: LitServe pickles it into its workers).
"""

from __future__ import annotations

import argparse
import warnings
from typing import Any

from benchmarks import credit, toxic

WORKLOADS = {"toxic": toxic, "credit": credit}
PEERS = {"litserve": "litserve", "ray": "ray.serve"}
"""Peer name -> the module it needs (what the benchmark checks is importable before starting it)."""


def original(workload: str, scale: str) -> Any:
    """The workload's original pipeline (no willow plan) with its model bound, as a ServedPipeline."""
    from willow.serve import ServedPipeline

    prepared = WORKLOADS[workload].prepare(scale)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        function = prepared.make_pipeline().__wrapped__
    return ServedPipeline(function, prepared.model, example=prepared.test_rows[:2])


def answer_batch(served: Any, bodies: list[Any]) -> list[dict[str, Any]]:
    """One pipeline call on every request's rows (one shape: one workload); each request's own
    predictions back, in order."""
    rows = [body["rows"] if isinstance(body, dict) else body for body in bodies]
    flat = [row for request in rows for row in request]
    output = served.call(0, flat, served.shape_of(flat))
    answers, start = [], 0
    for request in rows:
        answers.append({"predictions": output[start : start + len(request)]})
        start += len(request)
    return answers


def serve_ray(served: Any, port: int, max_batch: int, wait_s: float) -> None:
    import threading

    import ray
    from ray import serve

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})

    @serve.deployment(max_ongoing_requests=4 * max_batch)
    class Pipeline:
        def __init__(self, served: Any) -> None:
            self.served = served

        @serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=wait_s)
        async def answer(self, bodies: list[Any]) -> list[dict[str, Any]]:
            return answer_batch(self.served, bodies)

        async def __call__(self, request: Any) -> dict[str, Any]:
            return await self.answer(await request.json())

    serve.run(Pipeline.bind(served), route_prefix="/predict")
    threading.Event().wait()  # until the benchmark ends this process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.serving_peers", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("peer", choices=sorted(PEERS))
    parser.add_argument("--workload", default="toxic", choices=sorted(WORKLOADS))
    parser.add_argument("--data-scale", default="quick")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    args = parser.parse_args(argv)
    if args.peer == "litserve":
        from benchmarks.serving_litserve import serve

        serve(args.workload, args.data_scale, args.port, args.max_batch, args.batch_wait_ms / 1e3)
    else:
        serve_ray(
            original(args.workload, args.data_scale), args.port, args.max_batch, args.batch_wait_ms / 1e3
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
