"""The CUDA kernels' numerics, checked on a CPU: kernels/*.cu compiled with g++ against the
emulated CUDA subset in tests/cuda_emu (fibers for threads, wmma with TF32 / bf16 / fp16
rounding, cp.async as plain copies with the hardware's alignment checks) and called through
ctypes with CPU tensors. Compared, like the GPU parity tests, with the float64 PyTorch reference
on fresh random inputs by relative error ||out - ref|| / ||ref||.

This checks the kernels' logic (tiling, bounds, layouts, pipelining order, barriers, reductions)
and their rounding; not the hardware (timing, real fragment layouts, memory model). Fiber order
is reversed in some cases so that a missing barrier reads unwritten (NaN-poisoned) memory.

Tolerances: float64 1e-10; float32 "ieee" and "tf32x3" 1e-4; "tf32" 1e-2 (measured about 5e-4);
bf16 / fp16 generate and encode 3e-2; uint8 within one level of the reference's rounding."""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch

from lsdm_fast.ops import MLPParams, critic_gradient_penalty, critic_score_grad, encode, generate, philox_normal
from lsdm_fast.ops.encode_generate_cuda import MATH_CODE, _layers, pack_layers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMU = os.path.join(ROOT, "tests", "cuda_emu")
SOURCES = [os.path.join(ROOT, "kernels", f) for f in ("critic_gp.cu", "mlp_fused.cu")]
HOST = [os.path.join(EMU, f) for f in ("emu_core.cpp", "entry_critic.cpp", "entry_mlp.cpp")]
PRECISION = {"ieee": 0, "tf32": 1, "tf32x3": 2}
DTYPE_CODE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2, torch.uint8: 3, torch.float64: 4,
              torch.int64: 5, torch.int32: 6}
P = ctypes.c_void_p

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not installed")


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    so = str(tmp_path_factory.mktemp("cuda_emu") / "lsdm_cuda_emu.so")
    cmd = ["g++", "-std=c++20", "-O1", "-shared", "-fPIC", f"-I{EMU}/include", f"-I{ROOT}/kernels",
           "-x", "c++", *SOURCES, "-x", "none", *HOST, "-o", so]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"the emulation build failed:\n{proc.stderr[-4000:]}"
    lib = ctypes.CDLL(so)
    lib.emu_critic_scratch.restype = ctypes.c_longlong
    yield lib
    lib.emu_set_order(0)


def _rel(out, ref):
    out, ref = out.detach().double(), ref.detach().double()
    assert out.shape == ref.shape, (out.shape, ref.shape)
    return ((out - ref).norm() / max(ref.norm().item(), 1e-3)).item()


def _ptrs(ts):
    return (P * len(ts))(*[t.data_ptr() for t in ts])


def _ints(xs):
    return (ctypes.c_int * len(xs))(*xs)


# ------------------------------------------------------------------------------------ critic

# (batch, widths N_0..N_L, dx, penalty_over, slope): batches 1..300, 2-4 layers, odd widths,
# widths past one 128-wide tile, both norms, ReLU and LeakyReLU.
CRITIC_CASES = [
    (1, [12, 37, 1], 5, "joint", 0.2),
    (7, [26, 130, 1], 10, "latent", 0.0),
    (33, [40, 130, 37, 1], 17, "latent", 0.2),
    (5, [26, 5, 37, 130, 1], 10, "joint", 0.0),
    (300, [42, 64, 49, 1], 10, "joint", 0.2),
    (33, [32, 37, 1], 0, "joint", 0.2),  # no condition: stage 2's marginal critic h(z)
]
CRITIC_IDS = [f"B{b}-{'x'.join(map(str, w))}-dx{dx}-{po}-s{s}" for b, w, dx, po, s in CRITIC_CASES]
MODES = [(torch.float64, "ieee", 1e-10), (torch.float32, "ieee", 1e-4), (torch.float32, "tf32x3", 1e-4),
         (torch.float32, "tf32", 1e-2)]


def _critic_setup(rng, case, dtype):
    B, widths, dx, _, slope = case
    ws = [torch.from_numpy(rng.standard_normal((o, i)) / i ** 0.5).to(dtype) for i, o in zip(widths[:-1], widths[1:])]
    bs = [torch.from_numpy(0.1 * rng.standard_normal(o)).to(dtype) for o in widths[1:]]
    dz = widths[0] - dx
    x, zr, zf = (torch.from_numpy(rng.standard_normal(s)).to(dtype) for s in [(B, dx), (B, dz), (B, dz)])
    t = torch.from_numpy(rng.random(B)).to(dtype)
    ref_critic = MLPParams([w.double() for w in ws], [b.double() for b in bs], negative_slope=slope)
    return ws, bs, x, zr, zf, t, ref_critic


