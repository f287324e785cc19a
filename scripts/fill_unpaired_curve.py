"""Fill an unpaired curve's m=0 and m=all cells from a class_n100 run (same budget and code)
instead of recomputing them; a cell the curve computed itself must agree with it.

They are the same computation. m=all is class_n100's LSDM (same split, seed, budget and code).
m=0 is LSDM with no unpaired images, which is class_n100's paired-only LSDM: the same paired
indices (split_paired_unpaired with m_unpaired=0 and None, checked equal for seeds 0-2) and an
empty unpaired set, which LSDM.fit treats as None. Copied rows carry "copied_from". Not copied
or compared: latent W1, which each cell measures in its own LSDM's latent space (for m=0 the
paired-only autoencoder's, while class_n100 measures every method in its all-data LSDM's space).
Seed 0's sample grids are copied where the curve has none. Then
`lsdm experiment unpaired_curve ... --resume` re-renders the report.

Run from the repository root:
    python scripts/fill_unpaired_curve.py results/experiments/unpaired_curve results/experiments/class_n100
"""
import json
import os
import sys

import numpy as np

from lsdm_fast.io import atomic_write_json

CURVE, CLASS_N100 = sys.argv[1:3]
QUALITY = ("conditional_accuracy", "classifier_fd", "precision", "recall", "density", "coverage", "train_nn_ratio")

src = json.load(open(os.path.join(CLASS_N100, "results.json")))
dst_path = os.path.join(CURVE, "results.json")
dst = json.load(open(dst_path))
rows = dst["rows"]
have = {(r["setting"], r["seed"], r["method"]): r for r in rows}
for seed in sorted({r["seed"] for r in rows}):  # the seeds this curve computed its m=1000/10000 cells for
    for setting, method in (("m=0", "lsdm_paired_only"), ("m=all", "lsdm")):
        for want, take in ((method, "lsdm"), ("real_data (reference)", "real_data (reference)")):
            s = next(r for r in src["rows"] if r["seed"] == seed and r["method"] == want)
            mine = have.get((setting, seed, take))
            if mine is not None:
                if "copied_from" not in mine:  # computed here: must agree
                    assert all(mine[k] == s[k] for k in QUALITY), (setting, seed, take)
                    print(f"{setting} seed {seed} {take}: computed here, identical to class_n100 seed {seed} {want}")
                continue
            row = {**s, "setting": setting, "method": take, "copied_from": f"class_n100 seed {seed} {want}"}
            if dst.get("fid", "none") != "inception":  # a curve without the column: not for two of its cells only
                row.pop("inception_fid", None)
            if setting == "m=0":
                row["unpaired"] = 0
                row.pop("latent_w1", None)
            rows.append(row)
            print(f"{setting} seed {seed} {take}: copied from {row['copied_from']}")
with np.load(os.path.join(CLASS_N100, "grids_n_100_class_seed0.npz")) as z:
    for setting, method in (("m_0", "lsdm_paired_only"), ("m_all", "lsdm")):
        grid = os.path.join(CURVE, f"grids_{setting}_seed0.npz")
        if not os.path.exists(grid):
            np.savez_compressed(grid, **{"lsdm": z[method], "real_data (reference)": z["real_data (reference)"]})
dst["commands"].append("python scripts/fill_unpaired_curve.py " + " ".join(sys.argv[1:3]))
atomic_write_json(dst_path, dst)
