"""The run's report: a terminal table, JSON (everything measured) and Markdown."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["summary_rows", "terminal_table", "markdown", "write_json", "write_markdown"]

COLUMNS = (
    ("workload", "workload"),
    ("variant", "variant"),
    ("rows/s", "rows_per_second"),
    ("speedup", "speedup"),
    ("p50 ms", "p50_ms"),
    ("p99 ms", "p99_ms"),
    ("acc/R2", "quality"),
    ("AUC", "auc"),
    ("agree", "agreement"),
    ("bound", "lower_bound"),
    ("P@K", "precision_at_k"),
    ("calib s", "calibration_seconds"),
)


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if key == "rows_per_second":
        return f"{value:,.0f}"
    if key == "speedup":
        return f"{value:.2f}x"
    if key in ("p50_ms", "p99_ms"):
        return f"{value:.2f}"
    if key == "calibration_seconds":
        return f"{value:.1f}"
    return f"{value:.4f}"


def summary_rows(results: dict[str, Any]) -> list[dict[str, str]]:
    """One row per workload and variant, formatted for a table."""
    rows = []
    for workload in results["workloads"]:
        if "error" in workload:
            rows.append({"workload": workload["name"], "variant": "error (see below)"})
            continue
        for entry in workload["variants"]:
            row = {"workload": workload["name"], "variant": entry["name"]}
            if entry["status"] != "ok":
                row["rows_per_second"] = entry["status"]
                rows.append(row)
                continue
            values = dict(entry)
            values["quality"] = entry.get("accuracy", entry.get("r2"))
            plan = entry.get("plan")
            if plan is not None:
                values["lower_bound"] = plan["lower_bound"] if plan["cascade"] else None
                if not plan["cascade"]:
                    row["variant"] = (
                        f"{entry['name']} (no cascade)" if entry["name"] != "compiled" else entry["name"]
                    )
            for _, key in COLUMNS[2:]:
                row[key] = _fmt(key, values.get(key))
            rows.append(row)
    return rows


def _table(rows: list[dict[str, str]], markdown: bool) -> str:
    headers = [h for h, _ in COLUMNS]
    keys = [k for _, k in COLUMNS]
    cells = [[row.get(k, "") for k in keys] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
        return "\n".join(lines)
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]
    fmt = lambda values: "  ".join(  # noqa: E731
        v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths))
    )
    return "\n".join([fmt(headers), fmt(["-" * w for w in widths]), *(fmt(c) for c in cells)])


def _oracle_line(workload: dict[str, Any]) -> str:
    oracle = workload.get("oracle", {})
    if oracle.get("status") != "ok":
        return (
            f"{workload['name']}: oracle bound {oracle.get('status', 'n/a')} ({oracle.get('note', '')[:120]})"
        )
    achieved = oracle["fraction_of_oracle"]
    return (
        f"{workload['name']}: ideal cascade on {'+'.join(oracle['selected'])} "
        f"(right on {oracle['easy_fraction']:.1%} of test rows, served {oracle['served_fraction']:.1%} on holdout) "
        f"-> oracle {oracle['oracle_speedup']:.2f}x, planned {oracle['planned_speedup']:.2f}x, measured "
        f"{oracle['measured_speedup']:.2f}x = {achieved:.0%} of the oracle"
    )


def terminal_table(results: dict[str, Any]) -> str:
    """The summary table plus one oracle-bound line per workload, for the terminal."""
    lines = [_table(summary_rows(results), markdown=False), ""]
    lines += [_oracle_line(w) for w in results["workloads"] if "error" not in w]
    lines += [f"{w['name']}: failed: {w['error']}" for w in results["workloads"] if "error" in w]
    lines += ["", *_legend(results)]
    return "\n".join(lines)


def _legend(results: dict[str, Any]) -> list[str]:
    caps = results["capabilities"]
    notes = [
        f"Medians of {results['repeats']} interleaved batch runs; p50/p99 over single-row calls. "
        "speedup = original batch time / variant batch time; agree = same prediction as the original on "
        "the test rows; bound = the plan's lower "
        f"{results['confidence']:.0%} confidence bound on agreement (calibration holdout).",
        "Oracle bound: willow's per-row cost model (pipeline.costs_) applied to an ideal cascade on the plan's "
        "groups that sends only the rows its approximate model gets wrong to the full pipeline; it is a "
        "model, so a measured wall-clock speedup can exceed it when per-call overheads dominate.",
    ]
    if not caps["compile"]:
        notes.append("compiled variants: n/a until willow.optimize accepts compile=.")
    if not caps["top_k"]:
        notes.append("top-k: n/a until OptimizedPipeline.top_k exists.")
    return notes


def markdown(results: dict[str, Any]) -> str:
    """The whole report as Markdown: setup, summary, then per-workload plans and trade-offs."""
    lines = [
        "# willow benchmarks",
        "",
        f"willow {results['willow_version']}, scale `{results['scale']}`, accuracy target "
        f"{results['accuracy_target']}, confidence {results['confidence']}, {results['created']}.",
        f"Machine: {results['machine']['platform']}, {results['machine']['cpus']} CPUs, Python "
        f"{results['machine']['python']}. Total wall time {results['wall_seconds']:.0f} s.",
        "",
        *_legend(results),
        "",
        "## Summary",
        "",
        _table(summary_rows(results), markdown=True),
        "",
        "## Oracle bound of the cascade",
        "",
        *[f"- {_oracle_line(w)}" for w in results["workloads"] if "error" not in w],
        "",
    ]
    for workload in results["workloads"]:
        lines += [f"## {workload['name']}", ""]
        if "error" in workload:
            lines += [f"Failed: `{workload['error']}`", ""]
            continue
        sizes = workload["sizes"]
        lines += [
            workload["description"],
            "",
            f"Groups: {', '.join(workload['groups'])}. Rows: train {sizes['train']}"
            + (f", history {sizes['history']}" if sizes["history"] else "")
            + f", calibrate {sizes['calibrate']}, test {sizes['test']} (point latency over {sizes['point_rows']}).",
            "",
        ]
        if workload.get("willow_options"):
            options = ", ".join(f"{k}={v}" for k, v in workload["willow_options"].items())
            lines += [f"Workload-specific willow.optimize options: `{options}`.", ""]
        cascades = next((v for v in workload["variants"] if v["name"] == "cascades"), None)
        if cascades and cascades.get("plan"):
            plan = cascades["plan"]
            lines += [
                f"Plan at {plan['accuracy_target']}: "
                + (
                    f"cascade on {', '.join(plan['selected'])}, {plan['confident_fraction']:.1%} of holdout rows "
                    f"answered approximately, holdout agreement {plan['agreement']:.4f} "
                    f"(lower bound {plan['lower_bound']:.4f} on {plan['holdout_rows']} rows)."
                    if plan["cascade"]
                    else f"no cascade: {plan['reason']}"
                ),
                "",
                "| group | us/row | importance |",
                "|---|---|---|",
                *[
                    f"| {g} | {plan['group_us_per_row'][g]:.2f} | {plan['importances'].get(g, float('nan')):.4f} |"
                    for g in plan["group_us_per_row"]
                ],
                "",
            ]
        for entry in workload["variants"]:
            if entry["status"] != "ok" and entry.get("note"):
                lines.append(f"- {entry['name']}: {entry['status']} - {entry['note']}")
        lines += [
            "",
            "Accuracy-vs-speed trade-off:",
            "",
            "| variant | target | speedup | agreement | bound | note |",
            "|---|---|---|---|---|---|",
        ]
        for name, points in workload["tradeoff"].items():
            for p in points:
                if p["status"] == "ok":
                    lines.append(
                        f"| {name} | {p['accuracy_target']} | {p['speedup']:.2f}x | {p['agreement']:.4f} | "
                        f"{p['lower_bound']:.4f} | {'' if p['cascade'] else 'no cascade'} |"
                    )
                else:
                    lines.append(
                        f"| {name} | {p['accuracy_target']} | {p['status']} | | | {p.get('note', '')[:140]} |"
                    )
        lines.append("")
    if results.get("plots"):
        lines += ["## Plots", "", *[f"![{Path(p).stem}]({Path(p).name})" for p in results["plots"]], ""]
    return "\n".join(lines)


def write_json(results: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")


def write_markdown(results: dict[str, Any], path: Path) -> None:
    path.write_text(markdown(results) + "\n")
