"""Training checkpoints for exact resume: the TrainingState (lsdm_fast.state), saved and loaded whole.

One file, DIR/checkpoint.pt, replaced atomically (temporary file, fsync, rename; io.py) so a
crash or SIGKILL at any moment leaves either the previous checkpoint or the new one, never a
half-written file. Beside the state it holds the run's config and a SHA-256 of the training
data (conditions and images, in order), both checked on resume: a different config, or data
that differ in any value, order or pairing, is refused with the reason.

Only rank 0 writes (lsdm_fast.distributed). A NaN/Inf is caught before the optimiser step
(guards.py) and a state with non-finite weights is refused here, so the kept checkpoint is
always the last good one. A damaged file is refused with a CheckpointError that names the file
and the missing or malformed field.

Format 2 (this one). Format 1 files (written before the training state was typed) are read
through `_upgrade_v1`; their data check is the weaker one they were written with (shapes and
sums), said in a warning.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import warnings

import torch

from . import distributed as D
from .guards import check_finite_state_dict
from .io import WriteError, atomic_write_bytes
from .state import MATCHING_CURVES, MODEL_NAMES, Stage, TrainingState

CHECKPOINT_FILE = "checkpoint.pt"
RUN_FILE = "run.json"  # `lsdm train`'s arguments beside the checkpoint, for --resume (LSDM.fit's run_record)
CHECKPOINT_FORMAT = 2
# config fields that may change between the interrupted and the resumed run (they do not change results)
_FREE_KEYS = {"autoencoder.checkpoint_every", "matching.checkpoint_every"}
# field -> type every checkpoint must have
_FIELDS = {"format": int, "stage": int, "step": int, "config": str, "meta": str, "data": str, "models": dict,
           "rng": torch.Tensor, "history": dict}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: damaged, from another run, or not a checkpoint at all."""


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(saved: dict, now: dict) -> list[str]:
    from .config import LSDMConfig

    try:  # fields added since the checkpoint was written take the value their absence meant
        saved = LSDMConfig.from_dict(saved, saved=True).to_dict()
    except (TypeError, ValueError):
        pass  # compared as written: the differences name the bad fields
    a, b = _flatten(json.loads(json.dumps(saved))), _flatten(json.loads(json.dumps(now)))
    return [f"{k}: {a.get(k)!r} in the checkpoint, {b.get(k)!r} now" for k in sorted(set(a) | set(b))
            if k not in _FREE_KEYS and a.get(k) != b.get(k)]


def data_fingerprint(*tensors: torch.Tensor) -> str:
    """SHA-256 of the tensors' shapes, dtypes and values, in order."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return h.hexdigest()


def _fingerprint_v1(*tensors: torch.Tensor) -> list:
    return [[list(t.shape), float(t.double().sum()), float(t.double().pow(2).sum())] for t in tensors]


def find_checkpoint(folder: str) -> str | None:
    p = os.path.join(folder, CHECKPOINT_FILE)
    return p if os.path.exists(p) else None


def _upgrade_v1(blob: dict) -> dict:
    """Format 1 -> 2: the stage's optimiser states and loss lists moved out of one 'stage_state' dict."""
    st = blob.get("stage_state") or {}
    history = dict(blob.get("history") or {})
    optim = None
    if "losses" in st:  # stage 1 in progress
        history["reconstruction"] = list(st["losses"])
        optim = {k: st.get(k) for k in ("opt", "sched", "scaler")}
    elif "hist" in st:  # stage 2 in progress
        history.update({k: v for k, v in st["hist"].items()})
        optim = {"gen_opt": st.get("gen_opt"), "critic_opt": st.get("critic_opt"), "scaler": st.get("scaler"),
                 "gen_ema": st.get("gen_ema")}
    return {**{k: v for k, v in blob.items() if k != "stage_state"}, "format": CHECKPOINT_FORMAT,
            "data_v1": blob.get("data"), "data": "", "optim": optim, "history": history}


