"""Stage 1's hot path for the patch autoencoder: one training step's loss and parameter gradients.

Public entry point (backend="auto" | "torch" | "cpp"):

- autoencoder_loss_grads(encoder, decoder, y, *, latent_l2, loss="bce", latent_noise=0.0, noise=None)
      -> AutoencoderStepOutput
  with encoder, decoder a models.PatchEncoder / PatchDecoder pair and y (N, C*H*W) images in [0, 1]:
      z = encoder(y)
      z_in = z + latent_noise * std_batch(z.detach()) * noise      (latent_noise > 0 only; noise ~ N(0, I))
      logits = decoder.logits(z_in)
      reconstruction = mean BCE-with-logits(logits, y)   (loss="bce"), or mean (sigmoid(logits) - y)^2 ("mse")
      loss = reconstruction + latent_l2 * mean z^2
  and the gradient of `loss` w.r.t. every parameter, in the modules' order
  (list(encoder.parameters()) + list(decoder.parameters())), with no autograd graph left behind.

The reference ("torch") is autograd through the modules themselves; "cpp" (csrc/patch_ae_cpu.cpp) is the
forward and backward written out by hand (docs/design.md §3). The entry point checks its arguments once
(_check_inputs), so the same bad call gets the same error from every backend. Backends receive the modules,
y, and the validated keyword arguments; they compute in the parameters' dtype (float32 or float64).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._registry import precision_kwargs, register, resolve

OP = "autoencoder_loss_grads"
LOSSES = ("bce", "mse")


@dataclass
class AutoencoderStepOutput:
    loss: torch.Tensor  # reconstruction + latent_l2 * latent_sq: what stage 1 minimises
    reconstruction: torch.Tensor  # the mean reconstruction loss
    latent_sq: torch.Tensor  # mean z^2 (of z, before any latent noise)
    grads: list[torch.Tensor]  # d loss / d p for p in list(encoder.parameters()) + list(decoder.parameters())
    backend: str = "torch"


def patch_parameters(encoder: nn.Module, decoder: nn.Module) -> list[torch.Tensor]:
    """The pair's parameters in the order the compiled backends take them: the encoder's convolution (weight,
    bias), its per-position layers, its fc; the decoder's fc, its per-position layers, its transposed
    convolution."""
    out = [encoder.conv.weight, encoder.conv.bias]
    for layer in encoder.mix:
        out += [layer.weight, layer.bias]
    out += [encoder.fc.weight, encoder.fc.bias, decoder.fc.weight, decoder.fc.bias]
    for layer in decoder.mix:
        out += [layer.weight, layer.bias]
    return out + [decoder.conv.weight, decoder.conv.bias]


def _check_number(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a Python number, got {type(v).__name__}")
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    return float(v)


def _check_inputs(encoder, decoder, y, latent_l2, loss, latent_noise, noise) -> tuple[float, float]:
    """Every check of the op's arguments, before a backend is chosen. Returns (latent_l2, latent_noise)."""
    from ..models import PatchDecoder, PatchEncoder  # here: models imports ops

    if not isinstance(encoder, PatchEncoder) or not isinstance(decoder, PatchDecoder):
        raise TypeError(f"{OP} takes a models.PatchEncoder and a models.PatchDecoder, got "
                        f"{type(encoder).__name__} and {type(decoder).__name__}")
    pairs = [("side", encoder.side, decoder.side), ("stride", encoder.stride, decoder.stride),
             ("width", encoder.width, decoder.width), ("channels", encoder.in_channels, decoder.out_channels),
             ("depth", len(encoder.mix), len(decoder.mix)),
             ("latent size", encoder.fc.out_features, decoder.fc.in_features)]
    for what, a, b in pairs:
        if a != b:
            raise ValueError(f"{OP}: the encoder and the decoder differ in {what}: {a} vs {b}")
    params = patch_parameters(encoder, decoder)
    known = {id(p) for p in params}
    extra = [n for m, tag in ((encoder, "encoder"), (decoder, "decoder"))
             for n, p in m.named_parameters() if id(p) not in known]
    if extra:
        raise ValueError(f"{OP}: parameters this op does not know: {', '.join(extra)}")
    dtypes = sorted({str(p.dtype) for p in params})
    if len(dtypes) > 1 or params[0].dtype not in (torch.float32, torch.float64):
        raise ValueError(f"{OP}: the parameters must share one dtype, float32 or float64, got {', '.join(dtypes)}")
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
    c, side = encoder.in_channels, encoder.side
    if y.dim() != 2 or y.shape[1] != c * side * side:
        raise ValueError(f"y must be (N, {c * side * side}) images ({c} x {side} x {side}, channels first), "
                         f"got shape {tuple(y.shape)}")
    if y.shape[0] == 0:
        raise ValueError("empty batch: y has 0 rows")
    if y.dtype != params[0].dtype:
        raise ValueError(f"y is {y.dtype} but the autoencoder's parameters are {params[0].dtype}")
    latent_l2 = _check_number("latent_l2", latent_l2)
    latent_noise = _check_number("latent_noise", latent_noise)
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    tensors = [("y", y)]
    if latent_noise > 0:
        d = encoder.fc.out_features
        if not isinstance(noise, torch.Tensor):
            raise TypeError(f"latent_noise > 0 needs noise, a tensor (N, {d}) of N(0, 1) draws; got "
                            f"{type(noise).__name__}")
        if tuple(noise.shape) != (y.shape[0], d) or noise.dtype != y.dtype:
            raise ValueError(f"noise must be ({y.shape[0]}, {d}) of y's dtype {y.dtype}, got {tuple(noise.shape)} "
                             f"{noise.dtype}")
        if y.shape[0] < 2:
            raise ValueError("latent_noise > 0 needs a batch of at least 2 images (it scales by the batch's std)")
        tensors.append(("noise", noise))
    devices = tensors + [("the autoencoder", p) for p in params]
    if len({t.device for _, t in devices}) > 1:
        seen = {t.device: n for n, t in reversed(devices)}
        raise ValueError("all tensors must be on one device, got " + ", ".join(f"{n} on {d}" for d, n in seen.items()))
    return latent_l2, latent_noise


