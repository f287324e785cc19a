"""ops.autoencoder_loss_grads (the patch autoencoder's stage-1 step) on every backend against the float64
reference (autograd through the modules), on fresh random weights and images; the same bad call gets the same
error from every backend; AutoencoderStep trains through it and tracks the reference.

Relative error ||out - ref|| / ||ref|| per output, the reference in float64 on the same (float32-rounded)
inputs: float64 < 1e-10; float32 < 2e-5, with two exceptions that are properties of float32, not of a backend
(torch's own float32 autograd shows them as much as the C++ kernel):
- the output bias's gradient, a mean over every pixel of sigmoid(logit) - y, cancels as reconstructions near
  the images: its bound is scaled by its condition number (output_bias_condition);
- a LeakyReLU unit whose float64 pre-activation lies within float32 rounding (~1e-7 relative) of 0 takes the
  other side of the kink in float32, and its backward slope (1 vs 0.2) moves the weight gradients by about one
  row's share (~1 / rows). That happens to ~5e-8 of the units: ~0.15 times per step of the W 64 patch model at batch
  256 (3.2 M units; measured 1 draw in 8, error 1.9e-4), so shapes with over KINK_UNITS units are held to
  KINK_TOL; the small shapes (< 3,000 units: one flip in ~10^4 draws) to 2e-5.
"""
import copy
import re
import importlib.util

import pytest
import torch

from lsdm_fast import _ext, ops
from lsdm_fast.config import AutoencoderConfig
from lsdm_fast.models import PatchDecoder, PatchEncoder, build_autoencoder
from lsdm_fast.ops import available_backends
from lsdm_fast.stages import AutoencoderStep, train_autoencoder
from lsdm_fast.state import TrainingState

OP = "autoencoder_loss_grads"
BACKENDS = available_backends(OP, "cpu")
TOL = {torch.float32: 2e-5, torch.float64: 1e-10}
KINK_UNITS, KINK_TOL = 10_000, 1e-3

# (width W, depth K, stride S, channels C, side, batch): the W 64 patch model at its batch; no per-position layer,
# several; strides 2, 4, 6 (no compiled-in patch width), 8; one position (side == stride); batches of 1 and odd
SHAPES = [
    (64, 1, 4, 1, 28, 256),
    (8, 0, 2, 3, 6, 5),
    (16, 2, 6, 2, 12, 7),
    (5, 1, 4, 3, 8, 1),
    (7, 3, 2, 1, 4, 3),
    (12, 1, 8, 1, 16, 4),
    (3, 1, 4, 2, 4, 2),
]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def random_pair(rng, W, K, S, C, side, latent=6, dtype=torch.float32):
    """(encoder, decoder) in `dtype` and their float64 twins holding the same (rounded) values."""
    enc, dec = PatchEncoder(side, latent, W, K, S, C), PatchDecoder(side, latent, W, K, S, C)
    with torch.no_grad():
        for p in (*enc.parameters(), *dec.parameters()):
            fan_in = p[0].numel() if p.dim() > 1 else 10
            p.copy_(torch.from_numpy(rng.standard_normal(tuple(p.shape))) * 1.5 / fan_in ** 0.5)
    enc, dec = enc.to(dtype), dec.to(dtype)
    return enc, dec, copy.deepcopy(enc).double(), copy.deepcopy(dec).double()


def random_images(rng, n, C, side, dtype):
    # values in [0, 1] with exact 0s and 1s, as binarised or saturated pixels have
    y = torch.from_numpy(rng.random((n, C * side * side)) * 1.4 - 0.2).clamp(0, 1)
    return y.to(dtype)


def output_bias_condition(enc64, dec64, y, loss="bce", latent_noise=0.0, noise=None) -> float:
    """sum |G| / |sum G| over the pixels (float64), G = dloss/dlogit: the condition number of the transposed
    convolution's bias gradient, a mean of sigmoid(logit) - y that cancels as reconstructions near the images.
    Any rounding of the logits (float32's 1e-7) reaches it amplified by this factor, whichever backend runs."""
    with torch.enable_grad():
        z = enc64(y)
        z_in = z + latent_noise * z.detach().std(0) * noise if latent_noise > 0 else z
        logits = dec64.logits(z_in).detach().requires_grad_(True)
        rec = (torch.nn.functional.binary_cross_entropy_with_logits(logits, y) if loss == "bce"
               else torch.nn.functional.mse_loss(torch.sigmoid(logits), y))
        (g,) = torch.autograd.grad(rec, logits)
    g = g.view(len(y), dec64.out_channels, -1).transpose(0, 1).reshape(dec64.out_channels, -1)
    return float(g.abs().sum(1).norm() / g.sum(1).norm())


