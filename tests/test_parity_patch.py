"""The fused patch-autoencoder kernels (lsdm_fast/ops/encode_generate_triton_patch.py: generate with a
PatchDecoder's tail, encode with a PatchEncoder's front, issue 22 phase 2) against a float64 reference written
with torch's own convolutions (F.conv_transpose2d / F.conv2d on the modules' weights, not the modules' GEMM
code), on fresh random weights and inputs (seed printed).

Tolerances (||out - ref|| / ||ref|| against float64): bf16 / fp16 < 2e-2, float32 as TF32 < 1e-2 (on a GPU;
the interpreter computes TF32 dots in full float32), float32 "ieee" (not fused: the MLP kernel, then the
module) < 1e-4; uint8 within one level of the reference's rounding, and exactly the package's rule applied to
the kernel's own float32 output. Triton runs under TRITON_INTERPRET=1 on the CPU (conftest), where a call of
the patch model costs seconds, so the grid is small.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from lsdm_fast import ops
from lsdm_fast.models import Generator, PatchDecoder, PatchEncoder
from lsdm_fast.ops import available_backends, philox_normal
from lsdm_fast.ops import encode_generate_triton_patch

_TRITON = "triton" in available_backends("generate", "cpu") or torch.cuda.is_available()
pytestmark = [pytest.mark.filterwarnings("ignore:Conversion of an array with ndim:DeprecationWarning"),
              pytest.mark.skipif(not _TRITON, reason="the Triton backend needs a GPU or TRITON_INTERPRET=1")]

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# Triton takes CPU tensors only under the interpreter (conftest sets it where there is no GPU); on a GPU machine
# the cuda cases run and the tests below that take one device use the GPU
_INTERPRETED = "triton" in available_backends("generate", "cpu")
needs_interpreter = pytest.mark.skipif(not _INTERPRETED, reason="Triton on CPU tensors needs TRITON_INTERPRET=1")
DEVICES = [pytest.param("cpu", marks=needs_interpreter), pytest.param("cuda", marks=needs_cuda)]
DEV = "cpu" if _INTERPRETED else "cuda"
NOISE, CLASSES = 6, 10
TOL = {torch.bfloat16: 2e-2, torch.float16: 2e-2, torch.float32: 1e-2}

# (side, latent, width W, depth K, stride S, channels C): the W 64 patch model first, then what changes the tiles
DEFAULT = (28, 32, 64, 1, 4, 1)
SHAPES = {
    "default": DEFAULT,
    "colour-K0": (8, 5, 16, 0, 4, 3),  # S*S*C = 48 (padded 64), no mix layer, latent off the 16 grid
    "S6-K2": (12, 6, 24, 2, 6, 1),  # S*S*C = 36 (64), W 24 (32), two mix layers
    "S2-C2": (6, 4, 8, 1, 2, 2),  # S*S*C = 8 (16), W 8 (16)
    "W96": (16, 7, 96, 1, 4, 1),  # the wider default under discussion (padded 128)
}


def _rel(out, ref):
    out, ref = out.double().cpu(), ref.double().cpu()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def _models(rng, shape, device="cpu"):
    side, latent, width, depth, stride, channels = shape
    torch.manual_seed(int(rng.integers(2**31)))
    enc = PatchEncoder(side, latent, width, depth, stride, in_channels=channels).double().to(device)
    dec = PatchDecoder(side, latent, width, depth, stride, out_channels=channels).double().to(device)
    gen = Generator(NOISE, CLASSES, latent, (32,)).double().to(device)
    with torch.no_grad():  # biases off zero and a wider spread of logits than the default initialisation
        for m in (enc, dec):
            for p in m.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return gen, enc, dec


def decode_reference(dec: PatchDecoder, z: torch.Tensor) -> torch.Tensor:
    """The decoder in float64 through F.conv_transpose2d (nn.ConvTranspose2d's layout and arithmetic)."""
    n, s = len(z), dec.stride
    h = F.leaky_relu(F.linear(z, dec.fc.weight, dec.fc.bias), 0.2).reshape(n, dec.low, dec.low, dec.width)
    for layer in dec.mix:
        h = F.leaky_relu(F.linear(h, layer.weight, layer.bias), 0.2)
    img = F.conv_transpose2d(h.permute(0, 3, 1, 2), dec.conv.weight, dec.conv.bias, stride=s, padding=s // 2)
    return torch.sigmoid(img).reshape(n, -1)


def encode_reference(enc: PatchEncoder, y: torch.Tensor) -> torch.Tensor:
    """The encoder in float64 through F.conv2d (nn.Conv2d's layout and arithmetic)."""
    n, s = len(y), enc.stride
    x = y.reshape(n, enc.in_channels, enc.side, enc.side)
    h = F.leaky_relu(F.conv2d(x, enc.conv.weight, enc.conv.bias, stride=s, padding=s // 2), 0.2).permute(0, 2, 3, 1)
    for layer in enc.mix:
        h = F.leaky_relu(F.linear(h, layer.weight, layer.bias), 0.2)
    return F.linear(h.reshape(n, -1), enc.fc.weight, enc.fc.bias)


def _cast(p, dtype):
    return p._replace(weights=[w.to(dtype) for w in p.weights], biases=[b.to(dtype) for b in p.biases])


@pytest.fixture
def fused_calls(monkeypatch):
    """How often each fused kernel's host function ran (the entry point's choice, not only the result)."""
    calls = {"generate": 0, "encode": 0}
    for op, name in (("generate", "generate_patch"), ("encode", "encode_patch")):
        real = getattr(encode_generate_triton_patch, name)

        def spy(*a, _real=real, _op=op, **k):
            calls[_op] += 1
            return _real(*a, **k)
        monkeypatch.setattr(encode_generate_triton_patch, name, spy)
    return calls


def _precision(dtype):
    return "tf32" if dtype == torch.float32 else None


# (shape, rows, dtype, condition): odd row counts (tiles of 32 rows in the interpreter, 64/128 on a GPU)
GEN_GRID = [
    ("default", 37, torch.bfloat16, "labels"),
    ("default", 5, torch.float32, "eta"),
    ("colour-K0", 33, torch.bfloat16, "tensor"),
    ("S6-K2", 5, torch.float32, "labels"),
    ("S2-C2", 9, torch.float16, "eta"),
    ("W96", 3, torch.bfloat16, "labels"),
]


@pytest.mark.parity
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,n,dtype,cond", GEN_GRID, ids=lambda v: str(v).replace("torch.", ""))
def test_generate_fused_matches_conv_transpose_reference(rng, fused_calls, device, shape, n, dtype, cond):
    gen, _, dec = _models(rng, SHAPES[shape], device)
    labels = torch.from_numpy(rng.integers(0, CLASSES, n)).to(device)
    x = torch.eye(CLASSES, dtype=torch.float64, device=device)[labels]
    eta = torch.from_numpy(rng.standard_normal((n, NOISE))).to(device) if cond == "eta" else None
    offset = int(rng.integers(0, 1000))
    with torch.no_grad():
        e = eta if eta is not None else philox_normal(7, offset, n, NOISE, device=device, dtype=torch.float64)
        ref = decode_reference(dec, gen(e, x))
    dec_c = copy.deepcopy(dec).to(dtype)
    kw = dict(noise_dim=NOISE, seed=7, offset=offset, backend="triton", precision=_precision(dtype), tail=dec_c.tail)
    c = (x.to(dtype), None) if cond == "tensor" else (labels, CLASSES)
    out = ops.generate(_cast(gen.mlp.params(), dtype), dec_c.dense(), c[0], num_classes=c[1],
                       eta=None if eta is None else eta.to(dtype), **kw)
    assert fused_calls["generate"] == 1
    assert out.shape == ref.shape and out.dtype == torch.float32 and out.device.type == device
    assert _rel(out, ref) < TOL[dtype], _rel(out, ref)
    # uint8: the package's rule on the kernel's own float32 output, exactly; one level of the reference's
    u8 = ops.generate(_cast(gen.mlp.params(), dtype), dec_c.dense(), c[0], num_classes=c[1],
                      eta=None if eta is None else eta.to(dtype), out_dtype=torch.uint8, **kw)
    assert u8.dtype == torch.uint8 and u8.shape == ref.shape
    assert torch.equal(u8, torch.round(torch.clamp(out * 255, 0, 255)).to(torch.uint8))
    assert (u8.int() - torch.round(ref.clamp(0, 1) * 255).int()).abs().max() <= (1 if dtype == torch.float32 else 3)
    # a half output dtype is the float32 result converted once (the interpreter truncates to bf16 where a GPU
    # rounds to nearest: within one bf16 step either way)
    half = ops.generate(_cast(gen.mlp.params(), dtype), dec_c.dense(), c[0], num_classes=c[1],
                        eta=None if eta is None else eta.to(dtype), out_dtype=torch.bfloat16, **kw)
    assert half.dtype == torch.bfloat16 and ((half.float() - out).abs() <= out.abs() * 2**-7).all()


# (shape, rows, weights' dtype, images' dtype)
ENC_GRID = [
    ("default", 37, torch.bfloat16, torch.bfloat16),
    ("default", 7, torch.float32, torch.float32),
    ("default", 5, torch.float16, torch.float32),  # images converted to the weights' dtype in the kernel
    ("colour-K0", 33, torch.bfloat16, torch.float32),
    ("S6-K2", 5, torch.float32, torch.bfloat16),
    ("S2-C2", 9, torch.float16, torch.float16),
    ("W96", 3, torch.bfloat16, torch.bfloat16),
]


@pytest.mark.parity
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,n,dtype,y_dtype", ENC_GRID, ids=lambda v: str(v).replace("torch.", ""))
def test_encode_fused_matches_conv_reference(rng, fused_calls, device, shape, n, dtype, y_dtype):
    _, enc, _ = _models(rng, SHAPES[shape], device)
    y = torch.from_numpy(rng.random((n, enc.in_channels * enc.side ** 2))).to(device)
    with torch.no_grad():
        ref = encode_reference(enc, y)
    enc_c = copy.deepcopy(enc).to(dtype)
    out = ops.encode(enc_c.dense(), y.to(y_dtype), front=enc_c.front, backend="triton", precision=_precision(dtype))
    assert fused_calls["encode"] == 1
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert _rel(out, ref) < TOL[dtype], _rel(out, ref)
    # channels-first images given as (N, C, H, W) are the same rows
    out4 = ops.encode(enc_c.dense(), y.to(y_dtype).reshape(n, enc.in_channels, enc.side, enc.side),
                      front=enc_c.front, backend="triton", precision=_precision(dtype))
    assert torch.equal(out4, out)


@pytest.mark.parity
def test_empty_batches_launch_nothing_and_keep_shapes(rng, fused_calls):
    gen, enc, dec = _models(rng, SHAPES["S2-C2"], DEV)
    g, d, e = (copy.deepcopy(m).to(torch.bfloat16) for m in (gen, dec, enc))
    for out_dtype in (torch.float32, torch.uint8):
        out = ops.generate(g.mlp.params(), d.dense(), torch.zeros(0, dtype=torch.long, device=DEV), noise_dim=NOISE,
                           num_classes=CLASSES, out_dtype=out_dtype, tail=d.tail, backend="triton")
        assert out.shape == (0, 2 * 36) and out.dtype == out_dtype
    z = ops.encode(e.dense(), torch.zeros(0, 72, dtype=torch.bfloat16, device=DEV), front=e.front, backend="triton")
    assert z.shape == (0, 4) and z.dtype == torch.float32


@pytest.mark.parity
def test_batches_split_into_pieces_give_the_same_samples(rng, fused_calls):
    gen, enc, dec = _models(rng, SHAPES["colour-K0"], DEV)
    g, d, e = (copy.deepcopy(m).to(torch.bfloat16) for m in (gen, dec, enc))
    labels = torch.from_numpy(rng.integers(0, CLASSES, 37)).to(DEV)
    kw = dict(noise_dim=NOISE, num_classes=CLASSES, seed=3, offset=11, tail=d.tail, backend="triton")
    whole = ops.generate(g.mlp.params(), d.dense(), labels, **kw)
    pieces = ops.generate(g.mlp.params(), d.dense(), labels, batch_size=16, **kw)
    assert fused_calls["generate"] == 1 + 3
    assert _rel(pieces, whole) < 1e-6
    y = torch.rand(37, 3 * 64, dtype=torch.bfloat16, device=DEV)
    assert _rel(ops.encode(e.dense(), y, front=e.front, batch_size=10, backend="triton"),
                ops.encode(e.dense(), y, front=e.front, backend="triton")) < 1e-6


@pytest.mark.parity
def test_a_decoder_layer_before_the_head_is_chained_with_the_generator(rng, fused_calls):
    """The fused path takes any dense decoder whose last layer is the head: the layers before it run with
    the generator (the fused MLP machinery)."""
    gen, _, dec = _models(rng, SHAPES["S2-C2"], DEV)
    pre = torch.nn.Linear(4, 24).double().to(DEV)
    head = torch.nn.Linear(24, dec.fc.out_features).double().to(DEV)
    dense = dec.dense()._replace(weights=[pre.weight, head.weight], biases=[pre.bias, head.bias])
    labels = torch.from_numpy(rng.integers(0, CLASSES, 9)).to(DEV)
    with torch.no_grad():
        z = gen(philox_normal(2, 0, 9, NOISE, device=DEV, dtype=torch.float64),
                torch.eye(CLASSES, dtype=torch.float64, device=DEV)[labels])
        h = F.leaky_relu(F.linear(F.leaky_relu(pre(z), 0.2), head.weight, head.bias), 0.2)
        dec_ref = copy.deepcopy(dec)
        ref = torch.sigmoid(dec_ref.tail_logits(h))
    d = copy.deepcopy(dec).to(torch.bfloat16)
    out = ops.generate(_cast(gen.mlp.params(), torch.bfloat16), _cast(dense, torch.bfloat16), labels,
                       noise_dim=NOISE, num_classes=CLASSES, seed=2, tail=d.tail, backend="triton")
    assert fused_calls["generate"] == 1
    assert _rel(out, ref) < 2e-2


@pytest.mark.parity
def test_float32_ieee_and_float64_are_not_fused_and_stay_exact(rng, fused_calls):
    """float32 at the default precision ("ieee") runs the MLP kernel, then the module's tail / front (torch):
    the fused kernels' FMA variant would spill (encode_generate_triton_patch.can_fuse); float64 runs the
    reference."""
    gen, enc, dec = _models(rng, SHAPES["S2-C2"], DEV)
    labels = torch.from_numpy(rng.integers(0, CLASSES, 7)).to(DEV)
    with torch.no_grad():
        ref = decode_reference(dec, gen(philox_normal(1, 0, 7, NOISE, device=DEV, dtype=torch.float64),
                                        torch.eye(CLASSES, dtype=torch.float64, device=DEV)[labels]))
    out64 = ops.generate(gen.mlp.params(), dec.dense(), labels, noise_dim=NOISE, num_classes=CLASSES, seed=1,
                         tail=dec.tail, backend="triton", out_dtype=torch.float64)
    assert _rel(out64, ref) < 1e-12
    g, d, e = (copy.deepcopy(m).float() for m in (gen, dec, enc))
    out = ops.generate(g.mlp.params(), d.dense(), labels, noise_dim=NOISE, num_classes=CLASSES, seed=1, tail=d.tail,
                       backend="triton")
    assert _rel(out, ref) < 1e-4
    y = torch.rand(7, 72, dtype=torch.float64, device=DEV)
    with torch.no_grad():
        assert _rel(ops.encode(e.dense(), y.float(), front=e.front, backend="triton"), encode_reference(enc, y)) < 1e-4
    assert fused_calls == {"generate": 1, "encode": 0}  # only the float64 call reached the fused host code


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_mismatched_parts_are_refused_the_same_by_every_backend(rng, backend):
    gen, enc, dec = _models(rng, SHAPES["S2-C2"])
    other = PatchDecoder(6, 4, 16, 1, 2, out_channels=2).double()  # 9 positions x 16 != the head's 9 x 8
    labels = torch.tensor([1, 2])
    with pytest.raises(ValueError, match=r"decoder's dense part gives 72 features but its tail takes 144"):
        ops.generate(gen.mlp.params(), dec.dense(), labels, noise_dim=NOISE, num_classes=CLASSES, tail=other.tail,
                     backend=backend)
    with pytest.raises(ValueError, match=r"encode: y must be \(N, 72\) images"):
        ops.encode(enc.dense(), torch.rand(2, 71, dtype=torch.float64), front=enc.front, backend=backend)
    with pytest.raises(ValueError, match="encode: y must be floating point"):
        ops.encode(enc.dense(), torch.zeros(2, 72, dtype=torch.uint8), front=enc.front, backend=backend)


def test_only_the_modules_own_methods_are_recognised():
    from lsdm_fast.ops.patch import patch_front, patch_tail

    enc, dec = PatchEncoder(8, 3, 8, 1, 4), PatchDecoder(8, 3, 8, 1, 4)
    part = patch_tail(dec.tail)
    assert part is not None and (part.width, part.depth, part.stride, part.channels, part.low) == (8, 1, 4, 1, 2)
    assert patch_front(enc.front).features == enc.fc.in_features == part.features
    assert patch_tail(enc.front) is None and patch_front(dec.tail) is None
    assert patch_tail(lambda h: dec.tail(h)) is None and patch_tail(dec.tail_logits) is None

    class Shifted(PatchDecoder):
        def tail(self, h):  # an override is the subclass's own computation: not fused
            return super().tail(h) * 0.5

    assert patch_tail(Shifted(8, 3, 8, 1, 4).tail) is None
