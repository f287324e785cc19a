"""Backend registry and dispatch for the hot ops.

Every hot op has one public entry point with `backend=`; implementations register here:

    @register("critic_gradient_penalty", "cpp", available=lambda device: ...)
    def _impl(...): ...

"auto" picks, for the tensors' device, the first available backend in AUTO_ORDER; when the
preferred compiled backend is missing it falls back to "torch" with one warning per op.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .._ext import warn_once

BACKENDS = ("torch", "cpp", "triton", "cuda")
# CPU: the C++ kernels (measured 1.5-2.2x eager, bench/RESULTS.md). CUDA: no GPU timing exists
# yet (bench/RESULTS.md), so the order rests on offline evidence, the sm_90 compile reports of
# tests/sm90.py (2026-11-27): the Triton critic kernels run their GEMMs on tensor cores (HGMMA
# in the SASS of every TF32 kernel, no spills; tests/test_sm90_critic.py), while
# kernels/critic_gp.cu on main is FMA-only (no HMMA/HGMMA) with a 120-byte stack. Re-rank from
# bench/bench_critic_step.py once it has run on a GPU.
AUTO_ORDER = {"cpu": ("cpp", "torch"), "cuda": ("triton", "cuda", "torch")}


@dataclass
class _Impl:
    fn: Callable
    available: Callable[[torch.device], bool]
    why_unavailable: Callable[[], str] | None = None


_IMPLS: dict[str, dict[str, _Impl]] = {}
# backend modules that failed to import: "module name" -> reason
IMPORT_ERRORS: dict[str, str] = {}


def register(op: str, backend: str, available: Callable[[torch.device], bool] | None = None,
             why_unavailable: Callable[[], str] | None = None):
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")

    def deco(fn):
        _IMPLS.setdefault(op, {})[backend] = _Impl(fn, available or (lambda device: True), why_unavailable)
        return fn

    return deco


def available_backends(op: str, device: torch.device | str = "cpu") -> list[str]:
    device = torch.device(device)
    return [b for b in BACKENDS if b in _IMPLS.get(op, {}) and _IMPLS[op][b].available(device)]


def registered_ops() -> list[str]:
    return sorted(_IMPLS)


def resolve(op: str, backend: str, device: torch.device) -> tuple[str, Callable]:
    """The backend name and function to run `op` with on `device`."""
    impls = _IMPLS.get(op)
    if not impls:
        raise KeyError(f"no implementation registered for op {op!r}")
    if backend == "auto":
        order = AUTO_ORDER.get(device.type, ("torch",))
        for name in order:
            impl = impls.get(name)
            if impl is not None and impl.available(device):
                # warn only when a compiled backend exists for this op but cannot run here
                missing = [b for b in order if b != "torch" and b in impls]
                if name == "torch" and missing:
                    warn_once(
                        f"{op}:{device.type}",
                        f"lsdm_fast: no compiled backend for {op!r} on {device.type} "
                        f"(wanted {missing[0]!r}); falling back to the pure-PyTorch reference. "
                        "Build the extension with `pip install --no-build-isolation -e .` "
                        "and see `lsdm info`.",
                    )
                return name, impl.fn
        raise RuntimeError(f"no backend for {op!r} on {device}")  # torch is always registered
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} for {op}; expected 'auto' or one of {BACKENDS}")
    impl = impls.get(backend)
    if impl is None:
        raise RuntimeError(
            f"backend {backend!r} is not implemented for {op!r} "
            f"(implemented: {sorted(impls)}{'; import errors: ' + str(IMPORT_ERRORS) if IMPORT_ERRORS else ''})"
        )
    if not impl.available(device):
        why = impl.why_unavailable() if impl.why_unavailable else ""
        raise RuntimeError(
            f"backend {backend!r} for {op!r} is not available for tensors on {device}"
            + (f": {why}" if why else "")
            + f"; available here: {available_backends(op, device)}"
        )
    return backend, impl.fn
