"""Parity of the "triton" and "cuda" backends of the fused critic step with the float64
pure-PyTorch autograd reference (DESIGN.md section 4), on fresh random inputs.

Triton runs everywhere (TRITON_INTERPRET=1 on CPU, set by conftest.py); CUDA tests need a GPU.
Tolerances (relative error ||out - ref|| / ||ref||): float32 ieee 1e-4, float64 1e-10,
tf32 matrix units 1e-2. Differences of means (wasserstein, bias gradients) can cancel, so the
denominator is floored at 1e-3 (absolute error then)."""
from __future__ import annotations

import pytest
import torch

from lsdm_fast.ops import IMPORT_ERRORS, MLPParams, available_backends, critic_gradient_penalty, critic_score_grad

pytestmark = [pytest.mark.parity,
              pytest.mark.filterwarnings("ignore:Conversion of an array with ndim:DeprecationWarning")]

HAS_CUDA = torch.cuda.is_available()
DEV = "cuda" if HAS_CUDA else "cpu"
needs_gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")

# (batch, widths N_0..N_L (N_L = 1), dx, penalty_over, negative_slope): every batch size
# (1, 7, 33), depth (2, 3, 4 linear layers), odd widths (5, 37, 130), both norms, both slopes.
CONFIGS = [
    (1, [12, 37, 1], 5, "joint", 0.2),
    (7, [12, 130, 1], 5, "latent", 0.0),
    (33, [40, 5, 1], 7, "joint", 0.0),
    (1, [12, 37, 5, 1], 3, "latent", 0.2),
    (7, [40, 130, 37, 1], 17, "joint", 0.2),
    (33, [20, 37, 130, 1], 5, "latent", 0.0),
    (1, [20, 5, 37, 130, 1], 5, "joint", 0.0),
    (7, [12, 37, 5, 37, 1], 5, "latent", 0.2),
    (33, [20, 130, 37, 5, 1], 10, "joint", 0.2),
    (33, [12, 37, 37, 37, 1], 5, "latent", 0.0),
]
CFG_IDS = [f"B{b}-{'x'.join(map(str, w))}-dx{dx}-{po}-s{s}" for b, w, dx, po, s in CONFIGS]


def _critic(rng, widths, slope, dtype, device):
    ws = [torch.from_numpy(rng.standard_normal((o, i)) / i ** 0.5) for i, o in zip(widths[:-1], widths[1:])]
    bs = [torch.from_numpy(0.1 * rng.standard_normal(o)) for o in widths[1:]]
    return MLPParams([w.to(device, dtype) for w in ws], [b.to(device, dtype) for b in bs], negative_slope=slope)


def _inputs(rng, B, widths, dx, dtype, device):
    dz = widths[0] - dx
    x, zr, zf = (torch.from_numpy(rng.standard_normal(s)).to(device, dtype) for s in [(B, dx), (B, dz), (B, dz)])
    t = torch.from_numpy(rng.random(B)).to(device, dtype)
    return x, zr, zf, t


def _f64cpu(critic):
    return critic._replace(weights=[w.detach().double().cpu() for w in critic.weights],
                           biases=[b.detach().double().cpu() for b in critic.biases])


def _rel(out, ref):
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    assert out.shape == ref.shape, (out.shape, ref.shape)
    return ((out - ref).norm() / max(ref.norm().item(), 1e-3)).item()


def _check_step(backend, cfg, rng, dtype, tol, **kw):
    B, widths, dx, po, slope = cfg
    critic = _critic(rng, widths, slope, dtype, DEV)
    x, zr, zf, t = _inputs(rng, B, widths, dx, dtype, DEV)
    gp = float(rng.uniform(1.0, 10.0))
    if kw:  # direct call of a backend function with extra options (tf32)
        from lsdm_fast.ops.critic_gp_triton import critic_gradient_penalty_triton
        out = critic_gradient_penalty_triton(critic, x, zr, zf, t, gp_weight=gp, penalty_over=po, **kw)
    else:
        out = critic_gradient_penalty(critic, x, zr, zf, t, gp_weight=gp, penalty_over=po, backend=backend)
        assert out.backend == backend
    ref = critic_gradient_penalty(_f64cpu(critic), *(v.double().cpu() for v in (x, zr, zf, t)), gp_weight=gp,
                                  penalty_over=po, backend="torch")
    errs = {"loss": _rel(out.loss, ref.loss), "wasserstein": _rel(out.wasserstein, ref.wasserstein),
            "penalty": _rel(out.penalty, ref.penalty)}
    assert len(out.weight_grads) == len(ref.weight_grads) == len(widths) - 1
    for l, (a, b) in enumerate(zip(out.weight_grads, ref.weight_grads)):
        assert a.dtype == dtype and a.device.type == DEV
        errs[f"dW{l}"] = _rel(a, b)
    for l, (a, b) in enumerate(zip(out.bias_grads, ref.bias_grads)):
        errs[f"db{l}"] = _rel(a, b)
    bad = {k: v for k, v in errs.items() if not v < tol}
    assert not bad, f"{backend} {dtype} exceeds {tol}: {bad} (all: {errs})"


