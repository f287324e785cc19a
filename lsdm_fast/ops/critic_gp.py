"""The stage-2 hot path: a WGAN-GP critic step and the generator-side critic gradient.

Public entry points (backend="auto" | "torch" | "cpp" | "triton" | "cuda"):

- critic_gradient_penalty(critic, x, z_real, z_fake, t, ...) -> CriticStepOutput
      loss = mean f(x, z_fake) - mean f(x, z_real) + gp_weight * mean_i (||grad_u f(u~_i)|| - 1)^2
      with u~ = (x, t z_real + (1 - t) z_fake) and the gradient of the loss w.r.t. every critic
      parameter. The norm is over the whole critic input (x, z) by default
      (penalty_over="joint"), or over the z block only (penalty_over="latent").
- critic_score_grad(critic, x, z, ...) -> (mean f(x, z), d mean f / dz): what the generator
      step needs.

`critic` is an MLPParams (see lsdm_fast.ops.mlp): hidden layers LeakyReLU(negative_slope >= 0)
(ReLU = slope 0), last layer affine with one output. The reference below is plain autograd
with create_graph=True; kernels are checked against it.

Both entry points check their arguments once, before choosing a backend (_check_critic_inputs),
so a bad call gets the same error from every backend, and hand the backends one dtype: float64
(inputs and critic both float64), or float32 (everything else: float32, float16, bfloat16 are
computed in float32).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from ._registry import precision_kwargs, register, resolve
from .mlp import MLPParams, check_mlp, mlp_forward_reference

PENALTY_OVER = ("joint", "latent")


def layer_limits(lo: int, hi: int):
    """A backend's `limits` for critics of lo..hi linear layers (see _registry)."""
    def limits(problem: dict) -> str | None:
        n = problem.get("layers")
        if n is not None and not lo <= n <= hi:
            return f"handles critics of {lo} to {hi} linear layers, not {n}"
        return None
    return limits


@dataclass
class CriticStepOutput:
    loss: torch.Tensor  # scalar the critic minimises: -wasserstein + gp_weight * penalty
    wasserstein: torch.Tensor  # mean f(real) - mean f(fake): the W1 estimate
    penalty: torch.Tensor  # mean (||g|| - 1)^2, before gp_weight
    weight_grads: list[torch.Tensor]
    bias_grads: list[torch.Tensor]
    backend: str = "torch"


def _check_critic_inputs(critic: MLPParams, x: torch.Tensor, zs: list[torch.Tensor], t=None) -> torch.dtype:
    """Every check of a critic op's arguments, made once at the entry point so that every
    backend answers a bad call the same way. Returns the dtype the backends compute in:
    float64, or float32 for float32 and half-precision inputs."""
    check_mlp(critic, "critic")
    if critic.activation not in ("leaky_relu", "relu"):
        raise ValueError(f"critic: the fused penalty needs a piecewise-linear activation, got {critic.activation!r}")
    if critic.output_activation is not None:
        raise ValueError("critic: the last layer must be affine (output_activation=None)")
    if critic.out_features != 1:
        raise ValueError(f"critic: last layer must have 1 output, has {critic.out_features}")
    slope = critic.negative_slope
    if critic.activation == "leaky_relu" and not (isinstance(slope, numbers.Real) and math.isfinite(slope)
                                                  and slope >= 0):
        raise ValueError(f"critic: negative_slope must be a finite number >= 0, got {slope!r}")
    names = ("z_real", "z_fake") if len(zs) == 2 else ("z",)
    tensors = [("x", x), *zip(names, zs)] + ([("t", t)] if t is not None else [])
    for name, v in tensors:
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(v).__name__}")
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D (batch, cond_dim), got shape {tuple(x.shape)}")
    B = x.shape[0]
    for name, z in zip(names, zs):
        if z.dim() != 2 or z.shape[0] != B:
            raise ValueError(f"{name} must be (batch={B}, latent_dim), got {tuple(z.shape)}")
        if z.shape[1] != zs[0].shape[1]:
            raise ValueError(f"z_real and z_fake differ in width: {zs[0].shape[1]} vs {z.shape[1]}")
    if x.shape[1] + zs[0].shape[1] != critic.in_features:
        raise ValueError(f"critic takes {critic.in_features} inputs but x ({x.shape[1]}) + z "
                         f"({zs[0].shape[1]}) give {x.shape[1] + zs[0].shape[1]}")
    if t is not None and (t.dim() not in (1, 2) or t.shape[0] != B or t.numel() != B):
        raise ValueError(f"t must have one value per sample, shape ({B},) or ({B}, 1), got {tuple(t.shape)}")
    if B == 0:
        raise ValueError("empty batch: x has 0 rows")
    params = [*critic.weights, *critic.biases]
    for name, v in tensors:
        if not v.dtype.is_floating_point:
            raise ValueError(f"{name} must be a floating-point tensor, got {v.dtype}")
    for name, z in zip(names, zs):
        if z.dtype != x.dtype:
            raise ValueError(f"{name} is {z.dtype} but x is {x.dtype}")
    p_dtypes = sorted({str(p.dtype) for p in params})
    if len(p_dtypes) > 1 or not params[0].dtype.is_floating_point:
        raise ValueError(f"critic: weights and biases must share one floating-point dtype, got {', '.join(p_dtypes)}")
    if (params[0].dtype == torch.float64) != (x.dtype == torch.float64):
        raise ValueError(f"critic parameters are {params[0].dtype} but the inputs are {x.dtype}: float64 runs need "
                         "both in float64 (cast the critic or the inputs)")
    devices = [(name, v.device) for name, v in tensors] + [("the critic", p.device) for p in params]
    if len({d for _, d in devices}) > 1:
        seen = {d: n for n, d in reversed(devices)}  # the first tensor named per device
        raise ValueError("all tensors must be on one device, got " + ", ".join(f"{n} on {d}" for d, n in seen.items()))
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_gp_weight(gp_weight) -> float:
    if isinstance(gp_weight, bool) or not isinstance(gp_weight, numbers.Real):
        raise TypeError(f"gp_weight must be a Python number, got {type(gp_weight).__name__}")
    if not (math.isfinite(gp_weight) and gp_weight >= 0):
        raise ValueError(f"gp_weight must be a finite number >= 0, got {gp_weight!r}")
    return float(gp_weight)


