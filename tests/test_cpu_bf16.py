"""The cpp critic ops' bf16 matmul precision (precision="bf16", $LSDM_CPU_MATMUL_PRECISION; docs/design.md §4,
"Precision") and lsdm_fast.precision.cpu_has_fast_bf16.

Both bf16 paths are checked wherever the suite runs: the CPU's bf16 units (MKL's cblas_gemm_bf16bf16f32, where
cpu_has_fast_bf16() and the MKL function exist) and the float32 emulation every other CPU runs (bf16 GEMMs on
the rounded operands, bf16x3 GEMMs as float32 ones).

- Wiring: the kernel against a float32 re-computation in PyTorch of the same plan (each GEMM group's operands
  rounded to bf16, or split hi + lo for bf16x3, as the plan says; bf16x3 and float32 agree to ~1e-5): 3e-4. Measured: at most 7.5e-5 (a float32
  value that lands on the other side of a bf16 rounding boundary in one of the two computations), while any
  one group computed in the wrong mode (bf16 for float32 or bf16x3, or the reverse) moves some output of these
  shapes by 1.9e-3 or more.
- Accuracy against float64 (bench/bf16_critic_error.py measures the same): the plan runs the forward in bf16x3
  (about 1e-5 relative: the activation signs every sweep reuses), the chain of g_0 = grad_u f in float32 (so the
  penalty and ||g|| - 1 are as accurate as the signs) and the gradient-only GEMMs in bf16 (8 bits: about 2e-3
  per product). Tolerances: loss terms and penalty 1e-4, |‖g‖ - 1| per row 1e-4 (measured at most 1.7e-5);
  every weight and bias gradient, and the generator's d mean f / dz, 1.5e-2 (measured 1.4e-3 to 4.3e-3).
  Denominators are floored at 1e-3 as in the TF32 GPU tests (tested there at 1e-2). A sign of a pre-activation
  within the bf16x3 error of zero (~1e-5 relative) may flip between paths and move a small batch's gradient or
  penalty by more: the small problems are drawn with every float64 pre-activation at least 1e-4 of its layer's
  spread away from zero (a deterministic seed scan), the wiring tests' 1e-5; the two large ones average a flip
  over their rows.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lsdm_fast import _ext, precision as lsdm_precision
from lsdm_fast.ops import MLPParams, available_backends, critic_gradient_penalty, critic_score_grad
from lsdm_fast.ops import _backend_util, _registry

pytestmark = pytest.mark.parity
needs_cpp = pytest.mark.skipif("cpp" not in available_backends("critic_gradient_penalty", "cpu"),
                               reason="the C++ extension is not built")
if "cpp" in available_backends("critic_gradient_penalty", "cpu"):
    from lsdm_fast.ops import critic_gp_cpp
PATHS = ["native", "emulated"]
GRAD_TOL, SCORE_TOL, TERM_TOL, WIRING_TOL = 1.5e-2, 1.5e-2, 1e-4, 3e-4


@pytest.fixture(autouse=True)
def no_precision_env(monkeypatch):
    monkeypatch.delenv(_backend_util.CPU_PRECISION_ENV, raising=False)
    monkeypatch.delenv(_backend_util.PRECISION_ENV, raising=False)


@pytest.fixture(params=PATHS)
def bf16_path(request, monkeypatch):
    """Runs the test on the CPU's bf16 units (skipped where there are none) and on the float32 emulation."""
    if request.param == "native":
        if not critic_gp_cpp.native_bf16():
            pytest.skip("no native bf16 GEMM here (cpu_has_fast_bf16() false or no MKL bf16 function): emulated only")
    else:
        monkeypatch.setattr(critic_gp_cpp, "FORCE_EMULATION", True)
        assert not critic_gp_cpp.native_bf16()
    return request.param


# --------------------------------------------------------------------------- problems

def _critic(rng, widths, slope=0.2, gain=1.0):
    ws = [torch.from_numpy(rng.standard_normal((o, i)) * gain / math.sqrt(i)).float() for i, o in zip(widths, widths[1:])]
    bs = [torch.from_numpy(0.1 * rng.standard_normal(o)).float() for o in widths[1:]]
    return MLPParams(ws, bs, "relu" if slope == 0 else "leaky_relu", slope if slope else 0.2)


def _batch(rng, B, dx, dz):
    x = torch.from_numpy(rng.standard_normal((B, dx))).float()
    zr = torch.from_numpy(rng.standard_normal((B, dz))).float()
    zf = torch.from_numpy(0.7 * rng.standard_normal((B, dz)) + 0.3).float()
    return x, zr, zf, torch.from_numpy(rng.random(B)).float()


