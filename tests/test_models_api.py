"""Model shapes, a short end-to-end run on tiny data, reproducibility, save/load and API errors."""
import json
import os

import numpy as np
import pytest
import torch

from lsdm_fast import LSDM, AutoencoderConfig, LSDMConfig, MatchingConfig
from lsdm_fast.data import load_digits_dataset, split_paired_unpaired
from lsdm_fast.models import MLP, ConvDecoder, ConvEncoder, Critic, Generator, build_autoencoder


def tiny_config(seed=0, kind="mlp", backend="auto", **kw):
    return LSDMConfig(autoencoder=AutoencoderConfig(kind=kind, latent_dim=4, hidden=(32,), steps=60, batch_size=64),
                      matching=MatchingConfig(generator_hidden=(32,), critic_hidden=(32, 32), steps=20,
                                              batch_size=32, backend=backend, **kw),
                      seed=seed)


@pytest.fixture(scope="module")
def digits():
    ds = load_digits_dataset("train")
    s = split_paired_unpaired(ds.labels, n_per_class=5, m_unpaired=200, seed=0)
    return ds, s


@pytest.fixture(scope="module")
def fitted(digits):
    return fit(digits, 0)


def fit(digits, seed=0, **kw):
    ds, s = digits
    return LSDM(tiny_config(seed, **kw)).fit(ds.labels[s.paired], ds.images[s.paired], ds.images[s.unpaired],
                                             num_classes=10, progress=False)


def test_model_shapes():
    enc, dec = build_autoencoder("mlp", 784, 16, (64, 32))
    y = torch.rand(5, 784)
    assert enc(y).shape == (5, 16) and dec(enc(y)).shape == (5, 784)
    assert 0 <= dec(enc(y)).min() and dec(enc(y)).max() <= 1
    ce, cd = ConvEncoder(28, 16), ConvDecoder(28, 16)
    assert ce(y).shape == (5, 16) and cd(ce(y)).shape == (5, 784)
    g, c = Generator(16, 10, 16, (64, 64)), Critic(10, 16, (64, 64))
    z = g(torch.randn(5, 16), torch.eye(10)[:5])
    assert z.shape == (5, 16) and c(torch.eye(10)[:5], z).shape == (5,)
    assert MLP([3, 4, 2]).params().widths == [3, 4, 2]
    with pytest.raises(ValueError, match="side divisible by 4"):
        build_autoencoder("conv", 36, 4, image_shape=(6, 6))


def test_end_to_end_tiny_run(digits, fitted):
    model = fitted
    h = model.history
    assert len(h["reconstruction"]) == 60 and len(h["wasserstein"]) == 20
    assert h["reconstruction"][-1] < h["reconstruction"][0]  # stage 1 learns
    assert all(np.isfinite(h["critic_loss"])) and h["backend"] in ("torch", "cpp")
    y = model.sample(torch.arange(10), 3, seed=1)
    assert y.shape == (30, 64) and y.dtype == torch.float32 and 0 <= y.min() and y.max() <= 1
    u8 = model.sample(torch.arange(10), 3, seed=1, out_dtype=torch.uint8)
    assert u8.dtype == torch.uint8 and (u8.float() - y * 255).abs().max() <= 1
    z = model.encode(digits[0].images[:7])
    assert z.shape == (7, 4)


def test_sample_straight_to_npy_in_chunks(fitted, tmp_path):
    labels = torch.arange(10)
    mm = fitted.sample(labels, 5, seed=2, path=str(tmp_path / "s.npy"), chunk_size=7)
    ref = fitted.sample(labels, 5, seed=2)
    np.testing.assert_allclose(np.load(tmp_path / "s.npy"), ref.numpy(), rtol=0, atol=1e-6)
    assert mm.shape == (50, 64)


def test_same_seed_same_samples_different_seed_different(digits, fitted):
    a, b, c = fitted, fit(digits, 0), fit(digits, 1)
    for name in ("reconstruction", "critic_loss"):
        assert a.history[name] == b.history[name]
    sa, sb = a.sample(torch.arange(10), 2, seed=5), b.sample(torch.arange(10), 2, seed=5)
    assert torch.equal(sa, sb)
    assert not torch.allclose(sa, a.sample(torch.arange(10), 2, seed=6))  # sampling seed matters
    assert not torch.allclose(sa, c.sample(torch.arange(10), 2, seed=5))  # training seed matters
    # row i depends only on (seed, offset + i): a batch split gives the same samples
    labels = torch.arange(10).repeat_interleave(2)
    whole = a.sample(labels, 1, seed=5)
    parts = torch.cat([a.sample(labels[:7], 1, seed=5), a.sample(labels[7:], 1, seed=5, offset=7)])
    torch.testing.assert_close(whole, parts, rtol=0, atol=1e-6)


