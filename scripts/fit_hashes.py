"""SHA-256 of every tensor a tiny seeded CPU fit ends with: the check that a refactor of the training
code changed no bit (run it before and after, compare the output with diff).

Each case fits the embedded 8x8 digits for a few stage-1 and stage-2 steps through LSDM.fit and
prints one line per tensor: the four models, the latent statistics, the RNG state, the optimiser
states of both stages (Adam moments and steps, LR scheduler, GradScaler, the generator EMA) and
the loss history. Cases: stage 2 in sync mode and in graph mode (its body run eagerly on CPU,
capture=False), with and without generator_ema, fp32 and bf16 (and fp16, sync only), with the
torch backend besides the default one, MLP and conv autoencoders.

    .venv/bin/python scripts/fit_hashes.py > before.txt   # ... change the code ...
    .venv/bin/python scripts/fit_hashes.py > after.txt && diff before.txt after.txt
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import sys

import numpy as np
import torch

from lsdm_fast import stages
from lsdm_fast.api import LSDM
from lsdm_fast.config import AutoencoderConfig, LSDMConfig, MatchingConfig
from lsdm_fast.data import load_dataset


def digest(t: torch.Tensor) -> str:
    t = t.detach().cpu().contiguous()
    raw = t.view(torch.int16) if t.dtype == torch.bfloat16 else t  # numpy has no bfloat16
    return hashlib.sha256(str(t.dtype).encode() + str(tuple(t.shape)).encode() + raw.numpy().tobytes()).hexdigest()


def walk(prefix: str, obj, out: dict) -> None:
    """Every tensor of a nested state (dicts, lists), named by its path; other leaves as JSON."""
    if isinstance(obj, torch.Tensor):
        out[prefix] = digest(obj)
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            walk(f"{prefix}.{k}", obj[k], out)
    elif isinstance(obj, (list, tuple)) and any(isinstance(v, (torch.Tensor, dict, list, tuple)) for v in obj):
        for i, v in enumerate(obj):
            walk(f"{prefix}.{i}", v, out)
    else:
        out[prefix] = hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def fit_case(mode: str, precision: str, ema: float, backend: str, kind: str, data) -> dict:
    """One fit; returns {name: sha256}."""
    x, y, u = data
    cfg = LSDMConfig(autoencoder=AutoencoderConfig(kind=kind, latent_dim=4, hidden=(32, 16), conv_channels=(4, 8),
                                                   stop="steps", steps=4, batch_size=32),
                     matching=MatchingConfig(generator_hidden=(16, 16), critic_hidden=(16, 16), critic_steps=2,
                                             steps=3, batch_size=24, backend=backend, generator_ema=ema),
                     seed=3, precision=precision)
    optim = {}
    orig_ae, orig_match = stages.train_autoencoder, stages.train_joint_matching

    def keep_ae(state, *a, **kw):
        orig_ae(state, *a, **kw)
        optim["stage1"] = copy.deepcopy(state.optim)  # fit drops it when the stage ends

    def keep_match(state, *a, **kw):
        orig_match(state, *a, mode=mode, **kw)
        optim["stage2"] = copy.deepcopy(state.optim)
        optim["rng"] = state.rng.get_state()

    stages.train_autoencoder, stages.train_joint_matching = keep_ae, keep_match
    try:
        model = LSDM(cfg).fit(x, y, u, num_classes=10, progress=False)
    finally:
        stages.train_autoencoder, stages.train_joint_matching = orig_ae, orig_match
    out: dict = {}
    for name, mod in zip(("encoder", "decoder", "generator", "critic"), model.modules()):
        walk(name, mod.state_dict(), out)
    walk("latent_mean", model.latent_mean, out)
    walk("latent_std", model.latent_std, out)
    walk("optim", optim, out)
    walk("history", {k: v for k, v in model.history.items() if k != "seconds"}, out)
    return out


def main() -> int:
    torch.set_num_threads(1)
    train = load_dataset("digits", "train", seed=0)
    rng = np.random.default_rng(0)
    pick = rng.permutation(len(train))
    paired, unpaired = pick[:40], pick[40:200]
    data = (torch.from_numpy(train.labels[paired]), torch.from_numpy(train.images[paired]),
            torch.from_numpy(train.images[unpaired]))
    cases = [(mode, prec, ema, "auto", "mlp") for mode in ("sync", "graph") for prec in ("fp32", "bf16")
             for ema in (0.0, 0.9)]
    cases += [("sync", "fp16", 0.0, "auto", "mlp"), ("sync", "fp16", 0.9, "auto", "mlp"),
              ("sync", "fp32", 0.9, "torch", "mlp"), ("graph", "fp32", 0.9, "torch", "mlp"),
              ("sync", "fp32", 0.0, "auto", "conv"), ("graph", "bf16", 0.9, "auto", "conv")]
    n = 0
    for case in cases:
        label = "mode={} precision={} ema={} backend={} autoencoder={}".format(*case)
        for name, h in fit_case(*case, data).items():
            print(f"{label}  {name}  {h}")
            n += 1
    print(f"# {len(cases)} fits, {n} tensors and values", file=sys.stderr)
    return 0


if __name__ == "__main__":
    with functools.partial(torch.random.fork_rng, devices=[])():
        sys.exit(main())
