"""CUDA backend of the fused WGAN-GP critic step: kernels/critic_gp.cu through the extension
`lsdm_fast._C_cuda` (csrc/cuda/critic_gp_cuda.cpp). Two launches per critic step (rows kernel +
weight-gradient kernel, which also reduces the scalars), two for the score gradient.
float32 and float64 natively (float accumulation for float32); other dtypes are upcast to
float32 and the results cast back."""
from __future__ import annotations

import torch

from .._ext import cuda_extension, load_error
from ._registry import register
from .critic_gp import CriticStepOutput
from .mlp import hidden_slope, work_dtype


def _has(name: str) -> bool:
    ext = cuda_extension()
    return ext is not None and hasattr(ext, name)


def _why_unavailable() -> str:
    err = load_error("_C_cuda")
    if err:
        return f"the CUDA extension lsdm_fast._C_cuda is not built or failed to load ({err})"
    return "the CUDA extension lacks critic_gp_step (rebuild with `pip install --no-build-isolation -e .`)"


def _avail(fn_name: str):
    return lambda device: device.type == "cuda" and _has(fn_name)


def _prep(critic, dtype):
    slope = hidden_slope(critic)
    ws = [w.detach().to(dtype) for w in critic.weights]
    bs = [b.detach().to(dtype) for b in critic.biases]
    return ws, bs, slope


@register("critic_gradient_penalty", "cuda", available=_avail("critic_gp_step"), why_unavailable=_why_unavailable)
def critic_gradient_penalty_cuda(critic, x, z_real, z_fake, t, *, gp_weight, penalty_over):
    dtype = work_dtype(x)
    ws, bs, slope = _prep(critic, dtype)
    loss, wass, pen, gw, gb = cuda_extension().critic_gp_step(
        ws, bs, x.detach().to(dtype), z_real.detach().to(dtype), z_fake.detach().to(dtype),
        t.detach().reshape(-1).to(dtype), slope, float(gp_weight), penalty_over == "latent")
    if dtype != x.dtype:
        loss, wass, pen = (v.to(x.dtype) for v in (loss, wass, pen))
        gw = [g.to(x.dtype) for g in gw]
        gb = [g.to(x.dtype) for g in gb]
    return CriticStepOutput(loss, wass, pen, list(gw), list(gb), backend="cuda")


@register("critic_score_grad", "cuda", available=_avail("critic_score_grad"), why_unavailable=_why_unavailable)
def critic_score_grad_cuda(critic, x, z):
    dtype = work_dtype(x)
    ws, bs, slope = _prep(critic, dtype)
    score, dz = cuda_extension().critic_score_grad(ws, bs, x.detach().to(dtype), z.detach().to(dtype), slope)
    return score.to(x.dtype), dz.to(x.dtype)
