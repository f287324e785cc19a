"""Probe (issue 25): stage2_size.py's super-resolution run with every unpaired image given its TRUE 7x7 condition as
a pseudo-condition (what a perfect regressor would predict): the ceiling of MatchingConfig.pseudo_condition.

    python scripts/tuning/sr_true_conditions.py SEED data=MNIST split=SEED task=superres pcond=0.5 [steps=N]
                                                cache=FOLDER log=FILE

(results/experiments/issue25_pseudo_conditions; its rows were run with the option then spelt pseudo=0.5.)"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stage2_size as S  # noqa: E402 (this folder's)
import lsdm_fast.pseudo_labels as PL  # noqa: E402
from lsdm_fast.data import load_dataset, make_conditions, split_paired_unpaired  # noqa: E402


def main(argv):
    kv = dict(a.split("=", 1) for a in argv[1:])
    train = load_dataset(kv["data"], "train")
    split = split_paired_unpaired(train.labels, n_pairs=int(kv.get("pairs", 1000)), m_unpaired=None,
                                  seed=int(kv.get("split", 0)), num_classes=train.num_classes)
    true = torch.from_numpy(make_conditions(train, "superres", 4)[split.unpaired])

    def true_conditions(z_pairs, x_pairs, z_unpaired, min_r2, seed, **_):
        assert len(z_unpaired) == len(true)
        return PL.PseudoConditions(torch.arange(len(true)), true.clone(), 1.0, "true", 1.0)

    PL.pseudo_condition = true_conditions  # api imports it from the module when stage 2 starts
    S.main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
