"""The core's own matrix-multiply peak, the yardstick the step benchmarks' GFLOP/s are read against (run it in
the same pytest session as them, so the same load and clocks apply):

    pytest bench/bench_matmul_peak.py bench/bench_stage1_step.py bench/bench_stage2_step.py --benchmark-only \
        --benchmark-json=steps.json

float32 (MKL sgemm on CPU, cuBLAS on a GPU) at the shapes the package's steps multiply (batch 256 x width 512,
the critic's and the generator's) and at a large square size (what the units can do at best); bfloat16 with
float32 output where the CPU multiplies bf16 natively (AMX / AVX512-BF16: lsdm_fast.precision.cpu_has_fast_bf16)
or on a GPU. One torch thread unless LSDM_BENCH_THREADS says otherwise. extra_info["gflops_per_s"] is
2 m n k / median.
"""
from __future__ import annotations

import os

import pytest
import torch

from lsdm_fast.precision import cpu_has_fast_bf16

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
THREADS = int(os.environ.get("LSDM_BENCH_THREADS", "1"))
SHAPES = {"256x512x512": (256, 512, 512), "768x512x512": (768, 512, 512), "1024x1024x1024": (1024, 1024, 1024)}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_matmul_peak(benchmark, shape, dtype):
    if dtype == "bfloat16" and DEVICE.type == "cpu" and not cpu_has_fast_bf16():
        pytest.skip("this CPU has neither AMX-BF16 nor AVX512-BF16 (bf16 products would be emulated)")
    torch.set_num_threads(THREADS)
    m, n, k = SHAPES[shape]
    g = torch.Generator().manual_seed(0)
    dt = getattr(torch, dtype)
    a = torch.randn(m, k, generator=g).to(DEVICE, dt)
    b = torch.randn(k, n, generator=g).to(DEVICE, dt)

    def mm():
        out = a @ b
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        return out

    benchmark.group = f"matmul peak {DEVICE.type} threads={THREADS}"
    benchmark.extra_info.update(threads=torch.get_num_threads(), flops=2 * m * n * k, dtype=dtype)
    benchmark.pedantic(mm, rounds=30, iterations=1, warmup_rounds=3)
    benchmark.extra_info["gflops_per_s"] = 2 * m * n * k / benchmark.stats.stats.median / 1e9