@pytest.mark.parametrize("dtype,precision,tol", MODES, ids=[f"{str(d)[6:]}-{p}" for d, p, _ in MODES])
@pytest.mark.parametrize("case", CRITIC_CASES, ids=CRITIC_IDS)
def test_critic_step_and_score(lib, rng, case, dtype, precision, tol):
    B, widths, dx, po, slope = case
    ws, bs, x, zr, zf, t, ref_critic = _critic_setup(rng, case, dtype)
    L = len(ws)
    gp = float(rng.uniform(1, 10))
    lib.emu_set_order(int(rng.integers(0, 2)))
    nan = float("nan")
    scratch = torch.full((lib.emu_critic_scratch(_ints(widths), L, B, 1),), nan, dtype=dtype)
    gw, gb = [torch.full_like(w, nan) for w in ws], [torch.full_like(b, nan) for b in bs]
    out3 = torch.full((3,), nan, dtype=dtype)
    step = lib.emu_critic_step_f32 if dtype == torch.float32 else lib.emu_critic_step_f64
    rc = step(P(x.data_ptr()), P(zr.data_ptr()), P(zf.data_ptr()), P(t.data_ptr()), _ptrs(ws), _ptrs(bs),
              _ints(widths), L, B, dx, ctypes.c_double(slope), ctypes.c_double(gp), int(po == "latent"),
              PRECISION[precision], P(scratch.data_ptr()), _ptrs(gw), _ptrs(gb), P(out3.data_ptr()))
    assert rc == 0, f"critic_gp_step returned cudaError {rc}"
    ref = critic_gradient_penalty(ref_critic, x.double(), zr.double(), zf.double(), t.double(), gp_weight=gp,
                                  penalty_over=po, backend="torch")
    errs = {"loss": _rel(out3[0], ref.loss), "wasserstein": _rel(out3[1], ref.wasserstein),
            "penalty": _rel(out3[2], ref.penalty)}
    errs.update({f"dW{l}": _rel(a, b) for l, (a, b) in enumerate(zip(gw, ref.weight_grads))})
    errs.update({f"db{l}": _rel(a, b) for l, (a, b) in enumerate(zip(gb, ref.bias_grads))})

    scratch = torch.full((lib.emu_critic_scratch(_ints(widths), L, B, 0),), nan, dtype=dtype)
    dz, score = torch.full_like(zr, nan), torch.full((1,), nan, dtype=dtype)
    fn = lib.emu_critic_score_f32 if dtype == torch.float32 else lib.emu_critic_score_f64
    rc = fn(P(x.data_ptr()), P(zr.data_ptr()), _ptrs(ws), _ptrs(bs), _ints(widths), L, B, dx, ctypes.c_double(slope),
            PRECISION[precision], P(scratch.data_ptr()), P(dz.data_ptr()), P(score.data_ptr()))
    assert rc == 0, f"critic_score_grad returned cudaError {rc}"
    s_ref, dz_ref = critic_score_grad(ref_critic, x.double(), zr.double(), backend="torch")
    errs.update(score=_rel(score[0], s_ref), dz=_rel(dz, dz_ref))
    bad = {k: v for k, v in errs.items() if not v < tol}
    assert not bad, f"{dtype} {precision}: {bad} exceed {tol} (all: {errs})"


def test_critic_step_is_deterministic(lib, rng):
    """Same inputs, same bits: fixed-order reductions (and either fiber order)."""
    case = CRITIC_CASES[4]
    ws, bs, x, zr, zf, t, _ = _critic_setup(rng, case, torch.float32)
    B, widths, dx, _, slope = case
    results = []
    for order in (0, 1):
        lib.emu_set_order(order)
        scratch = torch.empty(lib.emu_critic_scratch(_ints(widths), len(ws), B, 1))
        gw, gb, out3 = [torch.empty_like(w) for w in ws], [torch.empty_like(b) for b in bs], torch.empty(3)
        assert lib.emu_critic_step_f32(P(x.data_ptr()), P(zr.data_ptr()), P(zf.data_ptr()), P(t.data_ptr()),
                                       _ptrs(ws), _ptrs(bs), _ints(widths), len(ws), B, dx, ctypes.c_double(slope),
                                       ctypes.c_double(10.0), 0, 1, P(scratch.data_ptr()), _ptrs(gw), _ptrs(gb),
                                       P(out3.data_ptr())) == 0
        results.append(torch.cat([out3] + [g.reshape(-1) for g in gw + gb]))
    assert torch.equal(results[0], results[1])


