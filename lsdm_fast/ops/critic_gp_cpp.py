"""Backend "cpp" for the fused WGAN-GP critic step: the C++ CPU kernels in csrc/critic_gp_cpu.cpp.

One call computes the critic values on the real, fake and interpolated batches (stacked into
one GEMM per layer), the input gradient, the penalty, its closed-form double backward and the
gradient of the loss w.r.t. every weight and bias (docs/design.md §3). float32 and float64.
"""
from __future__ import annotations

import torch

from .. import _ext
from ._backend_util import extension_available, extension_why_unavailable
from ._registry import register
from .critic_gp import CriticStepOutput
from .mlp import hidden_slope

_GP_FN = "critic_gp_cpu"
_SCORE_FN = "critic_score_grad_cpu"


@register("critic_gradient_penalty", "cpp", available=extension_available("_C", "cpu", _GP_FN),
          why_unavailable=extension_why_unavailable("_C", "cpu", _GP_FN))
def critic_gradient_penalty_cpp(critic, x, z_real, z_fake, t, *, gp_weight, penalty_over):
    ext = _ext.cpu_extension()
    loss, wass, pen, wg, bg = ext.critic_gp_cpu(
        [w.detach() for w in critic.weights], [b.detach() for b in critic.biases],
        x.detach(), z_real.detach(), z_fake.detach(), t.detach(),
        float(gp_weight), penalty_over, hidden_slope(critic))
    return CriticStepOutput(loss, wass, pen, list(wg), list(bg))


@register("critic_score_grad", "cpp", available=extension_available("_C", "cpu", _SCORE_FN),
          why_unavailable=extension_why_unavailable("_C", "cpu", _SCORE_FN))
def critic_score_grad_cpp(critic, x, z):
    ext = _ext.cpu_extension()
    score, gz = ext.critic_score_grad_cpu([w.detach() for w in critic.weights],
                                          [b.detach() for b in critic.biases],
                                          x.detach(), z.detach(), hidden_slope(critic))
    return score, gz


__all__ = ["critic_gradient_penalty_cpp", "critic_score_grad_cpp", "torch"]
