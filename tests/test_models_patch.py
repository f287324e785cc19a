"""The patch autoencoder (models.PatchEncoder/PatchDecoder, the default for images since issue 24): its
convolutions written as GEMMs against torch's own convolutions (float64), shapes, channels, per-image
encoding, gradients, bad configurations."""
import pytest
import torch
import torch.nn.functional as F

from lsdm_fast.config import AutoencoderConfig
from lsdm_fast.models import (PatchConv2d, PatchConvTranspose2d, PatchDecoder, PatchEncoder, build_autoencoder,
                              conv_fits, depth_to_space, resolve_kind, space_to_depth)


def _rel(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.mark.parametrize("stride, cin, cout, side", [(2, 1, 8, 6), (2, 3, 5, 8), (4, 1, 16, 28), (4, 3, 4, 8),
                                                      (6, 2, 3, 12), (4, 5, 7, 32)])
def test_patch_conv_equals_conv2d(rng, stride, cin, cout, side):
    layer = PatchConv2d(cin, cout, stride).double()
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(rng.standard_normal(layer.weight.shape)))
        layer.bias.copy_(torch.from_numpy(rng.standard_normal(cout)))
    x = torch.from_numpy(rng.standard_normal((3, cin, side, side)))
    ref = F.conv2d(x, layer.weight, layer.bias, stride=stride, padding=stride // 2)
    got = layer(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    assert got.shape == ref.shape
    assert _rel(got, ref) < 1e-12


@pytest.mark.parametrize("stride, cin, cout, low", [(2, 8, 1, 3), (2, 5, 3, 4), (4, 16, 1, 7), (4, 4, 3, 2),
                                                     (6, 3, 2, 2), (4, 7, 5, 8)])
def test_patch_conv_transpose_equals_conv_transpose2d(rng, stride, cin, cout, low):
    layer = PatchConvTranspose2d(cin, cout, stride).double()
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(rng.standard_normal(layer.weight.shape)))
        layer.bias.copy_(torch.from_numpy(rng.standard_normal(cout)))
    x = torch.from_numpy(rng.standard_normal((3, cin, low, low)))
    ref = F.conv_transpose2d(x, layer.weight, layer.bias, stride=stride, padding=stride // 2)
    got = layer(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    assert got.shape == ref.shape == (3, cout, low * stride, low * stride)
    assert _rel(got, ref) < 1e-12


def test_gradients_equal_conv2d_gradients(rng):
    down, up = PatchConv2d(2, 6, 4).double(), PatchConvTranspose2d(6, 2, 4).double()
    x = torch.from_numpy(rng.standard_normal((2, 2, 16, 16))).requires_grad_()
    out = up(F.leaky_relu(down(x.permute(0, 2, 3, 1)), 0.2)).permute(0, 3, 1, 2)
    ref = F.conv_transpose2d(F.leaky_relu(F.conv2d(x, down.weight, down.bias, 4, 2), 0.2), up.weight, up.bias, 4, 2)
    g = torch.from_numpy(rng.standard_normal(ref.shape))
    got_grads = torch.autograd.grad(out, [x, down.weight, up.weight, down.bias, up.bias], g)
    ref_grads = torch.autograd.grad(ref, [x, down.weight, up.weight, down.bias, up.bias], g)
    for a, b in zip(got_grads, ref_grads):
        assert _rel(a, b) < 1e-12


def test_space_to_depth_round_trip():
    x = torch.arange(2 * 8 * 8 * 3.0).reshape(2, 8, 8, 3)
    s = space_to_depth(x, 4)
    assert s.shape == (2, 2, 2, 48)
    assert torch.equal(s[0, 1, 0, :3], x[0, 4, 0])  # cell (1, 0) starts at pixel (4, 0)
    assert torch.equal(depth_to_space(s, 4), x)


@pytest.mark.parametrize("side, channels, width, depth, stride", [(28, 1, 64, 1, 4), (8, 1, 16, 0, 4),
                                                                  (32, 3, 32, 2, 4), (12, 1, 8, 1, 6), (6, 2, 4, 1, 2)])
def test_shapes_range_and_channels_first(side, channels, width, depth, stride):
    torch.manual_seed(0)
    enc = PatchEncoder(side, 5, width, depth, stride, in_channels=channels)
    dec = PatchDecoder(side, 5, width, depth, stride, out_channels=channels)
    y = torch.rand(4, channels * side * side)
    z = enc(y)
    assert z.shape == (4, 5)
    out = dec(z)
    assert out.shape == (4, channels * side * side)
    assert out.min() >= 0 and out.max() <= 1
    # channels first: a colour image whose channel c is constant decodes channel c from the c-th block of values
    assert enc(y.reshape(4, channels, side, side)).shape == (4, 5)
    # the split into the fused ops' parts gives the same result
    torch.testing.assert_close(dec.tail(F.leaky_relu(dec.fc(z), 0.2)), out)
    torch.testing.assert_close(enc.fc(enc.front(y)), z)


def test_channels_first_layout_is_respected():
    """An image whose red channel is bright and other channels dark: a colour decoder's output keeps the
    (C, H, W) order of the data (channel blocks of H*W values), the convention of lsdm_fast.data."""
    torch.manual_seed(0)
    dec = PatchDecoder(8, 2, 4, 0, 4, out_channels=3)
    with torch.no_grad():
        dec.conv.weight.zero_()
        dec.conv.bias.copy_(torch.tensor([5.0, -5.0, -5.0]))
    out = dec(torch.randn(2, 2)).reshape(2, 3, 8, 8)
    assert (out[:, 0] > 0.99).all() and (out[:, 1:] < 0.01).all()


def test_encoding_is_per_image():
    torch.manual_seed(0)
    enc, dec = PatchEncoder(28, 8), PatchDecoder(28, 8)
    y = torch.rand(6, 784)
    torch.testing.assert_close(enc(y)[2:3], enc(y[2:3]), rtol=1e-5, atol=1e-5)
    z = torch.randn(6, 8)
    torch.testing.assert_close(dec(z)[4:5], dec(z[4:5]), rtol=1e-5, atol=1e-5)


def test_every_parameter_gets_a_finite_gradient():
    torch.manual_seed(0)
    enc, dec = build_autoencoder("conv", 784, 16, image_shape=(28, 28), conv_design="patch")
    y = torch.rand(4, 784)
    F.binary_cross_entropy(dec(enc(y)), y).backward()
    for name, p in [*enc.named_parameters(prefix="encoder"), *dec.named_parameters(prefix="decoder")]:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_auto_kind_and_fits():
    assert AutoencoderConfig().conv_design == "patch" and AutoencoderConfig().patch_width == 96  # config.py: why
    arch = AutoencoderConfig(conv_design="patch").arch_kwargs()
    assert resolve_kind("auto", (28, 28), **arch) == "conv"
    assert resolve_kind("auto", (3, 32, 32), **arch) == "conv"
    assert resolve_kind("auto", (8, 8), **arch) == "conv"
    assert resolve_kind("auto", (30, 30), **arch) == "mlp"  # 30 is not a multiple of the stride 4
    assert resolve_kind("auto", (28, 20), **arch) == "mlp"
    assert resolve_kind("auto", None, **arch) == "mlp"
    assert not conv_fits((2, 2), **arch)
    enc, dec = build_autoencoder("auto", 784, 8, image_shape=(28, 28), **arch)
    assert isinstance(enc, PatchEncoder) and isinstance(dec, PatchDecoder)


def test_bad_configurations_name_the_problem():
    with pytest.raises(ValueError, match="even stride"):
        PatchConv2d(1, 2, 3)
    with pytest.raises(ValueError, match="divisible by 4"):
        PatchEncoder(30, 4)
    with pytest.raises(ValueError, match="conv_design"):
        build_autoencoder("conv", 784, 4, image_shape=(28, 28), conv_design="dilated")
    from lsdm_fast.config import LSDMConfig
    with pytest.raises(ValueError, match="patch_stride"):
        LSDMConfig(autoencoder=AutoencoderConfig(patch_stride=3)).validate()
