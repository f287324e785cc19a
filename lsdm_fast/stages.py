"""The two training stages of LSDM.

Stage 1: an autoencoder on every y (paired and unpaired).
Stage 2: WGAN-GP joint matching of (x, G(eta, x)) against (x, E(y)) on the pairs only. The
critic step and the generator's critic gradient go through lsdm_fast.ops, so the loop is the
same whichever backend runs them.

Both loops can be checkpointed and resumed exactly (see StageHooks and lsdm_fast.checkpoint):
every random draw comes from the one torch.Generator passed in, whose state is saved with the
optimisers, so a resumed run makes the same draws as an uninterrupted one.

Failures stop the run with a TrainingError (a RuntimeError) that names the stage, the step and
the quantity: a NaN/Inf loss or gradient is caught *before* the optimiser step, so neither the
weights nor a checkpoint ever hold a bad state; out of memory names the batch size and a smaller
one to try.

Mixed precision (LSDMConfig.precision): "bf16"/"fp16" autocast the autoencoder and the
generator forward; fp16 adds a GradScaler. The critic step always runs in float32: its loss
holds the gradient penalty, a double backward through ||grad_u f(u~)||, whose value is a
difference of near-equal terms (||g|| - 1) that low precision swamps, and the fused backends
compute it in float32 anyway. The generator's fake latents are cast to float32 before they meet
the critic.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import trange

from . import distributed as D
from . import ops
from .config import AutoencoderConfig, MatchingConfig
from .models import Critic, Generator


class TrainingError(RuntimeError):
    """Training stopped: divergence (NaN/Inf) or out of memory. The message says where and what to try."""


@dataclass
class StageHooks:
    """Checkpointing for one stage: `save(step_done, stage_state)` every `every` steps (and at the
    end of the stage); `resume` is a stage_state read back from a checkpoint; `describe()` says
    which checkpoint is kept, for error messages."""
    every: int = 0
    save: Callable[[int, dict], None] | None = None
    resume: dict | None = None
    describe: Callable[[], str] = lambda: "no checkpoint is kept (pass checkpoint_dir to keep one)"

    def due(self, step_done: int, total: int) -> bool:
        return self.save is not None and self.every > 0 and step_done % self.every == 0 and step_done < total


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_scaler(precision: str, device: torch.device):
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc))


def _oom_error(stage: str, step: int, batch_size: int, field: str) -> TrainingError:
    _, world = D.rank_world()
    per = f" ({batch_size // world} per process)" if world > 1 else ""
    smaller = max(1, batch_size // 2) if world == 1 else max(world, batch_size // 2 // world * world)
    return TrainingError(f"{stage}: out of memory at step {step} on a batch of {batch_size}{per}; try a smaller "
                         f"batch, e.g. --batch-size {smaller} ({field}={smaller})")


def _finite_or_raise(stage: str, step: str, values: dict[str, float], hooks: StageHooks, hint: str) -> None:
    for name, v in values.items():
        if not math.isfinite(v):
            raise TrainingError(f"{stage} diverged at {step}: {name} is {v}; the update was not applied and "
                                f"{hooks.describe()}; {hint}")


def _grad_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(torch._foreach_norm([g.float() for g in grads])).norm() if grads else torch.zeros(())


def train_autoencoder(encoder: nn.Module, decoder: nn.Module, y: torch.Tensor, cfg: AutoencoderConfig,
                      rng: torch.Generator, progress: bool = True, *, hooks: StageHooks | None = None,
                      precision: str = "fp32") -> list[float]:
    """Minimise reconstruction error over all rows of y (N, D), values in [0, 1]."""
    hooks = hooks or StageHooks()
    D.check_batch(cfg.batch_size, "autoencoder batch_size")
    params = list(encoder.parameters()) + list(decoder.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(cfg.steps, 1), eta_min=cfg.lr * 0.05)
    scaler = make_scaler(precision, y.device)
    losses: list[float] = []
    start = 0
    if hooks.resume is not None:
        r = hooks.resume
        opt.load_state_dict(r["opt"])
        sched.load_state_dict(r["sched"])
        if scaler is not None and r.get("scaler"):
            scaler.load_state_dict(r["scaler"])
        losses, start = list(r["losses"]), int(r["step"])

    def state(step_done: int) -> dict:
        return {"opt": opt.state_dict(), "sched": sched.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "losses": list(losses), "step": step_done}

    stage = "stage 1 (autoencoder)"
    hint = f"try a lower learning rate (autoencoder lr is {cfg.lr})"
    bar = trange(start, cfg.steps, initial=start, total=cfg.steps, desc="stage 1: autoencoder",
                 disable=not progress, leave=False)
    for step in bar:
        try:
            idx = torch.randint(len(y), (cfg.batch_size,), generator=rng, device=rng.device)
            yb = y[D.shard(idx)]
            with autocast(precision, y.device):
                z = encoder(yb)
                if cfg.latent_noise > 0:
                    eps = torch.randn(z.shape, generator=rng, device=z.device, dtype=z.dtype)
                    rec = decoder(z + cfg.latent_noise * z.detach().std(0) * eps)
                else:
                    rec = decoder(z)
            rec, z = rec.float(), z.float()
            if cfg.loss == "bce":
                rec_loss = F.binary_cross_entropy(rec, yb)
            else:
                rec_loss = F.mse_loss(rec, yb)
            loss = rec_loss + cfg.latent_l2 * z.pow(2).mean()
            opt.zero_grad(set_to_none=True)
            (scaler.scale(loss) if scaler is not None else loss).backward()
        except RuntimeError as exc:
            if is_oom(exc):
                raise _oom_error(stage, step, cfg.batch_size, "AutoencoderConfig.batch_size") from None
            raise
        grads = [p.grad for p in params if p.grad is not None]
        if scaler is not None:
            scaler.unscale_(opt)
        *grads_avg, loss_avg, rec_avg = D.average(grads + [loss.detach().reshape(1), rec_loss.detach().reshape(1)])
        if D.rank_world()[1] > 1:
            for g, ga in zip(grads, grads_avg):
                g.copy_(ga)
        gnorm = float(_grad_norm(grads))
        _finite_or_raise(stage, f"step {step}", {"the loss": float(loss_avg)}, hooks, hint)
        if scaler is None:  # under fp16 the scaler skips steps with overflowing gradients by design
            _finite_or_raise(stage, f"step {step}", {"the gradient norm": gnorm}, hooks, hint)
            opt.step()
        else:
            scaler.step(opt)
            scaler.update()
        sched.step()
        losses.append(float(rec_avg))
        if len(losses) % 50 == 0:
            bar.set_postfix(reconstruction=f"{losses[-1]:.4f}")
        if hooks.due(step + 1, cfg.steps):
            hooks.save(step + 1, state(step + 1))
    hooks.final_state = state(cfg.steps)
    return losses


def train_joint_matching(generator: Generator, critic: Critic, x: torch.Tensor, z: torch.Tensor,
                         cfg: MatchingConfig, rng: torch.Generator, progress: bool = True, *,
                         hooks: StageHooks | None = None, precision: str = "fp32") -> dict[str, list[float]]:
    """Match the law of (x, G(eta, x)) to that of the pairs (x, z) with a WGAN-GP critic."""
    hooks = hooks or StageHooks()
    D.check_batch(cfg.batch_size, "matching batch_size")
    gen_opt = torch.optim.Adam(generator.parameters(), lr=cfg.lr, betas=cfg.betas)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=cfg.lr, betas=cfg.betas)
    critic_params = list(critic.mlp.params().weights) + list(critic.mlp.params().biases)
    gen_params = list(generator.parameters())
    scaler = make_scaler(precision, x.device)  # generator only: the critic step is float32
    n, k, dev = len(x), generator.noise_dim, x.device
    hist = {"critic_loss": [], "wasserstein": [], "penalty": [], "generator_loss": [], "backend": None}
    start = 0
    # exponential moving average of the generator's weights, swapped in at the end (0: off)
    ema = [p.detach().clone() for p in gen_params] if cfg.generator_ema > 0 else None
    if hooks.resume is not None:
        r = hooks.resume
        if ema is not None:
            ema = [t.clone().to(p) for t, p in zip(r["gen_ema"], gen_params)]
        gen_opt.load_state_dict(r["gen_opt"])
        critic_opt.load_state_dict(r["critic_opt"])
        if scaler is not None and r.get("scaler"):
            scaler.load_state_dict(r["scaler"])
        hist = {key: (list(v) if isinstance(v, list) else v) for key, v in r["hist"].items()}
        start = int(r["step"])

    def state(step_done: int) -> dict:
        return {"gen_opt": gen_opt.state_dict(), "critic_opt": critic_opt.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "gen_ema": [t.clone() for t in ema] if ema is not None else None,
                "hist": {key: (list(v) if isinstance(v, list) else v) for key, v in hist.items()}, "step": step_done}

    def batch():
        idx = torch.randint(n, (cfg.batch_size,), generator=rng, device=dev)
        eta = torch.randn(cfg.batch_size, k, generator=rng, device=dev, dtype=x.dtype)
        idx, eta = D.shard(idx), D.shard(eta)
        return x[idx], z[idx], eta

    stage = "stage 2 (joint matching)"
    hint = f"try a lower learning rate (matching lr is {cfg.lr})"
    bar = trange(start, cfg.steps, initial=start, total=cfg.steps, desc="stage 2: joint matching",
                 disable=not progress, leave=False)
    for step in bar:
        try:
            for c in range(cfg.critic_steps):
                xb, zb, eta = batch()
                with torch.no_grad(), autocast(precision, dev):
                    z_fake = generator(eta, xb)
                z_fake = z_fake.float()
                t = D.shard(torch.rand(cfg.batch_size, generator=rng, device=dev, dtype=x.dtype))
                out = ops.critic_gradient_penalty(critic.mlp.params(), xb, zb, z_fake, t, gp_weight=cfg.gp_weight,
                                                  penalty_over=cfg.penalty_over, backend=cfg.backend)
                grads = D.average(list(out.weight_grads) + list(out.bias_grads)
                                  + [torch.stack([out.loss, out.wasserstein, out.penalty]).float()])
                closs, wdist, pen = (float(v) for v in grads.pop())
                _finite_or_raise(stage, f"generator step {step}, critic step {c}",
                                 {"the critic loss": closs, "the critic gradient norm": float(_grad_norm(grads))},
                                 hooks, hint)
                for p, g in zip(critic_params, grads):
                    p.grad = g
                critic_opt.step()
            hist["backend"] = out.backend

            xb, _, eta = batch()
            with autocast(precision, dev):
                z_fake = generator(eta, xb)
            z32 = z_fake.float()
            score, grad_z = ops.critic_score_grad(critic.mlp.params(), xb, z32.detach(), backend=cfg.backend)
            gen_opt.zero_grad(set_to_none=True)
            # d(-mean f)/dz, then through G by autograd (scaled under fp16, unscaled before the step)
            z32.backward(scaler.scale(-grad_z) if scaler is not None else -grad_z)
        except RuntimeError as exc:
            if is_oom(exc):
                raise _oom_error(stage, step, cfg.batch_size, "MatchingConfig.batch_size") from None
            raise
        if scaler is not None:
            scaler.unscale_(gen_opt)
        ggrads = [p.grad for p in gen_params if p.grad is not None]
        *ggrads_avg, score_avg = D.average(ggrads + [score.detach().reshape(1).float()])
        if D.rank_world()[1] > 1:
            for g, ga in zip(ggrads, ggrads_avg):
                g.copy_(ga)
        gvals = {"the critic score of the generated latents": float(score_avg)}
        if scaler is None:
            gvals["the generator gradient norm"] = float(_grad_norm(ggrads))
        _finite_or_raise(stage, f"generator step {step}", gvals, hooks, hint)
        if scaler is None:
            gen_opt.step()
        else:
            scaler.step(gen_opt)
            scaler.update()
        if ema is not None:
            with torch.no_grad():
                torch._foreach_lerp_(ema, [p.detach() for p in gen_params], 1.0 - cfg.generator_ema)

        for key, v in (("critic_loss", closs), ("wasserstein", wdist), ("penalty", pen),
                       ("generator_loss", -float(score_avg))):
            hist[key].append(v)
        if step % 50 == 0:
            bar.set_postfix(W=f"{hist['wasserstein'][-1]:.3f}", GP=f"{hist['penalty'][-1]:.3f}")
        if hooks.due(step + 1, cfg.steps):
            hooks.save(step + 1, state(step + 1))
    hooks.final_state = state(cfg.steps)  # for the caller's end-of-stage checkpoint
    if ema is not None:
        with torch.no_grad():
            for p, e in zip(gen_params, ema):
                p.copy_(e)
    return hist
