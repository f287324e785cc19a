"""The stage-2 hot path: a WGAN-GP critic step and the generator-side critic gradient.

Public entry points (backend="auto" | "torch" | "cpp" | "triton" | "cuda"):

- critic_gradient_penalty(critic, x, z_real, z_fake, t, ...) -> CriticStepOutput
      loss = mean f(x, z_fake) - mean f(x, z_real) + gp_weight * mean_i (||grad_u f(u~_i)|| - 1)^2
      with u~ = (x, t z_real + (1 - t) z_fake) and the gradient of the loss w.r.t. every critic
      parameter. The norm is over the whole critic input (x, z) by default
      (penalty_over="joint"), or over the z block only (penalty_over="latent").
- critic_score_grad(critic, x, z, ...) -> (mean f(x, z), d mean f / dz): what the generator
      step needs.

`critic` is an MLPParams (see lsdm_fast.ops.mlp): hidden layers LeakyReLU(negative_slope)
(ReLU = slope 0), last layer affine with one output. The reference below is plain autograd
with create_graph=True; kernels are checked against it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ._registry import register, resolve
from .mlp import MLPParams, check_mlp, mlp_forward_reference

PENALTY_OVER = ("joint", "latent")


@dataclass
class CriticStepOutput:
    loss: torch.Tensor  # scalar the critic minimises: -wasserstein + gp_weight * penalty
    wasserstein: torch.Tensor  # mean f(real) - mean f(fake): the W1 estimate
    penalty: torch.Tensor  # mean (||g|| - 1)^2, before gp_weight
    weight_grads: list[torch.Tensor]
    bias_grads: list[torch.Tensor]
    backend: str = "torch"


def _check_critic_inputs(critic: MLPParams, x: torch.Tensor, zs: list[torch.Tensor], t=None) -> None:
    check_mlp(critic, "critic")
    if critic.activation not in ("leaky_relu", "relu"):
        raise ValueError(f"critic: the fused penalty needs a piecewise-linear activation, got {critic.activation!r}")
    if critic.output_activation is not None:
        raise ValueError("critic: the last layer must be affine (output_activation=None)")
    if critic.out_features != 1:
        raise ValueError(f"critic: last layer must have 1 output, has {critic.out_features}")
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D (batch, cond_dim), got shape {tuple(x.shape)}")
    B = x.shape[0]
    for name, z in zip(("z_real", "z_fake"), zs):
        if z.dim() != 2 or z.shape[0] != B:
            raise ValueError(f"{name} must be (batch={B}, latent_dim), got {tuple(z.shape)}")
        if z.shape[1] != zs[0].shape[1]:
            raise ValueError(f"z_real and z_fake differ in width: {zs[0].shape[1]} vs {z.shape[1]}")
        if z.dtype != x.dtype or z.device != x.device:
            raise ValueError(f"{name} is {z.dtype} on {z.device} but x is {x.dtype} on {x.device}")
    if x.shape[1] + zs[0].shape[1] != critic.in_features:
        raise ValueError(f"critic takes {critic.in_features} inputs but x ({x.shape[1]}) + z "
                         f"({zs[0].shape[1]}) give {x.shape[1] + zs[0].shape[1]}")
    if t is not None and (t.dim() not in (1, 2) or t.shape[0] != B or t.numel() != B):
        raise ValueError(f"t must have one value per sample, shape ({B},) or ({B}, 1), got {tuple(t.shape)}")
    if B == 0:
        raise ValueError("empty batch")


def critic_gradient_penalty(critic: MLPParams, x: torch.Tensor, z_real: torch.Tensor, z_fake: torch.Tensor,
                            t: torch.Tensor, *, gp_weight: float = 10.0, penalty_over: str = "joint",
                            backend: str = "auto") -> CriticStepOutput:
    """One WGAN-GP critic step's loss and parameter gradients (see module docstring)."""
    if penalty_over not in PENALTY_OVER:
        raise ValueError(f"penalty_over must be one of {PENALTY_OVER}, got {penalty_over!r}")
    _check_critic_inputs(critic, x, [z_real, z_fake], t)
    name, fn = resolve("critic_gradient_penalty", backend, x.device)
    out = fn(critic, x, z_real, z_fake, t.reshape(-1), gp_weight=float(gp_weight), penalty_over=penalty_over)
    out.backend = name
    return out


def critic_score_grad(critic: MLPParams, x: torch.Tensor, z: torch.Tensor, *,
                      backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(mean_i f(x_i, z_i), d mean f / dz) for the generator step."""
    _check_critic_inputs(critic, x, [z])
    _, fn = resolve("critic_score_grad", backend, x.device)
    return fn(critic, x, z)


# ---------------------------------------------------------------- reference (pure PyTorch)

def _leaf_params(critic: MLPParams) -> MLPParams:
    return critic._replace(weights=[w.detach().requires_grad_(True) for w in critic.weights],
                           biases=[b.detach().requires_grad_(True) for b in critic.biases])


@register("critic_gradient_penalty", "torch")
def critic_gradient_penalty_torch(critic, x, z_real, z_fake, t, *, gp_weight, penalty_over):
    p = _leaf_params(critic)
    x, z_real, z_fake = x.detach(), z_real.detach(), z_fake.detach()
    with torch.enable_grad():
        f_real = mlp_forward_reference(p, torch.cat([x, z_real], 1))
        f_fake = mlp_forward_reference(p, torch.cat([x, z_fake], 1))
        tt = t.to(z_real.dtype).reshape(-1, 1)
        u_hat = torch.cat([x, tt * z_real + (1 - tt) * z_fake], 1).requires_grad_(True)
        f_hat = mlp_forward_reference(p, u_hat)
        (g,) = torch.autograd.grad(f_hat.sum(), u_hat, create_graph=True)
        if penalty_over == "latent":
            g = g[:, x.shape[1]:]
        penalty = ((g.norm(2, dim=1) - 1) ** 2).mean()
        wasserstein = f_real.mean() - f_fake.mean()
        loss = -wasserstein + gp_weight * penalty
        grads = torch.autograd.grad(loss, list(p.weights) + list(p.biases))
    n = len(p.weights)
    return CriticStepOutput(loss.detach(), wasserstein.detach(), penalty.detach(),
                            [g.detach() for g in grads[:n]], [g.detach() for g in grads[n:]])


@register("critic_score_grad", "torch")
def critic_score_grad_torch(critic, x, z):
    p = critic._replace(weights=[w.detach() for w in critic.weights], biases=[b.detach() for b in critic.biases])
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        score = mlp_forward_reference(p, torch.cat([x.detach(), z], 1)).mean()
        (gz,) = torch.autograd.grad(score, z)
    return score.detach(), gz
