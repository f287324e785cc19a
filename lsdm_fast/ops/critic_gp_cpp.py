"""Backend "cpp" for the fused WGAN-GP critic step: the C++ CPU kernels in csrc/critic_gp_cpu.cpp.

One call computes the critic values on the real, fake and interpolated batches (stacked into
one GEMM per layer), the input gradient, the penalty, its closed-form double backward and the
gradient of the loss w.r.t. every weight and bias (docs/design.md §3). float32 and float64.

Precision of the float32 GEMMs (the entry point's `precision=`, else $LSDM_CPU_MATMUL_PRECISION,
else "ieee"; docs/design.md §4, "Precision"; float64 is always float64):
  "ieee"  float32 GEMMs (MKL sgemm through at::mm).
  "bf16"  bfloat16 operands, float32 accumulation and output (MKL's cblas_gemm_bf16bf16f32: AMX or
          AVX512-BF16), split per GEMM group by PLANS below. On a CPU without bf16 units
          (cpu_has_fast_bf16() false) or a torch without that MKL function, the bf16 GEMMs are
          float32 GEMMs of the rounded operands (the same numbers) and the bf16x3 ones float32
          GEMMs: correct, a little slower than "ieee".
  "tf32", "tf32x3" (the GPU backends' precisions): computed as "ieee", as before this backend took one.
"""
from __future__ import annotations

from .. import _ext
from ..precision import cpu_has_fast_bf16
from ._backend_util import CPU_PRECISIONS, cpu_env_precision, extension_available, extension_why_unavailable
from ._registry import register
from .critic_gp import CriticStepOutput
from .mlp import hidden_slope

_GP_FN = "critic_gp_cpu"
_SCORE_FN = "critic_score_grad_cpu"
_NATIVE_FN = "bf16_gemm_native"  # built with the matmul plan (older builds lack it)

# The matmul plan of the critic step: a mode per GEMM group, in the extension's order (forward of the
# real/fake rows, forward of the interpolated rows, backward sweep of the real/fake rows, backward sweep
# of the interpolated rows = the chain of g_0 = grad_u f, r sweep, weight gradients); 0 float32, 1 bf16,
# 2 bf16x3 (three bf16 products of hi/lo splits: about 2^-16 relative).
FLOAT32, BF16, BF16X3 = 0, 1, 2
PLANS = {"ieee": (FLOAT32,) * 6,
         # measured (bench/bf16_critic_error.py, docs/design.md §4): the forward decides the activation
         # signs every later sweep reuses and g_0 feeds ||g_0|| - 1, so those run in bf16x3; the rest in bf16
         "bf16": (BF16X3, BF16X3, BF16, FLOAT32, BF16, BF16)}
# critic_score_grad (the generator's d mean f / dz): (forward, backward)
SCORE_PLANS = {"ieee": (FLOAT32, FLOAT32), "bf16": (BF16X3, BF16)}
# Tests set this to check the emulated path on a CPU with bf16 units.
FORCE_EMULATION = False


def cpu_precision(precision: str | None) -> str:
    """The matmul precision this backend runs for the entry point's `precision` (validated there)."""
    if precision is None:
        return cpu_env_precision()
    return precision if precision in CPU_PRECISIONS else "ieee"  # tf32, tf32x3: no TF32 on the CPU


def native_bf16() -> bool:
    """Whether precision="bf16" runs on the CPU's bf16 units here (else it is emulated in float32)."""
    ext = _ext.cpu_extension()
    return (not FORCE_EMULATION and cpu_has_fast_bf16() and ext is not None and hasattr(ext, _NATIVE_FN)
            and ext.bf16_gemm_native())


def _avail(fn: str):
    return extension_available("_C", "cpu", fn, _NATIVE_FN), extension_why_unavailable("_C", "cpu", fn, _NATIVE_FN)


@register("critic_gradient_penalty", "cpp", *_avail(_GP_FN), precisions=("bf16",))
def critic_gradient_penalty_cpp(critic, x, z_real, z_fake, t, *, gp_weight, penalty_over, precision=None):
    p = cpu_precision(precision)
    ext = _ext.cpu_extension()
    loss, wass, pen, wg, bg = ext.critic_gp_cpu(
        [w.detach() for w in critic.weights], [b.detach() for b in critic.biases],
        x.detach(), z_real.detach(), z_fake.detach(), t.detach(),
        float(gp_weight), penalty_over, hidden_slope(critic), list(PLANS[p]), p != "ieee" and native_bf16())
    return CriticStepOutput(loss, wass, pen, list(wg), list(bg))


@register("critic_score_grad", "cpp", *_avail(_SCORE_FN), precisions=("bf16",))
def critic_score_grad_cpp(critic, x, z, *, precision=None):
    p = cpu_precision(precision)
    ext = _ext.cpu_extension()
    score, gz = ext.critic_score_grad_cpu([w.detach() for w in critic.weights],
                                          [b.detach() for b in critic.biases],
                                          x.detach(), z.detach(), hidden_slope(critic), list(SCORE_PLANS[p]),
                                          p != "ieee" and native_bf16())
    return score, gz


__all__ = ["critic_gradient_penalty_cpp", "critic_score_grad_cpp", "cpu_precision", "native_bf16", "PLANS"]
