"""The fused WGAN-GP critic step as a torch.library custom op, so that a whole critic step
(loss, loss.backward(), optimizer step) can be captured by torch.compile and CUDA graphs,
which the double-backward reference cannot be. Test code (tests/test_parity_critic_gp.py):
training does not use it; stage 2 hands the op's gradients to the optimiser directly
(lsdm_fast.matching_step).

    lsdm_fast::critic_gp_fused(x, z_real, z_fake, t, weights, biases, gp_weight, penalty_over,
                               negative_slope, backend) -> Tensor[]
        = [loss, wasserstein, penalty, *weight_grads, *bias_grads]

runs `critic_gradient_penalty` (any backend, "auto" by default) once: the forward already
produces every parameter gradient, so its autograd formula only scales the saved gradients by
the incoming grad of `loss`. Use it through `critic_loss`:

    loss, wass, pen = critic_loss(critic, x, z_real, z_fake, t)
    loss.backward()   # fills the .grad of critic.weights / critic.biases

Only `loss` is differentiable, and only w.r.t. the critic parameters: `wasserstein` and
`penalty` come back detached, and no gradient flows to x, z_real, z_fake or t (a critic step
treats them as data). Under torch.compile, tracing `loss.backward()` needs
torch._dynamo.config.trace_autograd_ops = True (see tests/test_parity_critic_gp.py).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from lsdm_fast.ops._registry import resolve
from lsdm_fast.ops.critic_gp import PENALTY_OVER, _check_critic_inputs, critic_gradient_penalty
from lsdm_fast.ops.mlp import MLPParams, hidden_slope

OP_NAME = "lsdm_fast::critic_gp_fused"


@torch.library.custom_op(OP_NAME, mutates_args=())
def critic_gp_fused(x: Tensor, z_real: Tensor, z_fake: Tensor, t: Tensor, weights: Sequence[Tensor],
                    biases: Sequence[Tensor], gp_weight: float, penalty_over: str, negative_slope: float,
                    backend: str) -> list[Tensor]:
    critic = MLPParams(list(weights), list(biases), "leaky_relu", negative_slope)  # ReLU = slope 0
    if penalty_over not in PENALTY_OVER:
        raise ValueError(f"penalty_over must be one of {PENALTY_OVER}, got {penalty_over!r}")
    _check_critic_inputs(critic, x, [z_real, z_fake], t)
    name, _ = resolve("critic_gradient_penalty", backend, x.device, {"layers": len(critic.weights)})
    if name == "torch":
        # The autograd reference cannot run here (a custom op's body runs below the autograd
        # dispatch key); the same maths in closed form, plain tensor ops, any device.
        return _fused_closed_form(x, z_real, z_fake, t, list(weights), list(biases), gp_weight,
                                  penalty_over == "latent", negative_slope)
    out = critic_gradient_penalty(critic, x, z_real, z_fake, t, gp_weight=gp_weight, penalty_over=penalty_over,
                                  backend=backend)
    # outputs of a custom op must be fresh tensors (no aliasing of inputs or of each other)
    return [out.loss.clone(), out.wasserstein.clone(), out.penalty.clone(),
            *[g.contiguous().clone() for g in out.weight_grads], *[g.contiguous().clone() for g in out.bias_grads]]


def _fused_closed_form(x, zr, zf, t, ws, bs, gp_weight, latent, slope):
    """docs/design.md §3 in plain PyTorch, no autograd; the real, fake and interpolated
    batches stacked. Same output list as the op."""
    B, dx = x.shape
    L = len(ws)
    tt = t.to(x.dtype).reshape(-1, 1)
    u = torch.cat([torch.cat([x, zr], 1), torch.cat([x, zf], 1), torch.cat([x, tt * zr + (1 - tt) * zf], 1)], 0)
    U, S = [u], [None]  # activations, s'(a_l)
    for l in range(L - 1):
        a = torch.addmm(bs[l], U[-1], ws[l].T)
        S.append(torch.where(a > 0, torch.ones_like(a), torch.full_like(a, slope)))
        U.append(a * S[-1])
    wL = ws[-1][0]
    f = U[-1][: 2 * B] @ wL + bs[-1][0]
    wass = f[:B].mean() - f[B:].mean()
    seed = torch.cat([x.new_full((B,), -1.0 / B), x.new_full((B,), 1.0 / B), x.new_ones(B)])
    delta = [None] * L
    if L > 1:
        delta[L - 1] = S[L - 1] * wL * seed[:, None]
        for l in range(L - 1, 1, -1):
            delta[l - 1] = (delta[l] @ ws[l - 1]) * S[l - 1]
        g0 = delta[1][2 * B:] @ ws[0]
    else:
        g0 = wL.expand(B, -1)
    gs = g0[:, dx:] if latent else g0
    nrm = gs.norm(dim=1)
    pen = ((nrm - 1) ** 2).mean()
    k = torch.where(nrm > 0, gp_weight * 2 * (nrm - 1) / (B * nrm.clamp_min(torch.finfo(nrm.dtype).tiny)),
                    torch.zeros_like(nrm))
    r = k[:, None] * gs
    if latent:
        r = torch.cat([r.new_zeros(B, dx), r], 1)
    R = [r]
    for l in range(1, L):
        R.append((R[-1] @ ws[l - 1].T) * S[l][2 * B:])
    M = [torch.cat([U[l][: 2 * B], R[l]], 0) for l in range(L)]
    dW = [delta[l].T @ M[l - 1] for l in range(1, L)] + [(seed @ M[L - 1])[None]]
    db = [delta[l][: 2 * B].sum(0) for l in range(1, L)] + [bs[-1].new_zeros(1)]
    return [gp_weight * pen - wass, wass, pen, *dW, *db]


@critic_gp_fused.register_fake
def _(x, z_real, z_fake, t, weights, biases, gp_weight, penalty_over, negative_slope, backend):
    scalar = lambda: x.new_empty(())  # noqa: E731
    return [scalar(), scalar(), scalar(), *[torch.empty_like(w, memory_format=torch.contiguous_format) for w in weights],
            *[torch.empty_like(b, memory_format=torch.contiguous_format) for b in biases]]


def _setup_context(ctx, inputs, output):
    weights, biases = inputs[4], inputs[5]
    ctx.n_w = len(weights)
    ctx.n_b = len(biases)
    ctx.save_for_backward(*output[3:])


def _backward(ctx, grads):
    grad_loss = grads[0]
    saved = ctx.saved_tensors
    if grad_loss is None:
        wg = [torch.zeros_like(g) for g in saved[:ctx.n_w]]
        bg = [torch.zeros_like(g) for g in saved[ctx.n_w:]]
    else:
        wg = [grad_loss * g for g in saved[:ctx.n_w]]
        bg = [grad_loss * g for g in saved[ctx.n_w:]]
    return None, None, None, None, wg, bg, None, None, None, None


critic_gp_fused.register_autograd(_backward, setup_context=_setup_context)


def critic_loss(critic: MLPParams, x: Tensor, z_real: Tensor, z_fake: Tensor, t: Tensor, *,
                gp_weight: float = 10.0, penalty_over: str = "joint",
                backend: str = "auto") -> tuple[Tensor, Tensor, Tensor]:
    """(loss, wasserstein, penalty) of one WGAN-GP critic step through the custom op.

    loss = -wasserstein + gp_weight * penalty; loss.backward() gives every critic parameter its
    gradient (closed form, no double backward). wasserstein and penalty are detached.
    """
    if penalty_over not in PENALTY_OVER:
        raise ValueError(f"penalty_over must be one of {PENALTY_OVER}, got {penalty_over!r}")
    if critic.activation not in ("leaky_relu", "relu") or critic.output_activation is not None:
        raise ValueError("critic_loss: needs a LeakyReLU/ReLU critic with an affine last layer, got "
                         f"activation={critic.activation!r}, output_activation={critic.output_activation!r}")
    slope = hidden_slope(critic)
    outs = critic_gp_fused(x, z_real, z_fake, t.reshape(-1), list(critic.weights), list(critic.biases),
                           float(gp_weight), penalty_over, slope, backend)
    return outs[0], outs[1].detach(), outs[2].detach()


__all__ = ["OP_NAME", "critic_gp_fused", "critic_loss"]
