"""The kernel configurations the package can launch on a GPU, as calls of its own host functions
(for tests/sm90.py, which turns each launch into an sm_90 compile). Each *_cases() returns
callables; one call = the launches of one op for one configuration. Sizes are small: only the
shapes' widths, dtypes and constexprs matter to the compiler, not the batch."""
from __future__ import annotations

import itertools

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
    return cases


def encode_generate_cases():
    from lsdm_fast.ops import encode_generate_triton as et

    cases = []
    for dtype, prec in ((torch.float32, "ieee"), (torch.float32, "tf32"), (torch.bfloat16, None), (torch.float16, None)):
        for hidden, d in (((512, 256), 16), ((1024, 512), 32)):
            enc = _mlp([784, *hidden, d], dtype)
            dec = _mlp([d, *reversed(hidden), 784], dtype, out_act="sigmoid")
            gen = _mlp([d + 10, 256, 256, d], dtype)

            def encode(enc=enc, dtype=dtype, prec=prec):
                et.encode_triton(enc, torch.rand(B, 784, dtype=dtype), precision=prec)

            def generate(gen=gen, dec=dec, d=d, prec=prec, out_dtype=torch.float32):
                et.generate_triton(gen, dec, torch.randint(0, 10, (B,)), noise_dim=d, num_classes=10, seed=1,
                                   offset=0, eta=None, out_dtype=out_dtype, precision=prec)

            def generate_u8(gen=gen, dec=dec, d=d, prec=prec):
                generate(gen, dec, d, prec, torch.uint8)

            cases += [encode, generate, generate_u8]
    return cases
