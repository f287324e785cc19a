"""Pseudo-pairs for stage 2 (MatchingConfig.pseudo_label; docs/design.md §1).

With few pairs the joint critic sees a few latents per class, and stage 2 learns those few (recall 0.77 with
1,000 MNIST pairs against 0.91 with all 60,000 labels). The unpaired images' latents are already there: a
small classifier trained on the pairs' standardised latents labels them, and those it labels with probability
>= `confidence` join the pairs. The classifier is an ensemble of ENSEMBLE small MLPs (mean of their softmax),
trained on CPU from a seeded generator of its own: the same pairs, latents and seed give the same pseudo-pairs
on every machine rank and on resume, and no other random stream moves.

Float conditions (super-resolution's low-resolution image, any vector computed from the image): the same
ensemble, as regressors, learns the map from a latent to its condition on most of the pairs (the easy
direction: the condition is a function of the image), is scored on the pairs it did not see (the share of
the condition's variance it explains, R^2), and, where that is >= `min_r2`, gives every unpaired latent its
predicted condition. A noisy degradation is learnt as its mean: the pseudo-conditions are noise-free.
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


def _train_mlp(z: torch.Tensor, target: torch.Tensor, out_dim: int, loss_fn, generator: torch.Generator) -> nn.Module:
    """One small MLP (d -> HIDDEN -> out_dim) trained on (z, target) with input noise, from `generator` alone."""
    net = nn.Sequential(nn.Linear(z.shape[1], HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, out_dim))
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
        loss = loss_fn(net(noisy), target[i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net


def _classifier(z: torch.Tensor, labels: torch.Tensor, num_classes: int, generator: torch.Generator) -> nn.Module:
    return _train_mlp(z, labels, num_classes, F.cross_entropy, generator)


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


HOLDOUT = 0.2  # of the pairs: the regressors' held-out check
MIN_PAIRS_REGRESSION = 10
RIDGE = 1e-3  # the pixel regressor's ridge, relative to the mean squared norm of the centred pair images
CHUNK = 8192  # unpaired images predicted at a time (bounds the float64 copy on the host)
PIXEL_SOLVE_MAX = 4096  # the ridge system's largest side: pairs beyond it (when the pixels are too) are subsampled


@dataclass
class PseudoConditions:
    index: torch.Tensor  # (M,) int64: which unpaired latents were kept (all of them, or none)
    conditions: torch.Tensor  # (M, cond_dim): their predicted conditions, within the pairs' range per value
    heldout_r2: float  # the chosen regressor's share of the held-out pairs' condition variance (nan: too few pairs)
    regressor: str  # "pixels" or "latent": the one with the higher held-out R^2 ("" when none was trained)
    kept_fraction: float


def _latent_regressor(z: torch.Tensor, x: torch.Tensor, generator: torch.Generator):
    """An ensemble of ENSEMBLE small MLPs from the standardised latent to the standardised condition: for
    conditions that are a nonlinear function of the image."""
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    with torch.enable_grad(), torch.random.fork_rng(devices=[]):
        nets = [_train_mlp(z, (x - mean) / std, x.shape[1], F.mse_loss, generator) for _ in range(ENSEMBLE)]

    def predict(z_new: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.stack([net(z_new.float()) for net in nets]).mean(0) * std + mean
    return predict


def _pixel_regressor(y: torch.Tensor, x: torch.Tensor, generator: torch.Generator):
    """Ridge regression from the flat image to the condition, solved in float64 through the pairs' Gram matrix (N x
    N) up to PIXEL_SOLVE_MAX pairs, beyond that over the pixels (D x D) or, more of both, a seeded subset of pairs:
    exact for any linear view of the image (pooling, blur, a crop, a mask); MNIST's 7x7 views from 800 pairs:
    held-out R^2 0.9998."""
    if len(y) > PIXEL_SOLVE_MAX and y.shape[1] > PIXEL_SOLVE_MAX:
        keep = torch.randperm(len(y), generator=generator)[:PIXEL_SOLVE_MAX]
        y, x = y[keep], x[keep]
    y64, x64 = y.double(), x.double()
    y_mean, x_mean = y64.mean(0), x64.mean(0)
    yc, xc = y64 - y_mean, x64 - x_mean
    if len(yc) <= PIXEL_SOLVE_MAX:  # dual: W = Y' (Y Y' + r I)^-1 X
        gram = yc @ yc.T
        ridge = RIDGE * float(gram.trace()) / len(gram) + 1e-12
        weight = yc.T @ torch.linalg.solve(gram + ridge * torch.eye(len(gram), dtype=gram.dtype), xc)
    else:  # primal, the pixels fewer: (Y'Y + r I) W = Y'X, the same penalty
        cov = yc.T @ yc
        ridge = RIDGE * float(cov.trace()) / len(yc) + 1e-12
        weight = torch.linalg.solve(cov + ridge * torch.eye(len(cov), dtype=cov.dtype), yc.T @ xc)

    def predict(y_new: torch.Tensor) -> torch.Tensor:
        out = [(y_new[i:i + CHUNK].detach().cpu().double() - y_mean) @ weight + x_mean
               for i in range(0, len(y_new), CHUNK)]
        return torch.cat(out).float() if out else x[:0].float()
    return predict


def _r2(pred: torch.Tensor, x: torch.Tensor, mean: torch.Tensor) -> float:
    return float(1.0 - (pred - x).pow(2).sum() / (x - mean).pow(2).sum().clamp_min(1e-12))


def pseudo_condition(z_pairs: torch.Tensor, x_pairs: torch.Tensor, z_unpaired: torch.Tensor, min_r2: float,
                     seed: int, y_pairs: torch.Tensor | None = None,
                     y_unpaired: torch.Tensor | None = None) -> PseudoConditions:
    """Conditions for the unpaired images (latents `z_unpaired` (M, d), flat images `y_unpaired` (M, D)) from a
    regressor trained on the pairs (`z_pairs`, `x_pairs` (N, c) float, `y_pairs`) less a held-out HOLDOUT of them:
    ridge regression from the pixels (when the images are given) or an MLP ensemble from the latents, whichever
    explains more of the held-out pairs' condition variance. All M kept if that R^2 is >= `min_r2` (in (0, 1]),
    none otherwise (and none with fewer than MIN_PAIRS_REGRESSION pairs)."""
    if not 0.0 < min_r2 <= 1.0:
        raise ValueError(f"pseudo-condition R^2 threshold must be in (0, 1], got {min_r2}")
    if z_pairs.dim() != 2 or z_unpaired.dim() != 2 or z_pairs.shape[1] != z_unpaired.shape[1]:
        raise ValueError(f"pseudo_condition needs (N, d) and (M, d) latents, got {tuple(z_pairs.shape)} and "
                         f"{tuple(z_unpaired.shape)}")
    if x_pairs.dim() != 2 or len(x_pairs) != len(z_pairs) or not x_pairs.is_floating_point():
        raise ValueError(f"pseudo_condition needs one float condition row per pair, (N, c) with N = {len(z_pairs)}, "
                         f"got {x_pairs.dtype} {tuple(x_pairs.shape)}")
    if (y_pairs is None) != (y_unpaired is None):
        raise ValueError("pseudo_condition needs both y_pairs and y_unpaired, or neither")
    if y_pairs is not None and (y_pairs.dim() != 2 or y_unpaired.dim() != 2 or len(y_pairs) != len(z_pairs)
                                or len(y_unpaired) != len(z_unpaired) or y_pairs.shape[1] != y_unpaired.shape[1]):
        raise ValueError(f"pseudo_condition needs flat images matching the latents: (N, D) and (M, D) with N = "
                         f"{len(z_pairs)}, M = {len(z_unpaired)}, got {tuple(y_pairs.shape)} and {tuple(y_unpaired.shape)}")
    zp, zu, x = z_pairs.detach().float().cpu(), z_unpaired.detach().float().cpu(), x_pairs.detach().float().cpu()
    none = PseudoConditions(torch.zeros(0, dtype=torch.long), x[:0], float("nan"), "", 0.0)
    if len(zu) == 0 or len(zp) < MIN_PAIRS_REGRESSION:
        return none
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(zp), generator=generator)
    n_out = max(2, round(HOLDOUT * len(zp)))
    held, train = order[:n_out], order[n_out:]
    x_mean = x[train].mean(0)
    candidates = []  # (held-out R^2, name, predict the unpaired)
    with _one_thread():
        latent = _latent_regressor(zp[train], x[train], generator)
        candidates.append((_r2(latent(zp[held]), x[held], x_mean), "latent", lambda: latent(zu)))
        if y_pairs is not None:
            yp = y_pairs.detach().cpu()
            pixels = _pixel_regressor(yp[train], x[train], generator)
            candidates.append((_r2(pixels(yp[held]), x[held], x_mean), "pixels", lambda: pixels(y_unpaired)))
        r2, name, predict_unpaired = max(candidates, key=lambda c: c[0])
        if not r2 >= min_r2:
            return PseudoConditions(none.index, none.conditions, r2, name, 0.0)
        lo, hi = x.min(0).values, x.max(0).values
        xu = torch.maximum(torch.minimum(predict_unpaired(), hi), lo)
    return PseudoConditions(torch.arange(len(zu)), xu, r2, name, 1.0)