def _cast_critic(critic: MLPParams, dtype: torch.dtype) -> MLPParams:
    if critic.weights[0].dtype == dtype:
        return critic
    return critic._replace(weights=[w.to(dtype) for w in critic.weights], biases=[b.to(dtype) for b in critic.biases])


def critic_gradient_penalty(critic: MLPParams, x: torch.Tensor, z_real: torch.Tensor, z_fake: torch.Tensor,
                            t: torch.Tensor, *, gp_weight: float = 10.0, penalty_over: str = "joint",
                            backend: str = "auto", precision: str | None = None) -> CriticStepOutput:
    """One WGAN-GP critic step's loss and parameter gradients (see module docstring).

    Half-precision inputs or critics are computed in float32 by every backend; the gradients come
    back in the critic's dtype, the loss terms in the inputs' dtype. `precision`: the float32 matmul
    precision (docs/design.md §4, "Precision"): of the GPU backends (None: $LSDM_MATMUL_PRECISION, else
    "tf32"), or "ieee"/"bf16" for "cpp" (None: $LSDM_CPU_MATMUL_PRECISION, else "ieee"); "bf16" is refused by
    the backends that have no bf16 path."""
    if penalty_over not in PENALTY_OVER:
        raise ValueError(f"penalty_over must be one of {PENALTY_OVER}, got {penalty_over!r}")
    dtype = _check_critic_inputs(critic, x, [z_real, z_fake], t)
    gp_weight = _check_gp_weight(gp_weight)
    name, fn = resolve("critic_gradient_penalty", backend, x.device, {"layers": len(critic.weights)})
    p_dtype, in_dtype = critic.weights[0].dtype, x.dtype
    out = fn(_cast_critic(critic, dtype), x.to(dtype), z_real.to(dtype), z_fake.to(dtype), t.reshape(-1).to(dtype),
             gp_weight=gp_weight, penalty_over=penalty_over,
             **precision_kwargs("critic_gradient_penalty", name, precision))
    if p_dtype != dtype or in_dtype != dtype:
        out = CriticStepOutput(out.loss.to(in_dtype), out.wasserstein.to(in_dtype), out.penalty.to(in_dtype),
                               [g.to(p_dtype) for g in out.weight_grads], [g.to(p_dtype) for g in out.bias_grads])
    out.backend = name
    return out


def critic_score_grad(critic: MLPParams, x: torch.Tensor, z: torch.Tensor, *, backend: str = "auto",
                      precision: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean_i f(x_i, z_i), d mean f / dz) for the generator step, in the inputs' dtype (`precision`: as
    critic_gradient_penalty's)."""
    dtype = _check_critic_inputs(critic, x, [z])
    name, fn = resolve("critic_score_grad", backend, x.device, {"layers": len(critic.weights)})
    score, gz = fn(_cast_critic(critic, dtype), x.to(dtype), z.to(dtype),
                   **precision_kwargs("critic_score_grad", name, precision))
    return score.to(x.dtype), gz.to(x.dtype)


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
