"""``python -m benchmarks.serving [--quick] [--out DIR]``: the HTTP server under load (willow.serve).

Calibrates the toxic pipeline (SMS spam, word + char TF-IDF -> LogisticRegression; ``--workload
credit``: UCI Adult, aggregate lookups -> LightGBM) with two accuracy tiers, serves it with :mod:`willow.serve` on uvicorn on 127.0.0.1 (in a thread of this
process, which otherwise only waits), and drives it with ``wrk`` (a native load generator; Debian
``apt-get install wrk``), one row (text) per JSON request, at increasing offered rates, for three
servers: one pipeline call per request, adaptive batching (Clipper's AIMD), and adaptive
batching with accuracy scaling (Proteus-style). It reports, per rate, the throughput, p50/p99
latency, the fraction of requests over the SLO (timeouts and errors count as over), the tier mix,
the mean batch and the server's CPU time per request.

wrk is a closed-loop generator: each of its connections sends a request, waits for the answer,
then pauses for an exponentially distributed time (mean ``connections / rate``) before the next.
The offered rate is therefore nominal: when latency grows, the connections send less often than
asked, and a server past saturation shows as throughput below the offered rate and latency at
the ``connections``-deep queue. Its latency percentiles are per request, as wrk measures them.

The tiers are the pipeline's own (``tiers_``) when willow can calibrate several accuracy targets
at once; otherwise each target is calibrated separately and the pipelines are served as tiers
(:class:`SeparateTiers`), every one proven against the original at its own target.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import credit, toxic
from willow.rows import n_rows, take_rows
from willow.serve.endpoint import json_default, output_rows

WORKLOADS = {"toxic": toxic, "credit": credit}

SCALES = {
    # rates (requests/s), seconds per rate
    "quick": ((100, 300, 600, 1000, 1500), 4),
    "full": ((100, 300, 600, 1000, 1500, 2000, 3000), 10),
}
MODES = (
    ("one call per request", {"batching": False, "scale_accuracy": False}),
    ("adaptive batching", {"batching": True, "scale_accuracy": False}),
    ("batching + accuracy scaling", {"batching": True, "scale_accuracy": True}),
)

_WRK_SCRIPT = r"""
local bodies = {}
for line in io.lines(os.getenv("WILLOW_BODIES")) do bodies[#bodies + 1] = line end
local mean_delay_ms = tonumber(os.getenv("WILLOW_DELAY_MS"))
local slo_us = tonumber(os.getenv("WILLOW_SLO_US"))
local counter = 0
wrk.method = "POST"
wrk.path = "/predict"
wrk.headers["Content-Type"] = "application/json"

function init(args)
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16) % 100000)
  counter = math.random(#bodies)
end

function request()
  counter = counter % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[counter])
end

function delay()
  return -math.log(1 - math.random()) * mean_delay_ms
end

function done(summary, latency, requests)
  local within = 1.0
  if summary.requests == 0 then
    within = 0.0
  elseif latency.max > slo_us then
    local lo, hi = 0.0, 100.0
    for _ = 1, 40 do
      local mid = (lo + hi) / 2
      if latency:percentile(mid) <= slo_us then lo = mid else hi = mid end
    end
    within = lo / 100
  end
  local e = summary.errors
  io.write(string.format(
    'WILLOW_JSON {"requests": %d, "duration_us": %d, "status_errors": %d, "timeouts": %d, '
    .. '"socket_errors": %d, "p50_us": %d, "p99_us": %d, "max_us": %d, "within_slo": %.6f}\n',
    summary.requests, summary.duration, e.status, e.timeout, e.connect + e.read + e.write,
    latency:percentile(50), latency:percentile(99), latency.max, within))
