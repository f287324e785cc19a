"""The training state: everything a run needs to continue exactly where it stopped.

`LSDM.fit` creates one (or loads one from a checkpoint), hands it to stage 1 and then to
stage 2, which advance it in place, and the checkpointer saves and restores it whole
(lsdm_fast.checkpoint). See docs/design.md, "Training state and checkpoints".
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch
import torch.nn as nn

MODEL_NAMES = ("encoder", "decoder", "generator", "critic")
# stage-2 loss curves, one value per generator step
MATCHING_CURVES = ("critic_loss", "wasserstein", "penalty", "generator_loss")


class Stage(enum.IntEnum):
    AUTOENCODER = 1  # stage 1: E, D on every image
    MATCHING = 2  # stage 2: G, critic on the pairs
    DONE = 3


@dataclass
class TrainingState:
    encoder: nn.Module | None
    decoder: nn.Module | None
    generator: nn.Module
    critic: nn.Module
    rng: torch.Generator  # draws every batch index, noise vector and interpolation weight, in order
    latent_mean: torch.Tensor | None = None  # stage 2 matches standardised latents (z - mean) / std
    latent_std: torch.Tensor | None = None
    stage: Stage = Stage.AUTOENCODER
    step: int = 0  # steps done in `stage`
    # "reconstruction" (stage 1, per step), MATCHING_CURVES (stage 2, per generator step), "backend"
    history: dict = field(default_factory=dict)
    optim: dict | None = None  # the running stage's optimiser / scheduler / scaler / EMA states
    # latent growth: the stage-1 attempt with the least unexplained variance so far, kept to return to if a grown
    # attempt ends worse ({"latent_dim", "unexplained", "models": {"encoder", "decoder"}, "history"}); stage 1 only
    best_attempt: dict | None = None

    def models(self) -> dict[str, nn.Module]:
        return {n: m for n, m in zip(MODEL_NAMES, (self.encoder, self.decoder, self.generator, self.critic))
                if m is not None}

    def enter(self, stage: Stage) -> None:
        """Start `stage` from its first step (the previous stage's optimisers are dropped)."""
        self.stage, self.step, self.optim = stage, 0, None
