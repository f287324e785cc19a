"""Benchmarks (pytest-benchmark) for fused encoding and one-step generation (issue 6).

    pytest bench/bench_encode_generate.py --benchmark-only            # GPU: full sizes
    LSDM_BENCH_SMALL=1 pytest bench/bench_encode_generate.py -s      # CPU smoke run, tiny sizes

Models (the issue's): generator 26->512->512->32 (16 noise + 10 classes), decoder
32->512->512->784 with sigmoid, encoder 784->512->512->32, LeakyReLU(0.2).
Sizes: generation 2^16 and 2^20 samples, encoding 60000 and 2^20 images (LSDM_BENCH_SMALL=1:
256 and 1024 rows; the Triton interpreter on CPU gets 64 rows only, since it is a correctness
tool, not a fast path). Per workload: every available lsdm backend (bf16 weights, and fp32) vs
eager PyTorch fp32, eager PyTorch under bf16 autocast and torch.compile (bf16 autocast).
extra_info: samples_per_s and tflops (2 * rows * sum(in*out) matmul FLOPs / mean time).

"one-step vs 50-step": LSDM's one-step sampler y = D(G(eta, x)) against a STAND-IN COST MODEL of a
50-step latent sampler: 50 iterations of an MLP the size of the generator (32->512->512->32 on the
latent, z <- z + MLP(z)) then the same decoder. It models the cost of an iterative latent sampler
(e.g. a diffusion/flow model in latent space), not any particular published method.
"""
from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lsdm_fast.ops import MLPParams, available_backends, encode, generate  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SMALL = os.environ.get("LSDM_BENCH_SMALL") == "1" or DEVICE.type == "cpu"
NOISE, CLASSES = 16, 10
GEN_W, DEC_W, ENC_W = [26, 512, 512, 32], [32, 512, 512, 784], [784, 512, 512, 32]
GEN_SIZES = [256, 1024] if SMALL else [2**16, 2**20]
ENC_SIZES = [256, 1024] if SMALL else [60000, 2**20]
INTERP_ROWS = 64
NO_COMPILE = os.environ.get("LSDM_BENCH_NO_COMPILE") == "1"


def _mlp(widths, out_act=None, dtype=torch.float32):
    g = torch.Generator().manual_seed(sum(widths))
    ws = [(torch.randn(o, i, generator=g) / i**0.5).to(DEVICE, dtype) for i, o in zip(widths[:-1], widths[1:])]
    bs = [(torch.randn(o, generator=g) * 0.1).to(DEVICE, dtype) for o in widths[1:]]
    return MLPParams(ws, bs, "leaky_relu", 0.2, out_act)


