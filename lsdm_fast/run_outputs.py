"""A run folder's outputs, replaced as a unit.

A run folder (`lsdm train --out OUT`) holds the run's outputs (model/, metrics.json, samples.png,
losses.png, and files `lsdm sample` wrote into it), its checkpoint folder and OUT/outputs.json, the
manifest: which entries are outputs, of which run (`run_id`, also in the checkpoint folder's
run.json) and whether the set is complete. Files the package did not write are never touched.

Replacing a run's outputs (a new run with --overwrite, or a resumed run finishing its save) never
leaves a new model beside stale samples, and loses nothing if killed at any point:

1. the new model is written whole into OUT/.staging-TOKEN/model (nothing of the old run touched yet:
   a failure here, e.g. a full disk, leaves the old outputs as they were);
2. the manifest is rewritten (atomically) with a `replacing` record: the old outputs, the staging
   folder and a trash folder. From this instant the replacement is decided;
3. each old output is renamed into OUT/.trash-TOKEN/, then the new model is renamed into OUT/;
4. the manifest is rewritten without `replacing`, listing model/ (complete: false), and the trash and
   staging folders are deleted.
Steps 3-4 are idempotent: a writer that finds a `replacing` record (the previous one was killed) rolls
them forward before anything else (`recover`). The optional outputs (pictures, metrics) are then
written one by one, each atomically, each added to the manifest, and `complete` is set last.

Every function here expects the caller to hold the folder's lock (lsdm_fast.runlock).
"""
from __future__ import annotations

import errno
import json
import os
import secrets
import shutil

from .io import WriteError, atomic_write_json

MANIFEST = "outputs.json"
# what a run folder written before the manifest existed holds as outputs (metrics.json is written last)
LEGACY_OUTPUTS = ("model", "metrics.json", "samples.png", "losses.png")
_TEMP_PREFIXES = (".staging-", ".trash-")


def read_manifest(out: str) -> dict | None:
    path = os.path.join(out, MANIFEST)
    try:
        with open(path) as fh:
            m = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: damaged run manifest ({exc}); remove it to treat the folder as holding no run") \
            from None
    if not isinstance(m, dict) or not isinstance(m.get("outputs"), list):
        raise ValueError(f"{path}: damaged run manifest (no 'outputs' list); remove it to treat the folder as "
                         "holding no run")
    return m


def _write_manifest(out: str, m: dict) -> None:
    atomic_write_json(os.path.join(out, MANIFEST), m)


def current_outputs(out: str) -> list[str]:
    """The entries of `out` that are a run's outputs: the manifest's, else those of a run from before manifests."""
    if not os.path.isdir(out):
        return []
    m = read_manifest(out)
    names = m["outputs"] if m is not None else LEGACY_OUTPUTS
    if m is not None and m.get("replacing"):
        names = [*names, *m["replacing"]["old"]]
    return [n for n in dict.fromkeys(names) if os.path.lexists(os.path.join(out, n))]


def run_state(out: str, run_id: str | None) -> str:
    """"empty" (no outputs), "finished" (a complete set of this run's outputs, or of a run before manifests),
    "partial" (this run's outputs, incomplete: a save or an evaluation that did not finish), or "other" (outputs
    of another run, or an incomplete set from before manifests)."""
    outputs = current_outputs(out)
    if not outputs:
        return "empty"
    m = read_manifest(out)
    if m is None:
        return "finished" if {"model", "metrics.json"} <= set(outputs) else "other"
    if run_id is not None and m.get("run_id") != run_id:
        return "other"
    return "finished" if m.get("complete") and not m.get("replacing") else "partial"


def new_run_id() -> str:
    return secrets.token_hex(8)


def recover(out: str) -> None:
    """Finish a replacement a killed writer left half done, and remove staging or trash folders nobody uses."""
    if not os.path.isdir(out):
        return
    m = read_manifest(out)
    if m is not None and m.get("replacing"):
        _finish_replacement(out, m)
    for name in os.listdir(out):
        if name.startswith(_TEMP_PREFIXES) and os.path.isdir(os.path.join(out, name)):
            shutil.rmtree(os.path.join(out, name), ignore_errors=True)


def _finish_replacement(out: str, m: dict) -> None:
    r = m["replacing"]
    staging, trash = os.path.join(out, r["staging"]), os.path.join(out, r["trash"])
    os.makedirs(trash, exist_ok=True)
    for name in r["old"]:
        here = os.path.join(out, name)
        # an old output is still in place unless the new entry of that name has already left the staging folder
        if os.path.lexists(here) and (name not in r["new"] or os.path.lexists(os.path.join(staging, name))):
            os.rename(here, os.path.join(trash, name))
    for name in r["new"]:
        if os.path.lexists(os.path.join(staging, name)):
            os.rename(os.path.join(staging, name), os.path.join(out, name))
    _write_manifest(out, {"run_id": m["run_id"], "outputs": [n for n in r["new"] if os.path.lexists(os.path.join(out, n))],
                          "complete": False})
    shutil.rmtree(trash, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)


class RunOutputs:
    """The outputs of run `run_id` in `out`, written in the order that loses nothing (module docstring)."""

    def __init__(self, out: str, run_id: str):
        self.out, self.run_id = out, run_id

    def publish(self, name: str, write) -> str:
        """Write output `name` (e.g. "model") with write(path) into a staging folder, then replace the folder's
        previous outputs, all of them, by it. A failure while writing leaves the previous outputs untouched and
        raises naming OUT/name (not the staging path)."""
        recover(self.out)
        token = secrets.token_hex(4)
        staging = os.path.join(self.out, f".staging-{token}")
        final = os.path.join(self.out, name)
        os.makedirs(staging)
        try:
            write(os.path.join(staging, name))
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            msg = str(exc).replace(os.path.join(staging, name), final).replace(staging, self.out)
            raise WriteError(exc.errno or errno.EIO, msg) from None
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        m = {"run_id": self.run_id, "outputs": [], "complete": False,
             "replacing": {"old": current_outputs(self.out), "new": [name], "staging": os.path.basename(staging),
                           "trash": f".trash-{token}"}}
        try:
            _write_manifest(self.out, m)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _finish_replacement(self.out, m)
        return final

    def add(self, name: str) -> None:
        """Record `name` (already written atomically into the folder) as an output of this run."""
        m = read_manifest(self.out) or {"run_id": self.run_id, "outputs": [], "complete": False}
        if name not in m["outputs"]:
            m["outputs"].append(name)
        _write_manifest(self.out, m)

    def complete(self) -> None:
        m = read_manifest(self.out) or {"run_id": self.run_id, "outputs": []}
        m["complete"] = True
        _write_manifest(self.out, m)


def run_folder_of(path: str) -> str | None:
    """The run folder `path` (a file about to be written) lies directly in, if any: one with a manifest, a run in
    training (its lock or its checkpoint folder's run.json), or the model/ of a run from before manifests."""
    from .runlock import LOCK_FILE

    folder = os.path.dirname(os.path.abspath(path))
    marks = (MANIFEST, LOCK_FILE, os.path.join("checkpoint", "run.json"), os.path.join("model", "config.json"))
    return folder if any(os.path.exists(os.path.join(folder, m)) for m in marks) else None


def register_output(folder: str, path: str) -> None:
    """Record `path`, a file just written directly in run folder `folder`, as one of the run's outputs (replaced
    with them). A folder without a manifest (a run from before manifests) is left as it is."""
    m = read_manifest(folder)
    if m is None:
        return
    name = os.path.basename(path)
    if name not in m["outputs"]:
        m["outputs"].append(name)
        _write_manifest(folder, m)
