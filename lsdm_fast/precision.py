"""Mixed precision (LSDMConfig.precision): "fp32" (none), "bf16" or "fp16" autocast; fp16 adds a
GradScaler. The critic step always runs in float32 (docs/design.md §6, "Mixed precision")."""
from __future__ import annotations

import contextlib

import torch


def autocast(precision: str, device: torch.device, *, cache_enabled: bool = True):
    """Autocast for `precision` on `device` (a no-op context for fp32). Inside a CUDA graph
    capture pass cache_enabled=False: cached casts would outlive the capture they were made in."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=cache_enabled)


def make_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def step_optimizer(opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    """opt.step(), through the GradScaler under fp16 (which skips a step whose gradients overflowed)."""
    if scaler is None:
        opt.step()
    else:
        scaler.step(opt)
        scaler.update()


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AMX-BF16 or AVX512-BF16), where bf16 GEMMs run
    several times faster than float32 ones; elsewhere bf16 is emulated and slower. Asked of torch, else of
    /proc/cpuinfo (Linux), else False."""
    probe = getattr(torch, "cpu", None)
    checks = [getattr(probe, n, None) for n in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    if all(callable(c) for c in checks):
        return any(c() for c in checks)
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags
