"""CUDA backend for `encode` and `generate`: kernels/mlp_fused.cu through lsdm_fast._C_cuda
(csrc/cuda/encode_generate_cuda.cpp). One kernel launch per call, on the tensor cores.

What runs where:
- bf16 / fp16 weights: the fused kernel on mma.sync.m16n8k16 (ldmatrix fragment loads), float32
  accumulation, activations rounded to the weight dtype between layers (as eager bf16 does).
- float32 weights with precision "tf32" (argument, or LSDM_MATMUL_PRECISION=tf32): the fused
  kernel on TF32 tensor cores (wmma m16n16k8; about 1e-3 relative error).
- float32 weights with precision "ieee" (the default: parity 1e-4 with float64) and float64
  weights: eager PyTorch (cuBLAS), the same code as the "torch" backend. A fused kernel on the
  FMA units would not beat cuBLAS's float32 GEMMs (estimate from the instruction mix; no GPU
  timing yet), so this backend does not pretend to.
- widths too large for the kernel's shared memory (lsdm_mlp_tile_rows == 0): eager PyTorch,
  with one warning.

Weights are packed once per model into the kernel's layout (zero-padded to multiples of 32,
operand dtype, float32 biases) and cached in a DerivedCache: keyed on the weight tensors'
identity and version, held weakly, so an optimizer step, `load_state_dict` or a replaced
tensor rebuilds the packed copy. Noise is Philox4x32-10 + Box-Muller in the kernel with the
counter/key layout of lsdm_fast.ops.philox, so rows match the reference and batch splits.
No host synchronisation: labels are validated by the entry point (a label outside
[0, num_classes) would give a zero one-hot row, never an out-of-bounds read).
"""
from __future__ import annotations


import torch

from .._ext import cuda_extension, warn_once
from ._backend_util import env_precision, extension_available, extension_has, extension_why_unavailable
from ._registry import register
from ._weight_cache import DerivedCache
from .encode_generate import encode_torch, fp32_ieee_is_slower, generate_torch
from .mlp import ACT_CODE, MLPParams

_FUNCS = ("mlp_forward", "generate", "philox_normal", "mlp_tile_rows")
FP32_PRECISIONS = ("ieee", "tf32")
# the kernel's operand types (LsdmMath in kernels/mlp_fused.cuh)
MATH_CODE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}

_PACKED = DerivedCache(maxsize=16)
_TILE_ROWS: dict = {}


def _ext():
    return cuda_extension() if extension_has("_C_cuda", *_FUNCS) else None


_available = extension_available("_C_cuda", "cuda", *_FUNCS)
_why_unavailable = extension_why_unavailable("_C_cuda", "cuda", *_FUNCS)


def pad32(n: int) -> int:
    return (n + 31) // 32 * 32


def _layers(*mlps: MLPParams):
    """Weights, biases, activation codes and slopes of the layers of `mlps`, in order."""
    ws, bs, acts, slopes = [], [], [], []
    for p in mlps:
        n = len(p.weights)
        for l, (w, b) in enumerate(zip(p.weights, p.biases)):
            ws.append(w)
            bs.append(b)
            acts.append(ACT_CODE[p.activation] if l < n - 1 else ACT_CODE[p.output_activation])
            slopes.append(float(p.negative_slope))
    return ws, bs, acts, slopes


def pack_layers(weights, biases, dtype: torch.dtype) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The kernel's layout: weights (pad32(out), pad32(in)) in `dtype`, biases float32 (pad32(out)),
    zero padded, contiguous, on the weights' device."""
    ws, bs = [], []
    for w, b in zip(weights, biases):
        o, i = w.shape
        wp = torch.zeros(pad32(o), pad32(i), dtype=dtype, device=w.device)
        wp[:o, :i] = w.detach()
        bp = torch.zeros(pad32(o), dtype=torch.float32, device=b.device)
        bp[:o] = b.detach()
        ws.append(wp)
        bs.append(bp)
    return ws, bs


def _compute_dtype(*mlps: MLPParams) -> torch.dtype:
    dtypes = {w.dtype for p in mlps for w in p.weights} | {b.dtype for p in mlps for b in p.biases}
    return dtypes.pop() if len(dtypes) == 1 else torch.float32


def _fp32_precision(precision: str | None) -> str:
    p = precision or env_precision("LSDM_CUDA_FP32_PRECISION", "ieee")
    if p not in FP32_PRECISIONS:
        raise ValueError(f"precision must be one of {FP32_PRECISIONS}, got {p!r}")
    return p


def _fused_plan(mlps: tuple[MLPParams, ...], precision: str | None, device: torch.device):
    """(packed weights, packed biases, dims, acts, slopes, math) for the fused kernel, or None
    where eager PyTorch serves the call (float32 "ieee", float64, too wide)."""
    dtype = _compute_dtype(*mlps)
    if dtype not in MATH_CODE or (dtype == torch.float32 and _fp32_precision(precision) == "ieee"):
        return None
    math = MATH_CODE[dtype]
    weights, biases, acts, slopes = _layers(*mlps)
    dims = [int(weights[0].shape[1])] + [int(w.shape[0]) for w in weights]
    key = (tuple(dims), math, device.index)
    if key not in _TILE_ROWS:
        _TILE_ROWS[key] = _ext().mlp_tile_rows(dims, math, device)
    if _TILE_ROWS[key] == 0:
        warn_once(f"mlp_fused:{key}", f"lsdm_fast: widths {dims} do not fit the fused CUDA MLP's shared memory; "
                                      "running eager PyTorch instead")
        return None
    ws, bs = _PACKED.get(list(weights) + list(biases), (dtype, device), lambda: pack_layers(weights, biases, dtype))
    return ws, bs, dims, acts, slopes, math


@register("encode", "cuda", available=_available, why_unavailable=_why_unavailable, auto_skip=fp32_ieee_is_slower)
@torch.no_grad()
def encode_cuda(encoder: MLPParams, y: torch.Tensor, *, batch_size=None, precision: str | None = None):
    """float32 latents. One launch for the whole set: the kernel keeps no per-row scratch, so
    `batch_size` (a memory bound for the other backends) does not change what runs."""
    plan = _fused_plan((encoder,), precision, y.device)
    if plan is None:
        return encode_torch(encoder, y, batch_size=batch_size)
    return _ext().mlp_forward(*plan, y)


@register("generate", "cuda", available=_available, why_unavailable=_why_unavailable, auto_skip=fp32_ieee_is_slower)
@torch.no_grad()
def generate_cuda(generator: MLPParams, decoder: MLPParams, cond: torch.Tensor, *, noise_dim, num_classes, seed,
                  offset, eta, out_dtype, out: torch.Tensor | None = None, precision: str | None = None):
    plan = _fused_plan((generator, decoder), precision, cond.device)
    if plan is None:
        y = generate_torch(generator, decoder, cond, noise_dim=noise_dim, num_classes=num_classes, seed=seed,
                           offset=offset, eta=eta, out_dtype=out_dtype)
        return y if out is None else out.copy_(y)
    labels = not cond.dtype.is_floating_point
    if labels and num_classes is None:
        raise ValueError("integer labels given but num_classes is None")
    cond_dim = int(num_classes) if labels else int(cond.shape[1])
    if out is None:
        out = torch.empty((cond.shape[0], decoder.out_features), dtype=out_dtype, device=cond.device)
    return _ext().generate(*plan, int(noise_dim), cond_dim, cond, eta, int(seed), int(offset), out)
