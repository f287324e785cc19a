"""Baselines LSDM is compared with, on the same data, split and budgets.

- LSDM with stage 1 on the paired images only: ``LSDM(cfg).fit(x, y, None)`` (nothing new here;
  ``fit_paired_only`` is a named shortcut).
- ``PixelMatching``: WGCS-style joint matching with no latent space: the generator outputs
  pixels and the critic sees (x, y) directly. It reuses ``stages.train_joint_matching`` (the
  "latent" is the flat image), so the critic step goes through the same ops and backends.
- ``LatentDiffusion``: a conditional denoiser (an MLP with a sinusoidal time embedding,
  v-prediction of Salimans & Ho 2022, which stays well conditioned at the pure-noise end where
  eps-prediction's z0 estimate blows up and ruins 1-2 step sampling) on the pairs
  (x, standardised E(y)) in a fitted LSDM's latent space, trained with a cosine schedule
  (T = 1000) and sampled with deterministic DDIM in any number of steps, decoded by the same D.
All conditions are float tensors (N, cond_dim): one-hot rows for class labels.
"""
from __future__ import annotations

import copy
import math
import time

import numpy as np
import torch
from tqdm.auto import trange
import torch.nn as nn
import torch.nn.functional as F

from .api import LSDM
from .config import MATCH_STEPS, LSDMConfig, MatchingConfig
from .models import Critic, Generator
from .ops.encode_generate import condition_tensor
from .stages import train_joint_matching
from .state import Stage, TrainingState


def fit_paired_only(config: LSDMConfig, paired_x, paired_y, *, num_classes: int | None = None,
                    progress: bool = False) -> LSDM:
    """LSDM whose stage-1 autoencoder sees the paired images only (no unpaired data)."""
    return LSDM(config).fit(paired_x, paired_y, None, num_classes=num_classes, progress=progress)


# ------------------------------------------------------------------------------ pixel space

class PixelMatching:
    """Joint matching of (x, G(eta, x)) and (x, y) with a WGAN-GP critic on pixels."""

    def __init__(self, matching: MatchingConfig, *, noise_dim: int = 32, generator_hidden=(256, 256),
                 critic_hidden=(256, 256), seed: int = 0):
        self.cfg = copy.deepcopy(matching)
        if self.cfg.steps is None:  # pixels are no latent: the baseline keeps MATCH_STEPS, not the wide-latent budget
            self.cfg.steps = MATCH_STEPS
        if self.cfg.penalty_over is None:  # the joint penalty its committed tables were made with (WGCS's)
            self.cfg.penalty_over = "joint"
        self.noise_dim, self.seed = noise_dim, seed
        self.generator_hidden, self.critic_hidden = tuple(generator_hidden), tuple(critic_hidden)
        self.generator = self.critic = None
        self.history: dict = {}

    def fit(self, cond: torch.Tensor, y: torch.Tensor, progress: bool = False) -> "PixelMatching":
        cond = torch.as_tensor(cond).float()
        y = torch.as_tensor(y).float().reshape(len(y), -1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.generator = Generator(self.noise_dim, cond.shape[1], y.shape[1], self.generator_hidden,
                                       self.cfg.negative_slope)
            self.critic = Critic(cond.shape[1], y.shape[1], self.critic_hidden, self.cfg.negative_slope)
        state = TrainingState(None, None, self.generator, self.critic, torch.Generator().manual_seed(self.seed),
                              stage=Stage.MATCHING)
        t0 = time.perf_counter()
        train_joint_matching(state, cond, y, self.cfg, progress=progress)
        self.history = state.history
        self.history["seconds"] = {"stage2": time.perf_counter() - t0}
        self.generator.eval().requires_grad_(False)
        return self

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, seed: int = 0) -> torch.Tensor:
        cond = torch.as_tensor(cond).float()
        g = torch.Generator().manual_seed(seed)
        eta = torch.randn(len(cond), self.noise_dim, generator=g)
        return self.generator(eta, cond).clamp(0, 1)


# ------------------------------------------------------------------------------ latent diffusion