# ------------------------------------------------------------------------------- fused MLP

def _mlp(rng, widths, act="leaky_relu", out_act=None, slope=0.2):
    ws = [torch.from_numpy(rng.standard_normal((o, i)) / np.sqrt(i)) for i, o in zip(widths[:-1], widths[1:])]
    bs = [torch.from_numpy(rng.standard_normal(o) * 0.3) for o in widths[1:]]
    return MLPParams(ws, bs, act, slope, out_act)


def _packed(mlps, dtype):
    """The ctypes arguments of a packed layer stack, and the tensors that must outlive the call."""
    ws, bs, acts, slopes = _layers(*mlps)
    pw, pb = pack_layers([w.to(dtype) for w in ws], bs, dtype)
    dims = [int(ws[0].shape[1])] + [int(w.shape[0]) for w in ws]
    args = (len(pw), MATH_CODE[dtype], _ints(dims), _ptrs(pw), _ptrs(pb), _ints(acts),
            (ctypes.c_float * len(slopes))(*slopes))
    return args, (pw, pb)


MLP_DTYPES = [(torch.float32, 1e-2), (torch.bfloat16, 3e-2), (torch.float16, 3e-2)]  # float32: TF32


@pytest.mark.parametrize("dtype,tol", MLP_DTYPES, ids=["tf32", "bf16", "fp16"])
@pytest.mark.parametrize("n,widths,act,out_act", [
    (1, [5, 37, 3], "leaky_relu", None),
    (37, [130, 37, 64, 5], "silu", None),
    (70, [64, 130, 5, 37, 9], "leaky_relu", "sigmoid"),
    (7, [784, 49, 26], "relu", "sigmoid"),
    (5, [512, 1024, 8], "leaky_relu", None),  # wide: 16-row tiles in TF32, 32 in bf16 / fp16
])
def test_encode(lib, rng, dtype, tol, n, widths, act, out_act):
    lib.emu_set_order(int(rng.integers(0, 2)))
    enc = _mlp(rng, widths, act, out_act, float(rng.uniform(0.01, 0.3)))
    y = torch.from_numpy(rng.standard_normal((n, widths[0])))
    args, keep = _packed((enc,), dtype)
    yk = y.to(dtype)
    out = torch.full((n, widths[-1]), float("nan"))
    assert lib.emu_mlp_forward(*args, P(yk.data_ptr()), DTYPE_CODE[dtype], ctypes.c_longlong(yk.stride(0)),
                               ctypes.c_longlong(n), P(out.data_ptr()), DTYPE_CODE[torch.float32]) == 0
    err = _rel(out, encode(enc, y, backend="torch"))
    assert err < tol, err


# (operand dtype, tolerance, output dtype, condition): every operand dtype meets every output
# dtype and every condition kind once (a Latin square rather than all 27 combinations).
F32, BF16, F16, U8 = torch.float32, torch.bfloat16, torch.float16, torch.uint8
GEN_CASES = [(F32, 1e-2, F32, "labels"), (F32, 1e-2, BF16, "tensor"), (F32, 1e-2, U8, "eta"),
             (BF16, 3e-2, F32, "tensor"), (BF16, 3e-2, BF16, "eta"), (BF16, 3e-2, U8, "labels"),
             (F16, 3e-2, F32, "eta"), (F16, 3e-2, BF16, "labels"), (F16, 3e-2, U8, "tensor")]


@pytest.mark.parametrize("dtype,tol,out_dtype,cond_kind", GEN_CASES,
                         ids=[f"{str(d)[6:]}-{str(od)[6:]}-{ck}" for d, _, od, ck in GEN_CASES])
