"""LSDM as an estimator: fit on pairs plus unpaired data, sample in one step, save and load."""
from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from . import ops
from .config import LATENT_START, PSEUDO_CONDITION_AUTO, PSEUDO_LABEL_AUTO, LSDMConfig, as_config, check_sampling_seed
from .io import require_free_space
from .model_folder import FORMAT_VERSION, MODEL_FILES, ModelFolderError, load_model, meta_json, save_model  # noqa: F401
from .models import MLP, Critic, Generator, build_autoencoder, resolve_kind
from .ops._weight_cache import DerivedCache
from .ops.encode_generate import condition_tensor
from .state import Stage, TrainingState

PSEUDO_SEED = 7919  # the pseudo-label classifier's generator: config seed + this, apart from every other stream


def _as_tensor(a, name: str, dtype=None) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(a)) if not isinstance(a, torch.Tensor) else a
    if dtype is not None:
        t = t.to(dtype)
    if t.is_floating_point() and not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return t


def _warn_untrained(cfg: LSDMConfig) -> None:
    """Say so when a budget of 0 steps leaves a network untrained (a valid choice, never a silent one)."""
    if cfg.autoencoder.steps == 0 and cfg.autoencoder.epochs == 0:
        warnings.warn("autoencoder.steps is 0 (`--ae-steps 0`): stage 1 does not run, so the autoencoder keeps its "
                      "random initial weights and decodes noise", UserWarning, stacklevel=3)
    if cfg.matching.steps == 0:
        warnings.warn("matching.steps is 0 (`--steps 0`): stage 2 does not run, so the generator keeps its random "
                      "initial weights and its samples ignore the condition", UserWarning, stacklevel=3)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available here")
    return dev


