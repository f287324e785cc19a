"""Backend "cpp" for the fused WGAN-GP critic step: the C++ CPU kernels in csrc/critic_gp_cpu.cpp.

One call computes the critic values on the real, fake and interpolated batches (stacked into
one GEMM per layer), the input gradient, the penalty, its closed-form double backward and the
gradient of the loss w.r.t. every weight and bias (docs/design.md §3). float32 and float64.
"""
from __future__ import annotations

import torch

from .. import _ext
from ._registry import register
from .critic_gp import CriticStepOutput
from .mlp import hidden_slope

_GP_FN = "critic_gp_cpu"
_SCORE_FN = "critic_score_grad_cpu"


def _has(fn: str) -> bool:
    ext = _ext.cpu_extension()
    return ext is not None and hasattr(ext, fn)


def _why(fn: str):
    def why() -> str:
        ext = _ext.cpu_extension()
        if ext is None:
            return f"lsdm_fast._C did not load ({_ext.load_error('_C')})"
        if not hasattr(ext, fn):
            return (f"lsdm_fast._C has no {fn!r} (built from older sources?); rebuild with "
                    "`pip install --no-build-isolation -e .`")
        return ""
    return why


@register("critic_gradient_penalty", "cpp",
          available=lambda device: device.type == "cpu" and _has(_GP_FN), why_unavailable=_why(_GP_FN))
def critic_gradient_penalty_cpp(critic, x, z_real, z_fake, t, *, gp_weight, penalty_over):
    ext = _ext.cpu_extension()
    loss, wass, pen, wg, bg = ext.critic_gp_cpu(
        [w.detach() for w in critic.weights], [b.detach() for b in critic.biases],
        x.detach(), z_real.detach(), z_fake.detach(), t.detach(),
        float(gp_weight), penalty_over, hidden_slope(critic))
    return CriticStepOutput(loss, wass, pen, list(wg), list(bg))


@register("critic_score_grad", "cpp",
          available=lambda device: device.type == "cpu" and _has(_SCORE_FN), why_unavailable=_why(_SCORE_FN))
def critic_score_grad_cpp(critic, x, z):
    ext = _ext.cpu_extension()
    score, gz = ext.critic_score_grad_cpu([w.detach() for w in critic.weights],
                                          [b.detach() for b in critic.biases],
                                          x.detach(), z.detach(), hidden_slope(critic))
    return score, gz


__all__ = ["critic_gradient_penalty_cpp", "critic_score_grad_cpp", "torch"]