def leaky_units(enc, n: int) -> int:
    """LeakyReLU units of one step on n images: the encoder's convolution and per-position layers, the decoder's
    dense head and per-position layers."""
    return n * enc.low ** 2 * enc.width * (2 * len(enc.mix) + 2)


def assert_close(out, ref, dtype, what, bias_condition=1.0, units=0):
    tol = TOL[dtype]
    grad_tol = KINK_TOL if dtype == torch.float32 and units > KINK_UNITS else tol
    errs = {"loss": _rel(out.loss, ref.loss), "reconstruction": _rel(out.reconstruction, ref.reconstruction),
            "latent_sq": _rel(out.latent_sq, ref.latent_sq)}
    bounds = dict.fromkeys(errs, tol)
    for i, (g, r) in enumerate(zip(out.grads, ref.grads)):
        key = f"grad {i} {tuple(r.shape)}"
        errs[key] = _rel(g, r)
        # the last gradient (module order) is the output bias's
        bounds[key] = grad_tol * (max(1.0, bias_condition) if i == len(out.grads) - 1 else 1.0)
    bad = {k: f"{v:.3g} > {bounds[k]:.3g}" for k, v in errs.items() if not v < bounds[k]}
    assert not bad, f"{what}: relative errors above their bounds: {bad}"


def test_cpp_available_when_extension_built():
    if importlib.util.find_spec("lsdm_fast._C") is None:
        pytest.skip("the C++ extension lsdm_fast._C is not built")
    ext = _ext.cpu_extension()
    assert ext is not None, f"lsdm_fast._C exists but does not import: {_ext.load_error('_C')}"
    assert hasattr(ext, "patch_ae_step_cpu"), "lsdm_fast._C is built but lacks patch_ae_step_cpu: rebuild it"
    assert "cpp" in available_backends(OP, "cpu")
    assert "cpp" not in available_backends(OP, "meta")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("W,K,S,C,side,N", SHAPES, ids=lambda v: str(v))
def test_parity(rng, backend, dtype, W, K, S, C, side, N):
    enc, dec, enc64, dec64 = random_pair(rng, W, K, S, C, side, dtype=dtype)
    y = random_images(rng, N, C, side, dtype)
    for loss, noise_scale in (("bce", 0.0), ("mse", 0.3)):
        if noise_scale > 0 and N < 2:
            continue
        noise = torch.from_numpy(rng.standard_normal((N, 6))).to(dtype) if noise_scale > 0 else None
        kw = dict(latent_l2=float(rng.uniform(0.01, 0.5)), loss=loss, latent_noise=noise_scale)
        ref = ops.autoencoder_loss_grads(enc64, dec64, y.double(), noise=None if noise is None else noise.double(),
                                         backend="torch", **kw)
        out = ops.autoencoder_loss_grads(enc, dec, y, noise=noise, backend=backend, **kw)
        assert out.backend == backend
        assert out.loss.dtype == dtype and all(g.dtype == dtype for g in out.grads)
        assert [tuple(g.shape) for g in out.grads] == [tuple(p.shape) for p in (*enc.parameters(), *dec.parameters())]
        cond = output_bias_condition(enc64, dec64, y.double(), loss, noise_scale,
                                     None if noise is None else noise.double())
        assert_close(out, ref, dtype, f"{backend} {dtype} {loss} noise={noise_scale}", cond, leaky_units(enc, N))


