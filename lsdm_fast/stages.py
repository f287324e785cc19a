"""The two training stages of LSDM.

Stage 1: an autoencoder on every y (paired and unpaired).
Stage 2: WGAN-GP joint matching of (x, G(eta, x)) against (x, E(y)) on the pairs only. The
critic step and the generator's critic gradient go through lsdm_fast.ops, so the loop is the
same whichever backend runs them.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import trange

from . import ops
from .config import AutoencoderConfig, MatchingConfig
from .models import Critic, Generator


def train_autoencoder(encoder: nn.Module, decoder: nn.Module, y: torch.Tensor, cfg: AutoencoderConfig,
                      rng: torch.Generator, progress: bool = True) -> list[float]:
    """Minimise reconstruction error over all rows of y (N, D), values in [0, 1]."""
    opt = torch.optim.Adam(list(encoder.parameters()) + list(decoder.parameters()), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(cfg.steps, 1), eta_min=cfg.lr * 0.05)
    losses = []
    bar = trange(cfg.steps, desc="stage 1: autoencoder", disable=not progress, leave=False)
    for _ in bar:
        idx = torch.randint(len(y), (cfg.batch_size,), generator=rng, device=rng.device)
        yb = y[idx]
        z = encoder(yb)
        rec = decoder(z)
        if cfg.loss == "bce":
            rec_loss = F.binary_cross_entropy(rec, yb)
        else:
            rec_loss = F.mse_loss(rec, yb)
        loss = rec_loss + cfg.latent_l2 * z.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(rec_loss.item())
        if len(losses) % 50 == 0:
            bar.set_postfix(reconstruction=f"{losses[-1]:.4f}")
    return losses


def train_joint_matching(generator: Generator, critic: Critic, x: torch.Tensor, z: torch.Tensor,
                         cfg: MatchingConfig, rng: torch.Generator, progress: bool = True) -> dict[str, list[float]]:
    """Match the law of (x, G(eta, x)) to that of the pairs (x, z) with a WGAN-GP critic."""
    gen_opt = torch.optim.Adam(generator.parameters(), lr=cfg.lr, betas=cfg.betas)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=cfg.lr, betas=cfg.betas)
    critic_params = list(critic.mlp.params().weights) + list(critic.mlp.params().biases)
    n, k, dev = len(x), generator.noise_dim, x.device
    hist = {"critic_loss": [], "wasserstein": [], "penalty": [], "generator_loss": [], "backend": None}

    def batch():
        idx = torch.randint(n, (cfg.batch_size,), generator=rng, device=dev)
        eta = torch.randn(cfg.batch_size, k, generator=rng, device=dev, dtype=x.dtype)
        return x[idx], z[idx], eta

    bar = trange(cfg.steps, desc="stage 2: joint matching", disable=not progress, leave=False)
    for step in bar:
        for _ in range(cfg.critic_steps):
            xb, zb, eta = batch()
            with torch.no_grad():
                z_fake = generator(eta, xb)
            t = torch.rand(cfg.batch_size, generator=rng, device=dev, dtype=x.dtype)
            out = ops.critic_gradient_penalty(critic.mlp.params(), xb, zb, z_fake, t, gp_weight=cfg.gp_weight,
                                              penalty_over=cfg.penalty_over, backend=cfg.backend)
            for p, g in zip(critic_params, out.weight_grads + out.bias_grads):
                p.grad = g
            critic_opt.step()
        hist["backend"] = out.backend

        xb, _, eta = batch()
        z_fake = generator(eta, xb)
        score, grad_z = ops.critic_score_grad(critic.mlp.params(), xb, z_fake.detach(), backend=cfg.backend)
        gen_opt.zero_grad(set_to_none=True)
        z_fake.backward(-grad_z)  # d(-mean f)/dz, then through G by autograd
        gen_opt.step()

        for key, v in (("critic_loss", out.loss), ("wasserstein", out.wasserstein), ("penalty", out.penalty),
                       ("generator_loss", -score)):
            hist[key].append(float(v))
        if step % 50 == 0:
            bar.set_postfix(W=f"{hist['wasserstein'][-1]:.3f}", GP=f"{hist['penalty'][-1]:.3f}")
        if not (math.isfinite(hist["critic_loss"][-1]) and math.isfinite(hist["generator_loss"][-1])):
            raise FloatingPointError(f"stage 2 diverged at generator step {step}: critic loss {float(out.loss)}, "
                                     f"critic score {float(score)}; try a lower learning rate")
    return hist
