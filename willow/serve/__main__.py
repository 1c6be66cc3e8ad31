"""``python -m willow.serve module:pipeline [--plan FILE] [--host H] [--port P] [--slo-ms MS]
[--scale-accuracy] [--no-batching]``: serve a pipeline over HTTP on uvicorn.

``module:pipeline`` names an object importable from ``module`` (dotted attributes allowed): a
:class:`~willow.serve.ServedPipeline` (a pipeline with its model and other arguments bound), a
pipeline whose only required argument is the rows (its model a global), or a function of no
arguments returning either (it may load and calibrate the pipeline). ``--plan FILE`` loads a plan
saved with ``pipeline.save(FILE)`` into it first (``willow.load``).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from collections.abc import Sequence
from typing import Any

from willow.serve.endpoint import ServedPipeline

__all__ = ["main", "resolve_target", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m willow.serve", description=__doc__.split("\n\n")[1])
    parser.add_argument("target", help="module:pipeline (see above)")
    parser.add_argument("--plan", help="a plan file saved with pipeline.save(...), loaded with willow.load")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--slo-ms", type=float, default=50.0, help="p99 latency objective in ms (default 50)")
    parser.add_argument(
        "--scale-accuracy",
        action="store_true",
        help="under load, serve requests that pinned no tier with the next faster proven tier",
    )
    parser.add_argument("--no-batching", action="store_true", help="one pipeline call per request")
    parser.add_argument("--max-batch-rows", type=int, default=4096, help="largest batch (default 4096 rows)")
    return parser


def resolve_target(target: str, plan: str | None = None) -> ServedPipeline:
    """The :class:`ServedPipeline` that ``module:attribute`` names (see the module doc)."""
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"Expected module:pipeline (e.g. myapp.models:classify), got {target!r}.")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"Cannot import {module_name!r} from {target!r}: {exc}.") from None
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"{module_name!r} has no attribute {attribute!r} (from {target!r}).") from None
    if not isinstance(obj, ServedPipeline) and _is_factory(obj):
        obj = obj()
    served = obj if isinstance(obj, ServedPipeline) else ServedPipeline(obj)
    if plan is not None:
        import willow

        served = served.with_pipeline(willow.load(plan, served.pipeline))
    return served


def _is_factory(obj: Any) -> bool:
    """A plain function every parameter of which has a default (so not a pipeline of rows)."""
    if not callable(obj) or hasattr(obj, "__wrapped__") or not inspect.isfunction(obj):
        return False
    return all(
        p.default is not inspect.Parameter.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        for p in inspect.signature(obj).parameters.values()
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        served = resolve_target(args.target, args.plan)
    except (ValueError, TypeError) as exc:
        print(f"willow.serve: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    from willow.serve.app import create_app

    app = create_app(
        served,
        slo_ms=args.slo_ms,
        batching=not args.no_batching,
        scale_accuracy=args.scale_accuracy,
        max_batch_rows=args.max_batch_rows,
    )
    tiers = ", ".join(served.label(i) for i in range(len(served.targets)))
    print(
        f"willow.serve: {served.name} (tiers {tiers}) on http://{args.host}:{args.port} "
        f"(SLO {args.slo_ms:g} ms, batching {'off' if args.no_batching else 'adaptive'}, accuracy "
        f"scaling {'on' if args.scale_accuracy else 'off'})",
        file=sys.stderr,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
