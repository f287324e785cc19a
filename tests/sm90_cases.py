"""The kernel configurations the package can launch on a GPU, as calls of its own host functions
(for tests/sm90.py, which turns each launch into an sm_90 compile). Each *_cases() returns
callables; one call = the launches of one op for one configuration. Sizes are small: only the
shapes' widths, dtypes and constexprs matter to the compiler, not the batch."""
from __future__ import annotations

import torch

from lsdm_fast.ops.mlp import MLPParams

B = 64  # rows: any value works, nothing is launched


def _mlp(sizes, dtype=torch.float32, act="leaky_relu", out_act=None):
    W = [torch.randn(b, a, dtype=dtype) for a, b in zip(sizes[:-1], sizes[1:])]
    b = [torch.randn(n, dtype=dtype) for n in sizes[1:]]
    return MLPParams(W, b, act, 0.2, out_act)


def critic_cases():
    """Every kernel configuration the Triton critic backend can pick: its tile sets (tensor-core
    small- and large-batch, FMA for ieee float32 and float64) x 2-4 layers x the step and the score
    gradient; the flags (first/last layer, penalty_over, step vs score) are runtime arguments, so
    they add no configurations. Widths change the compiled code only through Triton's integer
    specialisation (multiple of 16 or not): the default critic (26 or 42 -> 256..1024) and odd
    widths (37, 100) are both compiled for the default TF32 path."""
    from lsdm_fast.ops import critic_gp_triton as ct

    cases = []
    small, large = 64, ct.TILES_TC_LARGE_FROM_B  # batch sizes on either side of the tile switch

    def add(n_hidden, width, dx, dz, dtype, prec, batch, penalty_over="joint"):
        p = _mlp([dx + dz] + [width] * n_hidden + [1], dtype)

        def gp():
            x, zr, zf = (torch.randn(batch, d, dtype=dtype) for d in (dx, dz, dz))
            ct.critic_gradient_penalty_triton(p, x, zr, zf, torch.rand(batch, dtype=dtype), gp_weight=10.0,
                                              penalty_over=penalty_over, input_precision=prec)

        def score():
            ct.critic_score_grad_triton(p, torch.randn(batch, dx, dtype=dtype), torch.randn(batch, dz, dtype=dtype),
                                        input_precision=prec)

        cases.extend([gp, score])

    for n_hidden in (1, 2, 3):
        add(n_hidden, 512, 10, 16, torch.float32, "tf32", small)
        add(n_hidden, 512, 10, 32, torch.float32, "tf32", large, "latent")
        add(n_hidden, 512, 10, 16, torch.float32, "ieee", small)
        add(n_hidden, 512, 10, 16, torch.float64, "ieee", small, "latent")
    add(2, 1024, 16, 16, torch.float32, "tf32", large)  # input width a multiple of 16
    add(2, 100, 10, 16, torch.float32, "tf32", small)  # hidden width not a multiple of 16
    add(2, 37, 3, 4, torch.float32, "tf32", 7)
    add(2, 512, 0, 32, torch.float32, "tf32", small)  # no condition: stage 2's marginal critic h(z)
    add(2, 512, 0, 32, torch.float32, "tf32", large)
    return cases


