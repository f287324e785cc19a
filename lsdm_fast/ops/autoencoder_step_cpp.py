"""Backend "cpp" for the patch autoencoder's stage-1 step: the C++ CPU kernel in csrc/patch_ae_cpu.cpp.

One call runs the encoder, the decoder, the loss and the whole backward by hand: GEMMs through MKL,
bias + LeakyReLU after each GEMM in one pass, each LeakyReLU backward fused with its bias gradient, the
transposed convolution's overlap-add and its adjoint gather written for the (2S)x(2S) stride-S case, the
loss and its gradient in one pass. float32 and float64.
"""
from __future__ import annotations

from .. import _ext
from ._backend_util import extension_available, extension_why_unavailable
from ._registry import register
from .autoencoder_step import OP, AutoencoderStepOutput, patch_parameters

_FN = "patch_ae_step_cpu"


@register(OP, "cpp", available=extension_available("_C", "cpu", _FN),
          why_unavailable=extension_why_unavailable("_C", "cpu", _FN))
def autoencoder_loss_grads_cpp(encoder, decoder, y, *, latent_l2, loss, latent_noise, noise):
    params = patch_parameters(encoder, decoder)
    # the convolutions' (W, C, 2S, 2S) weights as the (W, 4 S^2 C) GEMM operands they are
    flat = [p.detach().reshape(p.shape[0], -1) if p.dim() == 4 else p.detach() for p in params]
    loss_t, rec, latent_sq, grads = _ext.cpu_extension().patch_ae_step_cpu(
        y.detach(), flat, encoder.in_channels, encoder.side, encoder.stride, float(decoder.dense().negative_slope),
        latent_l2, loss, latent_noise, None if noise is None else noise.detach())
    grads = [g.view(p.shape) for g, p in zip(grads, params)]
    return AutoencoderStepOutput(loss_t, rec, latent_sq, grads)


__all__ = ["autoencoder_loss_grads_cpp"]
