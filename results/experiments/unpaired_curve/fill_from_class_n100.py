"""Fill the unpaired curve's m=0 and m=all cells from ../class_n100 instead of recomputing them.

They are the same computation. m=all is class_n100's LSDM (same split, seed, budget and code).
m=0 is LSDM with no unpaired images, which is class_n100's paired-only LSDM: the same paired
indices (split_paired_unpaired with m_unpaired=0 and None, checked equal for seeds 0-2) and an
empty unpaired set, which LSDM.fit treats as None. Copied rows carry "copied_from". Not copied:
latent W1, which each cell measures in its own LSDM's latent space (for m=0 the paired-only
autoencoder's, while class_n100 measures every method in its all-data LSDM's space); it is left
out of the copied m=0 rows. Then `lsdm experiment unpaired_curve ... --resume` re-renders.

Run from the repository root: python results/experiments/unpaired_curve/fill_from_class_n100.py
"""
import json
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "..", "class_n100")

src = json.load(open(os.path.join(SRC, "results.json")))
dst_path = os.path.join(HERE, "results.json")
dst = json.load(open(dst_path))
rows = dst["rows"]
have = {(r["setting"], r["seed"], r["method"]) for r in rows}
for seed in sorted({r["seed"] for r in rows}):  # the seeds this curve computed its m=1000/10000 cells for
    for setting, method in (("m=0", "lsdm_paired_only"), ("m=all", "lsdm")):
        for want, take in ((method, "lsdm"), ("real_data (reference)", "real_data (reference)")):
            if (setting, seed, take) in have:
                continue
            s = next(r for r in src["rows"] if r["seed"] == seed and r["method"] == want)
            row = {**s, "setting": setting, "method": take, "copied_from": f"class_n100 seed {seed} {want}"}
            if setting == "m=0":
                row["unpaired"] = 0
                row.pop("latent_w1", None)
            rows.append(row)
            print(f"{setting} seed {seed} {take}: copied from {row['copied_from']}")
for setting, method in (("m_0", "lsdm_paired_only"), ("m_all", "lsdm")):
    with np.load(os.path.join(SRC, "grids_n_100_class_seed0.npz")) as z:
        np.savez_compressed(os.path.join(HERE, f"grids_{setting}_seed0.npz"),
                            **{"lsdm": z[method], "real_data (reference)": z["real_data (reference)"]})
dst["rows"] = rows
dst["commands"].append("python results/experiments/unpaired_curve/fill_from_class_n100.py")
tmp = dst_path + ".tmp"
with open(tmp, "w") as fh:
    json.dump(dst, fh, indent=1)
os.replace(tmp, dst_path)