def encode_generate_cases():
    """Every dtype/precision configuration of the Triton encode/generate kernel, and across them every
    constexpr branch its host code picks: MODE 0 (encode), 1 (in-kernel noise) and 2 (eta given), each
    with labels and with a float condition (super-resolution, 49 or 196 wide); hidden activations
    leaky_relu/relu/silu, output none/sigmoid; output float32/uint8/half/float64; inputs (y, condition)
    in a dtype other than the weights' (read and converted in the kernel); per-layer tiles
    BN 16..128 and BK 16..64 with exact and masked tails (784 = 6 x 128 + 16, 176 = 128 + 48 in a
    64-wide tail); widths off the 16 grid (26, 42, 81, 196) and up to 1024."""
    from lsdm_fast.ops import encode_generate_triton as et

    def encode(sizes, dtype, prec, act, y_dtype=None):
        enc = _mlp(sizes, dtype, act)
        return lambda: et.encode_triton(enc, torch.rand(B, sizes[0], dtype=y_dtype or dtype), precision=prec)

    def generate(gen_sizes, dec_sizes, noise, cond, dtype, prec, act, out_dtype, eta, cond_dtype=torch.float32):
        gen, dec = _mlp(gen_sizes, dtype, act), _mlp(dec_sizes, dtype, act, "sigmoid")
        labels = cond == "labels"
        c = (torch.randint(0, 10, (B,), dtype=torch.int32) if labels
             else torch.rand(B, gen_sizes[0] - noise, dtype=cond_dtype))
        e = torch.randn(B, noise, dtype=dtype) if eta else None
        return lambda: et.generate_triton(gen, dec, c, noise_dim=noise, num_classes=10 if labels else None, seed=3,
                                          offset=5, eta=e, out_dtype=out_dtype, precision=prec)

    mnist_gen, mnist_dec = [26, 256, 256, 16], [16, 256, 512, 784]  # d = 16, 10 classes
    wide_gen, wide_dec = [42, 512, 512, 32], [32, 512, 1024, 784]  # d = 32, 10 classes
    sr_gen, sr_dec = [81, 512, 512, 32], [32, 512, 196]  # 7x7 -> 14x14, d = 32
    cases = []
    for dtype, prec in ((torch.bfloat16, None), (torch.float32, "tf32"), (torch.float32, "ieee")):
        other = torch.float16 if dtype == torch.bfloat16 else torch.float64  # an input dtype unlike the weights'
        cases += [
            encode([784, 512, 256, 16], dtype, prec, "leaky_relu"),
            encode([784, 1024, 512, 32], dtype, prec, "relu", y_dtype=torch.float32 if dtype != torch.float32
                   else torch.float16),
            generate(mnist_gen, mnist_dec, 16, "labels", dtype, prec, "leaky_relu", torch.uint8, eta=False),
            generate(wide_gen, wide_dec, 32, "labels", dtype, prec, "silu", torch.float32, eta=True),
            generate(sr_gen, sr_dec, 32, "tensor", dtype, prec, "leaky_relu", other, eta=False, cond_dtype=other),
            generate([32 + 49, 176, 32], [32, 512, 784], 32, "tensor", dtype, prec, "relu", torch.float32, eta=True),
        ]
    cases += [encode([784, 512, 256, 16], torch.float16, None, "leaky_relu"),
              generate(mnist_gen, mnist_dec, 16, "labels", torch.float16, None, "leaky_relu", torch.uint8, eta=False),
              # a chain longer than the kernel's TMA descriptor slots (encode_generate_triton.DESC_SLOTS = 8):
              # its weights by pointer, on the tensor cores all the same
              generate([26, 128, 128, 128, 16], [16, 128, 128, 128, 128, 784], 16, "labels", torch.bfloat16, None,
                       "leaky_relu", torch.float32, eta=False)]
    # the package default, a conv autoencoder (models.ConvEncoder/ConvDecoder with channels (32, 64)):
    # encode's dense part 3136 -> 32 after the convolutions; generate's generator + the decoder's dense
    # head 32 -> 3136 with a LeakyReLU output (ops.generate's tail runs the transposed convolutions)
    for dtype, prec in ((torch.bfloat16, None), (torch.float32, "tf32"), (torch.float32, "ieee")):
        head = _mlp([32, 3136], dtype, "leaky_relu", "leaky_relu")
        gen = _mlp(wide_gen, dtype, "leaky_relu")
        conv_enc = _mlp([3136, 32], dtype, "leaky_relu")
        labels = torch.randint(0, 10, (B,), dtype=torch.int64)
        cases += [lambda enc=conv_enc, dtype=dtype, prec=prec: et.encode_triton(enc, torch.rand(B, 3136, dtype=dtype),
                                                                                 precision=prec),
                  lambda gen=gen, head=head, prec=prec: et.generate_triton(
                      gen, head, labels, noise_dim=32, num_classes=10, seed=3, offset=0, eta=None,
                      out_dtype=torch.float32, precision=prec)]
    return cases


