"""Test accuracy of the experiments' two evaluation nets (the feature CNN behind FD / PRDC and the MLP
judge behind conditional accuracy) on a labelled data set, trained exactly as `lsdm experiment` trains
them (default budget's steps and seeds; cached the same way, so a later experiment reuses them).
A data set whose classes these nets cannot tell apart cannot measure conditional generation.

    python scripts/eval_net_accuracy.py data_local/textures [--feature-steps 1500 --judge-steps 2000]
"""
import argparse
import json
import time

import numpy as np
import torch

from lsdm_fast import metrics as M
from lsdm_fast.data import load_dataset
from lsdm_fast.experiments.registry import Budget

p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
p.add_argument("data")
p.add_argument("--feature-steps", type=int, default=Budget().feature_steps)
p.add_argument("--judge-steps", type=int, default=Budget().judge_steps)
p.add_argument("--threads", type=int, default=1)
a = p.parse_args()
torch.set_num_threads(a.threads)
train, test = load_dataset(a.data, "train"), load_dataset(a.data, "test")
out = {"data": train.name, "n_train": len(train), "n_test": len(test)}
for name, make, steps in (("feature_cnn", M.feature_net, a.feature_steps), ("judge_mlp", M.judge_net, a.judge_steps)):
    t0 = time.perf_counter()
    net = make(train.images, train.labels, train.num_classes, steps=steps)
    pred = M.predict_labels(net, test.images)
    per_class = [float((pred[test.labels == c] == c).mean()) for c in range(train.num_classes)]
    out[name] = {"steps": steps, "test_accuracy": float((pred == test.labels).mean()),
                 "per_class": [round(x, 3) for x in per_class], "seconds": round(time.perf_counter() - t0, 1)}
    conf = np.zeros((train.num_classes,) * 2, int)
    np.add.at(conf, (test.labels, pred), 1)
    out[name]["confusion_rows_true"] = conf.tolist()
print(json.dumps(out, indent=1))
