"""PNG plots of a run (matplotlib, Agg backend): speedup per variant, accuracy-vs-speed curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_all"]


def plot_all(results: dict[str, Any], out: Path) -> list[Path]:
    """Write ``speedup.png`` and ``tradeoff.png`` into ``out``; return their paths ([] without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    workloads = [w for w in results["workloads"] if "error" not in w]
    if not workloads:
        return []
    paths = [_speedup(plt, workloads, out / "speedup.png"), _tradeoff(plt, workloads, out / "tradeoff.png")]
    plt.close("all")
    return paths


def _speedup(plt: Any, workloads: list[dict[str, Any]], path: Path) -> Path:
    variants = [v["name"] for v in workloads[0]["variants"]]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(workloads) + 2), 4.2))
    width = 0.8 / len(variants)
    for j, name in enumerate(variants):
        for i, workload in enumerate(workloads):
            entry = next(v for v in workload["variants"] if v["name"] == name)
            x = i + (j - (len(variants) - 1) / 2) * width
            if entry["status"] == "ok" and entry.get("speedup") is not None:
                ax.bar(x, entry["speedup"], width, color=f"C{j}", label=name if i == 0 else None)
                ax.text(x, entry["speedup"], f"{entry['speedup']:.2f}", ha="center", va="bottom", fontsize=7)
            else:
                ax.bar(x, 0, width, color=f"C{j}", label=name if i == 0 else None)
                ax.text(
                    x, 0.02, entry["status"], ha="center", va="bottom", fontsize=6, rotation=90, color="0.4"
                )
    ax.axhline(1.0, color="0.3", lw=0.8, ls="--")
    ax.set_xticks(range(len(workloads)), [w["name"] for w in workloads])
    ax.set_ylabel("batch speedup over the original")
    ax.set_title("willow: batch speedup per workload and variant")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def _tradeoff(plt: Any, workloads: list[dict[str, Any]], path: Path) -> Path:
    cols = min(3, len(workloads))
    rows = (len(workloads) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, workload in zip(axes.ravel(), workloads):
        targets = sorted({p["accuracy_target"] for points in workload["tradeoff"].values() for p in points})
        position = {t: i for i, t in enumerate(targets)}
        for j, (name, points) in enumerate(workload["tradeoff"].items()):
            ok = [p for p in points if p["status"] == "ok"]
            if not ok:
                continue
            xs = [position[p["accuracy_target"]] for p in ok]
            ax.plot(xs, [p["speedup"] for p in ok], marker="o", color=f"C{j + 2}", label=name)
            bound = [
                (position[p["accuracy_target"]], p["oracle_speedup"]) for p in ok if p.get("oracle_speedup")
            ]
            if bound:
                ax.scatter(
                    *zip(*bound),
                    marker="_",
                    s=120,
                    color=f"C{j + 2}",
                    alpha=0.6,
                    label=f"{name}: oracle bound",
                )
            for x, p in zip(xs, ok):
                label = f"{p['agreement']:.3f}" if p["cascade"] else "no cascade"
                ax.annotate(label, (x, p["speedup"]), fontsize=6, textcoords="offset points", xytext=(2, 4))
        for name, points in workload["tradeoff"].items():
            for p in points:
                if p["status"] != "ok" and name == "cascades":
                    ax.annotate(
                        p["status"],
                        (position[p["accuracy_target"]], 1.0),
                        fontsize=7,
                        color="0.4",
                        ha="center",
                        textcoords="offset points",
                        xytext=(0, -12),
                    )
        ax.axhline(1.0, color="0.3", lw=0.8, ls="--")
        ax.set_xticks(range(len(targets)), [str(t) for t in targets])
        ax.set_xlim(-0.5, len(targets) - 0.5)
        ax.set_title(workload["name"])
        ax.set_xlabel("accuracy_target")
        ax.set_ylabel("batch speedup")
        ax.set_ylim(bottom=0, top=max(1.2, ax.get_ylim()[1] * 1.1))
    for ax in axes.ravel()[len(workloads) :]:
        ax.set_visible(False)
    handles: dict[str, Any] = {}
    for ax in axes.ravel()[: len(workloads)]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(list(handles.values()), list(handles), loc="lower right", fontsize=8)
    fig.suptitle(
        "accuracy vs speed: speedup per accuracy target (labels: agreement with the original on test rows)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