def _check_score(backend, cfg, rng, dtype, tol):
    B, widths, dx, _, slope = cfg
    critic = _critic(rng, widths, slope, dtype, DEV)
    x, z, _, _ = _inputs(rng, B, widths, dx, dtype, DEV)
    s, gz = critic_score_grad(critic, x, z, backend=backend)
    sr, gzr = critic_score_grad(_f64cpu(critic), x.double().cpu(), z.double().cpu(), backend="torch")
    assert gz.shape == z.shape and gz.dtype == dtype
    assert _rel(s, sr) < tol and _rel(gz, gzr) < tol, (_rel(s, sr), _rel(gz, gzr))


# ---------------------------------------------------------------------------------- triton

def test_triton_backend_registered():
    assert not any(k.startswith("critic_gp") for k in IMPORT_ERRORS), IMPORT_ERRORS
    assert "triton" in available_backends("critic_gradient_penalty", DEV)
    assert "triton" in available_backends("critic_score_grad", DEV)


@pytest.mark.parametrize("cfg", CONFIGS, ids=CFG_IDS)
def test_triton_step_float32(cfg, rng):
    _check_step("triton", cfg, rng, torch.float32, 1e-4)


@pytest.mark.parametrize("cfg", CONFIGS[2::3], ids=CFG_IDS[2::3])
def test_triton_step_float64(cfg, rng):
    _check_step("triton", cfg, rng, torch.float64, 1e-10)


@pytest.mark.parametrize("cfg", CONFIGS[::2], ids=CFG_IDS[::2])
def test_triton_score_grad_float32(cfg, rng):
    _check_score("triton", cfg, rng, torch.float32, 1e-4)


def test_triton_score_grad_float64(rng):
    _check_score("triton", CONFIGS[5], rng, torch.float64, 1e-10)


@pytest.mark.parametrize("cfg", [CONFIGS[4], CONFIGS[8]], ids=[CFG_IDS[4], CFG_IDS[8]])
def test_triton_step_tf32(cfg, rng):
    """TF32 tensor cores on a GPU (documented tolerance 1e-2); the interpreter computes in full fp32."""
    _check_step("triton", cfg, rng, torch.float32, 1e-2, input_precision="tf32")


@needs_gpu
def test_triton_step_split_k_atomics(rng):
    """Row-split weight-gradient reduction with atomics (chosen automatically on a GPU for big batches)."""
    from lsdm_fast.ops.critic_gp_triton import critic_gradient_penalty_triton
    B, widths, dx = 300, [40, 130, 37, 1], 10
    critic = _critic(rng, widths, 0.2, torch.float32, DEV)
    x, zr, zf, t = _inputs(rng, B, widths, dx, torch.float32, DEV)
    out = critic_gradient_penalty_triton(critic, x, zr, zf, t, gp_weight=10.0, penalty_over="joint", split=5)
    ref = critic_gradient_penalty(_f64cpu(critic), *(v.double().cpu() for v in (x, zr, zf, t)), gp_weight=10.0,
                                  penalty_over="joint", backend="torch")
    for a, b in zip(out.weight_grads + out.bias_grads, ref.weight_grads + ref.bias_grads):
        assert _rel(a, b) < 1e-4


# ------------------------------------------------------------------------------------ cuda

def test_cuda_backend_registered_or_explains():
    assert "critic_gp_cuda" not in IMPORT_ERRORS, IMPORT_ERRORS
    if "cuda" in available_backends("critic_gradient_penalty", "cuda"):
        return
    critic = MLPParams([torch.randn(4, 3), torch.randn(1, 4)], [torch.randn(4), torch.randn(1)])
    x, z = torch.randn(2, 1), torch.randn(2, 2)
    with pytest.raises(RuntimeError, match="not available"):
        critic_gradient_penalty(critic, x, z, z, torch.rand(2), backend="cuda")


@needs_gpu
@pytest.mark.parametrize("cfg", CONFIGS, ids=CFG_IDS)
def test_cuda_step_float32(cfg, rng):
    _check_step("cuda", cfg, rng, torch.float32, 1e-4)


@needs_gpu
@pytest.mark.parametrize("cfg", CONFIGS, ids=CFG_IDS)
def test_cuda_step_float64(cfg, rng):
    _check_step("cuda", cfg, rng, torch.float64, 1e-10)


@needs_gpu
@pytest.mark.parametrize("cfg", CONFIGS, ids=CFG_IDS)
def test_cuda_score_grad(cfg, rng):
    _check_score("cuda", cfg, rng, torch.float32, 1e-4)
    _check_score("cuda", cfg, rng, torch.float64, 1e-10)


@needs_gpu
def test_cuda_step_large_batch(rng):
    _check_step("cuda", (1000, [42, 512, 512, 1], 10, "joint", 0.2), rng, torch.float32, 1e-4)
    _check_step("triton", (1000, [42, 512, 512, 1], 10, "latent", 0.2), rng, torch.float32, 1e-4)