def _margin(critic, x, zr, zf, t):
    """The smallest |pre-activation| of the real, fake and interpolated rows in float64, over its layer's
    standard deviation."""
    tt = t[:, None]
    u = torch.cat([torch.cat([x, zr], 1), torch.cat([x, zf], 1), torch.cat([x, tt * zr + (1 - tt) * zf], 1)]).double()
    worst = math.inf
    for w, b in zip(critic.weights[:-1], critic.biases[:-1]):
        a = u @ w.double().T + b.double()
        worst = min(worst, (a.abs().min() / a.std()).item())
        u = torch.where(a > 0, a, critic.negative_slope * a if critic.activation == "leaky_relu" else 0 * a)
    return worst


def _problem(seed, B, widths, dx, slope=0.2, margin=None):
    """A critic and batch from the first seed >= `seed` whose pre-activations keep `margin` (None: the first
    seed)."""
    for s in range(seed, seed + 1000):
        rng = np.random.default_rng(s)
        critic = _critic(rng, widths, slope)
        x, zr, zf, t = _batch(rng, B, dx, widths[0] - dx)
        if margin is None or _margin(critic, x, zr, zf, t) > margin:
            return critic, x, zr, zf, t
    raise AssertionError(f"no seed with a margin of {margin}: the problem is too large for this scan")


def _f64(critic):
    return critic._replace(weights=[w.double() for w in critic.weights], biases=[b.double() for b in critic.biases])


def _rel(out, ref):
    out, ref = out.detach().double(), ref.detach().double()
    assert out.shape == ref.shape
    return ((out - ref).norm() / max(ref.norm().item(), 1e-3)).item()


# (batch, widths, dx, penalty_over, slope): batch 1 to 256, 2 to 4 linear layers, odd widths, both norms. The
# first five are small enough to draw with a sign margin; the last two average any flip over their rows.
SHAPES = [
    (1, [12, 37, 1], 5, "joint", 0.2),
    (7, [12, 130, 1], 5, "latent", 0.0),
    (33, [12, 37, 5, 1], 3, "latent", 0.2),
    (33, [40, 130, 37, 1], 17, "joint", 0.2),
    (20, [20, 37, 130, 5, 1], 5, "joint", 0.0),
    (64, [42, 256, 256, 1], 10, "joint", 0.2),
    (256, [42, 128, 128, 1], 10, "latent", 0.2),
]
IDS = [f"B{b}-{'x'.join(map(str, w))}-{po}-s{s}" for b, w, _, po, s in SHAPES]


def _accuracy_margin(B, widths):
    """10x the bf16x3 forward's error (~1e-5 relative) for the small shapes; None (any draw) for the large."""
    return 1e-4 if B * sum(widths[1:-1]) < 10000 else None


# --------------------------------------------------------------------------- the same plan in PyTorch

def _operand(a, mode):
    """What a GEMM of `mode` multiplies: [a] (float32), [bf16(a)], or [hi, lo] (bf16x3), as float64."""
    if mode == 0:
        return [a.double()]
    hi = a.bfloat16().float()
    return [hi.double()] if mode == 1 else [hi.double(), (a - hi).bfloat16().double()]


def _mm(a, b, mode):
    """float32 result of a @ b in `mode` (products exact in float64, then rounded once to float32)."""
    pa, pb = _operand(a, mode), _operand(b, mode)
    out = pa[0] @ pb[0]
    if mode == 2:
        out = out + pa[0] @ pb[1] + pa[1] @ pb[0]
    return out.float()