def _flops(rows, *widths_lists):
    return 2 * rows * sum(a * b for w in widths_lists for a, b in zip(w[:-1], w[1:]))


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _run(benchmark, fn, rows, flops, interpreted=False):
    def call():
        r = fn()
        _sync()
        return r

    call()  # warm-up / compile
    if interpreted or SMALL:
        benchmark.pedantic(call, rounds=1 if interpreted else 3, iterations=1)
    else:
        benchmark(call)
    mean = benchmark.stats.stats.mean
    benchmark.extra_info.update(device=str(torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu"),
                                torch=torch.__version__, rows=rows, samples_per_s=rows / mean,
                                tflops=flops / mean / 1e12)


def _eager_forward(p: MLPParams, u):
    n = len(p.weights)
    for l, (w, b) in enumerate(zip(p.weights, p.biases)):
        u = F.linear(u, w, b)
        if l < n - 1:
            u = F.leaky_relu(u, p.negative_slope)
    return torch.sigmoid(u) if p.output_activation == "sigmoid" else u


def _eager_generate(gen, dec, labels):
    eta = torch.randn(labels.shape[0], NOISE, device=DEVICE)
    x = F.one_hot(labels, CLASSES).float()
    return _eager_forward(dec, _eager_forward(gen, torch.cat([eta, x], 1)))


def _variants(op):
    """(name, kind, dtype): kind 'lsdm:<backend>', 'eager', 'autocast', 'compile'."""
    out = [("eager-fp32", "eager", torch.float32), ("eager-bf16-autocast", "autocast", torch.float32)]
    if not NO_COMPILE:
        out.append(("torch.compile-bf16-autocast", "compile", torch.float32))
    for b in available_backends(op, DEVICE):
        out.append((f"lsdm-{b}-fp32", f"lsdm:{b}", torch.float32))
        if b != "torch":
            out.append((f"lsdm-{b}-bf16", f"lsdm:{b}", torch.bfloat16))
    return out


def _is_interpreted(kind):
    return kind == "lsdm:triton" and DEVICE.type == "cpu"


def _autocast():
    return torch.autocast(DEVICE.type, dtype=torch.bfloat16)


@pytest.mark.parametrize("rows", GEN_SIZES)
@pytest.mark.parametrize("name,kind,dtype", _variants("generate"), ids=[v[0] for v in _variants("generate")])
@torch.no_grad()
def test_bench_generate(benchmark, rows, name, kind, dtype):
    if _is_interpreted(kind):
        rows = min(rows, INTERP_ROWS)
    gen, dec = _mlp(GEN_W, dtype=dtype), _mlp(DEC_W, "sigmoid", dtype=dtype)
    labels = torch.randint(0, CLASSES, (rows,), device=DEVICE)
    if kind.startswith("lsdm:"):
        backend = kind.split(":")[1]
        out_dtype = torch.bfloat16 if dtype == torch.bfloat16 else torch.float32
        fn = lambda: generate(gen, dec, labels, noise_dim=NOISE, num_classes=CLASSES, seed=1,  # noqa: E731
                              out_dtype=out_dtype, backend=backend)
    elif kind == "eager":
        fn = lambda: _eager_generate(gen, dec, labels)  # noqa: E731
    else:
        body = torch.compile(_eager_generate) if kind == "compile" else _eager_generate

        def fn():
            with _autocast():
                return body(gen, dec, labels)
    benchmark.group = f"generate-{rows}"
    _run(benchmark, fn, rows, _flops(rows, GEN_W, DEC_W), _is_interpreted(kind))


@pytest.mark.parametrize("rows", ENC_SIZES)
@pytest.mark.parametrize("name,kind,dtype", _variants("encode"), ids=[v[0] for v in _variants("encode")])
@torch.no_grad()
def test_bench_encode(benchmark, rows, name, kind, dtype):
    if _is_interpreted(kind):
        rows = min(rows, INTERP_ROWS)
    enc = _mlp(ENC_W, dtype=dtype)
    y = torch.rand(rows, 784, device=DEVICE, dtype=dtype)
    if kind.startswith("lsdm:"):
        backend = kind.split(":")[1]
        fn = lambda: encode(enc, y, backend=backend)  # noqa: E731
    elif kind == "eager":
        fn = lambda: _eager_forward(enc, y)  # noqa: E731
    else:
        body = torch.compile(_eager_forward) if kind == "compile" else _eager_forward

        def fn():
            with _autocast():
                return body(enc, y)
    benchmark.group = f"encode-{rows}"
    _run(benchmark, fn, rows, _flops(rows, ENC_W), _is_interpreted(kind))


def _sampler_backend():
    avail = available_backends("generate", DEVICE)
    for b in ("cuda", "triton"):
        if b in avail and not (b == "triton" and DEVICE.type == "cpu"):
            return b
    return "torch"


@pytest.mark.parametrize("steps", [1, 50], ids=["lsdm-one-step", "stand-in-50-step-latent-sampler"])
@torch.no_grad()
def test_bench_one_step_vs_50_step(benchmark, steps):
    """One-step LSDM sampling vs a 50-step latent sampler STAND-IN COST MODEL (see module docstring)."""
    rows = GEN_SIZES[0]
    gen, dec = _mlp(GEN_W), _mlp(DEC_W, "sigmoid")
    step_mlp = _mlp([32, 512, 512, 32])
    labels = torch.randint(0, CLASSES, (rows,), device=DEVICE)
    backend = _sampler_backend()
    if steps == 1:
        fn = lambda: generate(gen, dec, labels, noise_dim=NOISE, num_classes=CLASSES, seed=1,  # noqa: E731
                              backend=backend)
        flops = _flops(rows, GEN_W, DEC_W)
    else:
        def fn():
            with _autocast() if DEVICE.type == "cuda" else torch.autocast("cpu", enabled=False):
                z = torch.randn(rows, 32, device=DEVICE)
                for _ in range(steps):
                    z = z + _eager_forward(step_mlp, z)
                return _eager_forward(dec, z)
        flops = steps * _flops(rows, [32, 512, 512, 32]) + _flops(rows, DEC_W)
    benchmark.group = "sampler-one-step-vs-50-step-stand-in"
    benchmark.extra_info["sampler"] = "lsdm one-step (backend=%s)" % backend if steps == 1 else \
        "STAND-IN cost model: 50 x MLP(32->512->512->32) + decoder, eager"
    _run(benchmark, fn, rows, flops)
