"""What ``explain()`` says about where a ``device="cuda"`` pipeline runs each part.

The compiled nodes' report (:meth:`~willow.compiler.compile_pass.CompilationResult.report`) already
lists each node with its operator (``... on cuda``) and the generated CUDA kernels' source; this
section sums it up per device, and adds what the report cannot know: where the cascade's or top-K's
approximate model runs and where their rows are selected. Nothing for ``device="cpu"`` pipelines.
"""

from __future__ import annotations

from typing import Any

from willow.gpu import runtime

__all__ = ["device_lines"]


def _where(operator: Any) -> str:
    return getattr(operator, "device", "cpu")


def _resident(pipeline: Any) -> list[str]:
    """The serving function's operators whose output stays on the device: the analysis of
    :mod:`willow.gpu.residency` run again on the generated source."""
    import ast

    from willow.gpu.residency import resident_variables

    source = getattr(pipeline, "generated_source_", None)
    compilation = pipeline.__dict__.get("_compilation")
    if not source or compilation is None:
        return []
    found = resident_variables(ast.parse(source), dict(compilation.operators.__dict__))
    return sorted(f"{name} (from _willow.ops.{', '.join(sorted(ops))})" for name, ops in found.items())


def device_lines(pipeline: Any) -> list[str]:
    """The "Devices" section of ``pipeline.explain()`` (empty unless ``pipeline.device == "cuda"``)."""
    if getattr(pipeline, "device", "cpu") != "cuda":
        return []
    where = (
        "Numba's CUDA simulator (kernels run on the CPU, slowly)" if runtime.simulator_active() else "the GPU"
    )
    lines = ["", f'Devices (device="cuda", running on {where}; GPU speed has not been measured):']
    compilation = pipeline.__dict__.get("_compilation")
    nodes = list(compilation.nodes) if compilation is not None else []
    for device in ("cuda", "cpu"):
        names = [
            f"_willow.ops.{n.attribute} ({n.operator.name})" for n in nodes if _where(n.operator) == device
        ]
        if device == "cpu":
            names.append("every statement not compiled")
        if names:
            lines.append(f"  {device}: {', '.join(names)}")
    approximate = pipeline.__dict__.get("_approximate")
    if approximate is not None:
        kernel = getattr(approximate, "_kernel", None) or getattr(approximate, "_scores", None)
        if getattr(approximate, "fused", False):
            runs = "cpu (its fused text kernel)"
        elif kernel is None:
            runs = "cpu (the estimator itself)"
        else:
            runs = f"{_where(kernel)} ({kernel.name})"
        lines.append(f"  approximate model: {runs}")
    resident = _resident(pipeline)
    if resident:
        lines.append(f"  kept on the device between device nodes: {', '.join(resident)}")
    if pipeline.query == "topk":
        lines.append(
            "  row selection: top-K's candidates on the device (willow/gpu/selection.py); the "
            "approximate scores stay there when its kernel runs on cuda, and only the candidates' "
            "positions come back; the final K is chosen where the candidates' scores are"
        )
    elif getattr(getattr(pipeline, "plan_", None), "cascade", False):
        lines.append(
            "  row selection: the cascade's uncertain rows on the device (willow/gpu/selection.py); "
            "only their positions come back (the confidences are computed on the device when the "
            "approximate model's kernel runs there and its output head allows it; otherwise they "
            "are computed and compared on the host)"
        )
    return lines
