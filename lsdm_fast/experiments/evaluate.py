"""Metrics of one method's samples for one (setting, seed): accuracy under the judge, FD and k-NN
precision / recall / density / coverage in the feature CNN's space, the train-NN ratio, latent W1 and,
for super-resolution, PSNR, SSIM and consistency. The metrics themselves are lsdm_fast.metrics."""
from __future__ import annotations

import time

import numpy as np
import torch

from .. import metrics as M
from ..api import LSDM
from ..baselines import one_hot
from ..data import make_conditions
from .registry import Budget


def timed(fn):
    """(fn(), seconds)"""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


class Evaluator:
    """Metrics of one method's samples for one (setting, seed); `ref` is the seed's LSDM, whose
    all-data encoder gives the common latent space for W1."""

    def __init__(self, task, train, test, feat, judge, budget: Budget, factor: int, seed: int, paired: np.ndarray,
                 inception=None):
        self.task, self.train, self.test, self.feat, self.judge, self.b = task, train, test, feat, judge, budget
        self.factor, self.seed = factor, seed
        self.inception = inception  # None, or (InceptionNet, (mu, sigma) of the test images): Inception-FID too
        self.inception_seconds, self.inception_images = 0.0, 0
        self.shape = test.image_shape
        rng = np.random.default_rng(1234)
        self.test_feats = M.extract_features(feat, test.images)
        self.train_feats = M.extract_features(feat, train.images[paired])  # what stage 2 (and paired-only) saw
        self.prdc_real = self.test_feats[rng.permutation(len(test))[:2000]]
        self._recon_fd: dict[int, float] = {}
        if task == "class":
            self.labels = np.repeat(np.arange(train.num_classes), budget.eval_per_class)
            self.cond = one_hot(self.labels, train.num_classes)
        else:
            n = min(len(test), budget.eval_sr)
            self.labels = test.labels[:n]
            self.truth = test.images[:n]
            self.cond = torch.from_numpy(make_conditions(test, "superres", factor)[:n])

    def reconstruction_fd(self, model: LSDM) -> float:
        """FD of real test images passed through the model's E then D: the floor stage 1 puts under its samples.
        As many random test images as samples are scored (FD depends on the sample size), against all of them."""
        if id(model) not in self._recon_fd:
            n = min(len(self.cond), len(self.test))
            pick = np.random.default_rng(4321).permutation(len(self.test))[:n]
            rec = model.decode(model.encode(torch.from_numpy(self.test.images[pick]))).cpu().numpy()
            fr = M.extract_features(self.feat, rec.reshape(n, -1))
            self._recon_fd[id(model)] = M.frechet_distance(*M.gaussian_stats(fr), *M.gaussian_stats(self.test_feats))
        return self._recon_fd[id(model)]

    def __call__(self, sample_fn, ref: LSDM, autoencoder: LSDM | None = None,
                 inception_fid: bool = True) -> tuple[dict, np.ndarray]:
        """Metrics of sample_fn's samples; `autoencoder`: the model whose E, D the method decodes with (its
        reconstruction FD goes in the row), None for methods without one; inception_fid=False skips the
        (slow) Inception-FID for this row when it is on."""
        y, dt = timed(lambda: sample_fn(self.cond))
        y = np.asarray(torch.as_tensor(y).cpu().float().reshape(len(self.cond), -1))
        out = {"samples_per_second": len(y) / max(dt, 1e-9)}
        if autoencoder is not None:
            out["reconstruction_fd"] = self.reconstruction_fd(autoencoder)
        out["conditional_accuracy"] = M.conditional_accuracy(self.judge, y, self.labels)
        fy = M.extract_features(self.feat, y)
        out["classifier_fd"] = M.frechet_distance(*M.gaussian_stats(fy), *M.gaussian_stats(self.test_feats))
        if self.inception is not None and inception_fid:
            net, (mu, sigma) = self.inception
            t0 = time.perf_counter()
            out["inception_fid"] = M.frechet_distance(*M.gaussian_stats(net(y, self.shape)), mu, sigma)
            self.inception_seconds += time.perf_counter() - t0
            self.inception_images += len(y)
        k = 5 if min(len(fy), len(self.prdc_real)) > 10 else 2
        out.update(M.prdc(self.prdc_real, fy, k=k))
        out["train_nn_ratio"] = M.train_nn_ratio(self.train_feats, fy, self.prdc_real)
        zr = ((ref.encode(torch.from_numpy(self.test.images)) - ref.latent_mean) / ref.latent_std).cpu().numpy()
        zg = ((ref.encode(torch.from_numpy(y)) - ref.latent_mean) / ref.latent_std).cpu().numpy()
        w = self.b.w1_per_class
        if self.task == "class":
            out["latent_w1"] = float(np.mean([M.wasserstein1(zg[self.labels == c][:w], zr[self.test.labels == c][:w])
                                              for c in range(self.train.num_classes)]))
        else:
            out["latent_w1"] = M.wasserstein1(zg[: 5 * w], zr[: 5 * w])
            out["psnr_db"] = M.psnr(y, self.truth)
            out["ssim"] = M.ssim(y, self.truth, self.shape)
            out["consistency_rmse"] = M.consistency_error(y, self.cond.numpy(), self.factor, self.shape)
        return out, y
