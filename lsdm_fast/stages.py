"""The two training stages of LSDM, each a plain loop over steps whose body is the method.

Stage 1 (`train_autoencoder`): an autoencoder E, D on every y, paired and unpaired
(`AutoencoderStep`: reconstruct a batch, minimise BCE or MSE).
Stage 2 (`train_joint_matching`): WGAN-GP matching of (x, G(eta, x)) against (x, E(y)) on the
pairs only (`MatchingStep`: critic updates through lsdm_fast.ops, then a generator update).

Both loops advance a TrainingState (lsdm_fast.state) in place and hand it to `checkpoint`
every `checkpoint_every` steps; every random draw comes from the state's one torch.Generator,
whose state is saved with the optimisers, so a resumed run makes the same draws as an
uninterrupted one.

Around the method, small helpers: gradient averaging over processes (lsdm_fast.distributed),
mixed precision (lsdm_fast.precision), guards (lsdm_fast.guards: a NaN/Inf loss or gradient
raises a TrainingError naming the stage, the step and the quantity, and the update that produced
it is never applied, so neither the weights nor a checkpoint ever hold a bad state; out of memory
names the batch size and a smaller one to try). Stage 2 on CUDA runs its step from CUDA graphs
with the guard on the device, read every LOG_EVERY steps and before every checkpoint
(matching_step.py; docs/design.md §6).
"""
from __future__ import annotations

import math
import sys
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import trange

from . import distributed as D
from . import ops
from .checkpoint import Checkpointer
from .config import LEGACY_PATCH_LR, AutoencoderConfig, MatchingConfig
from .guards import TrainingError, finite_or_raise, grad_norm, out_of_memory_as_training_error  # noqa: F401 (re-export)
from .matching_step import MatchingStep, no_checkpoint
from .models import PatchDecoder, PatchEncoder, copy_weights
from .ops._registry import resolve
from .precision import autocast, make_scaler, step_optimizer
from .state import MATCHING_CURVES, TrainingState

LOG_EVERY = 50  # generator steps between reads of the loss curves (and the progress bar)


def _steps(start: int, total: int, desc: str, progress: bool):
    return trange(start, total, initial=start, total=total, desc=desc, disable=not progress, leave=False)


def _describer(checkpoint) -> Callable[[], str]:
    """What the guards' messages say about the last good checkpoint."""
    return checkpoint.describe if checkpoint is not None else no_checkpoint


def _due(every: int, step_done: int, total: int) -> bool:
    """A periodic checkpoint after `step_done` steps (the end of a stage is the caller's checkpoint)."""
    return every > 0 and step_done % every == 0 and step_done < total


# ------------------------------------------------------------------------------ stage 1

class _CosineWithWarmup:
    """LambdaLR factor: a linear ramp over `warmup` steps, times a cosine from 1 to `floor` over `total`."""

    def __init__(self, total: int, warmup: int, floor: float):
        self.total, self.warmup, self.floor = total, warmup, floor

    def __call__(self, step: int) -> float:
        ramp = min(1.0, (step + 1) / self.warmup)
        return ramp * (self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * min(step, self.total) / self.total)))


