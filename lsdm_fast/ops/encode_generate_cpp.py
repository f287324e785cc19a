"""Backend "cpp" of ops.generate / ops.encode: the patch autoencoder's tail / front fused in C++ on the CPU
(csrc/patch_ae_cpu.cpp, `patch_tail_cpu` / `patch_front_cpu`); the contract is ops/encode_generate.py's.

generate with a PatchDecoder's tail: the generator (and any decoder layers before its head) run as the torch
reference runs them (generator_output_torch: the same Philox noise, the same one-hot, so the samples are the
reference's up to float rounding), _LATENT_ROWS rows at a time; then one C++ call takes the latents to the
images: the decoder's dense head, the K mix layers, the transposed convolution (one GEMM to the patches, the
overlap-add), the bias, the sigmoid and the uint8 rounding, a few images at a time (as many as fit
CHUNK_BUDGET_BYTES) so that every intermediate stays in L2 between its passes; each image is written once.
encode with a PatchEncoder's front: im2col, the convolution's GEMM + bias + LeakyReLU, the mix layers and the
encoder's first dense layer per chunk of images in C++; any further encoder layers in torch.
float32 and float64 (the model's dtype throughout: the generator's, the decoder's and the tail's weights in one
dtype); other models (bfloat16, mixed dtypes, a silu head), plain MLP calls and strided conv tails / fronts are
not fused: this backend then computes exactly what the torch reference does (the entry point runs a non-fused
tail / front module itself), so backend="auto" can take the cpp backend for every CPU call.
"""
from __future__ import annotations

import torch

from .. import _ext
from ._backend_util import extension_available, extension_why_unavailable
from ._registry import register
from .encode_generate import encode_torch, generate_torch, generator_output_torch
from .mlp import MLPParams, activate, mlp_forward_reference
from .patch import PatchPart

_FNS = ("patch_tail_cpu", "patch_front_cpu")
_FLOATS = (torch.float32, torch.float64)
# Rows of latents computed per torch call of the generator (its intermediates: 2 x rows x hidden width).
_LATENT_ROWS = 4096
# Intermediates of one chunk of images (its head output, mix buffers, patches, image). The per-core L2 of the
# machines measured is 1.25-2 MB and the default decoder's head weight takes 0.4 MB of it; untuned beyond that.
CHUNK_BUDGET_BYTES = 1 << 20
# DenseAct in csrc/patch_ae_cpu.cpp
_ACT_NONE, _ACT_LEAKY, _ACT_SIGMOID = 0, 1, 2


def _dense_act(mlp: MLPParams, layer: int) -> tuple[int, float] | None:
    """(code, slope) of layer `layer`'s activation as the C++ op takes it; None where it has none (silu)."""
    act = mlp.output_activation if layer == len(mlp.weights) - 1 else mlp.activation
    return {None: (_ACT_NONE, 0.0), "leaky_relu": (_ACT_LEAKY, float(mlp.negative_slope)), "relu": (_ACT_LEAKY, 0.0),
            "sigmoid": (_ACT_SIGMOID, 0.0)}.get(act)


def _fuses(part: PatchPart, mlps: tuple, precision) -> bool:
    """A patch tail / front in float32 or float64, every weight of the chain in that dtype, the dense layer next
    to the part with an activation the C++ op has. `precision` does not matter: the CPU GEMMs are full float32."""
    dtype = part.dtype
    if dtype not in _FLOATS or any(t.dtype != dtype for t in part.tensors()):
        return False
    if any(t.dtype != dtype for m in mlps for t in (*m.weights, *m.biases)):
        return False
    dense = mlps[-1]  # the decoder (its head is its last layer) / the encoder (its first layer meets the front)
    return _dense_act(dense, len(dense.weights) - 1 if part.kind == "tail" else 0) is not None


def _conv_gemm_weight(part: PatchPart) -> torch.Tensor:
    """(W, 4 S^2 C): the conv weight (W, C, 2S, 2S) as the GEMM operand, columns in (c, ky, kx) order (a view)."""
    return part.conv_weight.detach().reshape(part.width, -1)


