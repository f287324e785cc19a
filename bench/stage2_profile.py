"""Where stage 2's time goes: one generator step of the default model, taken apart, and (given --data) the
pieces of LSDM.fit's stage 2 that are not steps.

    python bench/stage2_profile.py --out stage2_profile.json [--data ../shared/data/mnist] [--steps 300]

Steps: the default MatchingConfig's nets (generator and critic 512-512, 5 critic updates per generator update,
batch 256) on one-hot 10-class conditions and a 32-wide latent (MNIST's fitted size), built as
train_joint_matching builds them, per critic backend (torch, and the device's others) and mode (graph: replayed
from a CUDA graph on CUDA; sync: host guard after every update). For each: the first call (capture, JIT),
the steady step (--steps steps, one synchronisation at the end, as training runs them), the draws alone, the
graph's replay alone, then torch.profiler's top rows over 20 steps.

With --data (an MNIST-format folder or "digits"): a short real fit (stage 1 200 steps, grow_latent 0, then
--fit-steps generator steps) with its stage 2 split into train_joint_matching's loop and the rest (encoding
every image, the pseudo-label classifier, ...). A benchmark, not a test: nothing here is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import contextmanager

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from lsdm_fast.config import MatchingConfig  # noqa: E402
from lsdm_fast.matching_step import MatchingStep  # noqa: E402
from lsdm_fast.models import Critic, Generator  # noqa: E402
from lsdm_fast.ops import available_backends  # noqa: E402

CLASSES, LATENT, PAIRS = 10, 32, 1000


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def make_step(backend: str, mode: str, device: torch.device) -> MatchingStep:
    cfg = MatchingConfig(backend=backend)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        gen = Generator(LATENT, CLASSES, LATENT, cfg.generator_hidden, cfg.negative_slope).to(device)
        critic = Critic(CLASSES, LATENT, cfg.critic_hidden, cfg.negative_slope).to(device)
        x = torch.eye(CLASSES)[torch.randint(CLASSES, (PAIRS,))].to(device)
        z = torch.randn(PAIRS, LATENT).to(device)
    return MatchingStep(gen, critic, x, z, cfg, torch.Generator(device=device).manual_seed(0), mode=mode)


def profile_step(backend: str, mode: str, device: torch.device, steps: int, table_rows: int) -> dict:
    step = make_step(backend, mode, device)
    k = iter(range(10**9))
    row = {"backend": backend, "mode_asked": mode, "first_call_s": _timed(lambda: step(next(k)), device),
           "mode": step.mode, "captured": step.capture, "backend_ran": step.backend}
    for _ in range(5):
        step(next(k))

    def run_steps():
        for _ in range(steps):
            step(next(k))

    row["steady_ms"] = 1e3 * _timed(run_steps, device) / steps
    row["draws_ms"] = 1e3 * _timed(lambda: [step._draw() for _ in range(steps)], device) / steps
    if step._graph is not None:
        row["replay_ms"] = 1e3 * _timed(lambda: [step._graph.replay() for _ in range(steps)], device) / steps
    step.check()
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(20):
            step(next(k))
        _sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    row["profile_by_device_time"] = prof.key_averages().table(sort_by=key, row_limit=table_rows)
    row["profile_by_cpu_time"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=table_rows)
    return row


@contextmanager
def timing_the_step_loop(device: str):
    """Inside: every LSDM.fit's stage-2 generator-step loop (stages.train_joint_matching, which fit imports at
    each call) is timed; yields a dict whose "seconds" is the last loop's wall time, synchronised."""
    import lsdm_fast.stages as stages

    timed, inner = {}, stages.train_joint_matching

    def loop(*a, **kw):
        t0 = time.perf_counter()
        inner(*a, **kw)
        _sync(torch.device(device))
        timed["seconds"] = time.perf_counter() - t0

    stages.train_joint_matching = loop
    try:
        yield timed
    finally:
        stages.train_joint_matching = inner


def profile_fit(data: str, device: str, fit_steps: int) -> dict:
    """A short real fit; stage 2's seconds split into the generator-step loop and the rest."""
    from lsdm_fast import LSDM, AutoencoderConfig, LSDMConfig
    from lsdm_fast.data import load_dataset, split_paired_unpaired

    train = load_dataset(data, "train")
    split = split_paired_unpaired(train.labels, n_per_class=100, m_unpaired=None, seed=0,
                                  num_classes=train.num_classes)
    with timing_the_step_loop(device) as loop:
        cfg = LSDMConfig(AutoencoderConfig(stop="steps", steps=200, grow_latent=0.0), MatchingConfig(steps=fit_steps),
                         device=device)
        model = LSDM(cfg).fit(torch.from_numpy(train.labels[split.paired]), torch.from_numpy(train.images[split.paired]),
                              torch.from_numpy(train.images[split.unpaired]), num_classes=train.num_classes,
                              progress=False)
    s2 = model.history["seconds"]["stage2"]
    return {"fit_steps": fit_steps, "stage2_seconds": s2, "loop_seconds": loop["seconds"],
            "not_steps_seconds": s2 - loop["seconds"], "loop_ms_per_step": 1e3 * loop["seconds"] / fit_steps,
            "pseudo_pairs": model.history.get("pseudo_pairs"), "backend": model.history.get("backend")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=300, help="steady-state generator steps per variant")
    ap.add_argument("--data", help="MNIST-format folder or 'digits': also profile a short real fit")
    ap.add_argument("--fit-steps", type=int, default=1000)
    ap.add_argument("--backends", help="comma-separated (default: every available one)")
    ap.add_argument("--rows", type=int, default=15, help="rows of each profiler table")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    backends = args.backends.split(",") if args.backends else available_backends("critic_gradient_penalty", device)
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
              "steps": []}
    for b in backends:
        for mode in ("graph", "sync"):
            try:
                row = profile_step(b, mode, device, args.steps, args.rows)
            except Exception as e:  # one broken variant must not hide the others
                row = {"backend": b, "mode_asked": mode, "error": f"{type(e).__name__}: {e}"}
            result["steps"].append(row)
            print({k: v for k, v in row.items() if not k.startswith("profile")}, flush=True)
    if args.data:
        result["fit"] = profile_fit(args.data, args.device, args.fit_steps)
        print(result["fit"], flush=True)
    with open(args.out + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(args.out + ".tmp", args.out)
    for row in result["steps"]:
        for key in ("profile_by_device_time", "profile_by_cpu_time"):
            if key in row:
                print(f"\n== {row['backend']} {row['mode_asked']} {key}\n{row[key]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
