"""The `lsdm` command: info, a tiny train + sample run, and clean errors for bad arguments/data."""
import json
import os

import numpy as np
import pytest

from lsdm_fast.cli import main
from test_data import make_mnist_folder


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "critic_gradient_penalty" in out and "torch" in out and "C++ extension" in out
    assert "cpp critic precision='bf16': " in out or "lsdm_fast._C: missing" in out


def test_train_and_sample_on_tiny_idx_folder(tmp_path, capsys):
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 10
    images = (rng.random((60, 28, 28)) * 255 * (labels[:, None, None] / 9)).astype(np.uint8)
    data = make_mnist_folder(str(tmp_path / "data"), images=images, labels=labels)
    out = str(tmp_path / "run")
    rc = main(["train", "--data", data, "--n-per-class", "2", "--m-unpaired", "20", "--latent-dim", "4",
               "--ae-steps", "20", "--steps", "3", "--batch-size", "16", "--classifier-steps", "20",
               "--eval-per-class", "5", "--out", out, "--quiet"])
    assert rc == 0
    for f in ("samples.png", "losses.png", "metrics.json", "model/model.safetensors", "model/config.json"):
        assert os.path.getsize(os.path.join(out, f)) > 0, f
    m = json.load(open(os.path.join(out, "metrics.json")))
    assert m["paired"] == 20 and m["unpaired"] == 20 and 0 <= m["conditional_accuracy"] <= 1
    capsys.readouterr()
    assert main(["sample", "--model", os.path.join(out, "model"), "--labels", "1,2", "--n-per-class", "3",
                 "--out", str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (6, 784)


def _noise_folder(tmp_path, n: int, seed: int) -> str:
    """An IDX folder of n uniform-noise 28x28 images labelled 0..9 in turn."""
    rng = np.random.default_rng(seed)
    return make_mnist_folder(str(tmp_path / "data"), images=(rng.random((n, 28, 28)) * 255).astype(np.uint8),
                             labels=np.arange(n) % 10)


def test_train_ae_design_patch(tmp_path):
    data = _noise_folder(tmp_path, 40, seed=1)
    out = str(tmp_path / "run")
    assert main(["train", "--data", data, "--n-per-class", "2", "--latent-dim", "4", "--ae-steps", "5",
                 "--ae-stop", "steps", "--steps", "2", "--batch-size", "8", "--no-eval", "--ae-design", "patch",
                 "--pseudo-label", "0.5", "--ae-ema", "0.9", "--out", out, "--quiet"]) == 0
    config = json.load(open(os.path.join(out, "model", "config.json")))
    assert config["config"]["autoencoder"]["conv_design"] == "patch"
    assert config["config"]["autoencoder"]["ema"] == 0.9
    assert config["config"]["matching"]["pseudo_label"] == 0.5
    pseudo = json.load(open(os.path.join(out, "model", "history.json")))["pseudo_pairs"]
    assert pseudo["kept"] == sum(pseudo["per_class"]) <= 20  # of the 20 unpaired images


@pytest.mark.parametrize("argv, message", [
    (["train", "--data", "/no/such/folder"], "/no/such/folder: data folder not found"),
    (["sample", "--model", "/no/such/model"], "config.json: not found"),
    (["experiment", "superres_x4", "--quick", "--pseudo-label", "0.9"], "float conditions (super-resolution)"),
    (["experiment", "class_n10", "--quick", "--pseudo-condition", "0.9"], "has class labels, which get --pseudo-label"),
])
def test_bad_paths_give_one_clear_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [
    ["train", "--data", "x", "--n-per-class", "0"],
    ["train", "--data", "x", "--n-per-class", "abc"],
    ["train", "--data", "x", "--steps", "-1"],
    ["train", "--data", "x", "--pseudo-label", "1.5"],
    ["train", "--data", "x", "--pseudo-condition", "-0.1"],
    ["train", "--data", "x", "--ae-ema", "1"],
    ["experiment", "class_n10", "--ae-ema", "-0.5"],
    ["train", "--data", "x", "--task", "nope"],
    ["train", "--data", "x", "--n-per-class", "3", "--n-pairs", "5"],
    ["demo", "--backend", "gpu"],
    ["frobnicate"],
])
def test_bad_arguments_rejected_by_the_parser(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_bad_idx_file_rejected_before_training(tmp_path, capsys):
    data = make_mnist_folder(str(tmp_path / "d"))
    with open(os.path.join(data, "train-labels-idx1-ubyte.gz"), "wb") as fh:
        fh.write(b"not an idx file at all")
    assert main(["train", "--data", data, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "train-labels-idx1-ubyte.gz" in err and "wrong magic number" in err
    assert not os.path.exists(tmp_path / "o")


def test_train_grows_the_latent_and_says_so(tmp_path, monkeypatch):
    """Without --latent-dim the latent is fitted (here any error is too much, and each attempt, on noise, is made to
    measure a little better than the last: 32 -> 64 -> 128 -> 256 -> 512, the cap); metrics.json and the saved model
    say what was chosen and why. The attempts from 128 on train with the wide latents' schedule. --latent-max caps
    it."""
    from lsdm_fast.config import PATCH_LR, PATCH_PATIENCE, WIDE_PATCH_LR, WIDE_PATCH_PATIENCE
    from lsdm_fast.stages import AutoencoderStep
    measures = iter([0.5, 0.4, 0.3, 0.2, 0.1])
    monkeypatch.setattr(AutoencoderStep, "heldout_unexplained", lambda self: next(measures))
    schedules, init = [], AutoencoderStep.__init__

    def recording(self, *args, **kwargs):
        init(self, *args, **kwargs)
        schedules.append((self.cfg.latent_dim, self.lr, self.patience))

    monkeypatch.setattr(AutoencoderStep, "__init__", recording)
    data = _noise_folder(tmp_path, 60, seed=2)
    out = str(tmp_path / "run")
    assert main(["train", "--data", data, "--n-per-class", "2", "--ae-steps", "12", "--steps", "2",
                 "--batch-size", "8", "--grow-latent", "0.000001", "--classifier-steps", "5", "--eval-per-class",
                 "2", "--pseudo-label", "0", "--out", out, "--quiet"]) == 0
    m = json.load(open(os.path.join(out, "metrics.json")))
    assert m["latent_dim"] == 512 and [s["latent_dim"] for s in m["stage1"]["latent_search"]] == [32, 64, 128, 256]
    assert m["config"]["autoencoder"]["latent_dim"] is None  # what was asked for
    saved = json.load(open(os.path.join(out, "model", "config.json")))
    assert saved["config"]["autoencoder"]["latent_dim"] == 512  # what the saved model is
    assert schedules == [(32, PATCH_LR, PATCH_PATIENCE), (64, PATCH_LR, PATCH_PATIENCE),
                         (128, WIDE_PATCH_LR, WIDE_PATCH_PATIENCE), (256, WIDE_PATCH_LR, WIDE_PATCH_PATIENCE),
                         (512, WIDE_PATCH_LR, WIDE_PATCH_PATIENCE)]
    measures = iter([0.5, 0.4])
    capped = str(tmp_path / "capped")
    assert main(["train", "--data", data, "--n-per-class", "2", "--ae-steps", "12", "--steps", "2",
                 "--batch-size", "8", "--grow-latent", "0.000001", "--latent-max", "64", "--classifier-steps", "5",
                 "--eval-per-class", "2", "--pseudo-label", "0", "--out", capped, "--quiet"]) == 0
    assert json.load(open(os.path.join(capped, "metrics.json")))["latent_dim"] == 64