@pytest.mark.parametrize("backend", BACKENDS)
def test_bce_is_binary_cross_entropy_of_the_sigmoid(rng, backend):
    """The loss terms themselves, against F.binary_cross_entropy of the decoder's output (float64)."""
    enc, dec, enc64, dec64 = random_pair(rng, 8, 1, 4, 1, 8, dtype=torch.float64)
    y = random_images(rng, 9, 1, 8, torch.float64)
    out = ops.autoencoder_loss_grads(enc, dec, y, latent_l2=0.25, backend=backend)
    z = enc64(y)
    rec = torch.nn.functional.binary_cross_entropy(dec64(z), y)
    assert _rel(out.reconstruction, rec) < 1e-12
    assert _rel(out.latent_sq, z.pow(2).mean()) < 1e-12
    assert _rel(out.loss, rec + 0.25 * z.pow(2).mean()) < 1e-12


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_graph_no_grad_attribute_any_strides(rng, backend):
    enc, dec, enc64, dec64 = random_pair(rng, 8, 1, 4, 2, 8)
    wide = random_images(rng, 5, 2, 12, torch.float32)
    y = wide[:, :128]  # a non-contiguous view
    assert not y.is_contiguous()
    out = ops.autoencoder_loss_grads(enc, dec, y, latent_l2=0.1, backend=backend)
    ref = ops.autoencoder_loss_grads(enc64, dec64, y.double(), latent_l2=0.1, backend="torch")
    assert_close(out, ref, torch.float32, f"{backend} non-contiguous y", output_bias_condition(enc64, dec64, y.double()),
                 leaky_units(enc, 5))
    assert all(p.grad is None for p in (*enc.parameters(), *dec.parameters()))
    assert not out.loss.requires_grad and not any(g.requires_grad for g in out.grads)


@pytest.mark.skipif("cpp" not in BACKENDS, reason="the C++ extension is not built")
def test_cpp_same_answer_on_two_threads(rng):
    """The elementwise passes split over threads (fixed chunks): the result holds on 2 threads."""
    enc, dec, enc64, dec64 = random_pair(rng, 64, 1, 4, 1, 28)
    y = random_images(rng, 64, 1, 28, torch.float32)
    ref = ops.autoencoder_loss_grads(enc64, dec64, y.double(), latent_l2=0.1, backend="torch")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = ops.autoencoder_loss_grads(enc, dec, y, latent_l2=0.1, backend="cpp")
    finally:
        torch.set_num_threads(before)
    assert_close(out, ref, torch.float32, "cpp on 2 threads", output_bias_condition(enc64, dec64, y.double()),
                 leaky_units(enc, 64))


# ------------------------------------------------------------------------------- bad calls

def _bad_calls(rng):
    enc, dec, _, _ = random_pair(rng, 8, 1, 4, 1, 8)
    y = random_images(rng, 4, 1, 8, torch.float32)
    mlp_enc, mlp_dec = build_autoencoder("mlp", 64, 6, (16,))
    other_dec = PatchDecoder(8, 6, 8, 2, 4, 1)
    return {
        "mlp models": ((mlp_enc, mlp_dec, y), {}, TypeError, "PatchEncoder"),
        "depth differs": ((enc, other_dec, y), {}, ValueError, "differ in depth"),
        "y 3-D": ((enc, dec, y.view(4, 8, 8)), {}, ValueError, "y must be (N, 64)"),
        "y wrong width": ((enc, dec, y[:, :60]), {}, ValueError, "y must be (N, 64)"),
        "empty batch": ((enc, dec, y[:0]), {}, ValueError, "empty batch"),
        "y float64": ((enc, dec, y.double()), {}, ValueError, "y is torch.float64"),
        "y not a tensor": ((enc, dec, y.numpy()), {}, TypeError, "y must be a torch.Tensor"),
        "negative latent_l2": ((enc, dec, y), {"latent_l2": -1.0}, ValueError, "latent_l2 must be"),
        "latent_l2 nan": ((enc, dec, y), {"latent_l2": float("nan")}, ValueError, "latent_l2 must be"),
        "latent_l2 string": ((enc, dec, y), {"latent_l2": "0.1"}, TypeError, "latent_l2 must be a Python number"),
        "unknown loss": ((enc, dec, y), {"loss": "l1"}, ValueError, "loss must be one of"),
        "noise missing": ((enc, dec, y), {"latent_noise": 0.1}, TypeError, "latent_noise > 0 needs noise"),
        "noise shape": ((enc, dec, y), {"latent_noise": 0.1, "noise": torch.zeros(4, 5)}, ValueError,
                        "noise must be (4, 6)"),
        "unknown precision": ((enc, dec, y), {"precision": "fp8"}, ValueError, "precision must be None or one of"),
        "noise one row": ((enc, dec, y[:1]), {"latent_noise": 0.1, "noise": torch.zeros(1, 6)}, ValueError,
                          "at least 2 images"),
    }