class AutoencoderStep:
    """One stage-1 step: a batch of y through E then D, minimise reconstruction error (+ a small latent L2).

    The budget (AutoencoderConfig.stop): "steps" runs `total` steps with a cosine learning-rate decay;
    "plateau" holds out a few images (a seeded choice, the same on resume) and every `period` steps
    measures the reconstruction loss on them: after `plateau_patience` checks without a relative
    improvement of `plateau_tol` the learning rate drops 5x, and the plateau after `plateau_decays` drops
    ends the stage (`done`), capped at `total` steps: stage 1 to convergence, for any data size.
    Either way the learning rate rises linearly over the first `warmup_steps`; with `ema` > 0 an
    exponential moving average of the weights is what the held-out checks measure and what the stage
    ends with (`finish`).
    """

    stage = "stage 1 (autoencoder)"

    def __init__(self, encoder: nn.Module, decoder: nn.Module, y: torch.Tensor, cfg: AutoencoderConfig,
                 rng: torch.Generator, *, precision: str = "fp32", describe: Callable[[], str] = no_checkpoint,
                 seed: int = 0):
        D.check_batch(cfg.batch_size, "autoencoder batch_size")
        self.encoder, self.decoder, self.y, self.cfg, self.rng = encoder, decoder, y, cfg, rng
        self.precision, self.describe = precision, describe
        self.params = list(encoder.parameters()) + list(decoder.parameters())
        self.patch = isinstance(encoder, PatchEncoder)
        self.lr, self.warmup, self.patience = cfg.schedule(self.patch)
        self.opt = torch.optim.Adam(self.params, lr=self.lr)
        self.scaler = make_scaler(precision, y.device)
        self.hint = f"try a lower learning rate (autoencoder lr is {self.lr})"
        self.train_idx = self.heldout = None  # "steps": every row trains
        if cfg.stop == "plateau":
            n_out = int(min(2048, max(1, round(cfg.holdout * len(y)))))
            if len(y) - n_out < 1:
                raise ValueError(f"stage 1: {len(y)} images are too few to hold {n_out} out for the plateau rule; "
                                 "use autoencoder.stop='steps'")
            perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed + 7919)).to(y.device)
            self.heldout, self.train_idx = y[perm[:n_out]], perm[n_out:]
        n_train = len(y) if self.train_idx is None else len(self.train_idx)
        self.total = int(round(cfg.epochs * n_train / cfg.batch_size)) if cfg.epochs > 0 else cfg.steps
        self.period = max(math.ceil(cfg.check_epochs * n_train / cfg.batch_size), cfg.check_every)
        self.sched = None
        if cfg.stop == "steps" and self.warmup == 0:
            self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, max(self.total, 1), eta_min=self.lr * 0.05)
        elif cfg.stop == "steps":  # the same cosine, times the warm-up ramp
            cosine = _CosineWithWarmup(max(self.total, 1), self.warmup, 0.05)
            self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, cosine)
        self.ema = [p.detach().clone() for p in self.params] if cfg.ema > 0 else None
        self.ema_updates = 0
        # plateau rule: best held-out loss, checks since it improved, drops so far, stopped
        self.plateau = {"best": math.inf, "bad": 0, "drops": 0, "done": False}
        # the patch model ends the plateau rule with the weights of its lowest held-out check (a late loss spike at
        # its high learning rate would otherwise be what stage 1 hands on); other models end with the last weights
        self.keep_best = self.patch and self.heldout is not None
        self.best: list[torch.Tensor] | None = None
        # the backend of the fused step (ops.autoencoder_loss_grads), resolved once; None: autograd through the
        # modules (models the op does not take, mixed precision)
        self.backend = None
        if precision == "fp32" and isinstance(encoder, PatchEncoder) and isinstance(decoder, PatchDecoder):
            self.backend = resolve(ops.autoencoder_step.OP, cfg.backend, y.device)[0]

    @property
    def done(self) -> bool:
        return self.plateau["done"]

    def _loss(self, rec: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy(rec, yb) if self.cfg.loss == "bce" else F.mse_loss(rec, yb)

    def __call__(self, step: int) -> float:
        cfg, y = self.cfg, self.y
        n = len(y) if self.train_idx is None else len(self.train_idx)
        idx = torch.randint(n, (cfg.batch_size,), generator=self.rng, device=self.rng.device)
        if self.train_idx is not None:
            idx = self.train_idx[idx]
        yb = y[D.shard(idx)]
        loss, rec_loss, grads = (self._fused_loss_grads(yb) if self.backend is not None
                                 else self._autograd_loss_grads(yb))
        return self._update(step, loss, rec_loss, grads)

    def _fused_loss_grads(self, yb: torch.Tensor):
        """The loss terms and the gradients (set into p.grad) from the fused op, no autograd graph."""
        cfg = self.cfg
        eps = (torch.randn((len(yb), cfg.latent_dim), generator=self.rng, device=yb.device, dtype=yb.dtype)
               if cfg.latent_noise > 0 else None)  # the draw _autograd_loss_grads makes
        out = ops.autoencoder_loss_grads(self.encoder, self.decoder, yb, latent_l2=cfg.latent_l2, loss=cfg.loss,
                                         latent_noise=cfg.latent_noise, noise=eps, backend=self.backend)
        self.opt.zero_grad(set_to_none=True)
        for p, g in zip(self.params, out.grads):
            p.grad = g
        return out.loss, out.reconstruction, out.grads

    def _autograd_loss_grads(self, yb: torch.Tensor):
        """The loss terms and the gradients (into p.grad) by autograd through the modules: any model, any precision."""
        cfg, y = self.cfg, self.y
        with autocast(self.precision, y.device):
            z = self.encoder(yb)
            if cfg.latent_noise > 0:  # the decoder learns to map a neighbourhood of each latent to the image
                eps = torch.randn(z.shape, generator=self.rng, device=z.device, dtype=z.dtype)
                z_in = z + cfg.latent_noise * z.detach().std(0) * eps
            else:
                z_in = z
            rec = self.decoder(z_in)
        rec, z = rec.float(), z.float()
        rec_loss = self._loss(rec, yb)
        loss = rec_loss + cfg.latent_l2 * z.pow(2).mean()

        self.opt.zero_grad(set_to_none=True)
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        grads = [p.grad for p in self.params if p.grad is not None]
        return loss, rec_loss, grads

    def _update(self, step: int, loss: torch.Tensor, rec_loss: torch.Tensor, grads: list[torch.Tensor]) -> float:
        """Average over processes, the guards, the optimiser step, the schedules; the reconstruction loss."""
        cfg = self.cfg
        if self.scaler is not None:
            self.scaler.unscale_(self.opt)
        loss_avg, rec_avg = D.average_into(grads, loss, rec_loss)
        where = f"step {step}"
        finite_or_raise(self.stage, where, {"the loss": float(loss_avg)}, self.describe, self.hint)
        if self.scaler is None:  # under fp16 the scaler skips steps with overflowing gradients by design
            finite_or_raise(self.stage, where, {"the gradient norm": float(grad_norm(grads))}, self.describe, self.hint)
        if cfg.stop == "plateau" and step < self.warmup:
            for group in self.opt.param_groups:
                group["lr"] = self.lr * 0.2 ** self.plateau["drops"] * (step + 1) / self.warmup
        step_optimizer(self.opt, self.scaler)
        if self.sched is not None:
            self.sched.step()
        if self.ema is not None:
            self._update_ema()
        return float(rec_avg)

    def _update_ema(self) -> None:
        # the decay ramps up (1 + t) / (10 + t) -> cfg.ema, so the average forgets the initial weights early
        self.ema_updates += 1
        decay = min(self.cfg.ema, (1 + self.ema_updates) / (10 + self.ema_updates))
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1.0 - decay)

    def _swap_ema(self) -> None:
        with torch.no_grad():
            for p, e in zip(self.params, self.ema):
                t = p.detach().clone()
                p.copy_(e)
                e.copy_(t)

    def finish(self) -> None:
        """End of the stage: the networks take the averaged weights (when the EMA is on), or with keep_best the
        weights of the lowest held-out check."""
        if self.ema is not None:
            copy_weights(self.params, self.ema)
        if self.keep_best and self.best is not None:
            with torch.no_grad():
                copy_weights(self.params, self.best)

    def _heldout_sum(self, term) -> float:
        """sum over 512-image pieces of the held-out images of float(term(reconstruction, images))."""
        with torch.no_grad(), autocast(self.precision, self.y.device):
            return sum(float(term(self.decoder(self.encoder(h)).float(), h)) for h in self.heldout.split(512))

    def heldout_loss(self) -> float:
        """The reconstruction loss on the held-out images (with the averaged weights when the EMA is on)."""
        if self.ema is not None:
            self._swap_ema()
        try:
            return self._heldout_sum(lambda rec, h: float(self._loss(rec, h)) * len(h)) / len(self.heldout)
        finally:
            if self.ema is not None:
                self._swap_ema()

    def heldout_unexplained(self) -> float:
        """The fraction of the held-out images' pixel variance the autoencoder misses: their mean squared
        reconstruction error over their variance (AutoencoderConfig.grow_latent's measure)."""
        err = self._heldout_sum(lambda rec, h: ((rec - h) ** 2).sum())
        return err / (self.heldout.numel() * max(float(self.heldout.var()), 1e-12))

    def check(self, step_done: int) -> float | None:
        """Plateau rule, every `period` steps: the held-out loss (returned), learning-rate drops, `done`."""
        if self.heldout is None or step_done % self.period:
            return None
        v = self.heldout_loss()
        p = self.plateau
        if self.keep_best and v < p.get("lowest", math.inf):
            p["lowest"] = v
            with torch.no_grad():
                self.best = [t.detach().clone() for t in (self.ema if self.ema is not None else self.params)]
        if v < p["best"] * (1 - self.cfg.plateau_tol):
            p["best"], p["bad"] = v, 0
        else:
            p["bad"] += 1
            if p["bad"] >= self.patience:
                if p["drops"] >= self.cfg.plateau_decays:
                    p["done"] = True
                else:
                    p["drops"], p["bad"] = p["drops"] + 1, 0
                    for group in self.opt.param_groups:
                        group["lr"] *= 0.2
        return v

    def state_dict(self) -> dict:
        return {"opt": self.opt.state_dict(), "sched": self.sched.state_dict() if self.sched is not None else None,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None, "plateau": dict(self.plateau),
                "ema": [t.clone() for t in self.ema] if self.ema is not None else None,
                "ema_updates": self.ema_updates, "lr": self.lr, "patience": self.patience, "keep_best": self.keep_best,
                "best": [t.clone() for t in self.best] if self.best is not None else None}

    def load_state_dict(self, d: dict) -> None:
        # a run resumes with the schedule it started with: checkpoints from before issue 24's schedule carry
        # none, and a patch model whose fields were None trained then at LEGACY_PATCH_LR with patience 2
        legacy_lr = LEGACY_PATCH_LR if self.patch else self.lr
        legacy_patience = 2 if self.cfg.plateau_patience is None else self.cfg.plateau_patience
        self.lr = float(d.get("lr", self.lr if self.cfg.lr is not None else legacy_lr))
        self.patience = int(d.get("patience", legacy_patience))
        self.keep_best = bool(d.get("keep_best", False))
        self.best = [t.clone() for t in d["best"]] if d.get("best") is not None else None
        self.hint = f"try a lower learning rate (autoencoder lr is {self.lr})"
        self.opt.load_state_dict(d["opt"])
        if self.sched is not None:
            self.sched.load_state_dict(d["sched"])
        if self.scaler is not None and d.get("scaler"):
            self.scaler.load_state_dict(d["scaler"])
        if d.get("plateau"):
            self.plateau = dict(d["plateau"])
        if self.ema is not None:
            if d.get("ema") is None:
                raise ValueError(f"{self.stage}: the saved state has no weight average but ema={self.cfg.ema}")
            with torch.no_grad():
                for e, t in zip(self.ema, d["ema"]):
                    e.copy_(t)
            self.ema_updates = int(d.get("ema_updates", 0))


