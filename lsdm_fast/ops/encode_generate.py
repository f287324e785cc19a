"""Latent encoding z = E(y) and one-step generation y = D(G(eta, x)).

Public entry points (backend="auto" | "torch" | "triton" | "cuda"):

- encode(encoder, y, ...): fused MLP forward over a whole data set, chunked.
- generate(generator, decoder, cond, ...): eta ~ N(0, I) drawn from counter-based Philox
  (lsdm_fast.ops.philox, identical to Triton's tl.randn) unless `eta` is given; generator
  input is cat(eta, x); x is a one-hot built from integer labels, or a float condition tensor.

MLPs are described by MLPParams. Outputs are float32 unless `out_dtype` says otherwise
(torch.uint8 maps [0, 1] to 0..255, rounding to nearest).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._registry import register, resolve
from .mlp import MLPParams, check_mlp, mlp_forward_reference
from .philox import philox_normal

OUT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.uint8)


def _as_float(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def encode(encoder: MLPParams, y: torch.Tensor, *, batch_size: int | None = None,
           backend: str = "auto") -> torch.Tensor:
    """encoder(y) without autograd, accumulating in float32 (float64 stays float64)."""
    check_mlp(encoder, "encoder")
    if y.dim() != 2 or y.shape[1] != encoder.in_features:
        raise ValueError(f"encode: y must be (N, {encoder.in_features}), got {tuple(y.shape)}")
    if not y.dtype.is_floating_point:
        raise ValueError(f"encode: y must be floating point, got {y.dtype}")
    _, fn = resolve("encode", backend, y.device)
    return fn(encoder, y, batch_size=batch_size)


def condition_tensor(cond: torch.Tensor, num_classes: int | None, dtype: torch.dtype) -> torch.Tensor:
    """Labels -> one-hot; float conditions pass through."""
    if cond.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        if num_classes is None:
            raise ValueError("integer labels given but num_classes is None")
        if cond.dim() != 1:
            raise ValueError(f"labels must be 1-D, got shape {tuple(cond.shape)}")
        if cond.numel() and (int(cond.min()) < 0 or int(cond.max()) >= num_classes):
            raise ValueError(f"labels must be in [0, {num_classes}), got range "
                             f"[{int(cond.min())}, {int(cond.max())}]")
        return F.one_hot(cond.long(), num_classes).to(dtype)
    if cond.dim() != 2:
        raise ValueError(f"condition tensor must be 2-D (N, cond_dim), got {tuple(cond.shape)}")
    return cond.to(dtype)


def generate(generator: MLPParams, decoder: MLPParams, cond: torch.Tensor, *, noise_dim: int,
             num_classes: int | None = None, seed: int = 0, offset: int = 0,
             eta: torch.Tensor | None = None, out_dtype: torch.dtype = torch.float32,
             backend: str = "auto") -> torch.Tensor:
    """y = decoder(generator(cat(eta, x))) for each row of `cond`.

    Row i uses noise row `offset + i` of the stream `seed`, so a batch split into pieces with
    matching offsets gives the same samples as the whole batch.
    """
    check_mlp(generator, "generator")
    check_mlp(decoder, "decoder")
    if generator.out_features != decoder.in_features:
        raise ValueError(f"generator gives {generator.out_features} latents, decoder takes {decoder.in_features}")
    if out_dtype not in OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of {OUT_DTYPES}, got {out_dtype}")
    is_labels = not cond.dtype.is_floating_point
    cond_dim = num_classes if is_labels else (cond.shape[1] if cond.dim() == 2 else -1)
    if is_labels and cond.dim() != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(cond.shape)}")
    if noise_dim + (cond_dim or 0) != generator.in_features:
        raise ValueError(f"generator takes {generator.in_features} inputs but noise_dim ({noise_dim}) + "
                         f"condition ({cond_dim}) give {noise_dim + (cond_dim or 0)}")
    if eta is not None and (eta.dim() != 2 or eta.shape != (cond.shape[0], noise_dim)):
        raise ValueError(f"eta must be ({cond.shape[0]}, {noise_dim}), got {tuple(eta.shape)}")
    _, fn = resolve("generate", backend, cond.device)
    return fn(generator, decoder, cond, noise_dim=noise_dim, num_classes=num_classes, seed=int(seed),
              offset=int(offset), eta=eta, out_dtype=out_dtype)


def to_out_dtype(y: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    if out_dtype == torch.uint8:
        return torch.round(y.clamp(0, 1) * 255).to(torch.uint8)
    return y.to(out_dtype)


# ---------------------------------------------------------------- reference (pure PyTorch)

@register("encode", "torch")
@torch.no_grad()
def encode_torch(encoder, y, *, batch_size=None):
    p = encoder._replace(weights=[_as_float(w) for w in encoder.weights],
                         biases=[_as_float(b) for b in encoder.biases])
    y32 = _as_float(y)
    if batch_size is None or batch_size >= y.shape[0]:
        return mlp_forward_reference(p, y32.to(p.weights[0].dtype))
    return torch.cat([mlp_forward_reference(p, y32[i:i + batch_size].to(p.weights[0].dtype))
                      for i in range(0, y.shape[0], batch_size)])


@register("generate", "torch")
@torch.no_grad()
def generate_torch(generator, decoder, cond, *, noise_dim, num_classes, seed, offset, eta, out_dtype):
    dtype = generator.weights[0].dtype if generator.weights[0].dtype in (torch.float32, torch.float64) else torch.float32
    x = condition_tensor(cond, num_classes, dtype)
    if eta is None:
        eta = philox_normal(seed, offset, cond.shape[0], noise_dim, device=cond.device, dtype=dtype)
    g = generator._replace(weights=[w.to(dtype) for w in generator.weights], biases=[b.to(dtype) for b in generator.biases])
    d = decoder._replace(weights=[w.to(dtype) for w in decoder.weights], biases=[b.to(dtype) for b in decoder.biases])
    z = mlp_forward_reference(g, torch.cat([eta.to(dtype), x], 1))
    return to_out_dtype(mlp_forward_reference(d, z), out_dtype)
