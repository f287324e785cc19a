"""The convolutional encoder/decoder: shapes, parameter counts, per-image encoding, gradients,
bad configurations, and a tiny overfit run that fails if the pair cannot learn."""
import pytest
import torch
import torch.nn.functional as F

from lsdm_fast.data import load_digits_dataset
from lsdm_fast.models import ConvDecoder, ConvEncoder, build_autoencoder


@pytest.mark.parametrize("side, latent_dim, channels, res_blocks", [
    (28, 16, (32, 64), 0), (28, 8, (16, 32), 1), (8, 4, (8, 16), 0), (16, 3, (8, 8, 8, 8), 1), (12, 2, (4,), 0)])
def test_shapes_and_range(side, latent_dim, channels, res_blocks):
    enc, dec = ConvEncoder(side, latent_dim, channels, res_blocks), ConvDecoder(side, latent_dim, channels, res_blocks)
    y = torch.rand(5, side * side)
    z = enc(y)
    assert z.shape == (5, latent_dim)
    out = dec(z)
    assert out.shape == (5, side * side)
    assert out.min() >= 0 and out.max() <= 1
    assert enc(y.reshape(5, side, side)).shape == (5, latent_dim)  # (N, H, W) input too


def test_parameter_counts():
    # by hand, side 28, d 16, channels (32, 64), no residual blocks:
    # encoder conv 1->32 (4x4) 544, GroupNorm 64, conv 32->64 32832, GroupNorm 128, linear 3136->16 50192
    # decoder linear 16->3136 53312, convT 64->32 32800, GroupNorm 64, convT 32->1 513
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(ConvEncoder(28, 16, (32, 64))) == 544 + 64 + 32832 + 128 + 50192
    assert count(ConvDecoder(28, 16, (32, 64))) == 53312 + 32800 + 64 + 513
    # each residual block at width 64: two 3x3 convs (36928 each) and two GroupNorms (128 each)
    block = 2 * (64 * 64 * 9 + 64) + 2 * 128
    assert count(ConvEncoder(28, 16, (32, 64), 2)) - count(ConvEncoder(28, 16, (32, 64))) == 2 * block
    assert count(ConvDecoder(28, 16, (32, 64), 1)) - count(ConvDecoder(28, 16, (32, 64))) == block


def test_encoding_is_per_image():
    """GroupNorm, not BatchNorm: an image's latent does not depend on the rest of its batch, in
    training mode as well as in eval mode."""
    torch.manual_seed(0)
    enc, dec = ConvEncoder(28, 8, (16, 32), 1), ConvDecoder(28, 8, (16, 32), 1)
    y = torch.rand(6, 784)
    torch.testing.assert_close(enc(y)[2:3], enc(y[2:3]), rtol=1e-5, atol=1e-5)
    z = torch.randn(6, 8)
    torch.testing.assert_close(dec(z)[4:5], dec(z[4:5]), rtol=1e-5, atol=1e-5)


def test_every_parameter_gets_a_finite_gradient():
    torch.manual_seed(0)
    enc, dec = build_autoencoder("conv", 784, 16, image_shape=(28, 28), conv_channels=(16, 32), res_blocks=1)
    y = torch.rand(4, 784)
    F.binary_cross_entropy(dec(enc(y)), y).backward()
    for name, p in [*enc.named_parameters(prefix="encoder"), *dec.named_parameters(prefix="decoder")]:
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_gradient_matches_finite_differences():
    torch.manual_seed(0)
    enc, dec = ConvEncoder(8, 3, (4, 8), 1).double(), ConvDecoder(8, 3, (4, 8), 1).double()
    y = torch.rand(2, 64, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: dec(enc(v)), (y,))


def test_bad_configurations_are_named():
    with pytest.raises(ValueError, match="side divisible by 4, got 6"):
        ConvEncoder(6, 4, (8, 16))
    with pytest.raises(ValueError, match="side divisible by 8, got 28"):
        ConvDecoder(28, 4, (8, 16, 32))
    with pytest.raises(ValueError, match="positive widths"):
        ConvEncoder(28, 4, ())
    with pytest.raises(ValueError, match="positive widths"):
        ConvDecoder(28, 4, (8, 0))
    with pytest.raises(ValueError, match="square images"):
        build_autoencoder("conv", 28 * 20, 4, image_shape=(28, 20))
    with pytest.raises(ValueError, match="square images"):
        build_autoencoder("conv", 784, 4)


def test_tiny_overfit():
    """32 digits (8x8) memorised in 150 Adam steps: the reconstruction error must fall far below
    that of the best constant image (the per-pixel mean), which a pair that cannot route
    information through the latent never beats."""
    ds = load_digits_dataset("train")
    y = torch.from_numpy(ds.images[:32].reshape(32, -1))
    torch.manual_seed(0)
    enc, dec = build_autoencoder("conv", 64, 8, image_shape=(8, 8), conv_channels=(16, 32))
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=3e-3)
    for _ in range(150):
        loss = F.binary_cross_entropy(dec(enc(y)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        mse = float(((dec(enc(y)) - y) ** 2).mean())
    constant_mse = float(((y - y.mean(0)) ** 2).mean())
    assert mse < 0.05 * constant_mse, (mse, constant_mse)