def _plateau_state(step_fn: AutoencoderStep) -> str:
    """Where the plateau rule stands: the best held-out loss, checks without gain, learning-rate drops."""
    p, cfg = step_fn.plateau, step_fn.cfg
    best = f"{p['best']:.4f}" if math.isfinite(p["best"]) else "not measured yet"
    return (f"held-out best {best}, {p['bad']}/{step_fn.patience} checks without gain, "
            f"{p['drops']}/{cfg.plateau_decays} lr drops" + (" (plateaued)" if p["done"] else ""))


def train_autoencoder(state: TrainingState, y: torch.Tensor, cfg: AutoencoderConfig, *, precision: str = "fp32",
                      progress: bool = True, checkpoint: Checkpointer | None = None, seed: int = 0) -> None:
    """Stage 1: minimise the reconstruction error of state.encoder/decoder over every row of y (N, D) in [0, 1],
    for the budget of cfg.stop (`seed` picks the held-out images of the plateau rule)."""
    step_fn = AutoencoderStep(state.encoder, state.decoder, y, cfg, state.rng, precision=precision,
                              describe=_describer(checkpoint), seed=seed)
    if state.optim is not None:
        step_fn.load_state_dict(state.optim)
    losses = state.history.setdefault("reconstruction", [])
    heldout = state.history.setdefault("reconstruction_heldout", []) if step_fn.heldout is not None else None
    plateau = step_fn.heldout is not None
    bar = _steps(state.step, step_fn.total, f"stage 1: autoencoder (until the held-out loss plateaus, at most "
                 f"{step_fn.total} steps)" if plateau else "stage 1: autoencoder", progress)
    for step in bar:
        if step_fn.done:
            break
        with out_of_memory_as_training_error(step_fn.stage, step, cfg.batch_size, "AutoencoderConfig.batch_size"):
            losses.append(step_fn(step))
        state.step = step + 1
        v = step_fn.check(state.step)
        if v is not None:
            heldout.append([state.step, v])
        if state.step % LOG_EVERY == 0 or v is not None:
            bar.set_postfix_str(f"loss {losses[-1]:.4f}" + (f", {_plateau_state(step_fn)}" if plateau else ""))
        if checkpoint is not None and _due(cfg.checkpoint_every, state.step, step_fn.total) and not step_fn.done:
            state.optim = step_fn.state_dict()
            checkpoint.save(state)
    if plateau and step_fn.done and progress:
        bar.write(file=sys.stderr, s=f"stage 1: stopped by the plateau rule at step {state.step} of at most {step_fn.total}: "
                  f"{_plateau_state(step_fn)}")
    bar.close()
    state.history["stage1_steps"] = state.step
    if step_fn.backend is not None:
        state.history["autoencoder_backend"] = step_fn.backend
    state.optim = step_fn.state_dict()
    step_fn.finish()
    if plateau:
        state.history["stage1_unexplained"] = step_fn.heldout_unexplained()


