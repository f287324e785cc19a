"""Parity of the "triton" and "cuda" backends of the fused critic step with the float64
pure-PyTorch autograd reference (docs/design.md §4), on fresh random inputs.

Triton runs everywhere (TRITON_INTERPRET=1 on CPU, set by conftest.py); CUDA tests need a GPU.
Tolerances (relative error ||out - ref|| / ||ref||): float32 "ieee" 1e-4, float64 1e-10, and
the default float32 precision "tf32" (tensor cores; its norm path in 3xTF32) on a GPU: 1e-2, or 3x what the
design's TF32 arithmetic loses on the same inputs (tests/tf32_yardstick.py, emulated), whichever is larger;
float32 "ieee" likewise 1e-4 or 3x what PyTorch's own float32 step loses (at B = 4,096 on N(0, 1) real and fake
batches both lose ~2e-4 on the bias gradients, on the H200 and on a CPU alike). The
interpreter computes every tl.dot in exact float32 whatever the precision, so on the CPU the
TF32 code path is checked at the float32 tolerance, 1e-4. Differences of means (wasserstein,
bias gradients) can cancel, so the denominator is floored at 1e-3 (absolute error then)."""
from __future__ import annotations

import pytest
import torch

from lsdm_fast.ops import IMPORT_ERRORS, MLPParams, available_backends, critic_gradient_penalty, critic_score_grad
from lsdm_fast.ops import critic_gp_triton as triton_backend
from lsdm_fast.ops.critic_gp_triton import critic_gradient_penalty_triton, critic_score_grad_triton
from tf32_yardstick import TF32, emulated_score, emulated_step_errors, limits, step_errors

pytestmark = [pytest.mark.parity,
              pytest.mark.filterwarnings("ignore:Conversion of an array with ndim:DeprecationWarning")]

HAS_CUDA = torch.cuda.is_available()
DEV = "cuda" if HAS_CUDA else "cpu"
needs_gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
TF32_TOL = 1e-2 if HAS_CUDA else 1e-4  # see the module docstring

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
    (7, [9, 37, 1], 0, "joint", 0.2),  # no condition: stage 2's marginal critic h(z)
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


def _step(backend, critic, x, zr, zf, t, gp, po, **kw):
    if kw:  # direct call of the Triton backend with its options (input_precision, split)
        return critic_gradient_penalty_triton(critic, x, zr, zf, t, gp_weight=gp, penalty_over=po, **kw)
    out = critic_gradient_penalty(critic, x, zr, zf, t, gp_weight=gp, penalty_over=po, backend=backend)
    assert out.backend == backend
    return out


def _check_step(backend, cfg, rng, dtype, tol, **kw):
    B, widths, dx, po, slope = cfg
    critic = _critic(rng, widths, slope, dtype, DEV)
    x, zr, zf, t = _inputs(rng, B, widths, dx, dtype, DEV)
    gp = float(rng.uniform(1.0, 10.0))
    out = _step(backend, critic, x, zr, zf, t, gp, po, **kw)
    ref = critic_gradient_penalty(_f64cpu(critic), *(v.double().cpu() for v in (x, zr, zf, t)), gp_weight=gp,
                                  penalty_over=po, backend="torch")
    assert len(out.weight_grads) == len(ref.weight_grads) == len(widths) - 1
    assert all(a.dtype == dtype and a.device.type == DEV for a in out.weight_grads)
    errs = step_errors(out, ref, _rel)
    limit = _limits(critic, x, zr, zf, t, gp, po, ref, errs, dtype, tol, kw)
    bad = {k: v for k, v in errs.items() if not v < limit[k]}
    assert not bad, f"{backend} {dtype} {kw} exceeds {limit}: {bad} (all: {errs})"
    return errs


