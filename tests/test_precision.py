"""Mixed precision against float32 on a short run.

Documented tolerance (measured on CPU, tiny config, 60 + 20 steps): the reconstruction-loss
curve stays within 1e-3 (absolute) of float32's and every weight tensor within 2% (relative
Frobenius norm) — bf16 keeps 8 bits of mantissa (~0.4% per rounding); measured 1e-4 and 0.13%
for bf16, 1e-5 and 0.04% for fp16. The critic step runs in float32 under every precision, so
its losses track float32's just as closely.
"""
import os

import pytest
import torch

from lsdm_fast import LSDM
from lsdm_fast.checkpoint import CHECKPOINT_FILE, read_checkpoint
from lsdm_fast.data import load_digits_dataset
from test_models_api import tiny_config

REC_ATOL, WEIGHT_RTOL = 1e-3, 2e-2


@pytest.fixture(scope="module")
def runs():
    ds = load_digits_dataset("train")
    x, y = ds.labels[:200], ds.images[:200]
    out = {}
    for p in ("fp32", "bf16", "fp16"):
        cfg = tiny_config()
        cfg.precision = p
        out[p] = LSDM(cfg).fit(x, y, num_classes=10, progress=False)
    return out


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_tracks_fp32(runs, precision):
    ref, got = runs["fp32"], runs[precision]
    rec = torch.tensor(ref.history["reconstruction"]) - torch.tensor(got.history["reconstruction"])
    assert rec.abs().max() < REC_ATOL
    assert got.history["reconstruction"][-1] < got.history["reconstruction"][0]
    for a, b in zip(ref.modules(), got.modules()):
        for pa, pb in zip(a.parameters(), b.parameters()):
            assert pb.dtype == torch.float32  # master weights stay float32
            assert (pa - pb).norm() / pa.norm() < WEIGHT_RTOL
    assert all(abs(u - v) < 0.05 * max(1.0, abs(u)) for u, v in
               zip(ref.history["critic_loss"], got.history["critic_loss"]))
    assert not torch.equal(ref.generator.mlp.layers[0].weight, got.generator.mlp.layers[0].weight)  # it did change


def test_fp16_grad_scaler_state_is_checkpointed(tmp_path):
    ds = load_digits_dataset("train")
    cfg = tiny_config()
    cfg.precision = "fp16"
    cfg.autoencoder.steps, cfg.matching.steps, cfg.matching.checkpoint_every = 10, 4, 2
    d = str(tmp_path / "ck")
    orig = __import__("lsdm_fast.checkpoint", fromlist=["x"]).Checkpointer.save
    seen = []

    def spy(self, state):
        seen.append(state.optim)
        return orig(self, state)

    mp = pytest.MonkeyPatch()
    mp.setattr("lsdm_fast.checkpoint.Checkpointer.save", spy)
    try:
        LSDM(cfg).fit(ds.labels[:50], ds.images[:50], num_classes=10, progress=False, checkpoint_dir=d)
    finally:
        mp.undo()
    periodic = [s for s in seen if s is not None]
    assert periodic and periodic[0]["scaler"]["scale"] > 1  # a live GradScaler, saved for exact resume
    assert read_checkpoint(os.path.join(d, CHECKPOINT_FILE))["stage"] == 3


def test_bad_precision_rejected():
    cfg = tiny_config()
    cfg.precision = "fp8"
    with pytest.raises(ValueError, match="precision must be one of"):
        LSDM(cfg)
