"""A leaner Numba compiler pipeline for generated tree kernels.

Generated tree kernels use a tiny subset of Python: a row loop, float comparisons, ``if``
statements and ``+=`` on locals. Numba's default nopython pipeline spends most of a large
kernel's compile time in passes that cannot change such code (closure inlining, generic and
nopython rewrites, dead-branch pruning, literal unrolling, IR legalization). This pipeline is the
default one without them; the kernels select it with ``numba.njit(pipeline_class=TreeKernelPipeline)``.
"""

from __future__ import annotations

from numba.core.compiler import CompilerBase, DefaultPassBuilder

__all__ = ["TreeKernelPipeline", "SKIPPED_PASSES"]

SKIPPED_PASSES = frozenset(
    {
        "WithLifting",
        "InlineClosureLikes",
        "ReconstructSSA",
        "GenericRewrites",
        "NopythonRewrites",
        "DeadBranchPrune",
        "RewriteSemanticConstants",
        "LiteralUnroll",
        "FindLiterallyCalls",
        "MakeFunctionToJitFunction",
        "InlineInlinables",
        "InlineOverloads",
        "IRLegalization",
        "LiteralPropagationSubPipelinePass",
        "RewriteDynamicRaises",
        "PreLowerStripPhis",
    }
)


class TreeKernelPipeline(CompilerBase):
    """Numba's nopython pipeline minus the passes listed in :data:`SKIPPED_PASSES`."""

    def define_pipelines(self):
        manager = DefaultPassBuilder.define_nopython_pipeline(self.state)
        manager.passes = [(p, d) for p, d in manager.passes if p.__name__ not in SKIPPED_PASSES]
        manager._finalized = False
        manager.finalize()
        return [manager]
