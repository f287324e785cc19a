"""One full stage-2 generator step (5 critic updates + 1 generator update, Adam, guards) through
lsdm_fast.matching_step.MatchingStep, per critic backend, in sync mode (host guard after every
update, the configured Adam) against graph mode (device guard, fused Adam; on CUDA replayed from a
CUDA graph, on CPU the same body run eagerly).

    pytest bench/bench_stage2_step.py --benchmark-only
    LSDM_BENCH_SKIP_LARGE=1 pytest bench/bench_stage2_step.py --benchmark-only   # no batch 65536
    LSDM_BENCH_SMALL=1 pytest bench/bench_stage2_step.py --benchmark-only        # batch 256, width 256 only
    python bench/report.py stage2.json --baseline sync:torch

Variants MODE:BACKEND, and MODE:cpp:bf16: the cpp critic ops with precision="bf16"
(LSDM_CPU_MATMUL_PRECISION=bf16 for the step; bf16 GEMMs on AMX / AVX512-BF16, emulated elsewhere);
sync:BACKEND+marginal: with stage 2's marginal critic h(z) (one more critic update per critic update).

Generator (16 noise + 10 label) -> W -> W -> 16, critic (10 + 16) -> W -> W -> 1, LeakyReLU(0.2),
W in {256, 512}; batch 256, 4096, 65536 drawn from 8192 (label, latent) pairs. float32. Not part
of the default test run (testpaths = tests/).
"""
from __future__ import annotations

import os

import pytest
import torch

from lsdm_fast.config import MatchingConfig
from lsdm_fast.matching_step import MatchingStep
from lsdm_fast.models import Critic, Generator
from lsdm_fast.ops import available_backends
from lsdm_fast.profiling import count_flops

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DX, DZ, NOISE, ROWS, CRITIC_STEPS = 10, 16, 16, 8192, 5
SMALL = os.environ.get("LSDM_BENCH_SMALL", "0") not in ("", "0")
SKIP_LARGE = os.environ.get("LSDM_BENCH_SKIP_LARGE", "0") not in ("", "0")
BATCHES = [256] if SMALL else [256, 4096] if SKIP_LARGE else [256, 4096, 65536]
WIDTHS = [256] if SMALL else [256, 512]
MODES = ["sync", "graph"]
_BACKENDS = available_backends("critic_gradient_penalty", DEVICE)
VARIANTS = [f"{mode}:{b}" for b in _BACKENDS for mode in MODES] + [f"{mode}:cpp:bf16" for mode in MODES if "cpp" in _BACKENDS]
# with the marginal critic (opt-in, MatchingConfig.marginal_weight), against 4 x ROWS latents of every image
VARIANTS += [f"sync:{b}+marginal" for b in _BACKENDS]


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _rounds(batch: int) -> int:
    if DEVICE.type == "cuda":
        return 10 if batch >= 65536 else 30
    return {256: 10, 4096: 3}.get(batch, 1)


def _make_step(variant: str, batch: int, width: int) -> MatchingStep:
    variant, marginal = variant.removesuffix("+marginal"), variant.endswith("+marginal")
    mode, backend = variant.split(":")[:2]
    g = torch.Generator(device="cpu").manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        gen = Generator(NOISE, DX, DZ, (width, width)).to(DEVICE)
        critic = Critic(DX, DZ, (width, width)).to(DEVICE)
    x = torch.eye(DX)[torch.randint(DX, (ROWS,), generator=g)].to(DEVICE)
    z = torch.randn(ROWS, DZ, generator=g).to(DEVICE)
    cfg = MatchingConfig(generator_hidden=(width, width), critic_hidden=(width, width), critic_steps=CRITIC_STEPS,
                         batch_size=batch, backend=backend, lr=1e-4, marginal_weight=1.0 if marginal else 0.0)
    z_all = torch.randn(4 * ROWS, DZ, generator=g).to(DEVICE) if marginal else None
    return MatchingStep(gen, critic, x, z, cfg, torch.Generator(device=DEVICE).manual_seed(0), mode=mode,
                        z_marginal=z_all)


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_stage2_step(benchmark, monkeypatch, variant, batch, width):
    precision = variant.removesuffix("+marginal").split(":")[2] if variant.count(":") == 2 else "ieee"
    monkeypatch.setenv("LSDM_CPU_MATMUL_PRECISION", precision)  # the matching step names no precision
    step = _make_step(variant, batch, width)
    counter = iter(range(10**9))

    def one_step():
        step(next(counter))
        _sync()

    one_step()  # graph mode on CUDA captures here
    if step.mode != variant.split(":")[0]:
        pytest.skip(f"{variant}: fell back to {step.mode} mode (see the warning)")
    benchmark.group = f"stage-2 step {DEVICE.type} batch={batch} width={width}"
    benchmark.extra_info.update(device=torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu",
                                torch=torch.__version__, threads=torch.get_num_threads(), mode=step.mode,
                                captured=step.capture, backend_ran=step.backend, critic_steps=CRITIC_STEPS,
                                cpu_matmul_precision=precision)
    benchmark.pedantic(one_step, rounds=_rounds(batch), iterations=1, warmup_rounds=1)
    step.check()  # the timed steps were all finite
    # the step's FLOPs, counted on a float32 twin (bf16 GEMMs go to MKL directly, past torch's counter; the work
    # is the same), read against bench_matmul_peak.py's in the same run
    monkeypatch.setenv("LSDM_CPU_MATMUL_PRECISION", "ieee")
    twin, k = _make_step(variant, batch, width), iter(range(10**9))
    flops = count_flops(lambda: twin(next(k)))
    benchmark.extra_info.update(flops=flops, gflops_per_s=flops / benchmark.stats.stats.median / 1e9)
