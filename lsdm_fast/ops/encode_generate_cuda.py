"""CUDA backend for `encode` and `generate`: kernels/mlp_fused.cu through lsdm_fast._C_cuda
(csrc/cuda/encode_generate_cuda.cpp). One kernel launch per call (plus the float32 conversion
of weights that are not already contiguous float32 CUDA tensors).

The kernel keeps each row tile's activations in shared memory across all layers and computes
in float32 (bf16/fp16 inputs are converted on load; weights are used as float32). Noise is
Philox4x32-10 + Box-Muller reimplemented in CUDA with the counter/key layout of
lsdm_fast.ops.philox / Triton's tl.randn, so it matches the torch reference.
float64 weights are served by the torch reference.
"""
from __future__ import annotations

import torch

from .._ext import cuda_extension, load_error
from ._registry import register
from .encode_generate import encode_torch, generate_torch
from .mlp import ACT_CODE, MLPParams

_FUNCS = ("mlp_forward", "generate", "philox_normal")


def _ext():
    ext = cuda_extension()
    if ext is None or not all(hasattr(ext, f) for f in _FUNCS):
        return None
    return ext


def _available(device: torch.device) -> bool:
    return device.type == "cuda" and _ext() is not None


def _why_unavailable() -> str:
    err = load_error("_C_cuda")
    if err:
        return f"the CUDA extension lsdm_fast._C_cuda did not load ({err})"
    if cuda_extension() is not None and _ext() is None:
        return "lsdm_fast._C_cuda was built without the fused encode/generate kernels; rebuild it"
    return "the cuda backend needs CUDA tensors"


def _layers(*mlps: MLPParams):
    ws, bs, acts, slopes = [], [], [], []
    for p in mlps:
        n = len(p.weights)
        for l, (w, b) in enumerate(zip(p.weights, p.biases)):
            ws.append(w.detach())
            bs.append(b.detach())
            acts.append(ACT_CODE[p.activation] if l < n - 1 else ACT_CODE[p.output_activation])
            slopes.append(float(p.negative_slope))
    return ws, bs, acts, slopes


@register("encode", "cuda", available=_available, why_unavailable=_why_unavailable)
@torch.no_grad()
def encode_cuda(encoder: MLPParams, y: torch.Tensor, *, batch_size=None):
    if y.dtype == torch.float64 or any(w.dtype == torch.float64 for w in encoder.weights):
        return encode_torch(encoder, y, batch_size=batch_size)
    ws, bs, acts, slopes = _layers(encoder)
    if not batch_size or batch_size >= y.shape[0]:
        return _ext().mlp_forward(ws, bs, acts, slopes, y)
    return torch.cat([_ext().mlp_forward(ws, bs, acts, slopes, y[i:i + batch_size])
                      for i in range(0, y.shape[0], batch_size)])


@register("generate", "cuda", available=_available, why_unavailable=_why_unavailable)
@torch.no_grad()
def generate_cuda(generator: MLPParams, decoder: MLPParams, cond: torch.Tensor, *, noise_dim, num_classes, seed,
                  offset, eta, out_dtype, out: torch.Tensor | None = None):
    if generator.weights[0].dtype == torch.float64 or decoder.weights[0].dtype == torch.float64:
        y = generate_torch(generator, decoder, cond, noise_dim=noise_dim, num_classes=num_classes, seed=seed,
                           offset=offset, eta=eta, out_dtype=out_dtype)
        return y if out is None else out.copy_(y)
    labels = not cond.dtype.is_floating_point
    if labels:
        if num_classes is None:
            raise ValueError("integer labels given but num_classes is None")
        if cond.numel() and (int(cond.min()) < 0 or int(cond.max()) >= num_classes):
            raise ValueError(f"labels must be in [0, {num_classes}), got range [{int(cond.min())}, {int(cond.max())}]")
        cond_dim = int(num_classes)
    else:
        cond_dim = int(cond.shape[1])
    if out is None:
        out = torch.empty((cond.shape[0], decoder.out_features), dtype=out_dtype, device=cond.device)
    if not (0 <= int(seed) < 2**64):
        raise ValueError(f"seed must be in [0, 2^64), got {seed}")
    ws, bs, acts, slopes = _layers(generator, decoder)
    return _ext().generate(ws, bs, acts, slopes, int(noise_dim), cond_dim, cond, eta, int(seed), int(offset), out)


def philox_normal_cuda(seed: int, row_offset: int, rows: int, cols: int, device="cuda") -> torch.Tensor:
    """The CUDA kernel's noise alone (tests compare it with lsdm_fast.ops.philox.philox_normal)."""
    return _ext().philox_normal(int(seed), int(row_offset), int(rows), int(cols), torch.device(device))