def cosine_alpha_bar(t: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule: alpha_bar(t) for t in [0, 1]."""
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return f / math.cos(s / (1 + s) * math.pi / 2) ** 2


class Denoiser(nn.Module):
    """v_theta(z_t, t, x): an MLP on cat(z_t, x, sinusoidal embedding of t)."""

    def __init__(self, latent_dim: int, cond_dim: int, hidden=(512, 512, 512), time_dim: int = 64):
        super().__init__()
        self.time_dim = time_dim
        sizes = [latent_dim + cond_dim + time_dim, *hidden]
        layers = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.SiLU()]
        self.net = nn.Sequential(*layers, nn.Linear(sizes[-1], latent_dim))

    def embed(self, t: torch.Tensor) -> torch.Tensor:
        half = self.time_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        a = t.float()[:, None] * 1000.0 * freqs[None]
        return torch.cat([a.sin(), a.cos()], 1)

    def forward(self, z: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([z, x, self.embed(t)], 1))


class LatentDiffusion:
    """Conditional latent diffusion in the latent space of a fitted LSDM (same E, D, standardisation)."""

    def __init__(self, base: LSDM, *, steps: int = 8000, batch_size: int = 256, lr: float = 1e-3,
                 hidden=(512, 512, 512), timesteps: int = 1000, ema: float = 0.999, seed: int = 0):
        base._require_fitted()
        self.base = base
        self.steps, self.batch_size, self.lr, self.hidden = steps, batch_size, lr, tuple(hidden)
        self.T, self.ema_decay, self.seed = timesteps, ema, seed
        self.model = self.ema = None
        self.history: dict = {}
        t = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
        self.alpha_bar = cosine_alpha_bar(t).clamp(1e-5, 1.0).float()  # index 0 = clean, T = noise

    def latents(self, y: torch.Tensor) -> torch.Tensor:
        z = self.base.encode(torch.as_tensor(y).float().reshape(len(y), -1)).cpu()
        return (z - self.base.latent_mean.cpu()) / self.base.latent_std.cpu()

    def fit(self, cond: torch.Tensor, y: torch.Tensor, progress: bool = False) -> "LatentDiffusion":
        cond = torch.as_tensor(cond).float()
        z = self.latents(y)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.model = Denoiser(z.shape[1], cond.shape[1], self.hidden)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        opt = torch.optim.Adam(self.model.parameters(), lr=self.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(self.steps, 1), eta_min=self.lr * 0.05)
        rng = torch.Generator().manual_seed(self.seed)
        losses, t0 = [], time.perf_counter()
        for step in trange(self.steps, desc="latent diffusion", disable=not progress, leave=False):
            idx = torch.randint(len(z), (self.batch_size,), generator=rng)
            ti = torch.randint(1, self.T + 1, (self.batch_size,), generator=rng)
            eps = torch.randn(self.batch_size, z.shape[1], generator=rng)
            ab = self.alpha_bar[ti][:, None]
            zt = ab.sqrt() * z[idx] + (1 - ab).sqrt() * eps
            v = ab.sqrt() * eps - (1 - ab).sqrt() * z[idx]  # v-prediction target
            loss = F.mse_loss(self.model(zt, ti / self.T, cond[idx]), v)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            decay = min(self.ema_decay, (1 + step) / (10 + step))  # EMA warm-up: forget the init quickly
            with torch.no_grad():
                for pe, p in zip(self.ema.parameters(), self.model.parameters()):
                    pe.lerp_(p, 1 - decay)
            losses.append(loss.item())
        self.history = {"denoising_loss": losses, "seconds": {"denoiser": time.perf_counter() - t0}}
        return self

    @torch.no_grad()
    def sample_latent(self, cond: torch.Tensor, n_steps: int = 50, seed: int = 0) -> torch.Tensor:
        """Deterministic DDIM (eta = 0) from t = T to 0 in n_steps evenly spaced steps; standardised latents."""
        if n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {n_steps}")
        cond = torch.as_tensor(cond).float()
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(len(cond), self.ema.net[-1].out_features, generator=g)
        ts = torch.linspace(self.T, 0, n_steps + 1).round().long()
        for t_now, t_next in zip(ts[:-1].tolist(), ts[1:].tolist()):
            ab, ab_next = self.alpha_bar[t_now], self.alpha_bar[t_next]
            v = self.ema(z, torch.full((len(z),), t_now / self.T), cond)
            z0 = (ab.sqrt() * z - (1 - ab).sqrt() * v).clamp(-8, 8)
            eps = (1 - ab).sqrt() * z + ab.sqrt() * v
            z = ab_next.sqrt() * z0 + (1 - ab_next).sqrt() * eps if t_next > 0 else z0
        return z

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, n_steps: int = 50, seed: int = 0) -> torch.Tensor:
        z = self.sample_latent(cond, n_steps, seed)
        b = self.base
        return b.decode(z.to(b.device) * b.latent_std + b.latent_mean).cpu()


def one_hot(labels, num_classes: int) -> torch.Tensor:
    return condition_tensor(torch.as_tensor(np.asarray(labels)), num_classes, torch.float32)