def _limits(critic, x, zr, zf, t, gp, po, ref, errs, dtype, tol, kw, float32_yardstick=True) -> dict[str, float]:
    """Each output's allowed error: `tol`, or on a GPU at TF32 3x what the design's TF32 arithmetic loses on the
    same inputs (emulated), or in exact float32 3x what PyTorch's own float32 step loses (tests/tf32_yardstick.py)."""
    if _tf32_on_gpu(dtype, tol, kw):
        return limits(tol, emulated_step_errors(critic, x, zr, zf, t, gp, po, ref, _rel))
    if float32_yardstick and dtype == torch.float32:
        return limits(tol, step_errors(critic_gradient_penalty(critic, x, zr, zf, t, gp_weight=gp, penalty_over=po,
                                                               backend="torch"), ref, _rel))
    return {k: tol for k in errs}


def _tf32_on_gpu(dtype, tol, kw) -> bool:
    """The default float32 precision (TF32 tensor cores) checked on a GPU."""
    return HAS_CUDA and dtype == torch.float32 and tol == TF32_TOL and kw.get("input_precision") != "ieee"


def _check_score(backend, cfg, rng, dtype, tol, **kw):
    B, widths, dx, _, slope = cfg
    critic = _critic(rng, widths, slope, dtype, DEV)
    x, z, _, _ = _inputs(rng, B, widths, dx, dtype, DEV)
    if kw:
        s, gz = critic_score_grad_triton(critic, x, z, **kw)
    else:
        s, gz = critic_score_grad(critic, x, z, backend=backend)
    sr, gzr = critic_score_grad(_f64cpu(critic), x.double().cpu(), z.double().cpu(), backend="torch")
    assert gz.shape == z.shape and gz.dtype == dtype
    lim_s = lim_g = tol
    if _tf32_on_gpu(dtype, tol, kw):
        es, eg = emulated_score(critic, x, z, TF32)
        lim_s, lim_g = (v for v in limits(tol, {"s": _rel(es, sr), "g": _rel(eg, gzr)}).values())
    assert _rel(s, sr) < lim_s and _rel(gz, gzr) < lim_g, (_rel(s, sr), _rel(gz, gzr), lim_s, lim_g)


# ---------------------------------------------------------------------------------- triton

def test_triton_backend_registered():
    assert not any(k.startswith("critic_gp") for k in IMPORT_ERRORS), IMPORT_ERRORS
    assert "triton" in available_backends("critic_gradient_penalty", DEV)
    assert "triton" in available_backends("critic_score_grad", DEV)


def test_triton_default_precision():
    """float32 runs TF32 (3xTF32 on the norm path) unless LSDM_TRITON_PRECISION says otherwise."""
    assert triton_backend._precision(None, torch.float32) == "tf32"
    assert triton_backend._precision("ieee", torch.float32) == "ieee"
    assert triton_backend._precision(None, torch.float64) == "ieee"
    assert triton_backend._grad_precision("tf32") == "tf32x3"
    with pytest.raises(ValueError, match="input_precision must be one of"):
        triton_backend._precision("bf16", torch.float32)


@pytest.mark.parametrize("cfg", CONFIGS, ids=CFG_IDS)
def test_triton_step_float32_ieee(cfg, rng):
    _check_step("triton", cfg, rng, torch.float32, 1e-4, input_precision="ieee")


@pytest.mark.parametrize("cfg", CONFIGS[1::2], ids=CFG_IDS[1::2])
def test_triton_step_float32_default_tf32(cfg, rng):
    """The entry point's default on float32: TF32 (1e-2 on a GPU, exact float32 in the interpreter)."""
    _check_step("triton", cfg, rng, torch.float32, TF32_TOL)


@pytest.mark.parametrize("cfg", CONFIGS[2::3], ids=CFG_IDS[2::3])
def test_triton_step_float64(cfg, rng):
    _check_step("triton", cfg, rng, torch.float64, 1e-10)


