"""One full WGAN-GP critic step (loss, every parameter gradient, Adam update) per backend,
against eager PyTorch (autograd with create_graph=True), and on CUDA also against a CUDA graph of
the eager step and the compiled-loss variant (torch._dynamo.config.trace_autograd_ops=True,
backward and Adam eager).

    pytest bench/bench_critic_step.py --benchmark-only
    LSDM_BENCH_SKIP_LARGE=1 pytest bench/bench_critic_step.py --benchmark-only   # no batch 65536

Critic: (10 label + 16 latent = 26) -> W -> W -> 1, LeakyReLU(0.2), W in {256, 512};
batch 256, 4096, 65536. Not part of the default test run (testpaths = tests/).
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from lsdm_fast.ops import MLPParams, available_backends, critic_gradient_penalty

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DX, DZ = 10, 16
BATCHES = [256, 4096, 65536]
WIDTHS = [256, 512]
GP_WEIGHT = 10.0
SKIP_LARGE = os.environ.get("LSDM_BENCH_SKIP_LARGE", "0") not in ("", "0")

VARIANTS = ["eager"] + [f"op:{b}" for b in available_backends("critic_gradient_penalty", DEVICE)]
if DEVICE.type == "cuda":
    VARIANTS += ["eager_cuda_graph", "compiled_loss"]


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _rounds(batch: int) -> int:
    if DEVICE.type == "cuda":
        return 50
    return {256: 40, 4096: 8}.get(batch, 3)


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


def _make_step(variant, params, data):
    x, zr, zf, t = data
    n = len(params) // 2
    if variant.startswith("op:"):
        backend = variant[3:]
        opt = _adam(params)
        critic = MLPParams(params[:n], params[n:])

        def step():
            out = critic_gradient_penalty(critic, x, zr, zf, t, gp_weight=GP_WEIGHT, backend=backend)
            for p, gr in zip(params, [*out.weight_grads, *out.bias_grads]):
                p.grad = gr
            opt.step()
            _sync()
        return step
    if variant == "eager":
        opt = _adam(params)

        def step():
            opt.zero_grad(set_to_none=True)
            _eager_loss(params, x, zr, zf, t).backward()
            opt.step()
            _sync()
        return step
    if variant == "eager_cuda_graph":
        opt = _adam(params, capturable=True)

        def body():
            opt.zero_grad(set_to_none=False)
            _eager_loss(params, x, zr, zf, t).backward()
            opt.step()

        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                body()
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            body()

        def step():
            graph.replay()
            _sync()
        return step
    if variant == "compiled_loss":
        import torch._dynamo.config as dynamo_config

        dynamo_config.trace_autograd_ops = True
        opt = _adam(params)
        loss_fn = torch.compile(_eager_loss)

        def step():
            opt.zero_grad(set_to_none=True)
            loss_fn(params, x, zr, zf, t).backward()
            opt.step()
            _sync()
        return step
    raise ValueError(variant)


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
    benchmark.extra_info.update(device=torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu",
                                torch=torch.__version__, threads=torch.get_num_threads())
    benchmark.pedantic(step, rounds=_rounds(batch), iterations=1, warmup_rounds=2)
