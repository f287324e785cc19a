"""Merge the cells of a second `lsdm experiment` run (same experiment, budget and code; other
seeds, run in parallel into another folder to use both CPU cores) into this folder's results.json,
then re-render with `lsdm experiment ... --resume` (which finds every cell done).

Run from the repository root: python results/experiments/class_n100_wide/merge_seed_run.py OTHER_FOLDER
"""
import glob
import json
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
other = sys.argv[1]
src = json.load(open(os.path.join(other, "results.json")))
dst_path = os.path.join(HERE, "results.json")
dst = json.load(open(dst_path))
assert src["budget"] == dst["budget"] and src["name"] == dst["name"], "not the same experiment and budget"
done = {(r["setting"], r["seed"]) for r in dst["rows"]}
new = [r for r in src["rows"] if (r["setting"], r["seed"]) not in done]
assert new, "nothing to merge"
dst["rows"] += new
dst["cell_seconds"] += src["cell_seconds"]
dst["commands"] += [c + "  (run into a separate folder in parallel, merged by merge_seed_run.py)" for c in src["commands"]]
for f in glob.glob(os.path.join(other, "grids_*.npz")):
    shutil.copy(f, HERE)
tmp = dst_path + ".tmp"
with open(tmp, "w") as fh:
    json.dump(dst, fh, indent=1)
os.replace(tmp, dst_path)
print(f"merged {len(new)} rows for seeds {sorted({r['seed'] for r in new})}")
