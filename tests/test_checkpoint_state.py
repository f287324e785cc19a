"""The checkpoint holds the whole TrainingState: old-format files still resume (to rounding across CPUs), damaged ones
are refused with the file and the field named, and resume without a checkpoint is refused."""
import os
import shutil

import numpy as np
import pytest
import torch

from lsdm_fast import LSDM, AutoencoderConfig, LSDMConfig, MatchingConfig
from lsdm_fast.checkpoint import CHECKPOINT_FILE, CheckpointError, read_checkpoint
from lsdm_fast.config import LEGACY_MATCH_LR
from lsdm_fast.data import load_digits_dataset

HERE = os.path.dirname(os.path.abspath(__file__))


def config():  # the config tests/data/make_v1_checkpoints.py wrote the format-1 files with (fields added since at
    # the values their absence means: config.IMPLIED_BY_ABSENCE; penalty_over and stage 2's lr were saved, "joint"
    # and 3e-4, the defaults then)
    return LSDMConfig(autoencoder=AutoencoderConfig(kind="mlp", latent_dim=4, hidden=(32,), steps=30, batch_size=32,
                                                    checkpoint_every=10, stop="steps", conv_design="strided",
                                                    lr=1e-3, warmup_steps=0, grow_latent=0.0, grow_gain=0.0),
                      matching=MatchingConfig(generator_hidden=(32,), critic_hidden=(32, 32), steps=8, batch_size=16,
                                              backend="torch", generator_ema=0.5, checkpoint_every=4,
                                              marginal_weight=0.0, pseudo_label=0.0, pseudo_condition=0.0,
                                              penalty_over="joint",
                                              steps_max=8000, lr=LEGACY_MATCH_LR), seed=7)


@pytest.fixture(scope="module")
def data():
    torch.set_num_threads(1)
    ds = load_digits_dataset("train")
    return ds.labels[:40], ds.images[:40], ds.images[40:100]


@pytest.fixture(scope="module")
def uninterrupted(data):
    return LSDM(config()).fit(*data, num_classes=10, progress=False)


def weights(model):
    return {f"{i}.{k}": v for i, m in enumerate(model.modules()) for k, v in m.state_dict().items()}


@pytest.mark.parametrize("name, stage, step", [("v1_stage1_step20.pt", 1, 20), ("v1_stage2_step4.pt", 2, 4)])
def test_format1_checkpoint_resumes(name, stage, step, data, uninterrupted, tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()
    shutil.copy(os.path.join(HERE, "data", name), ck / CHECKPOINT_FILE)
    with pytest.warns(RuntimeWarning, match="format-1 checkpoint: the data were checked by shapes and sums only"):
        got = LSDM(config()).fit(*data, num_classes=10, progress=False, checkpoint_dir=str(ck), resume=True)
    assert got.history["resumed_from"] == {"stage": stage, "step": step}
    # The files were written on one CPU; the steps before the checkpoint round differently on another (MKL and
    # oneDNN pick other kernels: 8e-7 relative on an AMD EPYC), so the uninterrupted run here is matched to rounding,
    # not to the bit. A field the upgrade lost (an optimiser moment, the RNG, the step) moves the result by far more.
    # Bit-identical resume within one machine is tests/test_resume.py's.
    ref = weights(uninterrupted)
    for k, v in weights(got).items():
        assert (v - ref[k]).abs().max() <= 1e-5 * ref[k].abs().max(), k
    for key in ("reconstruction", "critic_loss", "generator_loss"):
        assert len(got.history[key]) == len(uninterrupted.history[key]), key
        assert np.allclose(got.history[key], uninterrupted.history[key], rtol=1e-5, atol=1e-6), key
    assert read_checkpoint(str(ck / CHECKPOINT_FILE))["format"] == 2  # rewritten in the current format


def test_format1_checkpoint_refuses_other_data(data, tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()
    shutil.copy(os.path.join(HERE, "data", "v1_stage2_step4.pt"), ck / CHECKPOINT_FILE)
    x, y, u = data
    # format 1 kept shapes and sums only, so other values are caught (a reordering would not be)
    with pytest.warns(RuntimeWarning), pytest.raises(CheckpointError, match="different data"):
        LSDM(config()).fit(x, y, u * 0.5, num_classes=10, progress=False, checkpoint_dir=str(ck), resume=True)


def _damage(path, edit):
    blob = torch.load(path, weights_only=True)
    edit(blob)
    torch.save(blob, path)


@pytest.mark.parametrize("edit, message", [
    (lambda b: b.pop("rng"), "the field 'rng' is missing"),
    (lambda b: b.pop("history"), "the field 'history' is missing"),
    (lambda b: b["models"].pop("critic"), r"the weights of the critic \('models.critic'\) are missing"),
    (lambda b: b.update(stage=7), "stage 7 is not one of"),
    (lambda b: b.update(step="3"), "the field 'step' is a str, expected int"),
    (lambda b: b.pop("latent_mean"), "the field 'latent_mean' is missing"),
    (lambda b: b["history"].pop("critic_loss"), r"the loss history lacks \['critic_loss'\]"),
    (lambda b: b["models"]["generator"].popitem(), "the generator weights do not fit this model"),
    (lambda b: b.update(format=99), "format 99"),
])
def test_damaged_checkpoint_is_refused_naming_file_and_field(edit, message, data, tmp_path):
    cfg = config()
    cfg.autoencoder.steps, cfg.matching.steps = 10, 4
    ck = str(tmp_path / "ck")
    LSDM(cfg).fit(*data, num_classes=10, progress=False, checkpoint_dir=ck)
    path = os.path.join(ck, CHECKPOINT_FILE)
    _damage(path, edit)
    with pytest.raises(CheckpointError, match=message) as err:
        LSDM(cfg).fit(*data, num_classes=10, progress=False, checkpoint_dir=ck, resume=True)
    assert path in str(err.value)


def test_resume_without_a_checkpoint_is_refused(data, tmp_path):
    with pytest.raises(CheckpointError, match=r"no checkpoint to resume \(checkpoint.pt not found\)"):
        LSDM(config()).fit(*data, num_classes=10, progress=False, checkpoint_dir=str(tmp_path), resume=True)


def test_fingerprint_sees_reordering_and_repairing(data, tmp_path):
    cfg = config()
    cfg.autoencoder.steps, cfg.matching.steps = 10, 4
    ck = str(tmp_path / "ck")
    x, y, u = data
    LSDM(cfg).fit(x, y, u, num_classes=10, progress=False, checkpoint_dir=ck)
    perm = torch.randperm(len(x)).numpy()
    for args in ((x[perm], y[perm], u),  # the same pairs in another order
                 (x[perm], y, u),  # re-paired: same values, other pairing
                 (x, y, u[::-1].copy())):  # unpaired images reordered: sums and shapes unchanged
        with pytest.raises(CheckpointError, match="different data"):
            LSDM(cfg).fit(*args, num_classes=10, progress=False, checkpoint_dir=ck, resume=True)
