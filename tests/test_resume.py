"""Exact resume: `lsdm train` SIGKILLed mid-stage and resumed ends bit-identical to a run never
interrupted; the checkpoint folder's safety rules; in-process resume through the API."""
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from lsdm_fast import LSDM
from lsdm_fast.checkpoint import CHECKPOINT_FILE, Checkpointer, read_checkpoint
from lsdm_fast.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["train", "--data", "digits", "--n-per-class", "5", "--m-unpaired", "150", "--latent-dim", "4",
        "--ae-steps", "300", "--steps", "120", "--batch-size", "32", "--classifier-steps", "1",
        "--eval-per-class", "1", "--quiet"]


def lsdm(args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "lsdm_fast.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kw)


def finish(proc, timeout=120):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err.decode()[-2000:]
    return out


def weights(out_dir):
    return load_file(os.path.join(out_dir, "model", "model.safetensors"))


def history(out_dir):
    return json.load(open(os.path.join(out_dir, "model", "history.json")))


def checkpoint_stage(path):
    with open(path, "rb") as fh:  # the file is replaced atomically: any read sees a whole checkpoint
        blob = torch.load(io.BytesIO(fh.read()), map_location="cpu", weights_only=True)
    return int(blob["stage"]), int(blob["step"])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The uninterrupted run of ARGS + extra, per extra."""
    runs = {}

    def run(extra=()):
        if extra not in runs:
            runs[extra] = str(tmp_path_factory.mktemp("ref") / "run")
            # checkpoints only at the stage ends: their frequency must not change the run
            finish(lsdm(ARGS + list(extra) + ["--out", runs[extra]]))
        return runs[extra]
    return run


@pytest.mark.parametrize("kill_in_stage, extra", [(1, ()), (2, ()), (2, ("--pseudo-label", "0.5"))])
def test_sigkill_mid_stage_then_resume_is_bit_identical(kill_in_stage, extra, uninterrupted, tmp_path):
    """Stage 2 with pseudo-pairs too (0.5: the tiny model labels few latents at the default 0.99): they are
    recomputed on resume, the same ones."""
    uninterrupted = uninterrupted(extra)
    out = str(tmp_path / "run")
    ck = os.path.join(out, "checkpoint", CHECKPOINT_FILE)
    proc = lsdm(ARGS + list(extra) + ["--out", out, "--checkpoint-every", "10"])
    deadline = time.time() + 120
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(ck):
            if kill_in_stage == 1:
                proc.send_signal(signal.SIGKILL)  # the first checkpoint is stage 1, step 10 of 300
                proc.wait()
                killed_at = checkpoint_stage(ck)
                break
            stage, step = checkpoint_stage(ck)
            if stage == 2 and step > 0:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                killed_at = checkpoint_stage(ck)
                break
        time.sleep(0.005)
    if proc.poll() is None:
        proc.kill()
    proc.communicate()  # closes the pipes: a leaked one surfaces later as a ResourceWarning in another test
    assert killed_at is not None, f"the run ended (rc {proc.poll()}) before it could be killed"
    assert proc.returncode == -signal.SIGKILL
    assert killed_at[0] == kill_in_stage and 0 < killed_at[1] < (300 if kill_in_stage == 1 else 120), killed_at
    assert not os.path.exists(os.path.join(out, "model"))  # it really died mid-training

    finish(lsdm(["train", "--resume", out, "--quiet"]))
    ref, got = weights(uninterrupted), weights(out)
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), f"{k} differs after resuming from {killed_at}"
    h_ref, h_got = history(uninterrupted), history(out)
    for key in ("reconstruction", "critic_loss", "generator_loss", "pseudo_pairs"):
        assert h_ref.get(key) == h_got.get(key), key
    if extra:
        assert h_got["pseudo_pairs"]["kept"] > 0  # stage 2 resumed with pseudo-pairs in it
    assert h_got["resumed_from"] == {"stage": killed_at[0], "step": killed_at[1]}


def test_resume_refuses_changed_arguments_and_bad_folders(tmp_path, capsys):
    folder = tmp_path / "ck"
    folder.mkdir()
    assert main(["train", "--resume", str(folder)]) == 2
    assert "no run.json there" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "missing")]) == 2
    assert "folder not found" in capsys.readouterr().err
    run = {"args": {**vars(__import__("argparse").Namespace()), "data": "digits", "steps": 5, "seed": 0}}
    (folder / "run.json").write_text(json.dumps(run))
    assert main(["train", "--resume", str(folder), "--steps", "7", "--seed", "0"]) == 2
    err = capsys.readouterr().err
    assert "cannot change the run's arguments on resume: --steps 7 (the run has 5)" in err and "--seed" not in err
    (folder / CHECKPOINT_FILE).write_bytes(b"garbage")
    assert main(["train", "--resume", str(folder)]) == 2
    assert "cannot read the checkpoint" in capsys.readouterr().err


def test_api_resume_checks_config_and_data(tmp_path):
    from test_models_api import tiny_config
    from lsdm_fast.data import load_digits_dataset

    ds = load_digits_dataset("train")
    x, y = ds.labels[:40], ds.images[:40]
    cfg = tiny_config()
    cfg.autoencoder.steps, cfg.matching.steps = 10, 3
    d = str(tmp_path / "ck")
    LSDM(cfg).fit(x, y, num_classes=10, progress=False, checkpoint_dir=d)
    assert read_checkpoint(os.path.join(d, CHECKPOINT_FILE))["stage"] == 3
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        LSDM(cfg).fit(x, y, num_classes=10, progress=False, checkpoint_dir=d)
    other = tiny_config(seed=1)
    with pytest.raises(ValueError, match="different config.*seed: 0 in the checkpoint, 1 now"):
        LSDM(other).fit(x, y, num_classes=10, progress=False, checkpoint_dir=d, resume=True)
    with pytest.raises(ValueError, match="different data"):
        LSDM(cfg).fit(x, y * 0.5, num_classes=10, progress=False, checkpoint_dir=d, resume=True)
    done = LSDM(cfg).fit(x, y, num_classes=10, progress=False, checkpoint_dir=d, resume=True)  # nothing left to do
    assert done.history["resumed_from"] == {"stage": 3, "step": 3} and len(done.history["critic_loss"]) == 3
    with pytest.raises(ValueError, match="resume=True needs the checkpoint_dir"):
        LSDM(cfg).fit(x, y, num_classes=10, progress=False, resume=True)
    assert isinstance(Checkpointer(d, {}, ()).describe(), str)
