"""A convolutional autoencoder keeps the ops' single entry points: the dense parts run fused in every
backend, the convolutions through torch (front/tail), and the result is the modules' own output."""
import numpy as np
import pytest
import torch

from lsdm_fast import ops
from lsdm_fast.models import ConvDecoder, ConvEncoder, Generator
from lsdm_fast.ops import available_backends

BACKENDS = available_backends("generate", "cpu")


def _rel(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@pytest.fixture
def nets(rng):
    torch.manual_seed(int(rng.integers(1 << 31)))
    dec = ConvDecoder(8, 6, (8, 16), res_blocks=1, out_channels=3).eval()
    enc = ConvEncoder(8, 6, (8, 16), res_blocks=1, in_channels=3).eval()
    gen = Generator(6, 10, 6, (32, 32))
    return gen, enc, dec


@pytest.mark.parity
@pytest.mark.parametrize("backend", BACKENDS)
def test_generate_with_a_conv_tail_is_the_modules_composition(nets, backend):
    gen, _, dec = nets
    labels = torch.tensor([0, 3, 9, 3, 1])
    y = ops.generate(gen.mlp.params(), dec.dense(), labels, noise_dim=6, num_classes=10, seed=11, tail=dec.tail,
                     backend=backend)
    eta = ops.philox_normal(11, 0, 5, 6)
    with torch.no_grad():
        ref = dec(gen(eta, torch.eye(10)[labels]))
    assert y.shape == (5, 3 * 64) and _rel(y, ref) < 1e-5
    u8 = ops.generate(gen.mlp.params(), dec.dense(), labels, noise_dim=6, num_classes=10, seed=11, tail=dec.tail,
                      out_dtype=torch.uint8, backend=backend)
    assert u8.dtype == torch.uint8 and (u8.int() - torch.round(ref.clamp(0, 1) * 255).int()).abs().max() <= 1


@pytest.mark.parity
@pytest.mark.parametrize("backend", available_backends("encode", "cpu"))
def test_encode_with_a_conv_front_is_the_module(nets, backend):
    _, enc, _ = nets
    y = torch.rand(7, 3 * 64)
    z = ops.encode(enc.dense(), y, front=enc.front, batch_size=3, backend=backend)
    with torch.no_grad():
        assert _rel(z, enc(y)) < 1e-5


def test_lsdm_with_the_default_conv_autoencoder_samples_to_a_file(tmp_path):
    from lsdm_fast import LSDM, AutoencoderConfig, LSDMConfig, MatchingConfig
    from lsdm_fast.data import load_digits_dataset
    torch.set_num_threads(1)
    ds = load_digits_dataset("train")
    cfg = LSDMConfig(autoencoder=AutoencoderConfig(steps=20, batch_size=32, latent_dim=4, conv_channels=(8, 16)),
                     matching=MatchingConfig(steps=2, batch_size=32, generator_hidden=(16,), critic_hidden=(16,)))
    m = LSDM(cfg).fit(ds.labels[:60], ds.images[:60], num_classes=10, progress=False)
    assert m.meta["autoencoder_kind"] == "conv"
    mem = m.sample(torch.arange(10), 3, seed=4, path=str(tmp_path / "s.npy"), chunk_size=7)
    direct = m.sample(torch.arange(10), 3, seed=4)
    # chunked through the file = one call, to the last bit where the CPU's conv kernels do not depend on the
    # batch size (the Intel VM); an AMD EPYC's differ by an ulp between batch 7 and 30
    np.testing.assert_allclose(np.asarray(mem), direct.numpy(), rtol=1e-6, atol=1e-7)
    z = m.encode(ds.images[:5])
    with torch.no_grad():
        assert _rel(z, m.encoder(torch.from_numpy(ds.images[:5].reshape(5, -1)))) < 1e-6