def test_save_load_roundtrip(fitted, tmp_path):
    model = fitted
    model.save(str(tmp_path / "m"))
    assert sorted(os.listdir(tmp_path / "m")) == ["config.json", "history.json", "model.safetensors"]
    again = LSDM.load(str(tmp_path / "m"))
    torch.testing.assert_close(model.sample(torch.arange(10), 2, seed=3), again.sample(torch.arange(10), 2, seed=3),
                               rtol=0, atol=0)
    assert json.load(open(tmp_path / "m" / "config.json"))["meta"]["num_classes"] == 10


def test_superres_conditions_and_conv_autoencoder(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.random((40, 8, 8)).astype(np.float32)
    low = imgs.reshape(40, 4, 2, 4, 2).mean((2, 4)).reshape(40, 16)
    m = LSDM(tiny_config(kind="conv")).fit(torch.from_numpy(low[:10]), imgs[:10], imgs[10:], progress=False)
    y = m.sample(torch.from_numpy(low[:3]), 2, seed=0)
    assert y.shape == (6, 64)
    m.save(str(tmp_path / "sr"))
    torch.testing.assert_close(LSDM.load(str(tmp_path / "sr")).sample(torch.from_numpy(low[:3]), 2, seed=0), y)


def test_api_errors(digits, fitted, tmp_path):
    ds, s = digits
    with pytest.raises(RuntimeError, match="not fitted"):
        LSDM().sample(torch.arange(3))
    with pytest.raises(ValueError, match="paired_x has 3 rows but paired_y has 4"):
        LSDM(tiny_config()).fit(np.arange(3), ds.images[:4])
    with pytest.raises(ValueError, match="paired_y is empty"):
        LSDM(tiny_config()).fit(np.arange(0), ds.images[:0])
    bad = ds.images[:4].copy()
    bad[1, 1, 1] = np.nan
    with pytest.raises(ValueError, match="paired_y contains NaN or Inf"):
        LSDM(tiny_config()).fit(np.arange(4), bad)
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        LSDM(tiny_config()).fit(np.arange(4), ds.images[:4] * 16)
    with pytest.raises(ValueError, match="critic_steps must be >= 1"):
        LSDM(LSDMConfig(matching=MatchingConfig(critic_steps=0)))
    model = fitted
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\)"):
        model.sample(torch.tensor([3, 12]))
    with pytest.raises(FileNotFoundError, match="config.json: not found"):
        LSDM.load(str(tmp_path))


def test_latent_noise_option(digits):
    from lsdm_fast.stages import train_autoencoder
    from lsdm_fast.state import TrainingState

    with pytest.raises(ValueError, match="latent_noise must be >= 0"):
        LSDM(LSDMConfig(autoencoder=AutoencoderConfig(latent_noise=-0.1)))
    y = torch.from_numpy(digits[0].images[:256].reshape(256, -1))

    def run(noise):
        torch.manual_seed(0)
        enc, dec = build_autoencoder("mlp", 64, 4, (32,))
        cfg = AutoencoderConfig(latent_dim=4, hidden=(32,), steps=30, batch_size=32, latent_noise=noise)
        state = TrainingState(enc, dec, None, None, torch.Generator().manual_seed(0))
        train_autoencoder(state, y, cfg, progress=False)
        return state.history["reconstruction"]

    clean, noisy = run(0.0), run(0.5)
    assert clean == run(0.0)  # off: the pre-option training, draw for draw
    assert clean != noisy and all(np.isfinite(noisy))  # on: the decoder sees perturbed latents


def test_marginal_weight_option(digits):
    """The marginal critic is off by default; a weight given is used (its critic trains beside the joint one and
    changes the generator); a bad one is refused before any training."""
    ds, s = digits
    on = LSDM(tiny_config(marginal_weight=1.0))
    on.fit(ds.labels[s.paired], ds.images[s.paired], ds.images[s.unpaired], num_classes=10, progress=False)
    off = fit(digits, 0)
    assert MatchingConfig().marginal_weight == 0.0 and off.config.matching.marginal_weight == 0.0
    assert not torch.equal(on.generator.mlp.layers[0].weight, off.generator.mlp.layers[0].weight)
    assert torch.equal(on.decoder.state_dict()[next(iter(on.decoder.state_dict()))],
                       off.decoder.state_dict()[next(iter(off.decoder.state_dict()))])  # stage 1 is untouched
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="matching.marginal_weight must be a finite number >= 0"):
            fit(digits, 0, marginal_weight=bad)
