"""Pseudo-pairs for class-conditional stage 2 (MatchingConfig.pseudo_label, opt-in; docs/design.md §1).

With few pairs the joint critic sees a few latents per class, and stage 2 learns those few (recall 0.77 with
1,000 MNIST pairs against 0.91 with all 60,000 labels). The unpaired images' latents are already there: a
small classifier trained on the pairs' standardised latents labels them, and those it labels with probability
>= `confidence` join the pairs. The classifier is an ensemble of ENSEMBLE small MLPs (mean of their softmax),
trained on CPU from a seeded generator of its own: the same pairs, latents and seed give the same pseudo-pairs
on every machine rank and on resume, and no other random stream moves.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

ENSEMBLE = 3
HIDDEN = 256
EPOCHS = 256  # over the pairs, in STEPS_RANGE steps: 2,000 for 1,000 pairs
STEPS_RANGE = (100, 2000)
BATCH = 128
LR = 1e-3
WEIGHT_DECAY = 1e-4
INPUT_NOISE = 0.1  # standardised latent units: smooths each net's decision boundary between the few pairs


@dataclass
class PseudoLabels:
    index: torch.Tensor  # (M,) int64: which unpaired latents were kept
    labels: torch.Tensor  # (M,) int64: their labels
    confidence: torch.Tensor  # (M,) the ensemble's probability of each kept label
    kept_fraction: float  # M / number of unpaired latents (0 when there were none)


@contextmanager
def _one_thread():
    """torch on one CPU thread inside: the classifier's ops are tiny, and on a 16-core host (the H200's) the
    pseudo-labels took 15.6 s on torch's 16 threads against 4.9 s on one (1,000 pairs, 59,000 unpaired, d = 32);
    on the 2-core VM 1 and 2 threads gave the same pseudo-labels, bit for bit."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _classifier(z: torch.Tensor, labels: torch.Tensor, num_classes: int, generator: torch.Generator) -> nn.Module:
    net = nn.Sequential(nn.Linear(z.shape[1], HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, num_classes))
    for layer in (net[0], net[2]):
        bound = layer.in_features ** -0.5
        with torch.no_grad():
            layer.weight.uniform_(-bound, bound, generator=generator)
            layer.bias.uniform_(-bound, bound, generator=generator)
    opt = torch.optim.Adam(net.parameters(), LR, weight_decay=WEIGHT_DECAY)
    steps = min(max(-(-EPOCHS * len(z) // BATCH), STEPS_RANGE[0]), STEPS_RANGE[1])
    for _ in range(steps):
        i = torch.randint(0, len(z), (min(BATCH, len(z)),), generator=generator)
        noisy = z[i] + INPUT_NOISE * torch.randn(len(i), z.shape[1], generator=generator)
        loss = F.cross_entropy(net(noisy), labels[i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net


def pseudo_label(z_pairs: torch.Tensor, labels: torch.Tensor, z_unpaired: torch.Tensor, num_classes: int,
                 confidence: float, seed: int) -> PseudoLabels:
    """Label `z_unpaired` (M, d) by an ensemble trained on (`z_pairs` (N, d), `labels` (N,) in [0,
    num_classes)); keep those whose mean probability is >= `confidence` (in (0, 1])."""
    if not 0.0 < confidence <= 1.0:
        raise ValueError(f"pseudo-label confidence must be in (0, 1], got {confidence}")
    if z_pairs.dim() != 2 or z_unpaired.dim() != 2 or z_pairs.shape[1] != z_unpaired.shape[1]:
        raise ValueError(f"pseudo_label needs (N, d) and (M, d) latents, got {tuple(z_pairs.shape)} and "
                         f"{tuple(z_unpaired.shape)}")
    if labels.shape != (len(z_pairs),) or labels.is_floating_point():
        raise ValueError(f"pseudo_label needs one integer label per pair, got {labels.dtype} {tuple(labels.shape)}")
    zp, zu, y = z_pairs.detach().float().cpu(), z_unpaired.detach().float().cpu(), labels.long().cpu()
    if len(zu) == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return PseudoLabels(empty, empty, torch.zeros(0), 0.0)
    generator = torch.Generator().manual_seed(seed)
    with _one_thread():
        with torch.enable_grad(), torch.random.fork_rng(devices=[]):
            nets = [_classifier(zp, y, num_classes, generator) for _ in range(ENSEMBLE)]
        with torch.no_grad():
            prob = torch.stack([net(zu).softmax(1) for net in nets]).mean(0)
    conf, pred = prob.max(1)
    keep = (conf >= confidence).nonzero().flatten()
    return PseudoLabels(keep, pred[keep], conf[keep], len(keep) / len(zu))
