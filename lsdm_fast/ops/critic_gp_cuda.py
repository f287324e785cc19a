"""CUDA backend of the fused WGAN-GP critic step: kernels/critic_gp.cu through the extension
`lsdm_fast._C_cuda` (csrc/cuda/critic_gp_cuda.cpp).

A critic step is 3L + 3 launches (L linear layers; one more for odd widths): tile GEMMs on
the tensor cores for the forward, the backward sweep, the penalty's r sweep and the weight
gradients, plus small row kernels; reductions go over fixed row chunks in a fixed order (deterministic, no atomics). No
host synchronisation and no allocation outside torch's caching allocator, so the step can be
captured in a CUDA graph.

Precision (float32 inputs; the entry point's `precision=`, or LSDM_MATMUL_PRECISION; default "tf32"):
  "tf32"   TF32 tensor cores with float32 accumulation for the backward, r-sweep and weight-
           gradient GEMMs; 3xTF32 for the forward (whose activation signs every later sweep
           reuses: a sign flipped by TF32 rounding changes its row's gradients by about
           1/sqrt(width)) and for g_0 = dL/du_0 (the penalty needs |g_0| - 1 to float32
           accuracy). Relative error about 5e-4 against float64 (CPU emulation of the kernels).
  "tf32x3" 3xTF32 everywhere: about float32 accuracy on the tensor cores.
  "ieee"   float32 FMA units throughout (parity path).
float64 runs on the FMA units in float64 (the entry point hands every backend float32 or
float64). The kernels take critics of 2 to MAX_LAYERS linear layers (their per-layer arrays
are fixed): a registry limit, so "auto" passes over this backend for deeper critics.
"""
from __future__ import annotations


from .._ext import cuda_extension
from ._backend_util import env_precision, extension_available, extension_why_unavailable
from ._registry import register
from .critic_gp import CriticStepOutput, layer_limits
from .mlp import hidden_slope, work_dtype

PRECISIONS = ("ieee", "tf32", "tf32x3")  # codes 0, 1, 2 in csrc/cuda/critic_gp_cuda.cpp
MAX_LAYERS = 4  # = critic_max_layers of the extension (kernels/critic_gp.cuh)


_why_unavailable = extension_why_unavailable("_C_cuda", "cuda", "critic_gp_step", "critic_score_grad")


def _avail(fn_name: str):
    return extension_available("_C_cuda", "cuda", fn_name)


def _precision_code(input_precision: str | None) -> int:
    p = input_precision or env_precision("LSDM_CUDA_PRECISION", "tf32")
    if p not in PRECISIONS:
        raise ValueError(f"input_precision must be one of {PRECISIONS}, got {p!r}")
    return PRECISIONS.index(p)


def _params(critic, dtype):
    ws = [w.detach().to(dtype) for w in critic.weights]
    bs = [b.detach().to(dtype) for b in critic.biases]
    return ws, bs


@register("critic_gradient_penalty", "cuda", available=_avail("critic_gp_step"), why_unavailable=_why_unavailable,
          limits=layer_limits(2, MAX_LAYERS))
def critic_gradient_penalty_cuda(critic, x, z_real, z_fake, t, *, gp_weight, penalty_over,
                                 input_precision: str | None = None):
    code = _precision_code(input_precision)
    dtype = work_dtype(x)
    ws, bs = _params(critic, dtype)
    loss, wass, pen, gw, gb = cuda_extension().critic_gp_step(
        ws, bs, x.detach().to(dtype), z_real.detach().to(dtype), z_fake.detach().to(dtype),
        t.detach().reshape(-1).to(dtype), hidden_slope(critic), float(gp_weight), penalty_over == "latent", code)
    if dtype != x.dtype:
        loss, wass, pen = (v.to(x.dtype) for v in (loss, wass, pen))
        gw = [g.to(x.dtype) for g in gw]
        gb = [g.to(x.dtype) for g in gb]
    return CriticStepOutput(loss, wass, pen, list(gw), list(gb), backend="cuda")


@register("critic_score_grad", "cuda", available=_avail("critic_score_grad"), why_unavailable=_why_unavailable,
          limits=layer_limits(2, MAX_LAYERS))
def critic_score_grad_cuda(critic, x, z, *, input_precision: str | None = None):
    code = _precision_code(input_precision)
    dtype = work_dtype(x)
    ws, bs = _params(critic, dtype)
    score, dz = cuda_extension().critic_score_grad(ws, bs, x.detach().to(dtype), z.detach().to(dtype),
                                                   hidden_slope(critic), code)
    return score.to(x.dtype), dz.to(x.dtype)
