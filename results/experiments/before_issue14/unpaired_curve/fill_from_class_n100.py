"""Fill the unpaired curve's m=0 and m=all cells from ../class_n100 instead of recomputing them.

They are the same computation: m=all is class_n100's LSDM (same split, seed, budget and code) and
m=0 is LSDM without unpaired images, i.e. class_n100's paired-only LSDM. Checked: the curve's
own m=0 cells (all three seeds were computed here before this script was written) equal
class_n100's paired-only rows in every quality metric, bit for bit (the script asserts it, and
copies only what is missing: the m=all cells). Copied rows carry "copied_from". Then `lsdm experiment unpaired_curve ... --resume` re-renders the report.

Run from the repository root: python results/experiments/unpaired_curve/fill_from_class_n100.py
"""
import json
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "..", "class_n100")
# not latent_w1: it is measured in the cell's own LSDM latent space, which for m=0 is the paired-only
# autoencoder's, while class_n100 measures every method in its all-data LSDM's space
QUALITY = ("conditional_accuracy", "classifier_fd", "precision", "recall", "density", "coverage", "train_nn_ratio")

src = json.load(open(os.path.join(SRC, "results.json")))
dst_path = os.path.join(HERE, "results.json")
dst = json.load(open(dst_path))
rows = dst["rows"]
have = {(r["setting"], r["seed"], r["method"]) for r in rows}
for seed in sorted({r["seed"] for r in src["rows"]}):
    for setting, method, unpaired in (("m=0", "lsdm_paired_only", 0), ("m=all", "lsdm", None)):
        for want, take in ((method, "lsdm"), ("real_data (reference)", "real_data (reference)")):
            s = next(r for r in src["rows"] if r["seed"] == seed and r["method"] == want)
            row = {**s, "setting": setting, "method": take, "copied_from": f"class_n100 seed {seed} {want}"}
            if unpaired is not None:
                row["unpaired"] = unpaired
            if (setting, seed, take) in have:  # computed here already: must agree
                mine = next(r for r in rows if (r["setting"], r["seed"], r["method"]) == (setting, seed, take))
                assert all(mine[k] == row[k] for k in QUALITY), (setting, seed, take)
                print(f"{setting} seed {seed} {take}: computed here, identical to {row['copied_from']}")
                continue
            rows.append(row)
            print(f"{setting} seed {seed} {take}: copied from {row['copied_from']}")
with np.load(os.path.join(SRC, "grids_n_100_class_seed0.npz")) as z:
    np.savez_compressed(os.path.join(HERE, "grids_m_all_seed0.npz"),
                        **{k: z[k] for k in ("lsdm", "real_data (reference)")})
dst["rows"] = rows
tmp = dst_path + ".tmp"
with open(tmp, "w") as fh:
    json.dump(dst, fh, indent=1)
os.replace(tmp, dst_path)