class LSDM:
    """Latent Space Distribution Matching.

    >>> model = LSDM(LSDMConfig()).fit(paired_x, paired_y, unpaired_y)
    >>> images = model.sample(torch.arange(10), n_per_x=8, seed=0)

    paired_x: integer labels (N,) (one-hot conditions) or a float tensor (N, cond_dim).
    paired_y, unpaired_y: images (N, H, W) or flat (N, D), values in [0, 1].
    """

    def __init__(self, config: LSDMConfig | dict | None = None):
        self.config = as_config(config)  # a dict is read as LSDMConfig.from_dict; any other type: TypeError
        self.config.validate()
        self._requested = self.config  # fit starts from it: latent_dim None is resolved (and grown) per fit
        self.encoder = self.decoder = self.generator = self.critic = None
        self.meta: dict = {}
        self.history: dict = {}
        self._folded = DerivedCache(maxsize=1)

    # ------------------------------------------------------------------ building
    def _build(self, data_dim: int, cond_dim: int, image_shape) -> None:
        a, m = self.config.autoencoder, self.config.matching
        d = a.latent_dim if a.latent_dim is not None else LATENT_START  # None: fit() resolves it before building
        k = m.noise_dim or d
        self.encoder, self.decoder = build_autoencoder(a.kind, data_dim, d, a.hidden, image_shape, **a.arch_kwargs())
        self.meta["autoencoder_kind"] = resolve_kind(a.kind, image_shape, **a.arch_kwargs())
        self.generator = Generator(k, cond_dim, d, m.generator_hidden, m.negative_slope)
        self.critic = Critic(cond_dim, d, m.critic_hidden, m.negative_slope)
        self.latent_mean = torch.zeros(d)
        self.latent_std = torch.ones(d)
        for mod in self.modules():
            mod.to(self.device)

    def modules(self):
        return [self.encoder, self.decoder, self.generator, self.critic]

    @property
    def device(self) -> torch.device:
        return resolve_device(self.config.device)

    def _conditions(self, x, what: str) -> torch.Tensor:
        x = _as_tensor(x, what)
        if self.meta["cond_kind"] == "onehot":
            if x.is_floating_point():
                raise ValueError(f"{what}: this model is conditioned on class labels; give integer labels, got {x.dtype}")
            return condition_tensor(x, self.meta["num_classes"], torch.float32)
        if not x.is_floating_point() or x.dim() != 2 or x.shape[1] != self.meta["cond_dim"]:
            raise ValueError(f"{what}: expected a float tensor (N, {self.meta['cond_dim']}), got {x.dtype} {tuple(x.shape)}")
        return x.float()

    # ------------------------------------------------------------------ training
    def fit(self, paired_x, paired_y, unpaired_y=None, *, num_classes: int | None = None, progress: bool = True,
            checkpoint_dir: str | None = None, resume: bool = False, run_record: dict | None = None,
            overwrite: bool = False) -> "LSDM":
        """Train both stages. With `checkpoint_dir`, a checkpoint is written there atomically every
        `checkpoint_every` steps of each stage (config) and at the end of each stage; with
        `resume=True` the checkpoint there is continued exactly (bit-identical on CPU to a run
        that was never interrupted), after checking that its config and data match these.
        A new run refuses a checkpoint_dir that holds a checkpoint, unless overwrite=True (then it is removed).
        `run_record`: JSON written to checkpoint_dir/run.json once every check has passed, before training
        (`lsdm train` keeps its arguments there for --resume). The checkpoint folder has one writer: its lock
        (lsdm_fast.runlock) is held from before the first byte written to the end of the fit."""
        from .stages import train_autoencoder, train_joint_matching

        self.config = self._requested
        requested = self.config.to_dict()  # what a resume is checked against (latent_dim None stays None)
        x, all_y, n_pairs = self._fit_data(paired_x, paired_y, unpaired_y, num_classes)
        cfg = self.config
        backends = self._check_backend()
        _warn_untrained(cfg)
        with self._checkpointer(checkpoint_dir, resume, overwrite, (x, all_y), run_record, requested) as ck:
            state = self._new_state()
            if resume:
                blob = ck.load()
                hist = blob["history"] if isinstance(blob.get("history"), dict) else {}
                search = hist.get("latent_search")
                if search:  # the run grew its latent before this checkpoint: the weights have the grown shapes
                    # (or, after a grown attempt ended worse, the shapes of the attempt it went back to)
                    self._rebuild(int(hist.get("stage1_latent_dim", 2 * int(search[-1]["latent_dim"]))))
                    state = self._new_state()
                ck.restore(state, blob)
            resumed_from = {"stage": int(state.stage), "step": state.step} if resume else None
            kw = dict(precision=cfg.precision, progress=progress, checkpoint=ck)

            t0 = time.perf_counter()
            while state.stage == Stage.AUTOENCODER:  # stage 1 on every image
                train_autoencoder(state, all_y, self.config.autoencoder, seed=cfg.seed, **kw)
                if self._grew_worse(state):
                    state = self._back_to_best_attempt(state, progress)
                    break
                reason = self._growth_reason(state)
                if reason is None:
                    break
                state = self._grow(state, reason, progress)
                if ck is not None:
                    ck.save(state)
            state.best_attempt = None  # stage 2's checkpoints need only the weights stage 1 handed on
            cfg = self.config  # the latent as grown
            t1 = time.perf_counter()
            for mod in (self.encoder, self.decoder):
                mod.eval().requires_grad_(False)  # frozen from here on
            z_all = self.encode(all_y)
            if state.stage == Stage.AUTOENCODER:
                state.latent_mean, state.latent_std = z_all.mean(0), z_all.std(0).clamp_min(1e-6)
                state.enter(Stage.MATCHING)
                if ck is not None:
                    ck.save(state)
            self.latent_mean, self.latent_std = state.latent_mean, state.latent_std
            if state.stage == Stage.MATCHING:  # stage 2 on the pairs, which come first in all_y
                z_std = (z_all - state.latent_mean) / state.latent_std  # every image's: the marginal critic's
                x_pairs, z_pairs = self._stage2_pairs(state, x, z_std, all_y, n_pairs)
                steps = cfg.matching.generator_steps(z_std.shape[1], pseudo_conditions=(
                    self.meta["cond_kind"] != "onehot" and len(x_pairs) > n_pairs))
                train_joint_matching(state, x_pairs, z_pairs, cfg.matching, backends=backends, z_marginal=z_std,
                                     steps=steps, **kw)
                state.stage, state.optim = Stage.DONE, None  # the step count stays: resumed_from says where it ended
                if ck is not None:
                    ck.save(state)
        self.history = {**state.history, "seconds": {"stage1": t1 - t0, "stage2": time.perf_counter() - t1},
                        "counts": {"paired": n_pairs, "unpaired": len(all_y) - n_pairs}}
        if resumed_from is not None:
            self.history["resumed_from"] = resumed_from
        return self

    def _growth_reason(self, state: TrainingState) -> str | None:
        """AutoencoderConfig's growth rule, at the end of stage 1 (room to double the latent, and its size not given):
        too much held-out variance unexplained (grow_latent), or, after a doubling, that doubling divided it by at
        least grow_gain. Why it grows, in words; None: it does not."""
        a, r = self.config.autoencoder, state.history.get("stage1_unexplained")
        if self._requested.autoencoder.latent_dim is not None or r is None or 2 * a.latent_dim > a.latent_max:
            return None
        if a.grow_latent > 0 and r > a.grow_latent:
            return f"more than grow_latent {100 * a.grow_latent:g} %"
        search = state.history.get("latent_search")
        if a.grow_gain > 0 and search and search[-1]["unexplained"] >= a.grow_gain * r:
            return (f"{search[-1]['unexplained'] / r:.2f}x less than latent {search[-1]['latent_dim']}'s, at least "
                    f"grow_gain {a.grow_gain:g}")
        return None

    def _search_with_ended_attempt(self, state: TrainingState, **extra) -> list[dict]:
        """history["latent_search"] with the stage-1 attempt that just ended appended (its size, unexplained
        fraction and steps, plus `extra`)."""
        return state.history.get("latent_search", []) + [
            {"latent_dim": self.config.autoencoder.latent_dim, "unexplained": state.history["stage1_unexplained"],
             "steps": state.history["stage1_steps"], **extra}]

    def _grew_worse(self, state: TrainingState) -> bool:
        """A grown attempt that ended with no less held-out variance unexplained than the best attempt before it."""
        r, best = state.history.get("stage1_unexplained"), state.best_attempt
        return best is not None and r is not None and r >= best["unexplained"]

    def _back_to_best_attempt(self, state: TrainingState, progress: bool) -> TrainingState:
        """Stage 1 ends with the best attempt's networks and history (the latent it had); the attempt just ended
        joins history["latent_search"] marked kept=False; the training RNG continues."""
        a, best = self.config.autoencoder, state.best_attempt
        search = self._search_with_ended_attempt(state, kept=False)
        if progress:
            print(f"stage 1: latent {a.latent_dim} leaves {100 * search[-1]['unexplained']:.1f} % of the held-out "
                  f"images' variance unexplained, no better than latent {best['latent_dim']} "
                  f"({100 * best['unexplained']:.1f} %): stage 1 ends with the latent-{best['latent_dim']} attempt",
                  file=sys.stderr, flush=True)
        self._rebuild(int(best["latent_dim"]))
        kept = self._new_state()
        self.encoder.load_state_dict(best["models"]["encoder"])
        self.decoder.load_state_dict(best["models"]["decoder"])
        kept.rng = state.rng
        kept.history = {**best["history"], "latent_search": search, "stage1_latent_dim": int(best["latent_dim"])}
        return kept

    def _grow(self, state: TrainingState, reason: str, progress: bool) -> TrainingState:
        """Stage 1 again from scratch with twice the latent (every network rebuilt, seeded as the first were); the
        attempt just ended is summarised in history["latent_search"], the training RNG continues; `reason`: why
        (_growth_reason), for the progress line."""
        a = self.config.autoencoder
        search = self._search_with_ended_attempt(state)
        if progress:
            print(f"stage 1: the autoencoder leaves {100 * search[-1]['unexplained']:.1f} % of the held-out images' "
                  f"variance unexplained ({reason}): latent {a.latent_dim} -> {2 * a.latent_dim}, stage 1 again",
                  file=sys.stderr, flush=True)
        best = state.best_attempt
        if best is None or search[-1]["unexplained"] < best["unexplained"]:  # the attempt to return to if needed
            best = {"latent_dim": a.latent_dim, "unexplained": search[-1]["unexplained"],
                    "models": {n: {k: v.detach().cpu().clone() for k, v in m.state_dict().items()}
                               for n, m in (("encoder", self.encoder), ("decoder", self.decoder))},
                    "history": {k: v for k, v in state.history.items() if k != "latent_search"}}
        self._rebuild(2 * a.latent_dim)
        grown = self._new_state()
        grown.rng, grown.history, grown.best_attempt = state.rng, {"latent_search": search}, best
        return grown

    def _rebuild(self, latent_dim: int) -> None:
        """Every network rebuilt for `latent_dim` (seeded as at the start of fit); the config says the new size."""
        self.config = replace(self.config, autoencoder=replace(self.config.autoencoder, latent_dim=latent_dim))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            self._build(self.meta["data_dim"], self.meta["cond_dim"], self.meta["image_shape"])

    def _stage2_pairs(self, state: TrainingState, x: torch.Tensor, z_std: torch.Tensor, all_y: torch.Tensor,
                      n_pairs: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 2's (conditions, standardised latents): the pairs, and the unpaired latents with a pseudo-label
        (class labels, matching.pseudo_label) or a pseudo-condition (float conditions, matching.pseudo_condition);
        recomputed identically on resume."""
        from .pseudo_labels import pseudo_condition, pseudo_label

        m, onehot = self.config.matching, self.meta["cond_kind"] == "onehot"
        q = m.pseudo_label if onehot else m.pseudo_condition
        if q is None:  # auto
            q = PSEUDO_LABEL_AUTO if onehot else PSEUDO_CONDITION_AUTO
        if q == 0 or len(z_std) == n_pairs:
            return x, z_std[:n_pairs]
        seed = self.config.seed + PSEUDO_SEED
        if not onehot:
            pc = pseudo_condition(z_std[:n_pairs], x, z_std[n_pairs:], q, seed=seed, y_pairs=all_y[:n_pairs],
                                  y_unpaired=all_y[n_pairs:])
            r2 = None if pc.heldout_r2 != pc.heldout_r2 else pc.heldout_r2  # nan (too few pairs): none
            state.history["pseudo_pairs"] = {"kept": len(pc.index), "fraction": pc.kept_fraction, "heldout_r2": r2,
                                             "regressor": pc.regressor}
            if not len(pc.index) and m.pseudo_condition is not None:  # asked for, not given
                why = (f"the better regressor ({pc.regressor}) explains R^2 = {r2:.3f} of the held-out pairs' "
                       "condition variance, below it" if r2 is not None else "too few pairs to check a regressor on")
                warnings.warn(f"matching.pseudo_condition={q:g}: no pseudo-conditions for the unpaired images: {why}; "
                              "stage 2 uses the pairs alone", stacklevel=3)
            z_kept = z_std[n_pairs:][pc.index.to(z_std.device)]
            return torch.cat([x, pc.conditions.to(x)]), torch.cat([z_std[:n_pairs], z_kept])
        k = self.meta["num_classes"]
        pl = pseudo_label(z_std[:n_pairs], x.argmax(1), z_std[n_pairs:], k, q, seed=seed)
        state.history["pseudo_pairs"] = {"kept": len(pl.index), "fraction": pl.kept_fraction,
                                         "per_class": torch.bincount(pl.labels, minlength=k).tolist()}
        x_pl = F.one_hot(pl.labels, k).to(x)
        return torch.cat([x, x_pl]), torch.cat([z_std[:n_pairs], z_std[n_pairs:][pl.index.to(z_std.device)]])

    @contextlib.contextmanager
    def _checkpointer(self, folder: str | None, resume: bool, overwrite: bool, data: tuple, run_record: dict | None,
                      config: dict):
        """The run's Checkpointer (None without a folder), the folder locked for the block (rank 0). Checked before
        anything is written: a new run refuses a folder that holds a checkpoint (unless overwrite: removed), and a
        disk without room for the run's checkpoints and saved model."""
        from . import distributed as D
        from .checkpoint import CHECKPOINT_FILE, RUN_FILE, Checkpointer, find_checkpoint
        from .io import atomic_write_json
        from .runlock import run_lock

        if folder is None:
            if resume:
                raise ValueError("resume=True needs the checkpoint_dir to resume from")
            yield None
            return
        with run_lock(folder, "LSDM.fit") if D.is_main() else contextlib.nullcontext():
            replaced = not resume and find_checkpoint(folder)
            if replaced and not overwrite:
                raise ValueError(f"{folder} already holds a checkpoint; continue it with `lsdm train --resume "
                                 f"{folder}` (LSDM.fit(..., resume=True)), replace it with --overwrite "
                                 "(overwrite=True), or choose another checkpoint folder (--out/--checkpoint-dir)")
            ck = Checkpointer(folder, config, data, meta=meta_json(self.meta))
            # a checkpoint is about 3x the weights (weights + Adam's two moments), twice while one replaces the
            # other, and the saved model 1x: refused now rather than after the training it would lose
            require_free_space(folder, 7 * self._weight_bytes(), "this run's checkpoints and saved model (estimated)")
            if D.is_main():
                if replaced:  # overwrite: the replaced run's training state goes, never resumed by mistake
                    os.unlink(os.path.join(folder, CHECKPOINT_FILE))
                if run_record is not None:
                    atomic_write_json(os.path.join(folder, RUN_FILE), run_record)
            yield ck

    def _weight_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for mod in self.modules() for t in mod.state_dict().values())

    def _fit_data(self, paired_x, paired_y, unpaired_y, num_classes):
        """Checked conditions (on the device), every image (pairs first, flat, on the device), and the number of
        pairs; sets self.meta and builds the networks (seeded)."""
        from .data import refuse_channels_last

        py = _as_tensor(paired_y, "paired_y", torch.float32)
        refuse_channels_last(py.shape, "paired_y")
        image_shape = tuple(py.shape[1:]) if py.dim() >= 3 else None
        if py.dim() < 2 or py.dim() > 4 or len(py) == 0:
            raise ValueError(f"paired_y is empty or not a batch (shape {tuple(py.shape)}): LSDM needs at least one "
                             "(x, y) pair, given as (N, H, W) or (N, C, H, W) images or flat (N, D) rows")
        py = py.flatten(1)
        uy = torch.zeros(0, py.shape[1]) if unpaired_y is None else _as_tensor(unpaired_y, "unpaired_y", torch.float32)
        if uy.dim() < 2:
            raise ValueError(f"unpaired_y must be (M, H, W), (M, C, H, W) or (M, D), got shape {tuple(uy.shape)}")
        if uy.dim() == 4:
            refuse_channels_last(uy.shape, "unpaired_y")
        uy = uy.flatten(1)
        if len(py) + len(uy) < 2:
            raise ValueError(f"LSDM needs at least 2 images in all (paired + unpaired) to standardise its latent "
                             f"space; got {len(py)} pair and {len(uy)} unpaired images")
        if uy.shape[1] != py.shape[1]:
            raise ValueError(f"unpaired_y has {uy.shape[1]} values per sample but paired_y has {py.shape[1]}")
        px = _as_tensor(paired_x, "paired_x")
        if len(px) != len(py):
            raise ValueError(f"paired_x has {len(px)} rows but paired_y has {len(py)}")
        if not px.is_floating_point():
            ncls = num_classes if num_classes is not None else int(px.max()) + 1
            self.meta = {"cond_kind": "onehot", "num_classes": ncls, "cond_dim": ncls}
        else:
            if px.dim() != 2:
                raise ValueError(f"paired_x as a float condition must be 2-D (N, cond_dim), got {tuple(px.shape)}")
            self.meta = {"cond_kind": "tensor", "num_classes": None, "cond_dim": int(px.shape[1])}
        for name, t in (("paired_y", py), ("unpaired_y", uy)):
            if t.numel() and (t.min() < 0 or t.max() > 1):
                raise ValueError(f"{name} must have values in [0, 1], got [{float(t.min()):.3g}, {float(t.max()):.3g}]")
        if (self.config.matching.pseudo_label or 0) > 0 and self.meta["cond_kind"] != "onehot":
            raise ValueError("matching.pseudo_label labels the unpaired images with classes: it needs integer class "
                             f"labels as paired_x, got float conditions {tuple(px.shape)}; set it to 0 for these "
                             "(matching.pseudo_condition gives float conditions theirs)")
        if (self.config.matching.pseudo_condition or 0) > 0 and self.meta["cond_kind"] == "onehot":
            raise ValueError("matching.pseudo_condition predicts float conditions for the unpaired images; paired_x "
                             "holds integer class labels, which get pseudo-labels (matching.pseudo_label) instead: "
                             "set it to 0 or None for these")
        self.meta.update(data_dim=int(py.shape[1]), image_shape=image_shape, format_version=FORMAT_VERSION)
        if self.config.autoencoder.latent_dim is None:  # fitted to the data: from LATENT_START (grow_latent)
            self.config = replace(self.config, autoencoder=replace(self.config.autoencoder, latent_dim=LATENT_START))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            self._build(py.shape[1], self.meta["cond_dim"], image_shape)
        x = self._conditions(px, "paired_x").to(self.device)
        return x, torch.cat([py, uy]).to(self.device), len(py)

    def _check_backend(self) -> dict[str, str]:
        """The backend of each stage-2 op, resolved once: an unusable one fails now, not after stage 1."""
        from .matching_step import resolve_backends

        m = self.config.matching
        try:
            return resolve_backends(m.backend, self.device, len(m.critic_hidden) + 1)
        except (RuntimeError, KeyError, ValueError) as exc:
            raise ValueError(f"matching.backend={m.backend!r}: {exc}") from None

    def _new_state(self) -> TrainingState:
        rng = torch.Generator(device=self.device).manual_seed(self.config.seed)
        return TrainingState(self.encoder, self.decoder, self.generator, self.critic, rng)

    # ------------------------------------------------------------------ inference
    def _require_fitted(self):
        if self.generator is None:
            raise RuntimeError("this LSDM is not fitted: call fit() or LSDM.load(dir) first")

    def encode(self, y, *, backend: str = "auto", batch_size: int | None = None) -> torch.Tensor:
        """Raw latents E(y) (before stage 2's standardisation)."""
        if self.encoder is None:
            raise RuntimeError("this LSDM is not fitted: call fit() or LSDM.load(dir) first")
        y = _as_tensor(y, "y", torch.float32)
        y = y.reshape(len(y), -1).to(self.device)
        if isinstance(self.encoder, MLP):
            return ops.encode(self.encoder.params(), y, batch_size=batch_size, backend=backend)
        # conv encoder: the convolutions through torch, the dense layer through the fused op
        return ops.encode(self.encoder.dense(), y, batch_size=batch_size, front=self.encoder.front, backend=backend)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        self._require_fitted()
        with torch.no_grad():
            return self.decoder(z.to(self.device))

    def _generator_params(self):
        """Generator with the latent de-standardisation folded into its last layer. Built once per set of
        weights (DerivedCache: rebuilt when a weight or the latent statistics change), so the fused kernels'
        own caches of converted weights see the same tensors call after call."""
        p = self.generator.mlp.params()

        def fold():
            w, b = p.weights[-1].detach(), p.biases[-1].detach()
            s, mu = self.latent_std.to(w), self.latent_mean.to(w)
            weights = [t.detach() for t in p.weights[:-1]] + [w * s[:, None]]
            biases = [t.detach() for t in p.biases[:-1]] + [b * s + mu]
            return p._replace(weights=weights, biases=biases)

        return self._folded.get([*p.weights, *p.biases, self.latent_mean, self.latent_std], None, fold)

    def sample(self, x, n_per_x: int = 1, *, seed: int = 0, offset: int = 0, backend: str = "auto",
               out_dtype: torch.dtype = torch.float32, eta: torch.Tensor | None = None,
               path: str | None = None, chunk_size: int = 65536, progress: bool = False):
        """n_per_x samples y ~ P(Y | x) for each condition; rows grouped by condition, flat (N, D).

        Reproducible: the noise of row i is a function of (seed, offset + i) only. With `path`
        (a .npy file) the samples are generated `chunk_size` rows at a time and written to the
        file (free space checked first; nothing left behind on failure), for batches larger than
        memory; a memmap of the finished file is returned. A request that cannot fit on the disk
        or in memory is refused, with its size, before anything is allocated.
        """
        self._require_fitted()
        if isinstance(n_per_x, bool) or not isinstance(n_per_x, (int, np.integer)) or n_per_x < 1:
            raise ValueError(f"n_per_x must be a positive integer, got {n_per_x!r} ({type(n_per_x).__name__})")
        n_per_x = int(n_per_x)
        check_sampling_seed(seed)
        x = _as_tensor(x, "x")
        if x.dim() == 0:
            want = "labels (N,)" if self.meta["cond_kind"] == "onehot" else f"a float tensor (N, {self.meta['cond_dim']})"
            raise ValueError(f"x must be a batch of conditions, {want}; got the single value {x.item()!r} "
                             f"(for one condition give [{x.item()!r}])")
        self._conditions(x, "x")  # labels and shapes checked before anything is repeated or allocated
        self._check_sample_size(len(x), n_per_x, out_dtype, path)
        x = x.repeat_interleave(n_per_x, 0).to(self.device)
        if self.meta["cond_kind"] == "onehot":
            cond, ncls = x.long(), self.meta["num_classes"]
        else:
            cond, ncls = self._conditions(x, "x"), None
        gen = self._generator_params()
        k = self.generator.noise_dim
        # the parameters themselves (frozen): stable identities for the backends' weight caches. A conv decoder's
        # dense head runs fused with the generator, its convolutions after it (ops.generate's tail)
        if isinstance(self.decoder, MLP):
            dec, tail = self.decoder.params(), None
        else:
            dec, tail = self.decoder.dense(), self.decoder.tail
        if path is not None:
            if eta is not None:
                raise ValueError("give either eta or path, not both")
            from .sampling import generate_chunked
            return generate_chunked(gen, dec, cond, noise_dim=k, num_classes=ncls, seed=seed, offset=offset,
                                    chunk_size=chunk_size, path=path, out_dtype=out_dtype, backend=backend,
                                    progress=progress, tail=tail, out_features=self.meta["data_dim"])
        return ops.generate(gen, dec, cond, noise_dim=k, num_classes=ncls, seed=seed, offset=offset,
                            eta=eta, out_dtype=out_dtype, tail=tail, backend=backend)

    def _check_sample_size(self, n_x: int, n_per_x: int, out_dtype, path) -> None:
        """Refuse, before allocating, a request whose file cannot fit on its disk or whose arrays cannot fit in
        memory, naming the count and the size."""
        from .limits import check_allocation
        from .sampling import _NUMPY_DTYPES, check_npy_fits

        rows, width = n_x * n_per_x, self.meta["data_dim"]
        if path is not None and out_dtype in _NUMPY_DTYPES:
            check_npy_fits(os.fspath(path), out_dtype, rows, width)
        cond_bytes = rows * (8 if self.meta["cond_kind"] == "onehot" else 4 * self.meta["cond_dim"])
        out_bytes = 0 if path is not None else rows * width * torch.empty(0, dtype=out_dtype).element_size()
        what = f"{n_x:,} conditions x n_per_x={n_per_x:,} = {rows:,} samples" + (
            "' conditions" if path is not None else f" of {width} values ({out_dtype}) and their conditions")
        check_allocation(cond_bytes + out_bytes, what, self.device,
                         "ask for fewer (rows depend only on (seed, offset + i): batches drawn with offset= join "
                         "exactly)" + ("" if path is not None else ", or give path= (`lsdm sample --out x.npy`) to "
                                       "write them to a file"))

    # ------------------------------------------------------------------ persistence (lsdm_fast.model_folder)
    def save(self, folder: str, *, overwrite: bool = False) -> str:
        """Write the model to `folder` (safetensors weights, config.json, history.json), each file atomically.
        A folder that already holds a saved model is refused unless overwrite=True."""
        self._require_fitted()
        return save_model(self, folder, overwrite=overwrite)

    @classmethod
    def load(cls, folder: str, device: str | None = None) -> "LSDM":
        """A model written by `save`. A missing file raises FileNotFoundError; a damaged one ModelFolderError
        naming the file and the field."""
        return load_model(cls, folder, device)
