"""Paired-only LSDM at LSDM's stage-1 step count in superres_x4's setting, with a given stage-2 budget: the
comparison row `lsdm experiment superres_x4` makes (lsdm_paired_only_equal_steps), for stage-2 step counts other than
the default (issue 25; results/experiments/issue25_stage2_probes).

    python scripts/tuning/sr_paired_only.py SEED STAGE1_STEPS MATCH_STEPS [data=MNIST_FOLDER] [cache=FOLDER] [log=FILE]
                                            [match=K=V,...]

STAGE1_STEPS: LSDM's stage-1 step count on that seed (its row's stage1_steps). Split, conditions, config and
scoring are the experiment's own (split seed = SEED), so with MATCH_STEPS 4000 the row equals the experiment's.
`match` overrides MatchingConfig fields as in stage2_size.py (e.g. match=critic_steps=2)."""
import os
import sys
from dataclasses import replace

import torch

from lsdm_fast import metrics as M
from lsdm_fast.baselines import fit_paired_only
from lsdm_fast.data import load_dataset, make_conditions, split_paired_unpaired
from lsdm_fast.experiments.registry import Budget, lsdm_config
from stage2_size import emit, score_superres, with_match  # this folder's


def main(argv):
    torch.set_num_threads(1)
    seed, n1, steps = int(argv[0]), int(argv[1]), int(argv[2])
    kv = dict(a.split("=", 1) for a in argv[3:])
    data, cache = kv.get("data", "../shared/data/mnist"), kv.get("cache", os.path.expanduser("~/.cache/lsdm_fast"))
    train, test = load_dataset(data, "train"), load_dataset(data, "test")
    split = split_paired_unpaired(train.labels, n_pairs=1000, seed=seed, num_classes=train.num_classes)
    px = torch.from_numpy(make_conditions(train, "superres", 4)[split.paired])
    py = torch.from_numpy(train.images[split.paired])
    budget = replace(Budget(), match_steps=steps)
    cfg, match = with_match(lsdm_config(budget, seed, "auto"), kv)
    equal = replace(cfg, autoencoder=replace(cfg.autoencoder, stop="steps", steps=n1, epochs=0.0))
    model = fit_paired_only(equal, px, py, num_classes=train.num_classes, progress=False)
    feat = M.feature_net(train.images, train.labels, train.num_classes, cache_dir=cache)
    judge = M.judge_net(train.images, train.labels, train.num_classes, cache_dir=cache)
    res = score_superres(model, train, test, feat, judge, seed, split.paired, budget)
    emit(dict(method="lsdm_paired_only_equal_steps", seed=seed, stage1_steps=n1, steps=steps, match=match, **res),
         kv.get("log"))


if __name__ == "__main__":
    main(sys.argv[1:])
