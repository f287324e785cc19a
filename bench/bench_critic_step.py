"""One full WGAN-GP critic update (loss, every parameter gradient, Adam step) per variant.

    pytest bench/bench_critic_step.py --benchmark-only
    LSDM_BENCH_SKIP_LARGE=1 pytest bench/bench_critic_step.py --benchmark-only   # no batch 65536
    LSDM_BENCH_SMOKE=1 pytest bench/bench_critic_step.py --benchmark-only        # batch 256, width 256, 3 rounds
    LSDM_BENCH_WIDTHS=512 pytest bench/bench_critic_step.py --benchmark-only     # one width (bench/gpu_check.py)

Variants (every one ends its step with a device synchronisation):
  eager             autograd with create_graph=True in plain PyTorch (what a user writes), float32
  eager_tf32        the same with torch.backends.cuda.matmul.allow_tf32 = True (restored after):
                    the fair competitor of a TF32 kernel (CUDA only)
  eager_cuda_graph  a CUDA graph of the eager float32 step, capturable fused Adam (CUDA only)
  op:BACKEND        lsdm_fast.ops.critic_gradient_penalty(backend=BACKEND) + Adam, eager
  op:cpp:bf16       the same with precision="bf16" (bf16 GEMMs on the CPU's AMX / AVX512-BF16 units;
                    emulated, slower, where cpu_has_fast_bf16() is false)
  graph:BACKEND     the same op + capturable fused Adam captured in one CUDA graph: the
                    graph-captured step (CUDA only)

Critic: (10 label + 16 latent = 26) -> W -> W -> 1, LeakyReLU(0.2), gp_weight 10, float32;
W in {256, 512}, batch in {256, 4096, 65536}. Not part of the default test run (testpaths = tests/).
A variant that cannot run here (a backend not built, a capture that fails) is skipped with its
reason, never fatal.
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from _graphs import cuda_graph  # bench/_graphs.py

from lsdm_fast.ops import MLPParams, available_backends, critic_gradient_penalty

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CUDA = DEVICE.type == "cuda"
DX, DZ = 10, 16
GP_WEIGHT = 10.0
SMOKE = os.environ.get("LSDM_BENCH_SMOKE", "0") not in ("", "0")
SKIP_LARGE = os.environ.get("LSDM_BENCH_SKIP_LARGE", "0") not in ("", "0")
BATCHES = [256] if SMOKE else [256, 4096, 65536]
WIDTHS = [256] if SMOKE else [int(w) for w in os.environ.get("LSDM_BENCH_WIDTHS", "256,512").split(",")]

BACKENDS = available_backends("critic_gradient_penalty", DEVICE)
VARIANTS = ["eager"] + [f"op:{b}" for b in BACKENDS] + (["op:cpp:bf16"] if "cpp" in BACKENDS else [])
if CUDA:
    VARIANTS += ["eager_tf32", "eager_cuda_graph"] + [f"graph:{b}" for b in BACKENDS]


def _sync():
    if CUDA:
        torch.cuda.synchronize()


def _rounds(batch: int) -> tuple[int, int]:
    """(rounds, steps per round)."""
    if SMOKE:
        return 3, 1
    if CUDA:
        return (20, 10) if batch < 65536 else (10, 2)
    return {256: 40, 4096: 8}.get(batch, 3), 1


def _setup(batch, width):
    g = torch.Generator(device="cpu").manual_seed(0)
    widths = [DX + DZ, width, width, 1]
    params = []
    for i, o in zip(widths[:-1], widths[1:]):
        params.append(torch.nn.Parameter((torch.randn(o, i, generator=g) / i ** 0.5).to(DEVICE)))
    for o in widths[1:]:
        params.append(torch.nn.Parameter(torch.zeros(o, device=DEVICE)))
    data = [torch.randn(batch, d, generator=g).to(DEVICE) for d in (DX, DZ, DZ)] + [torch.rand(batch, generator=g).to(DEVICE)]
    return params, data


def _adam(params, capturable=False):
    try:  # fused Adam where this torch has it for the device, else foreach
        return torch.optim.Adam(params, lr=1e-4, betas=(0.5, 0.9), fused=True, capturable=capturable)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.Adam(params, lr=1e-4, betas=(0.5, 0.9), foreach=True, capturable=capturable)


def _eager_loss(params, x, zr, zf, t):
    w1, w2, w3, b1, b2, b3 = params

    def f(u):
        u = F.leaky_relu(F.linear(u, w1, b1), 0.2)
        u = F.leaky_relu(F.linear(u, w2, b2), 0.2)
        return F.linear(u, w3, b3)

    tt = t.reshape(-1, 1)
    u_hat = torch.cat([x, tt * zr + (1 - tt) * zf], 1).requires_grad_(True)
    (g,) = torch.autograd.grad(f(u_hat).sum(), u_hat, create_graph=True)
    penalty = ((g.norm(2, dim=1) - 1) ** 2).mean()
    wass = f(torch.cat([x, zr], 1)).mean() - f(torch.cat([x, zf], 1)).mean()
    return -wass + GP_WEIGHT * penalty


def _eager_body(params, data, opt):
    def body():
        opt.zero_grad(set_to_none=False)
        _eager_loss(params, *data).backward()
        opt.step()
    return body


def _op_body(params, data, opt, backend):
    """backend: a backend name, optionally ":precision" (e.g. "cpp:bf16")."""
    n = len(params) // 2
    critic = MLPParams(params[:n], params[n:])
    backend, _, precision = backend.partition(":")

    def body():
        out = critic_gradient_penalty(critic, *data, gp_weight=GP_WEIGHT, backend=backend,
                                      precision=precision or None)
        for p, g in zip(params, [*out.weight_grads, *out.bias_grads]):
            p.grad = g
        opt.step()
    return body


def _with_tf32(body):
    def run():
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            body()
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old
    return run


def _make_step(variant, params, data):
    if variant.startswith("op:"):
        run = _op_body(params, data, _adam(params), variant[3:])
    elif variant.startswith("graph:"):
        run = cuda_graph(_op_body(params, data, _adam(params, capturable=True), variant[6:]))
    elif variant == "eager":
        run = _eager_body(params, data, _adam(params))
    elif variant == "eager_tf32":
        run = _with_tf32(_eager_body(params, data, _adam(params)))
    elif variant == "eager_cuda_graph":
        run = cuda_graph(_eager_body(params, data, _adam(params, capturable=True)))
    else:
        raise ValueError(variant)

    def step():
        run()
        _sync()
    step()  # first call outside the timing: compiles kernels, creates the optimizer state
    return step


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_critic_step(benchmark, variant, batch, width):
    if batch >= 65536 and SKIP_LARGE:
        pytest.skip("LSDM_BENCH_SKIP_LARGE set")
    params, data = _setup(batch, width)
    try:
        step = _make_step(variant, params, data)
    except Exception as exc:  # noqa: BLE001 - a competitor that cannot run here is reported, not fatal
        pytest.skip(f"{variant} unavailable: {type(exc).__name__}: {exc}")
    benchmark.group = f"critic step {DEVICE.type} batch={batch} width={width}"
    benchmark.extra_info.update(device=torch.cuda.get_device_name() if CUDA else "cpu", variant=variant,
                                torch=torch.__version__, threads=torch.get_num_threads())
    rounds, iterations = _rounds(batch)
    benchmark.pedantic(step, rounds=rounds, iterations=iterations, warmup_rounds=1)
