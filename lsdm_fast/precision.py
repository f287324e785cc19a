"""Mixed precision (LSDMConfig.precision): "fp32" (none), "bf16" or "fp16" autocast; fp16 adds a
GradScaler. The critic step always runs in float32 (docs/design.md §6, "Mixed precision"); its GEMMs
in float32 unless the op's matmul precision says otherwise (docs/design.md §4, "Precision").
cpu_has_fast_bf16: whether bf16 pays on this CPU."""
from __future__ import annotations

import contextlib
import functools

import torch

CPUINFO = "/proc/cpuinfo"
# /proc/cpuinfo flags of the x86 units that multiply bfloat16 natively
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (AMX-BF16 or AVX512-BF16): where bf16 GEMMs
    are faster than float32 ones. Elsewhere (older Intel, AMD before Zen 4, ARM) they are emulated, slower.
    Asks torch (which also enables AMX for the process), else reads /proc/cpuinfo."""
    ask = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    if all(callable(f) for f in ask):
        try:
            return any(bool(f()) for f in ask)
        except RuntimeError:  # a torch that cannot query: the kernel's flags still tell
            pass
    return bool(cpu_flags() & set(BF16_FLAGS))


def cpu_flags(path: str | None = None) -> set[str]:
    """The CPU feature flags of the first processor in `path` (default CPUINFO; empty where there is none:
    not Linux)."""
    try:
        with open(path or CPUINFO, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    return set()


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