# ------------------------------------------------------------------------------ stage 2

def train_joint_matching(state: TrainingState, x: torch.Tensor, z: torch.Tensor, cfg: MatchingConfig, *,
                         precision: str = "fp32", progress: bool = True, checkpoint: Checkpointer | None = None,
                         mode: str = "auto", backends: dict[str, str] | None = None,
                         z_marginal: torch.Tensor | None = None, steps: int | None = None) -> None:
    """Stage 2: match the law of (x, G(eta, x)) to that of the pairs (x, z) with a WGAN-GP critic and, with
    `z_marginal` (every image's standardised latent) and cfg.marginal_weight > 0, G's latent law to theirs with
    a second critic h(z) (matching_step.py).
    mode: how MatchingStep runs ("auto": replayed from CUDA graphs on CUDA, host-checked on CPU);
    backends: the ops' backends as matching_step.resolve_backends gives them (None: resolved here);
    steps: the generator steps (None: cfg.generator_steps of the latent)."""
    step_fn = MatchingStep(state.generator, state.critic, x, z, cfg, state.rng, precision=precision,
                           describe=_describer(checkpoint), mode=mode, backends=backends, z_marginal=z_marginal)
    if state.optim is not None:
        step_fn.load_state_dict(state.optim)
    state.history["penalty_over"] = step_fn.penalty_over
    curves = {k: state.history.setdefault(k, []) for k in MATCHING_CURVES}
    pending: list[torch.Tensor] = []  # the loss terms of the steps not yet read back

    def read_back():
        step_fn.check()
        for row in (torch.stack(pending).tolist() if pending else []):
            for key, v in zip(MATCHING_CURVES, row):
                curves[key].append(v)
        pending.clear()
        state.history["backend"] = step_fn.backend

    total = cfg.generator_steps(z.shape[1]) if steps is None else steps
    state.history["stage2_steps"] = total
    bar = _steps(state.step, total, "stage 2: joint matching", progress)
    for step in bar:
        pending.append(step_fn(step))  # no host read in graph mode: the guard is read in read_back
        state.step = step + 1
        if len(pending) >= LOG_EVERY:
            read_back()
            bar.set_postfix(W=f"{curves['wasserstein'][-1]:.3f}", GP=f"{curves['penalty'][-1]:.3f}")
        if checkpoint is not None and _due(cfg.checkpoint_every, state.step, total):
            read_back()
            state.optim = step_fn.state_dict()
            checkpoint.save(state)
    read_back()
    state.optim = step_fn.state_dict()
    step_fn.finish()