@pytest.mark.parametrize("case", list(_bad_calls(__import__("numpy").random.default_rng(0))))
def test_same_bad_call_same_error_every_backend(rng, case):
    args, kw, exc, msg = _bad_calls(rng)[case]
    kw = {"latent_l2": 0.1, **kw}
    seen = set()
    for backend in ["auto", *BACKENDS]:
        with pytest.raises(exc, match=re.escape(msg)) as info:
            ops.autoencoder_loss_grads(*args, backend=backend, **kw)
        seen.add(str(info.value))
    assert len(seen) == 1, seen


def test_unknown_backend_is_named():
    enc, dec = PatchEncoder(8, 6, 8, 1, 4), PatchDecoder(8, 6, 8, 1, 4)
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        ops.autoencoder_loss_grads(enc, dec, torch.rand(2, 64), latent_l2=0.1, backend="fast")


# ------------------------------------------------------------------------------- training through the op

def _train(backend: str, steps: int, **cfg_kw):
    torch.manual_seed(3)
    enc, dec = build_autoencoder("conv", 16 * 16, 8, image_shape=(16, 16), conv_design="patch", patch_width=16,
                                 patch_depth=1, patch_stride=4)
    y = torch.rand(200, 16 * 16, generator=torch.Generator().manual_seed(5)).round()
    cfg = AutoencoderConfig(kind="conv", latent_dim=8, patch_width=16, stop="steps", steps=steps, batch_size=32,
                            lr=3e-3, backend=backend, **cfg_kw)
    state = TrainingState(enc, dec, None, None, torch.Generator().manual_seed(0))
    train_autoencoder(state, y, cfg, progress=False)
    return state


@pytest.mark.skipif("cpp" not in BACKENDS, reason="the C++ extension is not built")
@pytest.mark.parametrize("noise", [0.0, 0.2])
def test_training_steps_track_the_reference(noise):
    """A few seeded stage-1 steps (Adam, cosine schedule) through the cpp op and through the reference: the
    same losses and weights up to float32 rounding, and the history names the backend."""
    ref, got = _train("torch", 12, latent_noise=noise), _train("cpp", 12, latent_noise=noise)
    assert ref.history["autoencoder_backend"] == "torch" and got.history["autoencoder_backend"] == "cpp"
    a, b = torch.tensor(got.history["reconstruction"]), torch.tensor(ref.history["reconstruction"])
    assert len(a) == 12 and _rel(a, b) < 1e-5
    assert b[-1] < b[0]  # it learns
    for p, q in zip((*got.encoder.parameters(), *got.decoder.parameters()),
                    (*ref.encoder.parameters(), *ref.decoder.parameters())):
        assert _rel(p.detach(), q.detach()) < 1e-4


def test_other_models_and_precisions_train_through_autograd():
    torch.manual_seed(0)
    y = torch.rand(64, 64)
    enc, dec = build_autoencoder("mlp", 64, 4, (16,))
    step = AutoencoderStep(enc, dec, y, AutoencoderConfig(kind="mlp", stop="steps", steps=2), torch.Generator())
    assert step.backend is None
    enc, dec = build_autoencoder("conv", 64, 4, image_shape=(8, 8), conv_design="patch", patch_width=8)
    cfg = AutoencoderConfig(stop="steps", steps=2, batch_size=8)
    assert AutoencoderStep(enc, dec, y, cfg, torch.Generator(), precision="bf16").backend is None
    fused = AutoencoderStep(enc, dec, y, cfg, torch.Generator())
    assert fused.backend == BACKENDS[-1]  # "auto": cpp where it is built
    assert float(fused(0)) > 0 and all(p.grad is not None for p in fused.params)


def test_explicit_backend_that_is_missing_fails_at_construction(monkeypatch):
    from lsdm_fast.ops import _registry
    impl = _registry._IMPLS[OP].get("cpp")
    if impl is None:
        pytest.skip("no cpp backend registered")
    monkeypatch.setattr(impl, "available", lambda device: False)
    enc, dec = build_autoencoder("conv", 64, 4, image_shape=(8, 8), conv_design="patch", patch_width=8)
    with pytest.raises(RuntimeError, match="backend 'cpp' for 'autoencoder_loss_grads' is not available"):
        AutoencoderStep(enc, dec, torch.rand(16, 64), AutoencoderConfig(backend="cpp", stop="steps"), torch.Generator())