def test_generate(lib, rng, dtype, tol, out_dtype, cond_kind):
    """26 -> 64 -> 16 generator, 16 -> 49 -> 784 decoder (sigmoid), 10 classes, odd batch and offset."""
    lib.emu_set_order(int(rng.integers(0, 2)))
    n, noise_dim, ncls, offset = 33, 16, 10, int(rng.integers(0, 1000))
    g, d = _mlp(rng, [26, 64, 16]), _mlp(rng, [16, 49, 784], out_act="sigmoid")
    cond = (torch.from_numpy(rng.integers(0, ncls, n)) if cond_kind != "tensor"
            else torch.from_numpy(rng.random((n, ncls))).to(dtype))
    eta = torch.from_numpy(rng.standard_normal((n, noise_dim))).float() if cond_kind == "eta" else None
    seed = int(rng.integers(0, 2**63))
    ref = generate(g, d, cond.double() if cond_kind == "tensor" else cond, noise_dim=noise_dim, num_classes=ncls,
                   seed=seed, offset=offset, eta=None if eta is None else eta.double(), backend="torch")
    args, keep = _packed((g, d), dtype)
    out = torch.zeros((n, 784), dtype=out_dtype)
    assert lib.emu_generate(*args, noise_dim, ncls, P(cond.data_ptr()), DTYPE_CODE[cond.dtype],
                            ctypes.c_longlong(cond.stride(0)), P(0 if eta is None else eta.data_ptr()),
                            DTYPE_CODE[torch.float32], ctypes.c_longlong(noise_dim), ctypes.c_ulonglong(seed),
                            ctypes.c_longlong(offset), ctypes.c_longlong(n), P(out.data_ptr()),
                            DTYPE_CODE[out_dtype]) == 0
    if out_dtype == torch.uint8:
        levels = torch.round(ref.clamp(0, 1) * 255)
        assert (out.double() - levels).abs().max().item() <= 1
    else:
        err = _rel(out, ref)
        assert err < tol, err


def test_uint8_rounds_half_to_even(lib):
    """Outputs that land exactly on k + 0.5 levels round to the even level, as torch.round does in
    the reference (round half up would differ at every odd k). The ties ride on the last layer's
    bias, which the kernel adds in float32 (operands are TF32-rounded; biases are not)."""
    cand = torch.arange(255, dtype=torch.float64) + 0.5
    b = (cand / 255).float()
    ties = (b * 255 == cand.float()).nonzero().reshape(-1)  # exact ties after the float32 product
    assert len(ties) > 20 and (ties % 2 == 0).any() and (ties % 2 == 1).any()
    bias, levels = b[ties], cand[ties]
    n, width = 8, len(ties)
    gen = MLPParams([torch.ones(1, 1)], [torch.zeros(1)])
    dec = MLPParams([torch.zeros(width, 1)], [bias])
    args, keep = _packed((gen, dec), torch.float32)
    out = torch.zeros((n, width), dtype=torch.uint8)
    cond, eta = torch.zeros(n, dtype=torch.int64), torch.zeros(n, 1)
    assert lib.emu_generate(*args, 1, 0, P(cond.data_ptr()), DTYPE_CODE[torch.int64], ctypes.c_longlong(1),
                            P(eta.data_ptr()), DTYPE_CODE[torch.float32], ctypes.c_longlong(1), ctypes.c_ulonglong(0),
                            ctypes.c_longlong(0), ctypes.c_longlong(n), P(out.data_ptr()),
                            DTYPE_CODE[torch.uint8]) == 0
    even = torch.round(levels).to(torch.uint8)  # torch.round: half to even
    assert (even % 2 == 0).all()
    assert torch.equal(out, even.expand(n, width))


def test_too_wide_mlp_is_refused(lib):
    dims = [4096, 4096, 8]
    assert lib.emu_mlp_tile_rows(2, MATH_CODE[torch.float32], _ints(dims), 232448) == 0
    assert lib.emu_mlp_tile_rows(2, MATH_CODE[torch.bfloat16], _ints([512, 512, 8]), 232448) == 64


@pytest.mark.parametrize("seed,offset", [(0, 0), (2**40 + 7, 2**33 + 1)])
def test_noise_matches_reference(lib, seed, offset):
    """Philox + Box-Muller in the kernel against lsdm_fast.ops.philox (whose float32 log / cos are
    not always correctly rounded: most values match bit for bit, all within a few ulps; how many depends on the
    CPU's vectorised log / cos: over 90 % on the Intel VM, 79 % on an AMD EPYC)."""
    rows, cols = 257, 31
    out = torch.zeros(rows, cols)
    assert lib.emu_philox_normal(ctypes.c_ulonglong(seed), ctypes.c_longlong(offset), ctypes.c_longlong(rows), cols,
                                 P(out.data_ptr())) == 0
    ref = philox_normal(seed, offset, rows, cols)
    torch.testing.assert_close(out, ref, rtol=0, atol=2e-6)
    assert (out == ref).float().mean().item() > 0.6