end
"""


class SeparateTiers:
    """Separately calibrated pipelines served as one pipeline's tiers (``tiers_``, ``tier()``):
    the stand-in while willow calibrates one target per pipeline. The plain call is the first
    (strictest) pipeline."""

    def __init__(self, pipelines: dict[float, Any]) -> None:
        self._pipelines = dict(sorted(pipelines.items(), reverse=True))
        first = next(iter(self._pipelines.values()))
        self.__wrapped__ = first.__wrapped__
        self.__qualname__ = first.__qualname__
        self.graph_ = first.graph_
        self.tiers_ = tuple(_Tier(t, p.plan_) for t, p in self._pipelines.items())

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return next(iter(self._pipelines.values()))(*args, **kwargs)

    def tier(self, target: float) -> Any:
        return self._pipelines[target]

    def explain(self) -> str:
        return "\n\n".join(f"Tier {t:g}:\n{p.explain()}" for t, p in self._pipelines.items())


class _Tier:
    def __init__(self, target: float, plan: Any) -> None:
        self.target = target
        self.plan = plan


def calibrate_tiers(prepared: Any, targets: tuple[float, ...]) -> tuple[Any, dict[str, Any]]:
    """The workload's pipeline with one tier per target (strictest first) and what each tier proved."""
    from benchmarks.run import _calibrate

    options = dict(prepared.optimize_options)
    try:
        pipeline, seconds = _calibrate(prepared, {**options, "accuracy_target": targets})
        tiers = pipeline.tiers_
        info = {"tiers_from": "willow (one calibration)", "calibration_s": round(seconds, 1)}
    except (TypeError, ValueError, AttributeError):
        pipelines, seconds = {}, 0.0
        for target in targets:
            pipelines[target], spent = _calibrate(prepared, {**options, "accuracy_target": target})
            seconds += spent
        pipeline = SeparateTiers(pipelines)
        tiers = pipeline.tiers_
        info = {"tiers_from": "separate calibrations (SeparateTiers)", "calibration_s": round(seconds, 1)}
    info["tiers"] = [_tier_info(t) for t in tiers]
    return pipeline, info


def _tier_info(tier: Any) -> dict[str, Any]:
    plan = getattr(tier, "plan", None) or getattr(tier, "plan_", None)
    info: dict[str, Any] = {"target": tier.target}
    for name in ("cascade", "lower_bound", "agreement", "confident_fraction", "measured_speedup"):
        value = getattr(plan, name, getattr(tier, name, None))
        if value is not None:
            info[name] = value
    return info


class ThreadedServer:
    """uvicorn serving ``app`` on 127.0.0.1 in a thread of this process (a context manager)."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False, backlog=4096
        )
        self.server = uvicorn.Server(config)
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadedServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("uvicorn did not start within 30 s.")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)


def scrape(url: str) -> dict[str, float]:
    """The server's /metrics as {"name{labels}": value}."""
    import httpx

    values = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def _delta(after: dict[str, float], before: dict[str, float], name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


def run_wrk(url: str, bodies: Path, rate: float, seconds: int, slo_ms: float) -> dict[str, Any]:
    """One wrk run at the nominal ``rate``; its summary as a dict."""
    connections = max(8, math.ceil(rate * 0.2))
    env = dict(
        os.environ,
        WILLOW_BODIES=str(bodies),
        WILLOW_DELAY_MS=f"{connections / rate * 1e3:.3f}",
        WILLOW_SLO_US=str(int(slo_ms * 1e3)),
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_WRK_SCRIPT)
    try:
        command = [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "2s",
            "-s",
            script.name,
            url,
        ]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 60)
    finally:
        os.unlink(script.name)
    match = re.search(r"^WILLOW_JSON (.*)$", done.stdout, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"wrk gave no summary (exit {done.returncode}): {done.stdout}\n{done.stderr}")
    summary = json.loads(match.group(1))
    summary["connections"] = connections
    return summary


def measure_mode(
    served: Any, mode: dict[str, Any], bodies: Path, rates: tuple[int, ...], seconds: int, slo_ms: float
) -> list[dict[str, Any]]:
    """Every rate against one server configuration."""
    import httpx

    from willow.serve.app import create_app

    rows = []
    with ThreadedServer(create_app(served, slo_ms=slo_ms, **mode)) as server:
        warm = [json.loads(line) for line in bodies.read_text().splitlines()[:50]]
        for body in warm:
            httpx.post(f"{server.url}/predict", json=body, timeout=10).raise_for_status()
        for rate in rates:
            before, cpu = scrape(server.url), time.process_time()
            result = run_wrk(server.url, bodies, rate, seconds, slo_ms)
            cpu, after = time.process_time() - cpu, scrape(server.url)
            done = result["requests"]
            lost = result["timeouts"] + result["socket_errors"]  # never answered
            errors = result["status_errors"] + lost
            late = done * (1 - result["within_slo"]) + result["status_errors"] + lost
            batches = _delta(after, before, "willow_serve_batch_rows_count")
            tiers = {
                m.group(1): _delta(after, before, key)
                for key in after
                if (m := re.fullmatch(r'willow_serve_tier_requests_total\{tier="(.*)"\}', key))
            }
            cascaded = _delta(after, before, "willow_serve_cascade_rows_total")
            rows.append(
                {
                    "offered_per_s": rate,
                    "connections": result["connections"],
                    "throughput_per_s": round(done / (result["duration_us"] / 1e6), 1),
                    "p50_ms": result["p50_us"] / 1e3,
                    "p99_ms": result["p99_us"] / 1e3,
                    "over_slo": round(min(1.0, late / (done + lost)), 4) if done + lost else 1.0,
                    "errors": errors,
                    "mean_batch_rows": round(
                        _delta(after, before, "willow_serve_batch_rows_sum") / batches, 1
                    )
                    if batches
                    else 0.0,
                    "mean_batch_ms": round(
                        _delta(after, before, "willow_serve_batch_seconds_sum") * 1e3 / batches, 3
                    )
                    if batches
                    else 0.0,
                    "tier_mix": {
                        t: round(n / max(1.0, sum(tiers.values())), 3) for t, n in tiers.items() if n
                    },
                    "early_exit": round(
                        _delta(after, before, "willow_serve_cascade_early_exit_rows_total") / cascaded, 3
                    )
                    if cascaded
                    else None,
                    "cpu_ms_per_request": round(cpu * 1e3 / done, 3) if done else None,
                }
            )
            print(f"  {rate:>5}/s: {_line(rows[-1])}", flush=True)
    return rows