def _load_failure(exc: Exception) -> str:
    """torch.load's error without its advice to retry with weights_only=False (that would run whatever code the
    file holds: never the thing to do with a checkpoint that fails the safe load)."""
    if isinstance(exc, pickle.UnpicklingError) or "weights_only" in str(exc):
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "weights_only" not in ln and "torch.load" not in ln
                       and not ln.startswith("Check the documentation")), "")
        return ("it holds objects no lsdm_fast checkpoint contains, refused by the safe loader (weights_only=True)"
                + (f": {detail}" if detail else "") + "; this file is damaged or not a checkpoint, and loading it "
                "any other way could run code from it")
    return f"{type(exc).__name__}: {exc}"


def read_checkpoint(path: str) -> dict:
    """The checkpoint at `path` as a format-2 dict, every required field checked."""
    try:
        with open(path, "rb") as fh:
            blob = torch.load(io.BytesIO(fh.read()), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types on a damaged file
        raise CheckpointError(f"{path}: cannot read the checkpoint ({_load_failure(exc)})") from None
    if not isinstance(blob, dict) or blob.get("format") not in (1, CHECKPOINT_FORMAT):
        fmt = blob.get("format") if isinstance(blob, dict) else None
        raise CheckpointError(f"{path}: not an lsdm_fast checkpoint of a format this version reads "
                              f"(format {fmt!r}; this version reads 1 and {CHECKPOINT_FORMAT})")
    if blob["format"] == 1:
        blob = _upgrade_v1(blob)
    for name, kind in _FIELDS.items():
        if name not in blob:
            raise CheckpointError(f"{path}: damaged checkpoint: the field {name!r} is missing")
        if not isinstance(blob[name], kind):
            raise CheckpointError(f"{path}: damaged checkpoint: the field {name!r} is a {type(blob[name]).__name__}, "
                                  f"expected {kind.__name__}")
    try:
        blob["stage"] = Stage(blob["stage"])
    except ValueError:
        raise CheckpointError(f"{path}: damaged checkpoint: stage {blob['stage']!r} is not one of "
                              f"{[int(s) for s in Stage]}") from None
    for name in MODEL_NAMES:
        if not isinstance(blob["models"].get(name), dict):
            raise CheckpointError(f"{path}: damaged checkpoint: the weights of the {name} ('models.{name}') are missing")
    check_finite_state_dict({"models": blob["models"], **{k: blob.get(k) for k in ("latent_mean", "latent_std")}},
                            path, CheckpointError)
    if blob["stage"] >= Stage.MATCHING:
        for name in ("latent_mean", "latent_std"):
            if not isinstance(blob.get(name), torch.Tensor):
                raise CheckpointError(f"{path}: damaged checkpoint: the field {name!r} is missing")
    return blob


class Checkpointer:
    """Writes and reads DIR/checkpoint.pt for one LSDM.fit call."""

    def __init__(self, folder: str, config: dict, data: tuple[torch.Tensor, ...], meta: dict | None = None):
        self.folder, self.path = folder, os.path.join(folder, CHECKPOINT_FILE)
        self.config, self._data, self.meta = config, data, meta or {}
        self.fingerprint = data_fingerprint(*data) if data else ""
        self.last: tuple[int, int] | None = None  # (stage, step) of the checkpoint on disk

    def describe(self) -> str:
        if self.last is None:
            return f"no checkpoint has been written to {self.folder} yet"
        stage, step = self.last
        where = "the end of training" if stage == Stage.DONE else (
            "the start of stage 2" if stage == Stage.MATCHING and step == 0 else f"stage {stage}, step {step}")
        return f"the last good checkpoint ({where}) is kept in {self.path}"

    def load(self) -> dict:
        """The checkpoint to resume from; refuses a missing file, a damaged one, or a mismatch."""
        if not os.path.exists(self.path):
            raise CheckpointError(f"{self.folder}: no checkpoint to resume ({CHECKPOINT_FILE} not found); "
                                  "start without resume, or point to the folder the run wrote its checkpoint to")
        blob = read_checkpoint(self.path)
        diffs = config_differences(json.loads(blob["config"]), self.config)
        if diffs:
            raise CheckpointError(f"{self.path}: cannot resume: the checkpoint was written with a different config ("
                                  + "; ".join(diffs) + "). Resume with the run's own config (`lsdm train --resume "
                                  "DIR` reads it from the checkpoint folder) or start a new run in another folder")
        if blob.get("data_v1") is not None:
            same = blob["data_v1"] == _fingerprint_v1(*self._data)
            warnings.warn(f"{self.path}: a format-1 checkpoint: the data were checked by shapes and sums only",
                          RuntimeWarning, stacklevel=2)
        else:
            same = blob["data"] == self.fingerprint
        if not same:
            raise CheckpointError(f"{self.path}: cannot resume: the checkpoint was written for different data (the "
                                  "conditions or images differ in shape, value, order or pairing)")
        self.last = (int(blob["stage"]), int(blob["step"]))
        return blob

    def restore(self, state: TrainingState, blob: dict) -> None:
        """Load `blob` (from load()) into `state`: weights, RNG, latent statistics, stage, step, history."""
        for name, mod in state.models().items():
            try:
                mod.load_state_dict(blob["models"][name])
            except RuntimeError as exc:
                raise CheckpointError(f"{self.path}: the {name} weights do not fit this model ({exc})") from None
        try:
            state.rng.set_state(blob["rng"])
        except RuntimeError as exc:
            raise CheckpointError(f"{self.path}: damaged checkpoint: bad RNG state ({exc})") from None
        if blob["stage"] >= Stage.MATCHING:
            state.latent_mean = blob["latent_mean"].to(state.rng.device)
            state.latent_std = blob["latent_std"].to(state.rng.device)
        state.stage, state.step, state.optim = blob["stage"], int(blob["step"]), blob.get("optim")
        state.best_attempt = blob.get("best_attempt")
        state.history = {k: (list(v) if isinstance(v, list) else v) for k, v in blob["history"].items()}
        missing = [k for k in (("reconstruction",) if state.stage > Stage.AUTOENCODER else ())
                   + (MATCHING_CURVES if state.stage > Stage.MATCHING else ()) if k not in state.history]
        if missing:
            raise CheckpointError(f"{self.path}: damaged checkpoint: the loss history lacks {missing}")

    def save(self, state: TrainingState) -> None:
        if not D.is_main():
            return
        for name, mod in state.models().items():
            for k, v in mod.state_dict().items():
                if v.is_floating_point() and not torch.isfinite(v).all():
                    raise RuntimeError(f"refusing to checkpoint non-finite weights ({name}.{k}) at stage "
                                       f"{int(state.stage)}, step {state.step}; {self.describe()}")
        blob = {"format": CHECKPOINT_FORMAT, "stage": int(state.stage), "step": state.step,
                "config": json.dumps(self.config), "meta": json.dumps(self.meta), "data": self.fingerprint,
                "world_size": D.rank_world()[1],
                "models": {n: {k: v.detach().cpu() for k, v in m.state_dict().items()}
                           for n, m in state.models().items()},
                "latent_mean": None if state.latent_mean is None else state.latent_mean.detach().cpu(),
                "latent_std": None if state.latent_std is None else state.latent_std.detach().cpu(),
                "rng": state.rng.get_state(), "optim": state.optim, "history": state.history,
                "best_attempt": state.best_attempt}
        buf = io.BytesIO()
        torch.save(blob, buf)
        try:
            atomic_write_bytes(self.path, buf.getvalue())
        except OSError as exc:  # a full disk: the previous checkpoint is whole (atomic write); say which it is
            raise WriteError(exc.errno, f"{exc}; {self.describe()}") from None
        self.last = (int(state.stage), state.step)