def emulate_step(critic, x, zr, zf, t, gp, penalty_over, plan):
    """The cpp critic step (csrc/critic_gp_cpu.cpp) with each GEMM group in the plan's mode, float32 between."""
    fwd_rf, fwd_i, bwd_rf, bwd_i, rsweep, dw = plan
    W, b, s, B, L = critic.weights, critic.biases, critic.negative_slope, x.shape[0], len(critic.weights)
    s = s if critic.activation == "leaky_relu" else 0.0
    rows = lambda A, M, m0, m1: torch.cat([_mm(A[:2 * B], M, m0), _mm(A[2 * B:], M, m1)])  # noqa: E731
    tt = t[:, None]
    U = [torch.cat([torch.cat([x, zr], 1), torch.cat([x, zf], 1), torch.cat([x, tt * zr + (1 - tt) * zf], 1)])]
    for l in range(L - 1):
        a = rows(U[-1], W[l].T, fwd_rf, fwd_i) + b[l]
        U.append(torch.where(a > 0, a, s * a))
    f = U[-1][:2 * B] @ W[-1][0] + b[-1][0]
    wass = f[:B].mean() - f[B:].mean()
    seed = torch.cat([torch.full((B,), -1.0 / B), torch.full((B,), 1.0 / B), torch.ones(B)])[:, None]
    mask = [None] + [torch.where(u > 0, 1.0, s) for u in U[1:]]
    D = [None] * L
    D[L - 1] = mask[L - 1] * W[-1][0] * seed
    for l in range(L - 1, 1, -1):
        D[l - 1] = rows(D[l], W[l - 1], bwd_rf, bwd_i) * mask[l - 1]
    g0 = _mm(D[1][2 * B:], W[0], bwd_i)
    c0 = x.shape[1] if penalty_over == "latent" else 0
    nrm = g0[:, c0:].double().norm(dim=1)
    pen = ((nrm - 1) ** 2).mean()
    k = torch.where(nrm > 0, gp * 2 * (nrm - 1) / (B * nrm), 0).float()[:, None]
    R = [torch.cat([torch.zeros(B, c0), k * g0[:, c0:]], 1)]
    for l in range(1, L):
        R.append(_mm(R[-1], W[l - 1].T, rsweep) * mask[l][2 * B:])
    M = [torch.cat([U[l][:2 * B], R[l]]) for l in range(L)]
    gw = [_mm(D[l].T, M[l - 1], dw) for l in range(1, L)]
    gw.append((M[L - 1] * seed).sum(0, keepdim=True))
    gb = [D[l][:2 * B].sum(0) for l in range(1, L)] + [torch.zeros(1)]
    return -wass + gp * pen, wass, pen, gw, gb


# --------------------------------------------------------------------------- cpu_has_fast_bf16

