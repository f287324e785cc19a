"""Probe (issue 25): super-resolution x4 with pseudo-conditions for the unpaired images. The experiment's LSDM
(superres_x4's split, config and scoring) but stage 2 sees every training image as a pair, its condition
predicted from the image by a degradation model fitted on the 1,000 true pairs only:

    mode=ridge  ridge regression pixels -> low-res pixels (closed form; lam= its penalty), fitted on the pairs
    mode=true   the true 4x4 average (an upper bound: what stage 2 could do if the degradation were known)

The true pairs keep their true conditions in both. Stage 1 sees the same images in the same order as the
experiment's LSDM, so its cached result (stage2_size.py's cache, tag <data>_nsr1000_split<SEED>) is reused.

    python scripts/tuning/sr_pseudo_conditions.py SEED mode=ridge [lam=1.0] [data=MNIST] [cache=FOLDER] [log=FILE]
"""
import os
import sys
import time

import numpy as np
import torch

from lsdm_fast import LSDM, metrics as M
from lsdm_fast.data import load_dataset, make_conditions, split_paired_unpaired
from lsdm_fast.experiments.registry import Budget, lsdm_config
from stage2_size import cache_stage1, emit, score_superres  # this folder's


def ridge(y_pairs: np.ndarray, x_pairs: np.ndarray, lam: float):
    """x ~ [y, 1] W by ridge regression (intercept unpenalised); returns the predictor."""
    mu_y, mu_x = y_pairs.mean(0), x_pairs.mean(0)
    a, b = y_pairs - mu_y, x_pairs - mu_x
    w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ b)
    return lambda y: (y - mu_y) @ w + mu_x


def main(argv):
    torch.set_num_threads(1)
    seed, kv = int(argv[0]), dict(a.split("=", 1) for a in argv[1:])
    data, cache = kv.get("data", "../shared/data/mnist"), kv.get("cache", os.path.expanduser("~/.cache/lsdm_fast"))
    mode, lam = kv.get("mode", "ridge"), float(kv.get("lam", 1.0))
    train, test = load_dataset(data, "train"), load_dataset(data, "test")
    split = split_paired_unpaired(train.labels, n_pairs=1000, seed=seed, num_classes=train.num_classes)
    cond = make_conditions(train, "superres", 4)
    flat = train.images.reshape(len(train.images), -1).astype(np.float64)
    if train.images.dtype == np.uint8:
        flat = flat / 255.0
    px, pu = split.paired, split.unpaired
    # held-out error of the degradation model on the pairs (5 folds): relative squared error of x
    folds = np.array_split(np.random.default_rng(0).permutation(len(px)), 5)
    rel = []
    for f in folds:
        tr = np.setdiff1d(np.arange(len(px)), f)
        pred = ridge(flat[px[tr]], cond[px[tr]].astype(np.float64), lam)(flat[px[f]])
        truth = cond[px[f]].astype(np.float64)
        rel.append(((pred - truth) ** 2).sum() / ((truth - truth.mean(0)) ** 2).sum())
    if mode == "ridge":
        xu = ridge(flat[px], cond[px].astype(np.float64), lam)(flat[pu]).astype(np.float32)
    elif mode == "true":
        xu = cond[pu]
    else:
        raise SystemExit(f"mode must be ridge or true, got {mode!r}")
    x_all = np.concatenate([cond[px], xu]).astype(np.float32)
    y_all = train.images[np.concatenate([px, pu])]
    cache_stage1(os.path.join(cache, "stage1"), f"{os.path.basename(os.path.normpath(data))}_nsr{len(px)}_split{seed}")
    cfg = lsdm_config(Budget(), seed, "auto")
    t0 = time.perf_counter()
    model = LSDM(cfg).fit(x_all, y_all, None, num_classes=train.num_classes, progress=False)
    wall = time.perf_counter() - t0
    feat = M.feature_net(train.images, train.labels, train.num_classes, cache_dir=cache)
    judge = M.judge_net(train.images, train.labels, train.num_classes, cache_dir=cache)
    res = score_superres(model, train, test, feat, judge, seed, px)
    emit(dict(method=f"lsdm_pseudo_conditions_{mode}", seed=seed, lam=lam, heldout_rel_err=float(np.mean(rel)),
              stage1_steps=model.history["stage1_steps"], stage2_steps=model.history["stage2_steps"], wall_s=wall,
              **res), kv.get("log"))


if __name__ == "__main__":
    main(sys.argv[1:])
