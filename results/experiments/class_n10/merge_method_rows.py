"""Add the rows of methods run later into other folders (same experiment, budget, code and seeds;
e.g. `--methods pixel_matching --out OTHER`) to this folder's results.json, then re-render with
`lsdm experiment class_n10 ... --resume`. Rows of a (setting, seed, method) already here are kept
as they are; the reference rows of the other folder must equal this folder's (checked).

Run from the repository root: python results/experiments/class_n10/merge_method_rows.py OTHER [OTHER ...]
"""
import glob
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
dst_path = os.path.join(HERE, "results.json")
dst = json.load(open(dst_path))
key = lambda r: (r["setting"], r["seed"], r["method"], r.get("ddim_steps"))
have = {key(r): r for r in dst["rows"]}
for other in sys.argv[1:]:
    src = json.load(open(os.path.join(other, "results.json")))
    assert src["budget"] == dst["budget"] and src["name"] == dst["name"], f"{other}: another experiment or budget"
    for r in src["rows"]:
        if key(r) in have:
            if r["method"] == "real_data (reference)":
                assert r["classifier_fd"] == have[key(r)]["classifier_fd"], f"{other}: the reference rows differ"
            continue
        dst["rows"].append(r)
        have[key(r)] = r
        print(f"added {key(r)} from {other}")
    dst["cell_seconds"] += src["cell_seconds"]
    dst["commands"] += src["commands"]
    for f in glob.glob(os.path.join(other, "grids_*.npz")):  # add the new methods' sample grids
        mine = os.path.join(HERE, os.path.basename(f))
        with np.load(f) as z_new, np.load(mine) as z_old:
            merged = {k: z_old[k] for k in z_old.files}
            merged.update({k: z_new[k] for k in z_new.files if k not in merged})
        np.savez_compressed(mine, **merged)
tmp = dst_path + ".tmp"
with open(tmp, "w") as fh:
    json.dump(dst, fh, indent=1)
os.replace(tmp, dst_path)
