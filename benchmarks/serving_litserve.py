"""The LitServe peer of :mod:`benchmarks.serving_peers` (imported only in the peer's process: it
imports ``litserve``). LitServe pickles the API object into its worker processes, so the API is a
module-level class holding only the workload's name; its worker builds the pipeline in ``setup``."""

from __future__ import annotations

from typing import Any

import litserve as ls

from benchmarks.serving_peers import answer_batch, original


class PipelineAPI(ls.LitAPI):
    """The workload's original pipeline behind LitServe's batching: a batch is the decoded JSON
    bodies, answered with one pipeline call (:func:`answer_batch`)."""

    def __init__(self, workload: str, data_scale: str, **options: Any) -> None:
        super().__init__(**options)
        self.workload, self.data_scale = workload, data_scale

    def setup(self, device: str) -> None:
        self.served = original(self.workload, self.data_scale)

    # No annotations on these two: LitServe reads them to type the endpoint (none: JSON in and out).
    def decode_request(self, request):
        return request

    def batch(self, inputs: list[Any]) -> list[Any]:
        return inputs

    def predict(self, bodies: Any) -> Any:
        if isinstance(bodies, list):
            return answer_batch(self.served, bodies)
        return answer_batch(self.served, [bodies])[0]  # unbatched (max_batch_size 1)

    def unbatch(self, output: list[Any]) -> list[Any]:
        return output

    def encode_response(self, output):
        return output


def serve(workload: str, data_scale: str, port: int, max_batch: int, wait_s: float) -> None:
    api = PipelineAPI(workload, data_scale, max_batch_size=max_batch, batch_timeout=wait_s)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1)
    server.run(host="127.0.0.1", port=port, generate_client_file=False, log_level="warning")
