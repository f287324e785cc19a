"""Backend "cpp" of generate / encode with the patch autoencoder's tail / front (lsdm_fast/ops/encode_generate_cpp.py,
csrc/patch_ae_cpu.cpp: patch_tail_cpu / patch_front_cpu) against a float64 reference written with torch's own
convolutions (tests/test_parity_patch.py's decode_reference / encode_reference), on fresh random weights and
inputs (seed printed), and against backend="torch" for the samples (the same noise).

Tolerances (||out - ref|| / ||ref||): float32 < 1e-5 against float64 and against the torch backend's float32
(both round differently, neither is exact); float64 < 1e-12; uint8 within one level of the reference's rounding
and exactly the package's rule applied to the backend's own float32 output.
"""
from __future__ import annotations

import pytest
import torch

from lsdm_fast import ops
from lsdm_fast.models import Generator, PatchDecoder, PatchEncoder
from lsdm_fast.ops import _registry, available_backends, philox_normal
from lsdm_fast.ops.encode_generate import to_out_dtype
from lsdm_fast.ops.patch import patch_front, patch_tail

pytestmark = pytest.mark.skipif("cpp" not in available_backends("generate", "cpu"),
                                reason="the C++ extension is not built")

from test_parity_patch import decode_reference, encode_reference  # noqa: E402 - the float64 conv references

NOISE, CLASSES = 6, 10
# (side, latent, width W, depth K, stride S, channels C)
DEFAULT = (28, 32, 64, 1, 4, 1)
SHAPES = {
    "default": DEFAULT,
    "W96": (16, 7, 96, 1, 4, 1),
    "colour-K0": (8, 5, 16, 0, 4, 3),
    "S6-K2": (12, 6, 24, 2, 6, 1),
    "S2-C3": (6, 4, 8, 1, 2, 3),
}
F32, F64 = 1e-5, 1e-12


def _rel(out, ref):
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def _models(rng, shape, hidden=(32,)):
    side, latent, width, depth, stride, channels = shape
    torch.manual_seed(int(rng.integers(2**31)))
    enc = PatchEncoder(side, latent, width, depth, stride, in_channels=channels).double()
    dec = PatchDecoder(side, latent, width, depth, stride, out_channels=channels).double()
    gen = Generator(NOISE, CLASSES, latent, hidden).double()
    with torch.no_grad():  # biases off zero and a wider spread of logits than the default initialisation
        for m in (enc, dec):
            for p in m.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return gen, enc, dec


def _gen_params(gen: Generator) -> ops.MLPParams:
    return gen.mlp.params() if hasattr(gen.mlp, "params") else ops.MLPParams(
        [l.weight for l in gen.mlp.modules() if isinstance(l, torch.nn.Linear)],
        [l.bias for l in gen.mlp.modules() if isinstance(l, torch.nn.Linear)])


def _latents(gen, n, seed, labels, dtype=torch.float64):
    """The generator's output as the reference draws it (Philox noise row offset + i)."""
    eta = philox_normal(seed, 0, n, NOISE, dtype=torch.float64)
    x = torch.nn.functional.one_hot(labels.long(), CLASSES).double()
    with torch.no_grad():
        return gen.double()(eta, x).to(dtype)


@pytest.mark.parity
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_generate_matches_conv_transpose_reference(rng, shape, dtype):
    gen, _, dec = _models(rng, shape)
    n, seed = 37, int(rng.integers(2**32))
    labels = torch.as_tensor(rng.integers(0, CLASSES, n))
    with torch.no_grad():
        ref = decode_reference(dec, _latents(gen, n, seed, labels))
    gen_t, dec_t = gen.to(dtype), dec.to(dtype)
    assert _registry.fuses("generate", "cpp", patch_tail(dec_t.tail), (_gen_params(gen_t), dec_t.dense()), None)
    out = ops.generate(_gen_params(gen_t), dec_t.dense(), labels, noise_dim=NOISE, num_classes=CLASSES, seed=seed,
                       tail=dec_t.tail, backend="cpp", out_dtype=dtype)
    assert out.shape == (n, dec.out_channels * dec.side ** 2) and out.dtype == dtype
    assert _rel(out, ref) < (F32 if dtype == torch.float32 else F64)


@pytest.mark.parity
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("dtype,y_dtype", [(torch.float32, torch.float32), (torch.float64, torch.float64),
                                           (torch.float32, torch.float64), (torch.float32, torch.bfloat16)],
                         ids=["f32", "f64", "f32-y64", "f32-ybf16"])