def patch_tail_forward(z: torch.Tensor, decoder: MLPParams, tail: PatchPart, out_dtype: torch.dtype, *,
                       chunk: int = 0) -> torch.Tensor:
    """Images (N, C * side * side) of out_dtype from z (N, d), the input of the decoder's last (head) layer:
    head, mix layers, transposed convolution, bias, sigmoid (uint8 by the package's rule), fused in C++,
    `chunk` images at a time (0: as many as fit CHUNK_BUDGET_BYTES). z, the head and the tail share one dtype.

    Roofline, per image of the patch model (W 64) (d 32, head to 7 x 7 x 64, W 64, K 1, S 4, 28 x 28 x 1), float32:
      FLOPs  head 0.20 M + mix 0.40 M + transposed conv 0.40 M = 1.0 MFLOP of GEMMs (~0.01 M elementwise: bias,
             LeakyReLU, overlap-add, sigmoid); the generator before it (42 -> 512 -> 512 -> 32, torch) 0.60 MFLOP.
      bytes  from memory: z 128 B in, the image 3,136 B out (784 B uint8); the weights (0.43 MB) stay in L2
             across the chunks; the chunk's intermediates (41 KB per image: head output, mix output, patches,
             image; 25 images per 1 MB chunk) are written and read back in L2, never in memory.
      bound  compute: ~1.6 MFLOP per sample against ~3.3 KB of memory traffic (~500 FLOP/B); one AVX-512 core
             (~100-150 GFLOP/s of MKL SGEMM at these shapes: K and N of 32-64) gives ~60-90 k samples/s at its
             peak, the memory side (3.3 KB at ~10 GB/s on one core) ~3 M/s.
      seen   on the shared 2-core VM under load, one thread (time.thread_time, 4096 rows; not a benchmark): this
             op ~100 k images/s (~100 GFLOP/s), the whole generate ~45 k/s (the torch generator 36 ms per 4096
             rows, 11 of them its Philox noise, beside the tail's 41 ms); chunk budgets 0.5-4 MB within 5 %.
             bench/bench_encode_generate.py test_bench_default_model_cpu times it against the torch backend."""
    head = _dense_act(decoder, len(decoder.weights) - 1)
    kernel_dtype = out_dtype if out_dtype in (z.dtype, torch.uint8) else z.dtype
    out = _ext.cpu_extension().patch_tail_cpu(
        z, decoder.weights[-1].detach(), decoder.biases[-1].detach(), head[0], head[1],
        [w.detach() for w in tail.mix_weights], [b.detach() for b in tail.mix_biases], _conv_gemm_weight(tail),
        tail.conv_bias.detach(), tail.channels, tail.side, tail.stride, float(tail.negative_slope), kernel_dtype,
        int(chunk), CHUNK_BUDGET_BYTES)
    return out if kernel_dtype == out_dtype else out.to(out_dtype)


def patch_front_forward(y: torch.Tensor, encoder: MLPParams, front: PatchPart, *, chunk: int = 0) -> torch.Tensor:
    """encoder(front(y)) for images y (N, C * side * side) of any float dtype: the front (im2col, convolution +
    bias + LeakyReLU, mix layers) and the encoder's first layer fused in C++ (`chunk` as patch_tail_forward's),
    any further layers in torch. Per image of the patch model (W 64): 1.0 MFLOP of GEMMs (conv 0.40 M, mix 0.40 M,
    dense 0.20 M), 3,136 B of float32 image in, 128 B out; compute-bound as the tail."""
    dtype = front.dtype
    act = _dense_act(encoder, 0)
    u = _ext.cpu_extension().patch_front_cpu(
        y.to(dtype), [w.detach() for w in front.mix_weights], [b.detach() for b in front.mix_biases],
        _conv_gemm_weight(front), front.conv_bias.detach(), encoder.weights[0].detach(), encoder.biases[0].detach(),
        act[0], act[1], front.channels, front.side, front.stride, float(front.negative_slope), int(chunk),
        CHUNK_BUDGET_BYTES)
    if len(encoder.weights) > 1:
        rest = encoder._replace(weights=[w.detach() for w in encoder.weights[1:]],
                                biases=[b.detach() for b in encoder.biases[1:]])
        u = mlp_forward_reference(rest, u)
    return u


_available = extension_available("_C", "cpu", *_FNS)
_why = extension_why_unavailable("_C", "cpu", *_FNS)


@register("generate", "cpp", available=_available, why_unavailable=_why, fuses=_fuses)
@torch.no_grad()
def generate_cpp(generator, decoder, cond, *, noise_dim, num_classes, seed, offset, eta, out_dtype, tail=None):
    if tail is None:  # not fused (no tail, or one the entry point runs itself): the reference
        return generate_torch(generator, decoder, cond, noise_dim=noise_dim, num_classes=num_classes, seed=seed,
                              offset=offset, eta=eta, out_dtype=out_dtype)
    n = int(cond.shape[0])
    body = None
    if len(decoder.weights) > 1:  # the decoder's layers before its head, in torch as the reference runs them
        body = decoder._replace(weights=decoder.weights[:-1], biases=decoder.biases[:-1], output_activation=None)

    def images(a: int, b: int) -> torch.Tensor:
        z = generator_output_torch(generator, cond[a:b], noise_dim=noise_dim, num_classes=num_classes, seed=seed,
                                   offset=offset + a, eta=None if eta is None else eta[a:b])
        if body is not None:
            z = activate(mlp_forward_reference(body, z), decoder.activation, decoder.negative_slope)
        return patch_tail_forward(z, decoder, tail, out_dtype)

    if n <= _LATENT_ROWS:
        return images(0, n)
    out = torch.empty((n, tail.pixels), dtype=out_dtype, device=cond.device)
    for a in range(0, n, _LATENT_ROWS):
        b = min(a + _LATENT_ROWS, n)
        out[a:b] = images(a, b)
    return out


@register("encode", "cpp", available=_available, why_unavailable=_why, fuses=_fuses)
@torch.no_grad()
def encode_cpp(encoder, y, *, batch_size=None, front=None):
    if front is None:  # a plain MLP encode, or a front the entry point ran itself: the reference
        return encode_torch(encoder, y, batch_size=batch_size)
    return patch_front_forward(y, encoder, front)


__all__ = ["CHUNK_BUDGET_BYTES", "encode_cpp", "generate_cpp", "patch_front_forward", "patch_tail_forward"]