def test_cpu_has_fast_bf16_asks_torch_else_reads_the_cpu_flags(monkeypatch, tmp_path):
    lsdm_precision.cpu_has_fast_bf16.cache_clear()
    try:
        answer = lsdm_precision.cpu_has_fast_bf16()
        assert isinstance(answer, bool)
        if all(hasattr(torch.cpu, f) for f in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")):
            assert answer == (torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
        # torch without the private queries: /proc/cpuinfo's flags decide
        for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
            monkeypatch.delattr(torch.cpu, name, raising=False)
        for flags, want in (("fpu avx512f avx512_bf16 amx_tile", True), ("fpu sse2 avx2 amx_bf16", True),
                            ("fpu sse2 avx2 avx512f avx512_vnni", False)):
            info = tmp_path / "cpuinfo"
            info.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
            monkeypatch.setattr(lsdm_precision, "CPUINFO", str(info))
            lsdm_precision.cpu_has_fast_bf16.cache_clear()
            assert lsdm_precision.cpu_has_fast_bf16() is want, flags
        monkeypatch.setattr(lsdm_precision, "CPUINFO", str(tmp_path / "missing"))  # not Linux: no flags, no bf16
        lsdm_precision.cpu_has_fast_bf16.cache_clear()
        assert lsdm_precision.cpu_has_fast_bf16() is False
    finally:
        lsdm_precision.cpu_has_fast_bf16.cache_clear()


def test_cpu_flags_reads_arm_features(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 sve\n")
    assert lsdm_precision.cpu_flags(str(info)) == {"fp", "asimd", "bf16", "sve"}


# --------------------------------------------------------------------------- selection and refusal

def _small():
    return _problem(0, 5, [9, 11, 1], 4)


@needs_cpp
def test_precision_reaches_the_cpp_backend_and_the_environment_default(monkeypatch):
    critic, x, zr, zf, t = _small()
    run = lambda **kw: critic_gradient_penalty(critic, x, zr, zf, t, backend="cpp", **kw)  # noqa: E731
    ieee, bf16 = run(precision="ieee"), run(precision="bf16")
    assert not torch.equal(ieee.weight_grads[1], bf16.weight_grads[1])  # bf16 ran
    assert torch.equal(run().weight_grads[1], ieee.weight_grads[1])  # the default: float32
    for gpu_only in ("tf32", "tf32x3"):  # the GPU backends' precisions: float32 on the CPU, as before
        assert torch.equal(run(precision=gpu_only).weight_grads[1], ieee.weight_grads[1])
    monkeypatch.setenv("LSDM_CPU_MATMUL_PRECISION", "bf16")
    assert torch.equal(run().weight_grads[1], bf16.weight_grads[1])
    assert torch.equal(run(precision="ieee").weight_grads[1], ieee.weight_grads[1])  # the argument wins
    s_env = critic_score_grad(critic, x, zr, backend="cpp")[1]
    assert torch.equal(s_env, critic_score_grad(critic, x, zr, backend="cpp", precision="bf16")[1])
    monkeypatch.setenv("LSDM_MATMUL_PRECISION", "ieee")  # the GPU backends' variable does not reach cpp
    assert torch.equal(run().weight_grads[1], bf16.weight_grads[1])
    monkeypatch.setenv("LSDM_CPU_MATMUL_PRECISION", "tf32")
    with pytest.raises(ValueError, match=r"LSDM_CPU_MATMUL_PRECISION must be one of \('ieee', 'bf16'\), got 'tf32'"):
        run()


@needs_cpp
def test_a_bad_environment_value_fails_when_stage_2_resolves_its_backends(monkeypatch):
    from lsdm_fast.matching_step import resolve_backends

    assert resolve_backends("cpp", torch.device("cpu"), 3)["critic_gradient_penalty"] == "cpp"
    monkeypatch.setenv("LSDM_CPU_MATMUL_PRECISION", "bf8")
    with pytest.raises(ValueError, match="LSDM_CPU_MATMUL_PRECISION must be one of"):
        resolve_backends("auto", torch.device("cpu"), 3)
    assert resolve_backends("torch", torch.device("cpu"), 3)["critic_score_grad"] == "torch"  # not read there


@needs_cpp
def test_auto_runs_bf16_on_cpp_and_float64_stays_float64():
    critic, x, zr, zf, t = _small()
    out = critic_gradient_penalty(critic, x, zr, zf, t, backend="auto", precision="bf16")
    assert out.backend == "cpp"
    c64, args64 = _f64(critic), [a.double() for a in (x, zr, zf, t)]
    ref = critic_gradient_penalty(c64, *args64, backend="torch")
    got = critic_gradient_penalty(c64, *args64, backend="cpp", precision="bf16")
    for a, b in zip(got.weight_grads + got.bias_grads, ref.weight_grads + ref.bias_grads):
        assert a.dtype == torch.float64 and _rel(a, b) < 1e-10
    s, gz = critic_score_grad(c64, args64[0], args64[1], backend="cpp", precision="bf16")
    assert _rel(gz, critic_score_grad(c64, args64[0], args64[1], backend="torch")[1]) < 1e-10


@pytest.mark.parametrize("backend", [b for b in available_backends("critic_gradient_penalty", "cpu") if b != "cpp"])
def test_backends_without_bf16_refuse_it(backend):
    critic, x, zr, zf, t = _small()
    msg = rf"precision='bf16' is not taken by backend '{backend}' for 'critic_gradient_penalty' \(only by 'cpp'\)"
    with pytest.raises(ValueError, match=msg):
        critic_gradient_penalty(critic, x, zr, zf, t, backend=backend, precision="bf16")
    with pytest.raises(ValueError, match="is not taken by backend"):
        critic_score_grad(critic, x, zr, backend=backend, precision="bf16")


def test_bf16_is_declared_by_cpp_only():
    for op in ("critic_gradient_penalty", "critic_score_grad"):
        takers = [b for b, impl in _registry._IMPLS[op].items() if "bf16" in impl.precisions]
        assert takers == (["cpp"] if "cpp" in _registry.implemented_backends(op) else [])
    for op in ("encode", "generate"):
        assert not any("bf16" in impl.precisions for impl in _registry._IMPLS[op].values())


@needs_cpp
def test_the_extension_checks_the_plan():
    ext = _ext.cpu_extension()
    critic, x, zr, zf, t = _small()
    args = (list(critic.weights), list(critic.biases), x, zr, zf, t, 10.0, "joint", 0.2)
    with pytest.raises(RuntimeError, match="the matmul plan needs 6 modes"):
        ext.critic_gp_cpu(*args, [1, 1], False)
    with pytest.raises(RuntimeError, match="matmul mode 3 is not 0"):
        ext.critic_gp_cpu(*args, [0, 0, 0, 3, 0, 0], False)
    with pytest.raises(RuntimeError, match="the matmul plan needs 2 modes"):
        ext.critic_score_grad_cpu(list(critic.weights), list(critic.biases), x, zr, 0.2, [1], False)


# --------------------------------------------------------------------------- wiring

@needs_cpp
@pytest.mark.parametrize("plan", [(1, 1, 1, 1, 1, 1), (2, 2, 2, 2, 2, 2), (1, 2, 0, 2, 1, 0), (2, 0, 1, 0, 2, 1)],
                         ids=lambda p: "".join(map(str, p)))
@pytest.mark.parametrize("B,widths,dx,po,slope", SHAPES[:5], ids=IDS[:5])
def test_each_gemm_group_runs_in_its_mode(bf16_path, plan, B, widths, dx, po, slope):
    critic, x, zr, zf, t = _problem(11, B, widths, dx, slope, margin=1e-5)  # float32 accumulation order: ~1e-7
    gp = 7.0
    loss, wass, pen, gw, gb = _ext.cpu_extension().critic_gp_cpu(
        list(critic.weights), list(critic.biases), x, zr, zf, t, gp, po, 0.0 if slope == 0 else slope, list(plan),
        critic_gp_cpp.native_bf16())
    want = emulate_step(critic, x, zr, zf, t, gp, po, plan)
    errs = {"loss": _rel(loss, want[0]), "wass": _rel(wass, want[1]), "pen": _rel(pen, want[2])}
    errs.update({f"dW{i}": _rel(a, b) for i, (a, b) in enumerate(zip(gw, want[3]))})
    errs.update({f"db{i}": _rel(a, b) for i, (a, b) in enumerate(zip(gb, want[4]))})
    bad = {k: v for k, v in errs.items() if not v < WIRING_TOL}
    assert not bad, (bad, errs)


# --------------------------------------------------------------------------- accuracy against float64

@needs_cpp
@pytest.mark.parametrize("B,widths,dx,po,slope", SHAPES, ids=IDS)
def test_bf16_step_against_float64(bf16_path, B, widths, dx, po, slope):
    critic, x, zr, zf, t = _problem(100 + B, B, widths, dx, slope, _accuracy_margin(B, widths))
    gp = 10.0
    ref = critic_gradient_penalty(_f64(critic), *(a.double() for a in (x, zr, zf, t)), gp_weight=gp,
                                  penalty_over=po, backend="torch")
    out = critic_gradient_penalty(critic, x, zr, zf, t, gp_weight=gp, penalty_over=po, backend="cpp",
                                  precision="bf16")
    assert out.loss.dtype == torch.float32
    terms = {"loss": _rel(out.loss, ref.loss), "wasserstein": _rel(out.wasserstein, ref.wasserstein),
             "penalty": _rel(out.penalty, ref.penalty)}
    grads = {f"dW{i}": _rel(a, b) for i, (a, b) in enumerate(zip(out.weight_grads, ref.weight_grads))}
    grads.update({f"db{i}": _rel(a, b) for i, (a, b) in enumerate(zip(out.bias_grads, ref.bias_grads))})
    assert max(terms.values()) < TERM_TOL, terms
    assert max(grads.values()) < GRAD_TOL, grads
    # |‖g‖ - 1| of each interpolated row: the penalty of a batch-1 call is (‖g‖ - 1)^2
    rows = range(0, B, max(1, B // 8))
    def one(c, i, **kw):
        args = (a[i:i + 1].to(c.weights[0].dtype) for a in (x, zr, zf, t))
        return critic_gradient_penalty(c, *args, penalty_over=po, **kw).penalty.double().sqrt()

    got = torch.stack([one(critic, i, backend="cpp", precision="bf16") for i in rows])
    want = torch.stack([one(_f64(critic), i, backend="torch") for i in rows])
    assert _rel(got, want) < TERM_TOL


@needs_cpp
@pytest.mark.parametrize("B,widths,dx,po,slope", SHAPES, ids=IDS)
def test_bf16_score_grad_against_float64(bf16_path, B, widths, dx, po, slope):
    critic, x, z, _, _ = _problem(200 + B, B, widths, dx, slope, _accuracy_margin(B, widths))
    s_ref, g_ref = critic_score_grad(_f64(critic), x.double(), z.double(), backend="torch")
    s, gz = critic_score_grad(critic, x, z, backend="cpp", precision="bf16")
    assert gz.dtype == torch.float32 and gz.shape == z.shape
    assert _rel(s, s_ref) < TERM_TOL and _rel(gz, g_ref) < SCORE_TOL, (_rel(s, s_ref), _rel(gz, g_ref))