def test_encode_matches_conv_reference(rng, shape, dtype, y_dtype):
    _, enc, _ = _models(rng, shape)
    n = 29
    y = torch.rand(n, enc.in_channels * enc.side ** 2, dtype=torch.float64).to(y_dtype)
    with torch.no_grad():
        ref = encode_reference(enc, y.double())
    enc_t = enc.to(dtype)
    out = ops.encode(enc_t.dense(), y, front=enc_t.front, backend="cpp")
    assert out.shape == (n, enc.fc.out_features) and out.dtype == dtype
    assert _rel(out, ref) < (F32 if dtype == torch.float32 else F64)


@pytest.mark.parity
@pytest.mark.parametrize("n", [0, 1, 2, 5, 11, 12, 13])
def test_chunk_boundaries_and_batch_sizes(rng, n):
    """The C++ ops walk the images `chunk` at a time: every split of the rows gives the reference's values."""
    from lsdm_fast.ops.encode_generate_cpp import patch_front_forward, patch_tail_forward

    gen, enc, dec = _models(rng, SHAPES["S6-K2"])
    z = torch.randn(n, dec.fc.in_features, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    y = torch.rand(n, enc.in_channels * enc.side ** 2, dtype=torch.float64)
    with torch.no_grad():  # (the references cannot reshape an empty batch)
        ref_img = decode_reference(dec, z) if n else torch.empty(0, dec.out_channels * dec.side ** 2)
        ref_z = encode_reference(enc, y) if n else torch.empty(0, enc.fc.out_features)
    dec32, enc32 = dec.float(), enc.float()
    for chunk in (0, 1, 3, 4, 64):
        img = patch_tail_forward(z.float(), dec32.dense(), patch_tail(dec32.tail), torch.float32, chunk=chunk)
        lat = patch_front_forward(y.float(), enc32.dense(), patch_front(enc32.front), chunk=chunk)
        assert img.shape == ref_img.shape and lat.shape == ref_z.shape
        if n:
            assert _rel(img, ref_img) < F32 and _rel(lat, ref_z) < F32, chunk
    assert _registry.fuses("generate", "cpp", patch_tail(dec32.tail), (_gen_params(gen.float()), dec32.dense()), None)
    for empty in (ops.generate(_gen_params(gen), dec.dense(), torch.arange(n) % CLASSES, noise_dim=NOISE,
                               num_classes=CLASSES, tail=dec.tail, backend="cpp", out_dtype=torch.uint8),
                  ops.encode(enc.dense(), y, front=enc.front, backend="cpp")):
        assert len(empty) == n


@pytest.mark.parity
@pytest.mark.parametrize("shape", [DEFAULT, SHAPES["W96"]], ids=["default", "W96"])
def test_samples_are_the_torch_backends(rng, shape):
    """The same noise (Philox rows offset + i, the reference's own code), past the 4096-row latent pieces: float32
    within 1e-5 of backend="torch"; uint8 within one level of it, and exactly the rule applied to the float32."""
    gen, _, dec = _models(rng, shape, hidden=(64, 64))
    gen, dec = gen.float(), dec.float()
    n, seed, offset = 4099, int(rng.integers(2**32)), int(rng.integers(1000))
    labels = torch.as_tensor(rng.integers(0, CLASSES, n))
    kw = dict(noise_dim=NOISE, num_classes=CLASSES, seed=seed, offset=offset, tail=dec.tail)
    ref = ops.generate(_gen_params(gen), dec.dense(), labels, backend="torch", **kw)
    out = ops.generate(_gen_params(gen), dec.dense(), labels, backend="cpp", **kw)
    assert _rel(out, ref) < F32
    u8 = ops.generate(_gen_params(gen), dec.dense(), labels, backend="cpp", out_dtype=torch.uint8, **kw)
    assert u8.dtype == torch.uint8 and torch.equal(u8, to_out_dtype(out, torch.uint8))
    assert (u8.int() - to_out_dtype(ref, torch.uint8).int()).abs().max() <= 1
    half = ops.generate(_gen_params(gen), dec.dense(), labels, backend="cpp", out_dtype=torch.bfloat16, **kw)
    assert torch.equal(half, out.to(torch.bfloat16))
    # eta given: that noise, not Philox's
    eta = torch.randn(7, NOISE)
    a = ops.generate(_gen_params(gen), dec.dense(), labels[:7], eta=eta, backend="cpp", **kw)
    b = ops.generate(_gen_params(gen), dec.dense(), labels[:7], eta=eta, backend="torch", **kw)
    assert _rel(a, b) < F32


@pytest.mark.parity
def test_float_conditions_and_a_decoder_layer_before_the_head(rng):
    gen, _, dec = _models(rng, SHAPES["colour-K0"])
    gen, dec = gen.float(), dec.float()
    torch.manual_seed(int(rng.integers(2**31)))
    pre = torch.nn.Linear(dec.fc.in_features, dec.fc.in_features)
    two = ops.MLPParams([pre.weight, dec.fc.weight], [pre.bias, dec.fc.bias], "leaky_relu", 0.2, "leaky_relu")
    cond = torch.randn(9, CLASSES)
    kw = dict(noise_dim=NOISE, seed=5, tail=dec.tail)
    ref = ops.generate(_gen_params(gen), two, cond, backend="torch", **kw)
    out = ops.generate(_gen_params(gen), two, cond, backend="cpp", **kw)
    assert _rel(out, ref) < F32


def test_calls_it_does_not_fuse_give_the_references_result(rng):
    """No tail / front, a bf16 model, a silu layer next to the front: not fused; the torch backend's results."""
    gen, enc, dec = _models(rng, SHAPES["colour-K0"])
    gp, dense = _gen_params(gen.float()), dec.float().dense()
    labels = torch.arange(6) % CLASSES
    kw = dict(noise_dim=NOISE, num_classes=CLASSES, seed=1)
    assert torch.equal(ops.generate(gp, dense, labels, backend="cpp", **kw),
                       ops.generate(gp, dense, labels, backend="torch", **kw))
    dec_bf = PatchDecoder(8, 5, 16, 0, 4, out_channels=3).to(torch.bfloat16)
    assert not _registry.fuses("generate", "cpp", patch_tail(dec_bf.tail), (gp, dec_bf.dense()), None)
    bf = ops.generate(gp, dec_bf.dense(), labels, tail=dec_bf.tail, backend="cpp", **kw)
    assert torch.equal(bf, ops.generate(gp, dec_bf.dense(), labels, tail=dec_bf.tail, backend="torch", **kw))
    enc32 = enc.float()
    y = torch.rand(5, enc.in_channels * enc.side ** 2)
    assert torch.equal(ops.encode(enc32.dense(), enc32.front(y), backend="cpp"),
                       ops.encode(enc32.dense(), enc32.front(y), backend="torch"))
    torch.manual_seed(int(rng.integers(2**31)))
    second = torch.nn.Linear(enc.fc.out_features, 3)
    silu = ops.MLPParams([enc32.fc.weight, second.weight], [enc32.fc.bias, second.bias], "silu")
    assert not _registry.fuses("encode", "cpp", patch_front(enc32.front), (silu,), None)
    assert torch.equal(ops.encode(silu, y, front=enc32.front, backend="cpp"),
                       ops.encode(silu, y, front=enc32.front, backend="torch"))
    relu = silu._replace(activation="relu")  # fused: the C++ op's first layer, then torch
    assert _registry.fuses("encode", "cpp", patch_front(enc32.front), (relu,), None)
    assert _rel(ops.encode(relu, y, front=enc32.front, backend="cpp"),
                ops.encode(relu, y, front=enc32.front, backend="torch")) < F32


def test_auto_takes_cpp_for_the_default_model_on_cpu():
    dec = PatchDecoder(28, 32)
    name, _ = _registry.resolve("generate", "auto", torch.device("cpu"))
    assert name == "cpp"
    assert _registry.fuses("generate", "cpp", patch_tail(dec.tail), (dec.dense(), dec.dense()), None)


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_bad_calls_get_the_same_error_from_every_backend(rng, backend):
    _, enc, dec = _models(rng, SHAPES["colour-K0"])
    wrong = PatchDecoder(8, 5, 8, 0, 4, out_channels=3).double()  # head gives 4 * 16 features, tail takes 4 * 8
    gp = ops.MLPParams([torch.randn(5, NOISE + CLASSES, dtype=torch.float64)], [torch.zeros(5, dtype=torch.float64)])
    with pytest.raises(ValueError, match="the decoder's dense part gives 64 features but its tail takes 32"):
        ops.generate(gp, dec.dense(), torch.arange(3), noise_dim=NOISE, num_classes=CLASSES, tail=wrong.tail,
                     backend=backend)
    with pytest.raises(ValueError, match=r"encode: y must be \(N, 192\) images"):
        ops.encode(enc.dense(), torch.rand(3, 191, dtype=torch.float64), front=enc.front, backend=backend)


@pytest.mark.parity
def test_threads_split_the_chunks_and_give_the_same_images(rng):
    """Chunks of images are independent: two threads give the one-thread result bit for bit."""
    from lsdm_fast.ops.encode_generate_cpp import patch_front_forward, patch_tail_forward

    _, enc, dec = _models(rng, SHAPES["S6-K2"])
    dec, enc = dec.float(), enc.float()
    z = torch.randn(53, dec.fc.in_features)
    y = torch.rand(53, enc.in_channels * enc.side ** 2)
    threads = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2):
            torch.set_num_threads(n)
            outs.append((patch_tail_forward(z, dec.dense(), patch_tail(dec.tail), torch.float32, chunk=4),
                         patch_front_forward(y, enc.dense(), patch_front(enc.front), chunk=4)))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