@pytest.mark.parametrize("cfg", CONFIGS[::2], ids=CFG_IDS[::2])
def test_triton_score_grad_float32(cfg, rng):
    _check_score("triton", cfg, rng, torch.float32, 1e-4, input_precision="ieee")
    _check_score("triton", cfg, rng, torch.float32, TF32_TOL)


def test_triton_score_grad_float64(rng):
    _check_score("triton", CONFIGS[5], rng, torch.float64, 1e-10)


@pytest.mark.skipif(HAS_CUDA, reason="on a GPU the real tile sets run in every test above")
@pytest.mark.parametrize("tiles", ["TILES_TC_SMALL", "TILES_TC_LARGE", "TILES_FMA"])
def test_triton_gpu_tile_sets_in_the_interpreter(rng, monkeypatch, tiles):
    """The interpreter normally runs its own tile set; run the GPU ones too, so that their
    indexing (row padding, column blocks, the row split) is checked numerically, not only compiled."""
    monkeypatch.setattr(triton_backend, "tiles_for", lambda *a: getattr(triton_backend, tiles))
    cfg = (70, [12, 130, 37, 1], 5, "latent", 0.2)
    dtype = torch.float64 if tiles == "TILES_FMA" else torch.float32
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    _check_step("triton", cfg, rng, dtype, tol, split=3)
    _check_step("triton", (7, [20, 5, 37, 130, 1], 5, "joint", 0.0), rng, dtype, tol)
    _check_score("triton", cfg, rng, dtype, tol)


@pytest.mark.parametrize("split", [2, 7])
def test_triton_step_row_split_is_deterministic(rng, split):
    """The weight-gradient sum split over row ranges (per-split partials, added in split order;
    no atomics): within tolerance of the reference, and two runs give the same bits."""
    B, widths, dx = 70, [12, 37, 20, 1], 5
    critic = _critic(rng, widths, 0.2, torch.float32, DEV)
    x, zr, zf, t = _inputs(rng, B, widths, dx, torch.float32, DEV)
    outs = [critic_gradient_penalty_triton(critic, x, zr, zf, t, gp_weight=10.0, penalty_over="joint", split=split)
            for _ in range(2)]
    ref = critic_gradient_penalty(_f64cpu(critic), *(v.double().cpu() for v in (x, zr, zf, t)), gp_weight=10.0,
                                  penalty_over="joint", backend="torch")
    errs = step_errors(outs[0], ref, _rel)
    limit = _limits(critic, x, zr, zf, t, 10.0, "joint", ref, errs, torch.float32, TF32_TOL, {},
                    float32_yardstick=False)
    bad = {k: v for k, v in errs.items() if not v < limit[k]}
    assert not bad, f"exceeds {limit}: {bad} (all: {errs})"
    for a, b in zip(outs[0].weight_grads + outs[0].bias_grads + [outs[0].loss],
                    outs[1].weight_grads + outs[1].bias_grads + [outs[1].loss]):
        assert torch.equal(a, b)


@needs_gpu
@pytest.mark.parametrize("B", [300, 4096])
def test_triton_step_large_batch_on_gpu(rng, B):
    """Both tensor-core tile sets (small and large batch), the automatic row split, determinism."""
    cfg = (B, [42, 512, 512, 1], 10, "latent", 0.2)
    _check_step("triton", cfg, rng, torch.float32, 1e-2)
    _check_step("triton", cfg, rng, torch.float32, 1e-4, input_precision="ieee")
    critic = _critic(rng, cfg[1], 0.2, torch.float32, DEV)
    x, zr, zf, t = _inputs(rng, B, cfg[1], 10, torch.float32, DEV)
    a, b = (critic_gradient_penalty(critic, x, zr, zf, t, backend="triton") for _ in range(2))
    assert all(torch.equal(u, v) for u, v in zip(a.weight_grads + a.bias_grads, b.weight_grads + b.bias_grads))