def _patch_modules(side, latent, width, depth, stride, channels):
    from lsdm_fast.models import PatchDecoder, PatchEncoder

    torch.manual_seed(0)
    return (PatchEncoder(side, latent, width, depth, stride, in_channels=channels),
            PatchDecoder(side, latent, width, depth, stride, out_channels=channels))


def patch_cases():
    """Every configuration of the fused patch-autoencoder kernels (lsdm_fast/ops/encode_generate_triton_patch.py)
    the host code can pick: dtype/precision (bf16, fp16, TF32; float32 "ieee" is not fused) x generate (noise drawn or
    given, labels or a condition tensor, uint8 / float / half output) and encode (images in the weights' dtype
    or another);
    the patch model (28 x 28 x 1, W 64, K 1, S 4, latent 32, generator 42->512->512->32) and the shapes
    that change the tiles: W 96 (padded to 128; not fused in TF32), colour (S*S*C = 48 -> 64), S 2 (4 -> 16),
    K 0 and 2, a latent off the 16 grid, a decoder with a layer before its head. Only what
    encode_generate_triton_patch.can_fuse accepts is launched by the package, so only that is compiled here."""
    import copy

    from lsdm_fast.ops import encode_generate_triton as et

    default = (28, 32, 64, 1, 4, 1)
    shapes = [default, (28, 32, 96, 1, 4, 1), (32, 20, 64, 2, 4, 3), (12, 16, 32, 0, 2, 1)]
    cases = []

    def add(shape, dtype, prec, mode, out_dtype, y_dtype=None, deep_decoder=False):
        enc, dec = _patch_modules(*shape)
        enc, dec = copy.deepcopy(enc).to(dtype), copy.deepcopy(dec).to(dtype)
        latent = shape[1]
        gen = _mlp([32 + 10, 512, 512, latent], dtype)
        dense = dec.dense()
        if deep_decoder:
            pre = _mlp([latent, 64], dtype)
            dense = dense._replace(weights=[*pre.weights, torch.randn(dense.weights[0].shape[0], 64, dtype=dtype)],
                                   biases=[*pre.biases, dense.biases[0]])
        from lsdm_fast.ops.patch import patch_front, patch_tail
        from lsdm_fast.ops.encode_generate_triton_patch import can_fuse

        part = patch_front(enc.front) if mode == "encode" else patch_tail(dec.tail)
        if not can_fuse(part, (enc.dense(),) if mode == "encode" else (gen, dense), prec):
            return  # the entry point runs this one unfused: no patch kernel is launched
        if mode == "encode":
            y = torch.rand(B, enc.in_channels * enc.side ** 2, dtype=y_dtype or dtype)
            cases.append(lambda: et.encode_triton(enc.dense(), y, precision=prec, front=part))
            return
        labels = mode != "tensor"
        c = torch.randint(0, 10, (B,)) if labels else torch.rand(B, 10)
        eta = torch.randn(B, 32, dtype=dtype) if mode == "eta" else None
        cases.append(lambda: et.generate_triton(gen, dense, c, noise_dim=32, num_classes=10 if labels else None,
                                                seed=3, offset=5, eta=eta, out_dtype=out_dtype, precision=prec,
                                                tail=part))

    for dtype, prec in ((torch.bfloat16, None), (torch.float32, "tf32"), (torch.float16, None)):
        add(default, dtype, prec, "labels", torch.uint8)
        add(default, dtype, prec, "encode", None)
        if dtype == torch.float16:
            continue
        add(default, dtype, prec, "eta", torch.float32)
        add(default, dtype, prec, "tensor", dtype, deep_decoder=True)
        add(default, dtype, prec, "encode", None, y_dtype=torch.float32 if dtype != torch.float32 else torch.bfloat16)
        for shape in shapes[1:]:
            add(shape, dtype, prec, "labels", torch.uint8)
            add(shape, dtype, prec, "encode", None)
    return cases

