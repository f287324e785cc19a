"""Merge `lsdm experiment` runs made into other folders (same experiment, budget and code; other
seeds, or other methods via `--methods`, run in parallel to use both CPU cores) into DEST's
results.json, then re-render DEST with its own command plus `--resume` (every cell is then done).
Rows of a (setting, seed, method[, steps]) already in DEST are kept as they are; reference rows
present on both sides must agree (checked). Used for class_n100, superres_x4 and unpaired_curve
(one seed per process), and before issue 14 for class_n100_wide (seed 2) and class_n10 (pixel matching).

Run from the repository root: python scripts/merge_experiment_runs.py DEST OTHER [OTHER ...]
"""
import glob
import json
import os
import shutil
import sys

import numpy as np

from lsdm_fast.io import atomic_write_json

HERE = sys.argv[1]
dst_path = os.path.join(HERE, "results.json")
dst = json.load(open(dst_path))
key = lambda r: (r["setting"], r["seed"], r["method"], r.get("ddim_steps"))
have = {key(r): r for r in dst["rows"]}
for other in sys.argv[2:]:
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
    if "inception_cost" in src:  # Inception forward passes over the samples (--fid inception)
        cost = dst.setdefault("inception_cost", {"seconds": 0.0, "images": 0})
        cost["seconds"] += src["inception_cost"]["seconds"]
        cost["images"] += src["inception_cost"]["images"]
    dst["commands"] += src["commands"]
    for f in glob.glob(os.path.join(other, "grids_*.npz")):  # add the new methods' sample grids
        mine = os.path.join(HERE, os.path.basename(f))
        if not os.path.exists(mine):  # a new seed: its grids as they are
            shutil.copy(f, mine)
            continue
        with np.load(f) as z_new, np.load(mine) as z_old:
            merged = {k: z_old[k] for k in z_old.files}
            merged.update({k: z_new[k] for k in z_new.files if k not in merged})
        np.savez_compressed(mine, **merged)
atomic_write_json(dst_path, dst)
