"""Backend registry and dispatch for the hot ops.

Every hot op has one public entry point with `backend=`; implementations register here:

    @register("critic_gradient_penalty", "cpp", available=lambda device: ...)
    def _impl(...): ...

"auto" picks, for the tensors' device, the first available backend in AUTO_ORDER that can take
the problem; when the preferred compiled backend is missing or cannot take it (`limits`, e.g. a
kernel written for 2 to 4 layers), it falls back down the order, to "torch" at the end, with one
warning per op and reason. An explicitly named backend that cannot take the problem is a
ValueError naming its limit. The limits are the backends', not the models': a config may ask for
any depth, and only the backend that cannot run it says so.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch

from .._ext import warn_once
from ._backend_util import DECLARED_PRECISIONS, PRECISIONS

# The one list of backend names: ops/__init__.py imports the modules `*_<name>.py` of the compiled
# ones, the CLI's --backend choices are "auto" + these (docs/design.md §4, "Adding a backend").
BACKENDS = ("torch", "cpp", "triton", "cuda")
# CPU: the C++ kernels (measured 1.5-2.2x eager, bench/RESULTS.md). CUDA, measured on an H200 on 2026-12-04
# (bench/RESULTS.md, "GPU"): the Triton critic step captured in a CUDA graph beats the CUDA one (B = 256: 0.16
# vs 0.55 ms; B = 65,536: 5.7 vs 12.4 ms) and eager PyTorch (3.9 / 12.4 ms); encode / generate in bf16: the
# Triton kernels beat the CUDA ones and eager bf16 on the default patch model (generate 2^20 rows 26.9 ms vs
# 128 ms CUDA and 79 ms eager bf16; encode 16.2 vs 231 and 135 ms), but not eager bf16 on the MLP model
# (generate 13.1 vs 7.7 ms, encode 5.3 vs 3.7 ms). float32 at "ieee" runs both GPU backends' encode / generate
# on FMA units, measured slower than eager PyTorch (cuBLAS): their auto_skip hands "auto" to torch there.
AUTO_ORDER = {"cpu": ("cpp", "torch"), "cuda": ("triton", "cuda", "torch")}


@dataclass
class _Impl:
    fn: Callable
    available: Callable[[torch.device], bool]
    why_unavailable: Callable[[], str] | None = None
    # problem (e.g. {"layers": 5}) -> why this backend cannot run it, or None
    limits: Callable[[dict], str | None] | None = None
    # the keyword by which the backend takes a matmul precision (None: it has no choice, full float32)
    precision_kw: str | None = None
    # (PatchPart, MLPs, precision) -> whether the backend runs that patch front / tail itself, fused with the
    # MLPs (ops/patch.py); None: it never does, the entry point calls the module
    fuses: Callable | None = None
    # the DECLARED_PRECISIONS it takes (e.g. "bf16")
    precisions: tuple[str, ...] = ()
    # problem -> why "auto" should pass this backend over although it can run the problem (measured slower than
    # the next one in AUTO_ORDER for it), or None; an explicitly named backend still runs it
    auto_skip: Callable[[dict], str | None] | None = None

    def refuses(self, problem: dict | None) -> str | None:
        return self.limits(problem) if self.limits is not None and problem else None


_IMPLS: dict[str, dict[str, _Impl]] = {}
# backend modules that failed to import: "module name" -> reason
IMPORT_ERRORS: dict[str, str] = {}


def register(op: str, backend: str, available: Callable[[torch.device], bool] | None = None,
             why_unavailable: Callable[[], str] | None = None, limits: Callable[[dict], str | None] | None = None,
             fuses: Callable | None = None, precisions: tuple[str, ...] = (),
             auto_skip: Callable[[dict], str | None] | None = None):
    """fuses: for encode / generate, fuses(part, mlps, precision) -> bool: the backend takes `front=part` /
    `tail=part` (a PatchPart, ops/patch.py) and computes the whole chain itself (ops/encode_generate.py); mlps:
    (encoder,) / (generator, decoder); precision as the entry point got it. `precisions`: the DECLARED_PRECISIONS
    (e.g. "bf16") the backend's precision keyword takes. `auto_skip(problem)`: why "auto" passes the backend over
    for that problem (measured slower than the next in AUTO_ORDER), or None."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")

    def deco(fn):
        takes = inspect.signature(fn).parameters
        precision_kw = next((k for k in ("precision", "input_precision") if k in takes), None)
        _IMPLS.setdefault(op, {})[backend] = _Impl(fn, available or (lambda device: True), why_unavailable, limits,
                                                   precision_kw, fuses, tuple(precisions), auto_skip)
        return fn

    return deco