def autoencoder_loss_grads(encoder: nn.Module, decoder: nn.Module, y: torch.Tensor, *, latent_l2: float,
                           loss: str = "bce", latent_noise: float = 0.0, noise: torch.Tensor | None = None,
                           backend: str = "auto", precision: str | None = None) -> AutoencoderStepOutput:
    """One stage-1 step's loss terms and parameter gradients (see the module docstring). `precision`: as every
    entry point's (docs/design.md §4, "Precision"); this op's backends ("torch", "cpp") compute in full float32."""
    latent_l2, latent_noise = _check_inputs(encoder, decoder, y, latent_l2, loss, latent_noise, noise)
    name, fn = resolve(OP, backend, y.device)
    out = fn(encoder, decoder, y, latent_l2=latent_l2, loss=loss, latent_noise=latent_noise,
             noise=noise if latent_noise > 0 else None, **precision_kwargs(OP, name, precision))
    # the backends answer in patch_parameters' order; the caller gets the modules' order
    by_id = {id(p): g for p, g in zip(patch_parameters(encoder, decoder), out.grads)}
    out.grads = [by_id[id(p)] for p in (*encoder.parameters(), *decoder.parameters())]
    out.backend = name
    return out


# ---------------------------------------------------------------- reference (pure PyTorch)

class _Pair(nn.Module):
    def __init__(self, encoder: nn.Module, decoder: nn.Module):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, y, latent_noise, noise):
        z = self.encoder(y)
        z_in = z + latent_noise * z.detach().std(0) * noise if latent_noise > 0 else z
        return z, self.decoder.logits(z_in)


@register(OP, "torch")
def autoencoder_loss_grads_torch(encoder, decoder, y, *, latent_l2, loss, latent_noise, noise):
    pair = _Pair(encoder, decoder)
    params = patch_parameters(encoder, decoder)
    names = {id(p): n for n, p in pair.named_parameters()}
    leaves = [p.detach().requires_grad_(True) for p in params]
    with torch.enable_grad():
        z, logits = torch.func.functional_call(pair, {names[id(p)]: v for p, v in zip(params, leaves)},
                                               (y.detach(), latent_noise, noise))
        if loss == "bce":
            rec = F.binary_cross_entropy_with_logits(logits, y.detach())
        else:
            rec = F.mse_loss(torch.sigmoid(logits), y.detach())
        latent_sq = z.pow(2).mean()
        total = rec + latent_l2 * latent_sq
        grads = torch.autograd.grad(total, leaves)
    return AutoencoderStepOutput(total.detach(), rec.detach(), latent_sq.detach(), list(grads))