@needs_gpu
def test_triton_step_captures_in_a_cuda_graph(rng):
    """No host synchronisation or host-side data dependence: the step records into a CUDA graph,
    and replaying it after the inputs change in place gives the eager result for the new inputs."""
    B, widths, dx = 256, [26, 256, 256, 1], 10
    critic = _critic(rng, widths, 0.2, torch.float32, DEV)
    x, zr, zf, t = _inputs(rng, B, widths, dx, torch.float32, DEV)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        critic_gradient_penalty(critic, x, zr, zf, t, backend="triton")  # compile outside the capture
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = critic_gradient_penalty(critic, x, zr, zf, t, backend="triton")
    for v, new in zip((x, zr, zf, t), _inputs(rng, B, widths, dx, torch.float32, DEV)):
        v.copy_(new)
    graph.replay()
    ref = critic_gradient_penalty(critic, x, zr, zf, t, backend="triton")
    for a, b in zip(out.weight_grads + out.bias_grads + [out.loss], ref.weight_grads + ref.bias_grads + [ref.loss]):
        assert torch.equal(a, b)


@needs_gpu
def test_stage2_with_the_tf32_step_tracks_float32(rng):
    """A short seeded stage-2 run with the Triton TF32 step against the pure-PyTorch float32 step."""
    from lsdm_fast.config import MatchingConfig
    from lsdm_fast.models import Critic, Generator
    from lsdm_fast.stages import train_joint_matching
    from lsdm_fast.state import Stage, TrainingState

    def run(backend):
        torch.manual_seed(0)
        gen, critic = Generator(8, 10, 8, (64, 64)).to(DEV), Critic(10, 8, (64, 64)).to(DEV)
        x = torch.eye(10, device=DEV)[torch.arange(200, device=DEV) % 10]
        z = torch.randn(200, 8, device=DEV) + x[:, :8]
        cfg = MatchingConfig(generator_hidden=(64, 64), critic_hidden=(64, 64), steps=10, critic_steps=3,
                             batch_size=64, backend=backend)
        state = TrainingState(None, None, gen, critic, torch.Generator(device=DEV).manual_seed(1),
                              stage=Stage.MATCHING)
        train_joint_matching(state, x, z, cfg, progress=False)
        return state.history

    ref, got = run("torch"), run("triton")
    assert got["backend"] == "triton"
    for key in ("critic_loss", "wasserstein", "penalty", "generator_loss"):
        a, b = torch.tensor(got[key]), torch.tensor(ref[key])
        assert ((a - b).norm() / b.norm().clamp_min(1e-3)).item() < 2e-2, (key, got[key], ref[key])


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
@pytest.mark.parametrize("precision, tol", [("tf32", 1e-2), ("ieee", 1e-4)])  # tf32: the CUDA default
@pytest.mark.parametrize("cfg", CONFIGS, ids=CFG_IDS)
def test_cuda_step_float32(cfg, rng, precision, tol, monkeypatch):
    monkeypatch.setenv("LSDM_CUDA_PRECISION", precision)
    _check_step("cuda", cfg, rng, torch.float32, tol)


@needs_gpu
@pytest.mark.parametrize("cfg", CONFIGS, ids=CFG_IDS)
def test_cuda_step_float64(cfg, rng):
    _check_step("cuda", cfg, rng, torch.float64, 1e-10)


@needs_gpu
@pytest.mark.parametrize("cfg", CONFIGS, ids=CFG_IDS)
def test_cuda_score_grad(cfg, rng, monkeypatch):
    _check_score("cuda", cfg, rng, torch.float32, 1e-2)  # default: TF32
    _check_score("cuda", cfg, rng, torch.float64, 1e-10)
    monkeypatch.setenv("LSDM_CUDA_PRECISION", "ieee")
    _check_score("cuda", cfg, rng, torch.float32, 1e-4)


@needs_gpu
def test_cuda_step_large_batch(rng):
    _check_step("cuda", (1000, [42, 512, 512, 1], 10, "joint", 0.2), rng, torch.float32, 1e-2)  # default: TF32
