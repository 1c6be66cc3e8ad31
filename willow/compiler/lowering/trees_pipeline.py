"""A leaner Numba compiler pipeline for generated tree kernels.

Generated tree kernels use a tiny subset of Python: a row loop, float comparisons, ``if``
statements and ``+=`` on locals. Numba's default nopython pipeline spends most of a large
kernel's compile time in passes that cannot change such code (closure inlining, generic and
nopython rewrites, dead-branch pruning, literal unrolling, IR legalization). This pipeline is the
default one without them; the kernels select it with ``numba.njit(pipeline_class=TreeKernelPipeline)``.

Type inference is also memoised: a kernel types the same few operations (``float64 <= float64``,
``abs(float64)``, ``float64 + float64``) thousands of times, and Numba resolves each one through its
whole template list (the NumPy ufunc templates first), about a third of the compile time.
:class:`MemoTypeInference` answers repeated ``(function, argument types)`` questions from a
per-function table; the answers are the ones Numba computed for the first occurrence.
Lowering gets the same treatment for binary operations (:class:`MemoLowering`): Numba first tries
a literal-specialised implementation for every constant operand, which for a float constant (a
split threshold, a leaf value) always fails after formatting a typing error, then resolves the
generic one; the memoised lowering goes straight to the generic implementation for float
constants, whose code is the same; array reads (``x[3]``) resolve their implementation once.
"""

from __future__ import annotations

import operator

from numba.core import ir, lowering, types
from numba.core.compiler import CompilerBase, DefaultPassBuilder
from numba.core.compiler_machinery import register_pass
from numba.core.typed_passes import NativeLowering, NopythonTypeInference

__all__ = ["TreeKernelPipeline", "SKIPPED_PASSES", "MemoTypeInference", "MemoLowering"]

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


@register_pass(mutates_CFG=True, analysis_only=False)
class MemoTypeInference(NopythonTypeInference):
    """Nopython type inference that resolves each plain function type once per argument types."""

    _name = "willow_memo_type_inference"

    def run_pass(self, state):
        context = state.typingctx
        resolve = context.resolve_function_type
        table: dict = {}

        def memoised(func, args, kws):
            if kws or not isinstance(func, types.Function):
                return resolve(func, args, kws)
            key = (func, tuple(args))
            if key not in table:
                table[key] = resolve(func, args, kws)
            return table[key]

        outer = context.__dict__.get("resolve_function_type")  # a nested compile's memo
        context.resolve_function_type = memoised
        try:
            return super().run_pass(state)
        finally:
            if outer is None:
                del context.resolve_function_type
            else:
                context.resolve_function_type = outer


def _plain(static) -> bool:
    """An operand with no literal specialisation: not a constant, or a float constant."""
    return static is ir.UNDEFINED or type(static) is float


class _MemoLower(lowering.Lower):
    def _implementation(self, function, args):
        """``(call type, implementation)`` of ``function`` on ``args``, resolved once per function."""
        table = self.__dict__.setdefault("_willow_implementations", {})
        key = (function, args)
        if key not in table:
            call_type = function.get_call_type(self.context.typing_context, args, {})
            table[key] = (call_type, self.context.get_function(function, call_type))
        return table[key]

    def lower_getitem(self, resty, expr, value, index, signature):
        function = self.context.typing_context.resolve_value_type(operator.getitem)
        call_type, implementation = self._implementation(function, signature.args)
        arguments = [
            self.context.cast(self.builder, self.loadvar(name), self.typeof(name), to)
            for name, to in zip((value.name, index.name), signature.args)
        ]
        result = implementation(self.builder, arguments)
        return self.context.cast(self.builder, result, signature.return_type, resty)

    def lower_binop(self, resty, expr, op):
        if not (_plain(expr.static_lhs) and _plain(expr.static_rhs)):
            return super().lower_binop(resty, expr, op)
        function = self.context.typing_context.resolve_value_type(op)
        signature = self.fndesc.calltypes[expr]
        lhs = self.context.cast(
            self.builder, self.loadvar(expr.lhs.name), self.typeof(expr.lhs.name), signature.args[0]
        )
        rhs = self.context.cast(
            self.builder, self.loadvar(expr.rhs.name), self.typeof(expr.rhs.name), signature.args[1]
        )
        call_type, implementation = self._implementation(function, signature.args)
        result = implementation(self.builder, (lhs, rhs))
        return self.context.cast(self.builder, result, call_type.return_type, resty)


@register_pass(mutates_CFG=True, analysis_only=False)
class MemoLowering(NativeLowering):
    """Native lowering that resolves each binary operation once per argument types."""

    _name = "willow_memo_lowering"

    @property
    def lowering_class(self):
        return _MemoLower


_REPLACED = {NopythonTypeInference: MemoTypeInference, NativeLowering: MemoLowering}


class TreeKernelPipeline(CompilerBase):
    """Numba's nopython pipeline minus :data:`SKIPPED_PASSES`, with memoised typing and lowering."""

    def define_pipelines(self):
        manager = DefaultPassBuilder.define_nopython_pipeline(self.state)
        manager.passes = [
            (_REPLACED.get(p, p), d) for p, d in manager.passes if p.__name__ not in SKIPPED_PASSES
        ]
        manager._finalized = False
        manager.finalize()
        return [manager]