def _line(row: dict[str, Any]) -> str:
    mix = ", ".join(f"{t} {f:.0%}" for t, f in sorted(row["tier_mix"].items(), reverse=True))
    return (
        f"{row['throughput_per_s']:>7.0f} req/s  p50 {row['p50_ms']:6.1f} ms  p99 {row['p99_ms']:7.1f} ms  "
        f"over SLO {row['over_slo']:6.1%}  batch {row['mean_batch_rows']:5.1f} rows {row['mean_batch_ms']:6.2f} ms  tiers {mix}"
    )


def in_process(pipeline: Any, model: Any, rows: Any, targets: tuple[float, ...]) -> dict[str, Any]:
    """Each tier called in this process: ms per call for one row and for batches of 16 and 256
    (medians of repeated calls), the figures the server's per-request costs compare with."""
    figures: dict[str, Any] = {}
    for target in targets:
        call = pipeline.tier(target) if hasattr(pipeline, "tier") else pipeline
        for n in (1, 16, 256):
            batch = take_rows(rows, np.resize(np.arange(n_rows(rows)), n))
            call(model, batch)
            times = []
            for _ in range(max(5, 400 // n)):
                start = time.perf_counter()
                call(model, batch)
                times.append(time.perf_counter() - start)
            figures[f"{target:g} x{n} ms"] = round(float(np.median(times)) * 1e3, 3)
    return figures


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"# willow.serve under load: {results['workload']}, one row per request",
        "",
        f"SLO {results['slo_ms']:g} ms; {results['seconds_per_rate']} s per offered rate; wrk, "
        f"{results['generator']}; tiers {results['tier_targets']} ({results['tiers_from']}); load average "
        f"before the run {results['load_average']}.",
        "",
        "In process, ms per call (tier x rows): "
        + ", ".join(f"{k.removesuffix(' ms')}: {v:.3f}" for k, v in results["in_process"].items())
        + ".",
        "",
        "| server | offered/s | throughput/s | p50 ms | p99 ms | over SLO | mean batch (rows, ms) | tier mix | early exit | CPU ms/req |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, rows in results["modes"].items():
        for r in rows:
            mix = ", ".join(f"{t}: {f:.0%}" for t, f in sorted(r["tier_mix"].items(), reverse=True))
            early = "-" if r["early_exit"] is None else f"{r['early_exit']:.0%}"
            lines.append(
                f"| {mode} | {r['offered_per_s']} | {r['throughput_per_s']:,.0f} | {r['p50_ms']:.1f} | "
                f"{r['p99_ms']:.1f} | {r['over_slo']:.1%} | {r['mean_batch_rows']:.1f}, {r['mean_batch_ms']:.2f} | {mix} | {early} | "
                f"{r['cpu_ms_per_request']} |"
            )
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> Path | None:
    """``serving.png``: throughput and p99 latency against the offered rate, one line per server."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, rows in results["modes"].items():
        offered = [r["offered_per_s"] for r in rows]
        left.plot(offered, [r["throughput_per_s"] for r in rows], marker="o", label=name)
        right.plot(offered, [r["p99_ms"] for r in rows], marker="o", label=name)
    top = max((r["offered_per_s"] for rows in results["modes"].values() for r in rows), default=1)
    left.plot([0, top], [0, top], color="0.6", lw=0.8, ls="--", label="offered")
    right.axhline(results["slo_ms"], color="0.3", lw=0.8, ls="--", label="SLO")
    right.set_yscale("log")
    left.set(xlabel="offered requests/s", ylabel="answered requests/s", title="throughput")
    right.set(xlabel="offered requests/s", ylabel="p99 latency (ms)", title="p99 latency")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.suptitle(f"willow.serve, {results['workload']}, one row per request")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.serving", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="fewer rates, 4 s each (about 2 minutes)")
    parser.add_argument("--out", default="results", help="directory for serving.json and serving.md")
    parser.add_argument("--slo-ms", type=float, default=50.0)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.99, 0.95], help="accuracy tiers")
    parser.add_argument(
        "--rates", type=int, nargs="+", help="offered rates (requests/s) instead of the scale's"
    )
    parser.add_argument("--seconds", type=int, help="seconds per rate instead of the scale's")
    parser.add_argument("--threaded", action="store_true", help="run batches in a worker thread")
    parser.add_argument(
        "--modes", nargs="+", choices=["one", "adaptive", "batching"], help="only these servers (first words)"
    )
    parser.add_argument(
        "--data-scale",
        default="quick",
        choices=sorted(toxic.SIZES),
        help="the workload's train/calibration slices",
    )
    parser.add_argument("--workload", default="toxic", choices=sorted(WORKLOADS), help="default toxic")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        parser.error(
            "wrk is not installed (Debian: apt-get install wrk); this benchmark needs a native load generator."
        )
    rates, seconds = SCALES["quick" if args.quick else "full"]
    rates, seconds = tuple(args.rates or rates), args.seconds or seconds
    from willow.serve import ServedPipeline

    prepared = WORKLOADS[args.workload].prepare(args.data_scale)
    targets = tuple(sorted(args.targets, reverse=True))
    print(f"calibrating {args.workload} at {targets} ...", flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipeline, tier_info = calibrate_tiers(prepared, targets)
    served = ServedPipeline(pipeline, prepared.model, example=prepared.test_rows[:2])
    rows = prepared.test_rows
    records = rows.to_dict("records") if hasattr(rows, "to_dict") else [str(t) for t in rows]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bodies = out / "serving_bodies.jsonl"
    bodies.write_text("".join(json.dumps({"rows": [r]}, default=json_default) + "\n" for r in records))
    results: dict[str, Any] = {
        "workload": args.workload,
        "slo_ms": args.slo_ms,
        "seconds_per_rate": seconds,
        "generator": subprocess.run(["wrk", "-v"], capture_output=True, text=True)
        .stdout.split("\n")[0]
        .strip(),
        "tier_targets": list(targets),
        **tier_info,
        "load_average": round(os.getloadavg()[0], 2),
        "batches_in": "a worker thread" if args.threaded else "the event loop's thread",
        "numba_threads": int(os.environ.get("NUMBA_NUM_THREADS", os.cpu_count() or 1)),
        "cpus": os.cpu_count(),
        "in_process": in_process(pipeline, prepared.model, rows, targets),
        "modes": {},
    }
    _check_answers(
        served, pipeline, prepared.model, take_rows(rows, np.arange(20)), records[:20], args.slo_ms
    )
    for name, mode in MODES:
        if args.modes and name.split()[0] not in args.modes:
            continue
        print(f"{name}:", flush=True)
        results["modes"][name] = measure_mode(
            served, {**mode, "threaded": args.threaded}, bodies, rates, seconds, args.slo_ms
        )
    (out / "serving.json").write_text(json.dumps(results, indent=2, default=float))
    (out / "serving.md").write_text(markdown(results))
    print(markdown(results))
    picture = plot(results, out / "serving.png")
    print(f"wrote {out / 'serving.json'}, {out / 'serving.md'}" + (f" and {picture}" if picture else ""))
    return 0


def _check_answers(
    served: Any, pipeline: Any, model: Any, rows: Any, records: list[Any], slo_ms: float
) -> None:
    """The server answers what the pipeline answers in process (strictest tier; floats to 1e-9)."""
    import httpx

    from willow.serve.app import create_app

    expected = output_rows(pipeline(model, rows), len(records))
    with ThreadedServer(create_app(served, slo_ms=slo_ms)) as server:
        got = [
            httpx.post(
                f"{server.url}/predict", content=json.dumps({"rows": [r]}, default=json_default)
            ).json()["predictions"][0]
            for r in records
        ]
    from benchmarks.run import _same

    if not _same("", got, expected):
        raise AssertionError(f"The server's answers differ from the pipeline's: {got} vs {expected}.")


if __name__ == "__main__":
    raise SystemExit(main())
