"""Guards that stop a training run cleanly: divergence (NaN/Inf) and out of memory.

Two kinds of divergence check, with the same promise (a bad update is never applied, so neither
the weights nor a checkpoint ever hold a bad state):

- on the host (`finite_or_raise`, and `HostGuard`: the same check behind DeviceGuard's interface):
  read the values and raise before the optimiser step. Each read is a device synchronisation.
- on the device (`DeviceGuard`): record the first non-finite value in device buffers, raise a
  `halt` flag that the optimisers read as `found_inf` (so they skip the update on the device),
  and read it all back once in `check()`: every N steps and before every checkpoint.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator, Sequence

import torch

from . import distributed as D


class TrainingError(RuntimeError):
    """Training stopped: divergence (NaN/Inf) or out of memory. The message says where and what to try."""


def is_oom(exc: BaseException) -> bool:
    """Out of memory (CUDA's error, or the CPU allocator's message), not our own report of it."""
    if isinstance(exc, TrainingError):
        return False
    return isinstance(exc, torch.OutOfMemoryError) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc))


def oom_error(stage: str, step: int, batch_size: int, field: str) -> TrainingError:
    """The error for running out of memory: names the (global) batch size and a smaller one to try."""
    _, world = D.rank_world()
    per = f" ({batch_size // world} per process)" if world > 1 else ""
    smaller = max(1, batch_size // 2) if world == 1 else max(world, batch_size // 2 // world * world)
    return TrainingError(f"{stage}: out of memory at step {step} on a batch of {batch_size}{per}; try a smaller "
                         f"batch, e.g. --batch-size {smaller} ({field}={smaller})")


@contextlib.contextmanager
def out_of_memory_as_training_error(stage: str, step: int, batch_size: int, field: str) -> Iterator[None]:
    """Re-raise out of memory inside the block as `oom_error(...)`; other errors pass unchanged."""
    try:
        yield
    except RuntimeError as exc:
        if is_oom(exc):
            raise oom_error(stage, step, batch_size, field) from None
        raise


def grad_norm(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """The global 2-norm of a list of gradients, in float32, on their device (no host read)."""
    return torch.stack(torch._foreach_norm([g.float() for g in grads])).norm() if grads else torch.zeros(())


def finite_or_raise(stage: str, where: str, values: dict[str, float], describe: Callable[[], str], hint: str) -> None:
    """Host check: raise a TrainingError naming the first non-finite value (call before the optimiser step)."""
    for name, v in values.items():
        if not math.isfinite(v):
            raise TrainingError(f"{stage} diverged at {where}: {name} is {v}; the update was not applied and "
                                f"{describe()}; {hint}")


class DeviceGuard:
    """Device-side divergence check for code that must not synchronise (a CUDA graph, say).

    `watch(step, code, values)` records the first watched value that is not finite: the step
    (a device scalar filled before each step), a code the caller maps to words, and the value;
    and raises `halt`, a float32 0/1 scalar that the optimisers take as `found_inf` (fused Adam
    then leaves the weights, moments and step count untouched). `halt` stays raised: every later
    update is skipped too, so the weights stay those before the first bad update until `check()`
    reads the record (one host read) and raises.
    """

    def __init__(self, device: torch.device):
        self.halt = torch.zeros((), device=device)
        self.step = torch.zeros((), dtype=torch.float64, device=device)
        self._record = torch.tensor([-1.0, -1.0, 0.0], dtype=torch.float64, device=device)  # step, code, value

    def attach(self, *optimizers: torch.optim.Optimizer) -> None:
        for opt in optimizers:
            opt.found_inf = self.halt
            opt.grad_scale = None

    def set_step(self, step: int) -> None:
        self.step.fill_(step)  # a kernel launch with the value as argument: no host read

    def watch(self, code: int, values: Sequence[torch.Tensor]) -> torch.Tensor:
        """Record the first non-finite of `values` (codes code, code+1, ...) unless halted; returns `ok`,
        a bool device scalar: no halt before or after this check."""
        vals = torch.stack([v.detach().reshape(()).double() for v in values])
        finite = torch.isfinite(vals)
        first = (~finite).to(torch.int32).argmax().reshape(1)  # the first non-finite value (0 if none)
        bad = ~finite.all()
        new = bad & (self.halt == 0)
        entry = torch.cat([self.step.reshape(1), first.double() + code, vals.index_select(0, first)])
        self._record.copy_(torch.where(new, entry, self._record))
        self.halt.copy_(torch.where(bad, torch.ones_like(self.halt), self.halt))
        return self.halt == 0

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Inside the block every update is skipped and nothing is recorded (warm-up runs); the
        halt flag and the record are as before afterwards."""
        saved = self.halt.clone(), self._record.clone()
        self.halt.fill_(1.0)
        try:
            yield
        finally:
            self.halt.copy_(saved[0])
            self._record.copy_(saved[1])

    def reset(self) -> None:
        self.halt.zero_()
        self._record[:2].fill_(-1.0)
        self._record[2].fill_(0.0)

    def read(self) -> tuple[int, int, float] | None:
        """(step, code, value) of the first bad value since the last reset, or None: one host read."""
        step, code, value = self._record.tolist()
        return None if step < 0 else (int(step), int(code), value)


class HostGuard:
    """DeviceGuard's interface, checked on the host: `watch` reads the values (one synchronisation) and
    raises the TrainingError for the first non-finite one at once, before the update is applied.
    `explain(step, code)` gives (where, what) for the message; `read` has nothing left to report."""

    def __init__(self, stage: str, explain: Callable[[int, int], tuple[str, str]], describe: Callable[[], str],
                 hint: str):
        self.stage, self.explain, self.describe, self.hint = stage, explain, describe, hint
        self.step = 0

    def set_step(self, step: int) -> None:
        self.step = step

    def watch(self, code: int, values: Sequence[torch.Tensor]) -> None:
        vals = torch.stack([v.detach().reshape(()).double() for v in values]).tolist()
        for i, v in enumerate(vals):
            where, name = self.explain(self.step, code + i)
            finite_or_raise(self.stage, where, {name: v}, self.describe, self.hint)

    def read(self) -> None:
        return None


def nonfinite_tensors(tensors: dict) -> list[str]:
    """Names of the floating tensors in `tensors` (name -> tensor, nested dicts allowed) holding a NaN or an Inf."""
    bad = []
    for name, t in tensors.items():
        if isinstance(t, dict):
            bad += [f"{name}.{k}" for k in nonfinite_tensors(t)]
        elif isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all():
            bad.append(name)
    return bad


def check_finite_state_dict(tensors: dict, path: str, error=ValueError) -> None:
    """Refuse weights read from `path` that hold NaN/Inf (they would sample NaN images without a word), naming the
    file and the first bad tensors; `error` is the exception class to raise."""
    bad = nonfinite_tensors(tensors)
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise error(f"{path}: damaged: the tensor {', '.join(repr(b) for b in bad[:3])}{more} holds NaN or Inf "
                    "values: non-finite weights make every output NaN; retrain, or use an earlier checkpoint")