def available_backends(op: str, device: torch.device | str = "cpu") -> list[str]:
    device = torch.device(device)
    return [b for b in BACKENDS if b in _IMPLS.get(op, {}) and _IMPLS[op][b].available(device)]


def implemented_backends(op: str) -> list[str]:
    """The backends with an implementation of `op` in this installation (whether or not this machine can run them):
    what a command line may offer for it."""
    return [b for b in BACKENDS if b in _IMPLS.get(op, {})]


def registered_ops() -> list[str]:
    return sorted(_IMPLS)


def precision_kwargs(op: str, backend: str, precision: str | None) -> dict:
    """The keyword arguments that hand an entry point's `precision=` to the resolved `backend`: none for
    precision=None (the backend's default, see _backend_util.env_precision) or for a backend without a
    matmul-precision choice (torch: full float32, whatever GPU precision is asked). A value no backend
    knows is refused here, the same for every backend; so is a DECLARED_PRECISIONS value ("bf16") that
    the backend did not register; another value a backend does not take is refused by that backend."""
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision must be None or one of {PRECISIONS}, got {precision!r}")
    impl = _IMPLS[op][backend]
    if precision in DECLARED_PRECISIONS and precision not in impl.precisions:
        takers = [b for b, i in _IMPLS[op].items() if precision in i.precisions]
        raise ValueError(f"precision={precision!r} is not taken by backend {backend!r} for {op!r} (only by "
                         f"{', '.join(map(repr, takers)) or 'no backend'}); use precision='ieee' or None there")
    kw = impl.precision_kw
    return {} if precision is None or kw is None else {kw: precision}


def fuses(op: str, backend: str, part, mlps: tuple, precision: str | None) -> bool:
    """Whether `backend`'s `op` runs the patch front / tail `part` itself, fused with the MLPs `mlps` ((encoder,)
    or (generator, decoder)) at matmul precision `precision` (None: the backend's default)."""
    f = _IMPLS[op][backend].fuses
    return f is not None and bool(f(part, mlps, precision))


def resolve(op: str, backend: str, device: torch.device, problem: dict | None = None) -> tuple[str, Callable]:
    """The backend name and function to run `op` with on `device`, for `problem` (what a backend's
    limits look at, e.g. {"layers": 3}; None: no limit is checked)."""
    impls = _IMPLS.get(op)
    if not impls:
        raise KeyError(f"no implementation registered for op {op!r}")
    if backend == "auto":
        order = AUTO_ORDER.get(device.type, ("torch",))
        passed_over = []  # (backend, why) of the compiled backends skipped
        for name in order:
            impl = impls.get(name)
            if impl is None:
                continue
            why = None if impl.available(device) else "not available here"
            why = why or impl.refuses(problem)
            if why is None and impl.auto_skip is not None and problem and impl.auto_skip(problem):
                continue  # a measured choice, not a fallback: no warning
            if why is None:
                if name == "torch" and passed_over:
                    first, reason = passed_over[0]
                    if reason == "not available here":
                        warn_once(f"{op}:{device.type}",
                                  f"lsdm_fast: no compiled backend for {op!r} on {device.type} (wanted {first!r}); "
                                  "falling back to the pure-PyTorch reference. Build the extension with "
                                  "`pip install --no-build-isolation -e .` and see `lsdm info`.")
                    else:
                        warn_once(f"{op}:{device.type}:{reason}",
                                  f"lsdm_fast: {op!r} on {device.type} runs on the pure-PyTorch reference: "
                                  f"{first!r} {reason}")
                return name, impl.fn
            if name != "torch":
                passed_over.append((name, why))
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
    why = impl.refuses(problem)
    if why is not None:
        raise ValueError(f"backend {backend!r} for {op!r} {why}; use backend='auto' (it falls back to one that can) "
                         f"or another backend")
    return backend, impl.fn
