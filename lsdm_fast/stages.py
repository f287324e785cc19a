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
mixed precision (autocast, GradScaler), guards (a NaN/Inf loss or gradient raises a
TrainingError naming the stage, the step and the quantity *before* the optimiser step, so
neither the weights nor a checkpoint ever hold a bad state; out of memory names the batch size
and a smaller one to try). Mixed precision: see docs/design.md, "Mixed precision" (the critic
step always runs in float32).
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import trange

from . import distributed as D
from . import ops
from .checkpoint import Checkpointer
from .config import AutoencoderConfig, MatchingConfig
from .models import Critic, Generator
from .state import MATCHING_CURVES, TrainingState

LOG_EVERY = 50  # generator steps between reads of the loss curves (and the progress bar)
NO_CHECKPOINT = "no checkpoint is kept (pass checkpoint_dir to keep one)"


class TrainingError(RuntimeError):
    """Training stopped: divergence (NaN/Inf) or out of memory. The message says where and what to try."""


# ------------------------------------------------------------------------------ helpers around the method

def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_scaler(precision: str, device: torch.device):
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc))


@contextlib.contextmanager
def out_of_memory_as_training_error(stage: str, step: int, batch_size: int, field: str):
    try:
        yield
    except RuntimeError as exc:
        if not is_oom(exc):
            raise
        _, world = D.rank_world()
        per = f" ({batch_size // world} per process)" if world > 1 else ""
        smaller = max(1, batch_size // 2) if world == 1 else max(world, batch_size // 2 // world * world)
        raise TrainingError(f"{stage}: out of memory at step {step} on a batch of {batch_size}{per}; try a smaller "
                            f"batch, e.g. --batch-size {smaller} ({field}={smaller})") from None


def finite_or_raise(stage: str, where: str, values: dict[str, float], describe: Callable[[], str], hint: str) -> None:
    for name, v in values.items():
        if not math.isfinite(v):
            raise TrainingError(f"{stage} diverged at {where}: {name} is {v}; the update was not applied and "
                                f"{describe()}; {hint}")


def grad_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(torch._foreach_norm([g.float() for g in grads])).norm() if grads else torch.zeros(())


def average_gradients(grads: list[torch.Tensor], *scalars: torch.Tensor) -> list[torch.Tensor]:
    """Average `grads` over processes in place (one all_reduce with the scalars); return the averaged scalars."""
    *grads_avg, = D.average(list(grads) + [s.detach().reshape(-1).float() for s in scalars])
    if D.rank_world()[1] > 1:
        for g, ga in zip(grads, grads_avg):
            g.copy_(ga)
    return grads_avg[len(grads):]


def _steps(start: int, total: int, desc: str, progress: bool):
    return trange(start, total, initial=start, total=total, desc=desc, disable=not progress, leave=False)


def _describer(checkpoint) -> Callable[[], str]:
    """What the guards' messages say about the last good checkpoint."""
    return checkpoint.describe if checkpoint is not None else (lambda: NO_CHECKPOINT)


def _due(every: int, step_done: int, total: int) -> bool:
    """A periodic checkpoint after `step_done` steps (the end of a stage is the caller's checkpoint)."""
    return every > 0 and step_done % every == 0 and step_done < total


# ------------------------------------------------------------------------------ stage 1

class AutoencoderStep:
    """One stage-1 step: a batch of y through E then D, minimise reconstruction error (+ a small latent L2)."""

    stage = "stage 1 (autoencoder)"

    def __init__(self, encoder: nn.Module, decoder: nn.Module, y: torch.Tensor, cfg: AutoencoderConfig,
                 rng: torch.Generator, *, precision: str = "fp32", describe: Callable[[], str] = lambda: NO_CHECKPOINT):
        D.check_batch(cfg.batch_size, "autoencoder batch_size")
        self.encoder, self.decoder, self.y, self.cfg, self.rng = encoder, decoder, y, cfg, rng
        self.precision, self.describe = precision, describe
        self.params = list(encoder.parameters()) + list(decoder.parameters())
        self.opt = torch.optim.Adam(self.params, lr=cfg.lr)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, max(cfg.steps, 1), eta_min=cfg.lr * 0.05)
        self.scaler = make_scaler(precision, y.device)
        self.hint = f"try a lower learning rate (autoencoder lr is {cfg.lr})"

    def __call__(self, step: int) -> float:
        cfg, y = self.cfg, self.y
        idx = torch.randint(len(y), (cfg.batch_size,), generator=self.rng, device=self.rng.device)
        yb = y[D.shard(idx)]
        with autocast(self.precision, y.device):
            z = self.encoder(yb)
            if cfg.latent_noise > 0:  # the decoder learns to map a neighbourhood of each latent to the image
                eps = torch.randn(z.shape, generator=self.rng, device=z.device, dtype=z.dtype)
                z_in = z + cfg.latent_noise * z.detach().std(0) * eps
            else:
                z_in = z
            rec = self.decoder(z_in)
        rec, z = rec.float(), z.float()
        rec_loss = F.binary_cross_entropy(rec, yb) if cfg.loss == "bce" else F.mse_loss(rec, yb)
        loss = rec_loss + cfg.latent_l2 * z.pow(2).mean()

        self.opt.zero_grad(set_to_none=True)
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        grads = [p.grad for p in self.params if p.grad is not None]
        if self.scaler is not None:
            self.scaler.unscale_(self.opt)
        loss_avg, rec_avg = average_gradients(grads, loss, rec_loss)
        where = f"step {step}"
        finite_or_raise(self.stage, where, {"the loss": float(loss_avg)}, self.describe, self.hint)
        if self.scaler is None:  # under fp16 the scaler skips steps with overflowing gradients by design
            finite_or_raise(self.stage, where, {"the gradient norm": float(grad_norm(grads))}, self.describe, self.hint)
            self.opt.step()
        else:
            self.scaler.step(self.opt)
            self.scaler.update()
        self.sched.step()
        return float(rec_avg)

    def state_dict(self) -> dict:
        return {"opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None}

    def load_state_dict(self, d: dict) -> None:
        self.opt.load_state_dict(d["opt"])
        self.sched.load_state_dict(d["sched"])
        if self.scaler is not None and d.get("scaler"):
            self.scaler.load_state_dict(d["scaler"])


def train_autoencoder(state: TrainingState, y: torch.Tensor, cfg: AutoencoderConfig, *, precision: str = "fp32",
                      progress: bool = True, checkpoint: Checkpointer | None = None) -> None:
    """Stage 1: minimise the reconstruction error of state.encoder/decoder over every row of y (N, D) in [0, 1]."""
    step_fn = AutoencoderStep(state.encoder, state.decoder, y, cfg, state.rng, precision=precision,
                              describe=_describer(checkpoint))
    if state.optim is not None:
        step_fn.load_state_dict(state.optim)
    losses = state.history.setdefault("reconstruction", [])
    bar = _steps(state.step, cfg.steps, "stage 1: autoencoder", progress)
    for step in bar:
        with out_of_memory_as_training_error(step_fn.stage, step, cfg.batch_size, "AutoencoderConfig.batch_size"):
            losses.append(step_fn(step))
        state.step = step + 1
        if state.step % LOG_EVERY == 0:
            bar.set_postfix(reconstruction=f"{losses[-1]:.4f}")
        if checkpoint is not None and _due(cfg.checkpoint_every, state.step, cfg.steps):
            state.optim = step_fn.state_dict()
            checkpoint.save(state)
    state.optim = step_fn.state_dict()


# ------------------------------------------------------------------------------ stage 2

class MatchingStep:
    """One stage-2 generator step: cfg.critic_steps WGAN-GP critic updates, then one generator update.

    Returns [critic_loss, wasserstein, penalty, generator_loss] (the last critic update's terms and
    -mean f of the generated latents) as a tensor.
    """

    stage = "stage 2 (joint matching)"

    def __init__(self, generator: Generator, critic: Critic, x: torch.Tensor, z: torch.Tensor, cfg: MatchingConfig,
                 rng: torch.Generator, *, precision: str = "fp32",
                 describe: Callable[[], str] = lambda: NO_CHECKPOINT):
        D.check_batch(cfg.batch_size, "matching batch_size")
        self.generator, self.critic, self.x, self.z, self.cfg, self.rng = generator, critic, x, z, cfg, rng
        self.precision, self.describe = precision, describe
        self.gen_opt = torch.optim.Adam(generator.parameters(), lr=cfg.lr, betas=cfg.betas)
        self.critic_opt = torch.optim.Adam(critic.parameters(), lr=cfg.lr, betas=cfg.betas)
        self.critic_params = list(critic.mlp.params().weights) + list(critic.mlp.params().biases)
        self.gen_params = list(generator.parameters())
        self.scaler = make_scaler(precision, x.device)  # generator only: the critic step is float32
        # exponential moving average of the generator's weights, swapped in at the end (0: off)
        self.ema = [p.detach().clone() for p in self.gen_params] if cfg.generator_ema > 0 else None
        self.backend: str | None = None
        self.hint = f"try a lower learning rate (matching lr is {cfg.lr})"

    def _batch(self):
        cfg, dev = self.cfg, self.x.device
        idx = torch.randint(len(self.x), (cfg.batch_size,), generator=self.rng, device=dev)
        eta = torch.randn(cfg.batch_size, self.generator.noise_dim, generator=self.rng, device=dev, dtype=self.x.dtype)
        idx, eta = D.shard(idx), D.shard(eta)
        return self.x[idx], self.z[idx], eta

    def _critic_update(self, step: int, c: int) -> list[float]:
        cfg, dev = self.cfg, self.x.device
        xb, zb, eta = self._batch()
        with torch.no_grad(), autocast(self.precision, dev):
            z_fake = self.generator(eta, xb)
        z_fake = z_fake.float()
        t = D.shard(torch.rand(cfg.batch_size, generator=self.rng, device=dev, dtype=self.x.dtype))
        out = ops.critic_gradient_penalty(self.critic.mlp.params(), xb, zb, z_fake, t, gp_weight=cfg.gp_weight,
                                          penalty_over=cfg.penalty_over, backend=cfg.backend)
        grads = list(out.weight_grads) + list(out.bias_grads)
        terms = average_gradients(grads, torch.stack([out.loss, out.wasserstein, out.penalty]).float())[0]
        closs, wdist, pen = (float(v) for v in terms)
        finite_or_raise(self.stage, f"generator step {step}, critic step {c}",
                        {"the critic loss": closs, "the critic gradient norm": float(grad_norm(grads))},
                        self.describe, self.hint)
        for p, g in zip(self.critic_params, grads):
            p.grad = g
        self.critic_opt.step()
        self.backend = out.backend
        return [closs, wdist, pen]

    def _generator_update(self, step: int) -> float:
        xb, _, eta = self._batch()
        with autocast(self.precision, self.x.device):
            z_fake = self.generator(eta, xb)
        z32 = z_fake.float()
        score, grad_z = ops.critic_score_grad(self.critic.mlp.params(), xb, z32.detach(), backend=self.cfg.backend)
        self.gen_opt.zero_grad(set_to_none=True)
        # d(-mean f)/dz, then through G by autograd (scaled under fp16, unscaled before the step)
        z32.backward(self.scaler.scale(-grad_z) if self.scaler is not None else -grad_z)
        if self.scaler is not None:
            self.scaler.unscale_(self.gen_opt)
        grads = [p.grad for p in self.gen_params if p.grad is not None]
        (score_avg,) = average_gradients(grads, score)
        checks = {"the critic score of the generated latents": float(score_avg)}
        if self.scaler is None:
            checks["the generator gradient norm"] = float(grad_norm(grads))
        finite_or_raise(self.stage, f"generator step {step}", checks, self.describe, self.hint)
        if self.scaler is None:
            self.gen_opt.step()
        else:
            self.scaler.step(self.gen_opt)
            self.scaler.update()
        if self.ema is not None:
            with torch.no_grad():
                torch._foreach_lerp_(self.ema, [p.detach() for p in self.gen_params], 1.0 - self.cfg.generator_ema)
        return -float(score_avg)

    def __call__(self, step: int) -> torch.Tensor:
        for c in range(self.cfg.critic_steps):
            terms = self._critic_update(step, c)
        return torch.tensor(terms + [self._generator_update(step)])

    def check(self) -> None:
        """Guards already ran inside each update (host checks)."""

    def finish(self) -> None:
        if self.ema is not None:  # sampling uses the average
            with torch.no_grad():
                for p, e in zip(self.gen_params, self.ema):
                    p.copy_(e)

    def state_dict(self) -> dict:
        return {"gen_opt": self.gen_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "gen_ema": [t.clone() for t in self.ema] if self.ema is not None else None}

    def load_state_dict(self, d: dict) -> None:
        if self.ema is not None:
            self.ema = [t.clone().to(p) for t, p in zip(d["gen_ema"], self.gen_params)]
        self.gen_opt.load_state_dict(d["gen_opt"])
        self.critic_opt.load_state_dict(d["critic_opt"])
        if self.scaler is not None and d.get("scaler"):
            self.scaler.load_state_dict(d["scaler"])


def train_joint_matching(state: TrainingState, x: torch.Tensor, z: torch.Tensor, cfg: MatchingConfig, *,
                         precision: str = "fp32", progress: bool = True, checkpoint: Checkpointer | None = None) -> None:
    """Stage 2: match the law of (x, G(eta, x)) to that of the pairs (x, z) with a WGAN-GP critic."""
    step_fn = MatchingStep(state.generator, state.critic, x, z, cfg, state.rng, precision=precision,
                           describe=_describer(checkpoint))
    if state.optim is not None:
        step_fn.load_state_dict(state.optim)
    curves = {k: state.history.setdefault(k, []) for k in MATCHING_CURVES}
    pending: list[torch.Tensor] = []  # the loss terms of the steps not yet read back

    def read_back():
        step_fn.check()
        for row in (torch.stack(pending).tolist() if pending else []):
            for key, v in zip(MATCHING_CURVES, row):
                curves[key].append(v)
        pending.clear()
        state.history["backend"] = step_fn.backend

    bar = _steps(state.step, cfg.steps, "stage 2: joint matching", progress)
    for step in bar:
        with out_of_memory_as_training_error(step_fn.stage, step, cfg.batch_size, "MatchingConfig.batch_size"):
            pending.append(step_fn(step))
        state.step = step + 1
        if len(pending) >= LOG_EVERY:
            read_back()
            bar.set_postfix(W=f"{curves['wasserstein'][-1]:.3f}", GP=f"{curves['penalty'][-1]:.3f}")
        if checkpoint is not None and _due(cfg.checkpoint_every, state.step, cfg.steps):
            read_back()
            state.optim = step_fn.state_dict()
            checkpoint.save(state)
    read_back()
    state.optim = step_fn.state_dict()
    step_fn.finish()
