"""How stage 2's step runs (its mode) and its capture in a CUDA graph, apart from the method itself
(lsdm_fast.matching_step).

- `pick_mode`: "auto" is "graph" on CUDA where capture is supported (one process or NCCL; fp32 or
  bf16) and "sync" otherwise; an explicit "graph" that cannot be captured here is refused (or runs
  its body eagerly with capture=False, which is how graph mode is tested on CPU).
- `capture_graph`: warm up on a side stream, then capture the step's body in a CUDA graph; a backend
  that cannot be captured (it synchronises, say) gives None, with a warning, and the step falls back
  to sync mode.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from . import distributed as D
from ._ext import warn_once
from .guards import DeviceGuard, is_oom

MODES = ("auto", "sync", "graph")
WARMUP_STEPS = 3  # eager runs on a side stream before capture: lazy state, autotuning, caches


def graph_unsupported(device: torch.device, precision: str) -> str | None:
    """Why the step cannot be captured in a CUDA graph here (None: it can)."""
    if precision == "fp16":
        return "fp16 needs a GradScaler, whose dynamic loss scale is a host-side decision"
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device (tensors are on {device})"
    if D.rank_world()[1] > 1 and torch.distributed.get_backend() != "nccl":
        return f"multi-process capture needs the NCCL backend (running {torch.distributed.get_backend()})"
    return None


def pick_mode(mode: str, device: torch.device, precision: str, capture: bool | None) -> tuple[str, bool]:
    """(mode, capture) for a requested mode; `capture` (graph mode only): replay from a CUDA graph
    (default: on CUDA) or run the same body eagerly (the only choice on CPU)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    why_not = graph_unsupported(device, precision)
    if mode == "auto":
        if why_not is not None and device.type == "cuda":
            warn_once(f"matching-step:{why_not}", f"lsdm_fast: stage 2 runs in sync mode: {why_not}")
        return ("graph", True) if why_not is None else ("sync", False)
    if mode == "sync":
        return "sync", False
    if precision == "fp16":
        raise ValueError(f"mode='graph' does not support precision 'fp16': {why_not}")
    capture = device.type == "cuda" if capture is None else capture
    if capture and why_not is not None:
        raise ValueError(f"mode='graph' with capture: {why_not}")
    return "graph", bool(capture)


def capture_graph(body: Callable[[], None], device: torch.device, guard: DeviceGuard,
                  weights: Sequence[torch.Tensor], backend: str) -> torch.cuda.CUDAGraph | None:
    """`body` captured in a CUDA graph (private pool), or None where it cannot be (with a warning).

    Warm-up first, on a side stream with the guard paused so no update is applied (lazy optimiser
    state, autotuning, weight-derived caches); then the versions of `weights` are bumped so caches
    keyed on them are rebuilt inside the graph."""
    side = torch.cuda.Stream(device)
    graph = torch.cuda.CUDAGraph()
    with guard.paused():
        side.wait_stream(torch.cuda.current_stream(device))  # after the pause's write of the halt flag
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                body()
        torch.cuda.current_stream(device).wait_stream(side)
        with torch.no_grad():
            for p in weights:
                p.mul_(1.0)
        # the default generator's state before the capture: torch registers it with every capture and leaves it
        # expecting a graph when the capture fails (its next use then raises "Offset increment outside graph
        # capture encountered unexpectedly", seen on an H200 with torch 2.11)
        default_gen = torch.cuda.default_generators[device.index if device.index is not None
                                                    else torch.cuda.current_device()]
        gen_state = default_gen.clone_state()
        try:
            with torch.cuda.graph(graph):
                body()
        except Exception as exc:  # noqa: BLE001 - whatever stops the capture, the sync step can run
            torch.cuda.synchronize(device)
            default_gen.graphsafe_set_state(gen_state)
            if is_oom(exc):
                raise
            warn_once(f"matching-step-capture:{backend}",
                      f"lsdm_fast: stage 2 runs in sync mode: the step could not be captured in a CUDA graph "
                      f"with backend {backend!r} ({type(exc).__name__}: {str(exc).splitlines()[0]})")
            return None
    return graph
