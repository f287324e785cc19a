"""One stage-1 step (a batch of images through E then D, BCE, backward, Adam) of the package's image
autoencoders, every competitor in the same run:

- `strided`: issue 14's design, the default until issue 25 (4x4 stride-2 convolutions 32/64 channels,
  transposed convolutions, GroupNorm), the model old checkpoints hold;
- `patch`: the default fast design (models.PatchEncoder/PatchDecoder at the config's patch_width: every layer a GEMM on channels-last tensors);

each as eager fp32 (`eager`), channels-last memory format (`channels_last`, strided only: the patch model is
channels-last by construction), bf16 autocast (`bf16`, only where the CPU has AMX or AVX512-BF16; what
precision="auto" picks there), and torch.compile (`compile`, the compile time is paid in the warm-up and
reported in extra_info); the patch model also as `cpp`: the fused step ops.autoencoder_loss_grads(backend="cpp")
(csrc/patch_ae_cpu.cpp, what stage 1 runs on CPU at fp32), its gradients handed to the same Adam.

    pytest bench/bench_stage1_step.py --benchmark-only --benchmark-json=stage1.json
    python bench/report.py stage1.json --baseline strided:eager
    LSDM_BENCH_COMPILE=0 ...   # skip torch.compile (35+ s of compiling per model)

MNIST-shaped batches (256 x 28 x 28, uniform random values: the step's cost does not depend on them), one
torch thread unless LSDM_BENCH_THREADS says otherwise. extra_info carries the step's FLOPs and the GFLOP/s
reached (the matmul peak to read them against: bench/bench_matmul_peak.py, same run).
"""
from __future__ import annotations

import os
import time

import pytest
import torch
import torch.nn.functional as F

from lsdm_fast import ops
from lsdm_fast.config import LATENT_START, AutoencoderConfig
from lsdm_fast.models import build_autoencoder
from lsdm_fast.precision import cpu_has_fast_bf16
from lsdm_fast.profiling import count_flops

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
THREADS = int(os.environ.get("LSDM_BENCH_THREADS", "1"))
COMPILE = os.environ.get("LSDM_BENCH_COMPILE", "1") not in ("", "0")
BATCH, SIDE = 256, 28
DESIGNS = {"strided": dict(conv_design="strided", conv_channels=(32, 64)), "patch": dict(conv_design="patch")}
MODES = ["eager", "channels_last", "bf16", "compile", "cpp"]


def _variants():
    out = []
    for design in DESIGNS:
        for mode in MODES:
            if (mode == "channels_last" and design != "strided") or (mode == "cpp" and design != "patch"):
                continue
            out.append(f"{design}:{mode}")
    return out


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _make(design: str):
    cfg = AutoencoderConfig(**DESIGNS[design])
    latent = cfg.latent_dim if cfg.latent_dim is not None else LATENT_START  # the fitted default keeps 32 on MNIST
    torch.manual_seed(0)
    enc, dec = build_autoencoder(cfg.kind, SIDE * SIDE, latent, cfg.hidden, (SIDE, SIDE), **cfg.arch_kwargs())
    return enc.to(DEVICE), dec.to(DEVICE)


@pytest.mark.parametrize("variant", _variants())
def test_stage1_step(benchmark, variant):
    design, mode = variant.split(":")
    if mode == "cpp" and "cpp" not in ops.available_backends("autoencoder_loss_grads", DEVICE):
        pytest.skip(f"no cpp backend for autoencoder_loss_grads on {DEVICE.type} (CPU only, needs the extension)")
    if mode == "bf16" and DEVICE.type == "cpu" and not cpu_has_fast_bf16():
        pytest.skip("this CPU has neither AMX-BF16 nor AVX512-BF16: bf16 would be emulated (precision='auto' "
                    "keeps fp32 here)")
    torch.set_num_threads(THREADS)
    enc, dec = _make(design)
    y = torch.rand(BATCH, SIDE * SIDE, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    if mode == "channels_last":  # the strided model keeps the default layout on CPU; force channels_last
        import lsdm_fast.models as models
        models_cl = models._channels_last
        models._channels_last = lambda h: h.contiguous(memory_format=torch.channels_last)
    params = list(enc.parameters()) + list(dec.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)

    def loss_fn(batch):
        with torch.autocast(DEVICE.type, torch.bfloat16, enabled=mode == "bf16"):
            rec = dec(enc(batch))
        return F.binary_cross_entropy(rec.float(), batch)

    fn = torch.compile(loss_fn) if mode == "compile" else loss_fn

    def step():
        loss = fn(y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync()

    def fused_loss_grads():  # the same loss (BCE, no latent penalty), loss and gradients from one call
        return ops.autoencoder_loss_grads(enc, dec, y, latent_l2=0.0, backend="cpp")

    if mode == "cpp":
        def step():  # noqa: F811 - the fused variant of the step above
            out = fused_loss_grads()
            opt.zero_grad(set_to_none=True)
            for p, g in zip(params, out.grads):
                p.grad = g
            opt.step()

    if mode == "compile" and not COMPILE:
        pytest.skip("LSDM_BENCH_COMPILE=0")
    t0 = time.perf_counter()
    step()  # compiles under torch.compile
    first = time.perf_counter() - t0
    try:
        flops = count_flops(fused_loss_grads if mode == "cpp" else lambda: loss_fn(y).backward())
        benchmark.group = f"stage-1 step {DEVICE.type} batch={BATCH} {SIDE}x{SIDE}"
        benchmark.extra_info.update(device=torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu",
                                    torch=torch.__version__, threads=torch.get_num_threads(), flops=flops,
                                    first_step_seconds=first)
        benchmark.pedantic(step, rounds=15, iterations=1, warmup_rounds=2)
        benchmark.extra_info["gflops_per_s"] = flops / benchmark.stats.stats.median / 1e9
    finally:
        if mode == "channels_last":
            models._channels_last = models_cl
