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
    from lsdm_fast.ops import critic_gp_triton as ct

    cases = []
    # layers 2-4 (hidden widths 1-3), widths from the smallest input (10 classes + d 16 = 26)
    # to 1024, every precision the backend offers, float64 where offered
    for n_hidden, width, prec in itertools.product((1, 2, 3), (256, 512, 1024), ct.PRECISIONS):
        dx, dz = 10, 16
        p = _mlp([dx + dz] + [width] * n_hidden + [1])

        def gp(p=p, dx=dx, dz=dz, prec=prec):
            x, zr, zf, t = torch.randn(B, dx), torch.randn(B, dz), torch.randn(B, dz), torch.rand(B)
            ct.critic_gradient_penalty_triton(p, x, zr, zf, t, gp_weight=10.0, penalty_over="joint",
                                              input_precision=prec)

        def score(p=p, dx=dx, dz=dz, prec=prec):
            ct.critic_score_grad_triton(p, torch.randn(B, dx), torch.randn(B, dz), input_precision=prec)

        cases += [gp, score]
    for n_hidden in (1, 2, 3):
        p64 = _mlp([26] + [512] * n_hidden + [1], torch.float64)

        def gp64(p=p64):
            x, zr, zf, t = (torch.randn(B, 10, dtype=torch.float64), torch.randn(B, 16, dtype=torch.float64),
                            torch.randn(B, 16, dtype=torch.float64), torch.rand(B, dtype=torch.float64))
            ct.critic_gradient_penalty_triton(p, x, zr, zf, t, gp_weight=10.0, penalty_over="latent")

        cases.append(gp64)
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
