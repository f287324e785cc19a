"""Training checkpoints for exact resume.

One file, DIR/checkpoint.pt, replaced atomically (temporary file, fsync, rename; io.py) so a
crash or SIGKILL at any moment leaves either the previous checkpoint or the new one, never a
half-written file. It holds everything a resumed run needs to make the same floating-point
operations in the same order as an uninterrupted one:

- the four models (encoder, decoder, generator, critic) and the latent standardisation;
- the current stage's optimisers, LR scheduler and GradScaler (fp16) states;
- the state of the torch.Generator that draws every batch index, noise vector and
  interpolation weight (the "data order");
- the stage (1, 2, or 3 = finished) and the number of steps done, with the loss histories;
- the run's config and a fingerprint of the data, checked on resume.

Only rank 0 writes (lsdm_fast.distributed). A NaN/Inf is caught before the optimiser step
(stages.py) and a state with non-finite weights is refused here, so the kept checkpoint is
always the last good one.
"""
from __future__ import annotations

import io
import json
import os

import torch

from . import distributed as D
from .io import atomic_write_bytes

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = 1
# config fields that may change between the interrupted and the resumed run (they do not change results)
_FREE_KEYS = {"autoencoder.checkpoint_every", "matching.checkpoint_every"}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(saved: dict, now: dict) -> list[str]:
    a, b = _flatten(json.loads(json.dumps(saved))), _flatten(json.loads(json.dumps(now)))
    return [f"{k}: {a.get(k)!r} in the checkpoint, {b.get(k)!r} now" for k in sorted(set(a) | set(b))
            if k not in _FREE_KEYS and a.get(k) != b.get(k)]


def data_fingerprint(*tensors: torch.Tensor) -> list:
    return [[list(t.shape), float(t.double().sum()), float(t.double().pow(2).sum())] for t in tensors]


def find_checkpoint(folder: str) -> str | None:
    p = os.path.join(folder, CHECKPOINT_FILE)
    return p if os.path.exists(p) else None


def read_checkpoint(path: str) -> dict:
    try:
        with open(path, "rb") as fh:
            blob = torch.load(io.BytesIO(fh.read()), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types on a damaged file
        raise ValueError(f"{path}: cannot read the checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not an lsdm_fast checkpoint (format {CHECKPOINT_FORMAT})")
    return blob


class Checkpointer:
    """Writes and reads DIR/checkpoint.pt for one LSDM.fit call."""

    def __init__(self, folder: str, config: dict, fingerprint: list):
        self.folder, self.path = folder, os.path.join(folder, CHECKPOINT_FILE)
        self.config, self.fingerprint = config, fingerprint
        self.last: tuple[int, int] | None = None  # (stage, step) of the checkpoint on disk

    def describe(self) -> str:
        if self.last is None:
            return f"no checkpoint has been written to {self.folder} yet"
        stage, step = self.last
        where = "the end of training" if stage == 3 else ("the start of stage 2" if stage == 2 and step == 0
                                                        else f"stage {stage}, step {step}")
        return f"the last good checkpoint ({where}) is kept in {self.path}"

    def load(self) -> dict | None:
        """The checkpoint to resume from, or None when the folder has none; refuses a mismatch."""
        if not os.path.exists(self.path):
            return None
        blob = read_checkpoint(self.path)
        diffs = config_differences(json.loads(blob["config"]), self.config)
        if diffs:
            raise ValueError(f"{self.path}: cannot resume: the checkpoint was written with a different config ("
                             + "; ".join(diffs) + "). Resume with the run's own config (`lsdm train --resume DIR` "
                             "reads it from the checkpoint folder) or start a new run in another folder")
        if blob["data"] != self.fingerprint:
            raise ValueError(f"{self.path}: cannot resume: the checkpoint was written for different data "
                             f"(shapes and sums {blob['data']} vs {self.fingerprint} now)")
        self.last = (int(blob["stage"]), int(blob["step"]))
        return blob

    def save(self, *, stage: int, step: int, models: dict[str, torch.nn.Module], rng: torch.Generator,
             latent_mean: torch.Tensor, latent_std: torch.Tensor, meta: dict, stage_state: dict | None,
             history: dict) -> None:
        if not D.is_main():
            return
        for name, mod in models.items():
            for k, v in mod.state_dict().items():
                if v.is_floating_point() and not torch.isfinite(v).all():
                    raise RuntimeError(f"refusing to checkpoint non-finite weights ({name}.{k}) at stage {stage}, "
                                       f"step {step}; {self.describe()}")
        blob = {"format": CHECKPOINT_FORMAT, "stage": stage, "step": step,
                "config": json.dumps(self.config), "meta": json.dumps(meta), "data": self.fingerprint,
                "world_size": D.rank_world()[1],
                "models": {n: {k: v.detach().cpu() for k, v in m.state_dict().items()} for n, m in models.items()},
                "latent_mean": latent_mean.detach().cpu(), "latent_std": latent_std.detach().cpu(),
                "rng": rng.get_state(), "stage_state": stage_state, "history": history}
        buf = io.BytesIO()
        torch.save(blob, buf)
        atomic_write_bytes(self.path, buf.getvalue())
        self.last = (stage, step)
