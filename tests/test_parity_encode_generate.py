"""Parity of the fused encode / generate backends with the float64 reference (issue 6).

Tolerances (relative error ||out - ref|| / ||ref|| against float64):
  float32 weights and inputs      < 1e-4  (Triton uses input_precision="ieee"; CUDA plain fp32 FMA)
  bf16 / fp16 weights and inputs  < 2e-2  (operands rounded to 8/11-bit mantissas, fp32 accumulation;
                                           typical values are 1e-3)
  uint8 output                    within 1 level of the float64 reference's rounding
Triton runs under TRITON_INTERPRET=1 on CPU (conftest), where each program costs tens of ms, so
the grid below is small. Weights and inputs are fresh random draws each run (seed printed).
"""
from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch

from lsdm_fast.ops import MLPParams, available_backends, encode, generate, philox_normal
from lsdm_fast.sampling import generate_chunked

# the interpreter warns once per runtime-bounded loop (`range(0, N, BN)` with a loaded N)
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim:DeprecationWarning")

# the compiled MLP kernels that run on CPU tensors; "cpp" fuses only the patch autoencoder's tail / front
# (tests/test_parity_patch_cpu.py) and runs the torch reference for everything here
CPU_BACKENDS_ENC = [b for b in available_backends("encode", "cpu") if b not in ("torch", "cpp")]
CPU_BACKENDS_GEN = [b for b in available_backends("generate", "cpu") if b not in ("torch", "cpp")]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA_CASES = [pytest.param(("cuda", "cuda"), marks=needs_cuda),
              pytest.param(("triton", "cuda"), marks=needs_cuda)]
ENC_CASES = [(b, "cpu") for b in CPU_BACKENDS_ENC] + CUDA_CASES
GEN_CASES = [(b, "cpu") for b in CPU_BACKENDS_GEN] + CUDA_CASES


def _mlp(rng, widths, act="leaky_relu", out_act=None, slope=0.2):
    ws = [torch.from_numpy(rng.standard_normal((o, i)) / np.sqrt(i)) for i, o in zip(widths[:-1], widths[1:])]
    bs = [torch.from_numpy(rng.standard_normal(o) * 0.3) for o in widths[1:]]
    return MLPParams(ws, bs, act, slope, out_act)


def _cast(p: MLPParams, dtype, device="cpu") -> MLPParams:
    return p._replace(weights=[w.to(device=device, dtype=dtype) for w in p.weights],
                      biases=[b.to(device=device, dtype=dtype) for b in p.biases])


def _bitwise(backend: str, device="cpu", dtype=torch.float32) -> bool:
    """Whether `backend` gives each row the same bits whatever the batch it is in. The fused kernels do (row-wise
    maths, same noise), except Triton interpreted on a CPU: there tl.dot is numpy's BLAS, whose kernels for edge
    rows differ from those for full tiles on some CPUs (AMD EPYC: last-bit differences). The eager reference
    neither: CPU matmul blocking depends on the batch size, and cuBLAS picks its kernels by it; the CUDA backend
    hands float32 at the default precision ("ieee") to that reference (encode_generate_cuda.py; seen on an H200)."""
    interpreted = backend == "triton" and torch.device(device).type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"
    cuda_float32 = backend == "cuda" and dtype == torch.float32
    return backend != "torch" and not interpreted and not cuda_float32


def _same_rows(backend: str, device="cpu", dtype=torch.float32):
    # otherwise by relative error (elementwise allclose(1e-5, 1e-6) failed the CUDA backend's float32 encode on an
    # H200: cuBLAS's float32 sums of 784 products, reordered, move latents near 0 by ~1e-6)
    return torch.equal if _bitwise(backend, device, dtype) else (lambda a, b: a.shape == b.shape and _rel(a, b) < 1e-5)


def _rel(out, ref):
    out, ref = out.double().cpu(), ref.double().cpu()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def _skip_if_unavailable(backend, device, op):
    if device == "cuda" and backend not in available_backends(op, "cuda"):
        pytest.skip(f"{backend} not available on cuda")


# (batch, widths, activation, output activation): odd batches, widths off the tile, 2-4 layers
ENC_GRID = [
    (1, [5, 37, 3], "leaky_relu", None),
    (7, [37, 130, 5], "relu", "sigmoid"),
    (37, [130, 37, 64, 5], "silu", None),
    (37, [64, 130, 5, 37, 9], "leaky_relu", "sigmoid"),
    (7, [5, 5, 130, 37], "silu", "sigmoid"),
    (9, [176, 176, 48], "relu", None),  # 176 = 128 + a 64-wide tail holding 48 columns
]


@pytest.mark.parity
@pytest.mark.parametrize("case", ENC_CASES, ids=lambda c: "-".join(c))
@pytest.mark.parametrize("n,widths,act,out_act", ENC_GRID)
def test_encode_float32(rng, case, n, widths, act, out_act):
    backend, device = case
    _skip_if_unavailable(backend, device, "encode")
    enc = _mlp(rng, widths, act, out_act, slope=float(rng.uniform(0.01, 0.3)))
    y = torch.from_numpy(rng.standard_normal((n, widths[0])))
    ref = encode(enc, y, backend="torch")  # float64
    out = encode(_cast(enc, torch.float32, device), y.float().to(device), backend=backend)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert _rel(out, ref) < 1e-4


@pytest.mark.parity
@pytest.mark.parametrize("case", ENC_CASES, ids=lambda c: "-".join(c))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("n,widths,act,out_act", [ENC_GRID[2], ENC_GRID[3]])
def test_encode_half(rng, case, dtype, n, widths, act, out_act):
    backend, device = case
    _skip_if_unavailable(backend, device, "encode")
    enc = _mlp(rng, widths, act, out_act)
    y = torch.from_numpy(rng.standard_normal((n, widths[0])))
    ref = encode(enc, y, backend="torch")
    out = encode(_cast(enc, dtype, device), y.to(dtype).to(device), backend=backend)
    assert out.dtype == torch.float32
    assert _rel(out, ref) < 2e-2


@pytest.mark.parity
@pytest.mark.parametrize("case", ENC_CASES, ids=lambda c: "-".join(c))
@pytest.mark.parametrize("w_dtype,y_dtype,tol", [(torch.bfloat16, torch.float32, 3e-2), (torch.float32, torch.float16, 1e-4),
                                                 (torch.float16, torch.bfloat16, 3e-2)])
def test_encode_input_dtype_unlike_the_weights(rng, case, w_dtype, y_dtype, tol):
    backend, device = case
    _skip_if_unavailable(backend, device, "encode")
    enc = _mlp(rng, [37, 130, 5])
    y = torch.from_numpy(rng.standard_normal((9, 37))).to(y_dtype)
    ref = encode(enc, y.double(), backend="torch")  # the input as given, in float64
    assert _rel(encode(_cast(enc, w_dtype, device), y.to(device), backend=backend), ref) < tol


@pytest.mark.parity
@pytest.mark.parametrize("case", ENC_CASES, ids=lambda c: "-".join(c))
def test_encode_batch_size_and_strided_input(rng, case):
    backend, device = case
    _skip_if_unavailable(backend, device, "encode")
    enc = _mlp(rng, [40, 37, 6])
    y = torch.from_numpy(rng.standard_normal((37, 80)))[:, ::2]  # non-contiguous columns
    ref = encode(enc, y, backend="torch")
    out = encode(_cast(enc, torch.float32, device), y.float().to(device), batch_size=20, backend=backend)
    assert _rel(out, ref) < 1e-4


# (batch, noise_dim, cond: labels/tensor, num_classes or cond_dim, gen widths after input, dec widths, acts, sigmoid)
GEN_GRID = [
    (1, 3, "labels", 10, [37, 5], [130, 37], ("leaky_relu", "relu"), True),
    (7, 16, "tensor", 5, [130, 37, 8], [37, 130], ("silu", "leaky_relu"), False),
    (37, 8, "labels", 4, [64, 16], [37, 64, 33], ("relu", "silu"), True),
]


def _gen_setup(rng, n, noise_dim, cond_kind, c, gw, dw, acts, sig):
    g = _mlp(rng, [noise_dim + c] + gw, acts[0])
    d = _mlp(rng, [gw[-1]] + dw, acts[1], "sigmoid" if sig else None)
    if cond_kind == "labels":
        cond = torch.from_numpy(rng.integers(0, c, n))
    else:
        cond = torch.from_numpy(rng.standard_normal((n, c)))
    eta = torch.from_numpy(rng.standard_normal((n, noise_dim)))
    return g, d, cond, eta


@pytest.mark.parity
@pytest.mark.parametrize("case", GEN_CASES, ids=lambda c: "-".join(c))
@pytest.mark.parametrize("grid", GEN_GRID, ids=["labels-sigmoid", "tensor-plain", "labels-4layer-dec"])
def test_generate_eta_given_float32(rng, case, grid):
    backend, device = case
    _skip_if_unavailable(backend, device, "generate")
    n, noise_dim, kind, c = grid[:4]
    g, d, cond, eta = _gen_setup(rng, *grid)
    nc = c if kind == "labels" else None
    ref = generate(g, d, cond, noise_dim=noise_dim, num_classes=nc, eta=eta, out_dtype=torch.float64, backend="torch")
    cond_dev = cond.to(device) if kind == "labels" else cond.float().to(device)
    out = generate(_cast(g, torch.float32, device), _cast(d, torch.float32, device), cond_dev, noise_dim=noise_dim,
                   num_classes=nc, eta=eta.float().to(device), backend=backend)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert _rel(out, ref) < 1e-4
    # uint8 images: round(clamp(y, 0, 1) * 255), within one level of the float64 rounding
    out8 = generate(_cast(g, torch.float32, device), _cast(d, torch.float32, device), cond_dev, noise_dim=noise_dim,
                    num_classes=nc, eta=eta.float().to(device), out_dtype=torch.uint8, backend=backend)
    ref8 = torch.round(ref.clamp(0, 1) * 255)
    assert out8.dtype == torch.uint8
    assert (out8.cpu().double() - ref8).abs().max().item() <= 1


@pytest.mark.parity
@pytest.mark.parametrize("case", GEN_CASES, ids=lambda c: "-".join(c))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_generate_eta_given_half(rng, case, dtype):
    backend, device = case
    _skip_if_unavailable(backend, device, "generate")
    grid = GEN_GRID[1]
    g, d, cond, eta = _gen_setup(rng, *grid)
    ref = generate(g, d, cond, noise_dim=grid[1], eta=eta, out_dtype=torch.float64, backend="torch")
    out = generate(_cast(g, dtype, device), _cast(d, dtype, device), cond.to(dtype).to(device), noise_dim=grid[1],
                   eta=eta.to(dtype).to(device), out_dtype=dtype, backend=backend)
    assert out.dtype == dtype
    assert _rel(out, ref) < 2e-2


# ------------------------------------------------------------------ in-kernel noise

def _identity_models(noise_dim, num_classes):
    """generator z = eta (drops the one-hot), decoder identity: generate() returns the noise."""
    w = torch.zeros(noise_dim, noise_dim + num_classes)
    w[:, :noise_dim] = torch.eye(noise_dim)
    g = MLPParams([w], [torch.zeros(noise_dim)])
    d = MLPParams([torch.eye(noise_dim)], [torch.zeros(noise_dim)])
    return g, d


@pytest.mark.parity
@pytest.mark.parametrize("case", GEN_CASES, ids=lambda c: "-".join(c))
@pytest.mark.parametrize("seed,offset", [(0, 0), (12345, 37), (2**40 + 7, 2**33 + 1)])
def test_in_kernel_noise_equals_philox_reference(case, seed, offset):
    backend, device = case
    _skip_if_unavailable(backend, device, "generate")
    n, noise_dim = 37, 13
    g, d = _identity_models(noise_dim, 3)
    labels = torch.randint(0, 3, (n,), device=device)
    out = generate(_cast(g, torch.float32, device), _cast(d, torch.float32, device), labels, noise_dim=noise_dim,
                   num_classes=3, seed=seed, offset=offset, backend=backend)
    ref = philox_normal(seed, offset, n, noise_dim)
    torch.testing.assert_close(out.cpu(), ref, rtol=0, atol=2e-6)


@pytest.mark.parity
@pytest.mark.parametrize("case", GEN_CASES, ids=lambda c: "-".join(c))
def test_same_seed_reproducible_across_runs_and_splits_and_seeds_differ(rng, case):
    backend, device = case
    _skip_if_unavailable(backend, device, "generate")
    g, d, cond, _ = _gen_setup(rng, *GEN_GRID[0])
    g, d = _cast(g, torch.float32, device), _cast(d, torch.float32, device)
    cond = torch.from_numpy(rng.integers(0, 10, 37)).to(device)
    kw = dict(noise_dim=3, num_classes=10, backend=backend)
    a = generate(g, d, cond, seed=99, **kw)
    b = generate(g, d, cond, seed=99, **kw)
    assert torch.equal(a, b)
    k = int(rng.integers(1, 36))
    split = torch.cat([generate(g, d, cond[:k], seed=99, offset=0, **kw),
                       generate(g, d, cond[k:], seed=99, offset=k, **kw)])
    assert _same_rows(backend, device)(a, split)
    c = generate(g, d, cond, seed=100, **kw)
    assert not torch.allclose(a, c)
    ref = generate(_cast(g, torch.float64), _cast(d, torch.float64), cond.cpu(), seed=99, noise_dim=3,
                   num_classes=10, backend="torch")
    assert _rel(a, ref) < 1e-4


def _moment_and_ks_checks(x: np.ndarray):
    from scipy import stats

    n = x.size
    assert abs(x.mean()) < 5 / np.sqrt(n)
    assert abs(x.var() - 1) < 5 * np.sqrt(2 / n)
    assert abs(stats.skew(x)) < 5 * np.sqrt(6 / n)
    assert abs(stats.kurtosis(x)) < 5 * np.sqrt(24 / n)
    assert stats.kstest(x, "norm").pvalue > 1e-4


def test_reference_noise_is_standard_normal():
    x = philox_normal(2024, 0, 1000, 1000).double().numpy().ravel()  # 10^6 draws
    _moment_and_ks_checks(x)
    y = philox_normal(2025, 0, 1000, 1000).double().numpy().ravel()
    assert not np.allclose(x, y)
    assert abs(np.corrcoef(x, y)[0, 1]) < 5e-3


@pytest.mark.parametrize("case", GEN_CASES, ids=lambda c: "-".join(c))
def test_in_kernel_noise_is_standard_normal(case):
    backend, device = case
    _skip_if_unavailable(backend, device, "generate")
    n, noise_dim = (64, 64) if device == "cpu" else (4096, 256)  # interpreter: keep it small
    g, d = _identity_models(noise_dim, 1)
    out = generate(_cast(g, torch.float32, device), _cast(d, torch.float32, device),
                   torch.zeros(n, dtype=torch.int64, device=device), noise_dim=noise_dim, num_classes=1, seed=7,
                   backend=backend)
    _moment_and_ks_checks(out.double().cpu().numpy().ravel())


@needs_cuda
def test_cuda_philox_kernel_matches_reference():
    if "cuda" not in available_backends("generate", "cuda"):
        pytest.skip("CUDA extension not built")
    from cuda_noise import philox_normal_cuda

    for seed, off in [(0, 0), (2**40 + 7, 2**33 + 1)]:
        torch.testing.assert_close(philox_normal_cuda(seed, off, 129, 31).cpu(), philox_normal(seed, off, 129, 31),
                                   rtol=0, atol=2e-6)


# ------------------------------------------------------------------ chunked generation

@pytest.mark.parametrize("backend", ["torch"] + CPU_BACKENDS_GEN)
def test_generate_chunked_into_tensor_equals_one_call(rng, backend):
    g, d, cond, _ = _gen_setup(rng, *GEN_GRID[2])
    g, d = _cast(g, torch.float32), _cast(d, torch.float32)
    kw = dict(noise_dim=8, num_classes=4, seed=5, backend=backend)
    whole = generate(g, d, cond, **kw)
    out = torch.full_like(whole, float("nan"))
    res = generate_chunked(g, d, cond, chunk_size=16, out=out, progress=False, **kw)
    assert res is out
    check = _same_rows(backend)  # bit-identical where the backend's maths are row-wise (_bitwise)
    assert check(out, whole)
    fresh = generate_chunked(g, d, cond, chunk_size=10, progress=False, **kw)
    assert check(fresh, whole)


@pytest.mark.parametrize("backend", ["torch"] + CPU_BACKENDS_GEN)
def test_generate_chunked_into_npy_memmap(rng, tmp_path, backend):
    g, d, cond, _ = _gen_setup(rng, *GEN_GRID[0])
    g, d = _cast(g, torch.float32), _cast(d, torch.float32)
    cond = torch.from_numpy(rng.integers(0, 10, 101))
    kw = dict(noise_dim=3, num_classes=10, seed=11, backend=backend)
    whole = generate(g, d, cond, out_dtype=torch.uint8, **kw)
    path = tmp_path / "samples.npy"
    mm = generate_chunked(g, d, cond, chunk_size=32, path=path, out_dtype=torch.uint8, progress=True, **kw)
    assert isinstance(mm, np.memmap) and mm.dtype == np.uint8 and mm.shape == tuple(whole.shape)
    tol = 0 if _bitwise(backend) else 1  # a last-bit difference may round a pixel differently per chunk size
    assert np.abs(np.asarray(mm).astype(int) - whole.numpy().astype(int)).max() <= tol
    assert np.abs(np.load(path).astype(int) - whole.numpy().astype(int)).max() <= tol
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples.npy"]  # no temporary left behind


def test_generate_chunked_errors(rng, tmp_path):
    g, d, cond, _ = _gen_setup(rng, *GEN_GRID[0])
    kw = dict(noise_dim=3, num_classes=10, progress=False, backend="torch")
    with pytest.raises(ValueError, match="shape"):
        generate_chunked(g, d, cond, out=torch.empty(2, 2), **kw)
    with pytest.raises(ValueError, match="dtype"):
        generate_chunked(g, d, cond, out=torch.empty(1, 37, dtype=torch.float64), **kw)
    with pytest.raises(ValueError, match=r"\.npy"):
        generate_chunked(g, d, cond, path=tmp_path / "x.bin", **kw)
    with pytest.raises(FileNotFoundError):
        generate_chunked(g, d, cond, path=tmp_path / "missing" / "x.npy", **kw)
    with pytest.raises(ValueError, match="npy"):
        generate_chunked(g, d, cond, path=tmp_path / "x.npy", out_dtype=torch.bfloat16, **kw)
    with pytest.raises(ValueError, match="either"):
        generate_chunked(g, d, cond, path=tmp_path / "x.npy", out=torch.empty(1, 37), **kw)
    with pytest.raises(ValueError, match="chunk_size"):
        generate_chunked(g, d, cond, chunk_size=0, **kw)
    with pytest.raises(ValueError, match="1-D"):
        generate_chunked(g, d, cond[:, None], **kw)


# ------------------------------------------------------------------ shapes the package trains (odd sizes)

@pytest.mark.parity
@pytest.mark.parametrize("case", GEN_CASES, ids=lambda c: "-".join(c))
@pytest.mark.parametrize("kind", ["mnist-labels", "superres-7x7"])
def test_generate_mnist_shapes_float32_and_bf16(rng, case, kind):
    """(16 + 10 classes) -> ... -> 784 with a sigmoid, and a 49-wide float condition -> 196: widths
    off the 16 grid (26, 49, 65, 196, 784), in float32 (< 1e-4) and bf16 (< 3e-2) against float64."""
    backend, device = case
    _skip_if_unavailable(backend, device, "generate")
    n, noise = 37, 16
    if kind == "mnist-labels":
        c, cond = 10, torch.from_numpy(rng.integers(0, 10, n))
        g, d = _mlp(rng, [noise + c, 64, 16]), _mlp(rng, [16, 48, 784], out_act="sigmoid")
    else:
        c, cond = 49, torch.from_numpy(rng.uniform(0, 1, (n, 49)))
        g, d = _mlp(rng, [noise + c, 64, 16]), _mlp(rng, [16, 48, 196], out_act="sigmoid")
    nc = 10 if kind == "mnist-labels" else None
    ref = generate(g, d, cond, noise_dim=noise, num_classes=nc, seed=4, out_dtype=torch.float64, backend="torch")
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 3e-2)):
        cond_dev = cond.to(device) if nc else cond.to(dtype).to(device)
        out = generate(_cast(g, dtype, device), _cast(d, dtype, device), cond_dev, noise_dim=noise, num_classes=nc,
                       seed=4, out_dtype=torch.float32, backend=backend)
        err = _rel(out, ref)
        print(f"{kind} {dtype}: relative error {err:.2e}")
        assert err < tol


@pytest.mark.parity
@pytest.mark.parametrize("case", ENC_CASES, ids=lambda c: "-".join(c))
def test_encode_mnist_shape_float32_and_bf16(rng, case):
    backend, device = case
    _skip_if_unavailable(backend, device, "encode")
    enc = _mlp(rng, [784, 48, 26])
    y = torch.from_numpy(rng.uniform(0, 1, (37, 784)))
    ref = encode(enc, y, backend="torch")
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 3e-2)):
        err = _rel(encode(_cast(enc, dtype, device), y.to(dtype).to(device), backend=backend), ref)
        print(f"encode {dtype}: relative error {err:.2e}")
        assert err < tol


@pytest.mark.parity
@pytest.mark.parametrize("case", GEN_CASES, ids=lambda c: "-".join(c))
def test_in_kernel_noise_for_the_largest_seed(case):
    backend, device = case
    _skip_if_unavailable(backend, device, "generate")
    g, d = _identity_models(5, 2)
    out = generate(_cast(g, torch.float32, device), _cast(d, torch.float32, device),
                   torch.zeros(9, dtype=torch.int64, device=device), noise_dim=5, num_classes=2, seed=2**64 - 1,
                   offset=3, backend=backend)
    torch.testing.assert_close(out.cpu(), philox_normal(2**64 - 1, 3, 9, 5), rtol=0, atol=2e-6)


# ------------------------------------------------------------------ uint8: round half to even everywhere

def _exact_half_levels() -> torch.Tensor:
    """For k = 0..254 a float32 y with float32(y * 255) == k + 0.5 exactly."""
    out = []
    for k in range(255):
        y = torch.tensor((k + 0.5) / 255, dtype=torch.float32)
        for cand in (y, torch.nextafter(y, torch.tensor(2.0)), torch.nextafter(y, torch.tensor(-1.0))):
            if (cand * 255).item() == k + 0.5:
                out.append(cand)
                break
        else:
            raise AssertionError(f"no float32 lands on {k} + 0.5")
    return torch.stack(out)


@pytest.mark.parametrize("case", [("torch", "cpu")] + GEN_CASES, ids=lambda c: "-".join(c))
def test_uint8_output_rounds_half_to_even(case):
    """Outputs exactly on k + 0.5 levels (identity generator and decoder, eta given): every backend
    gives torch.round's half-to-even k + (k odd), which half-up rounding (k + 1) fails for even k."""
    backend, device = case
    _skip_if_unavailable(backend, device, "generate")
    y = _exact_half_levels()
    d = y.numel()
    g, dec = _identity_models(d, 1)
    eta = y[None, :].repeat(3, 1)
    eta[1] = 1.0 - eta[1]  # both ends of the range
    eta[2, :5] = torch.tensor([-0.3, 0.0, 1.0, 1.7, 0.5 / 255])  # clamped below / above, and 0.5 itself
    out = generate(_cast(g, torch.float32, device), _cast(dec, torch.float32, device),
                   torch.zeros(3, dtype=torch.int64, device=device), noise_dim=d, num_classes=1,
                   eta=eta.to(device), out_dtype=torch.uint8, backend=backend).cpu()
    expected = torch.round(eta.clamp(0, 1) * 255).to(torch.uint8)
    k = torch.arange(255)
    assert torch.equal(expected[0], (k + (k % 2)).to(torch.uint8))  # the rule itself: ties to even
    assert torch.equal(out, expected)


# ------------------------------------------------------------------ cached weight layouts follow the weights

@pytest.mark.parametrize("case", GEN_CASES, ids=lambda c: "-".join(c))
def test_outputs_follow_weights_replaced_in_place_and_out_of_place(rng, case):
    """The Triton backend packs weights once per tensor (identity + version, held weakly); a packed
    layout must never outlive the weights it was built from."""
    backend, device = case
    _skip_if_unavailable(backend, device, "generate")
    torch.manual_seed(int(rng.integers(2**31)))
    gen_mods = torch.nn.ModuleList([torch.nn.Linear(13, 24), torch.nn.Linear(24, 6)]).to(device)
    dec_mods = torch.nn.ModuleList([torch.nn.Linear(6, 24), torch.nn.Linear(24, 9)]).to(device)
    labels = torch.from_numpy(rng.integers(0, 3, 11)).to(device)

    def params(mods, out_act=None):
        return MLPParams([m.weight for m in mods], [m.bias for m in mods], "leaky_relu", 0.2, out_act)

    def run(g, d):
        with torch.no_grad():
            return generate(g, d, labels, noise_dim=10, num_classes=3, seed=8, backend=backend)

    def reference(g, d):
        g64 = _cast(MLPParams([w.detach() for w in g.weights], [b.detach() for b in g.biases]), torch.float64)
        d64 = _cast(MLPParams([w.detach() for w in d.weights], [b.detach() for b in d.biases],
                              output_activation=d.output_activation), torch.float64)
        return generate(g64, d64, labels.cpu(), noise_dim=10, num_classes=3, seed=8, backend="torch")

    g, d = params(gen_mods), params(dec_mods, "sigmoid")
    first = run(g, d)
    assert _rel(first, reference(g, d)) < 1e-4
    # in place: an optimizer-like step, then load_state_dict of other weights
    with torch.no_grad():
        gen_mods[0].weight.add_(0.5)
    stepped = run(g, d)
    assert not torch.allclose(stepped, first) and _rel(stepped, reference(g, d)) < 1e-4
    other = torch.nn.ModuleList([torch.nn.Linear(6, 24), torch.nn.Linear(24, 9)])
    dec_mods.load_state_dict(other.state_dict())
    loaded = run(g, d)
    assert not torch.allclose(loaded, stepped) and _rel(loaded, reference(g, d)) < 1e-4
    # out of place: new tensors (an EMA copy), then a tensor at the SAME address and version as a
    # freed one whose values changed behind the version counter (a reloaded checkpoint reusing memory)
    ema = [w.detach().clone() * 0.9 for w in g.weights]
    g_ema = MLPParams(ema, [b.detach().clone() for b in g.biases])
    out_ema = run(g_ema, d)
    assert not torch.allclose(out_ema, loaded) and _rel(out_ema, reference(g_ema, d)) < 1e-4
    old = ema[1]
    run(g_ema, d)  # packed with `old`
    alias = old.data  # a new tensor object on the same storage: same data_ptr, version 0 like `old`
    assert alias.data_ptr() == old.data_ptr() and alias._version == old._version
    old.data.mul_(-1.0)  # new values, no version bump of `old` or `alias`
    kept_w, kept_b = ema[0], g_ema.biases
    del g_ema, ema, old
    g_alias = MLPParams([kept_w, alias], kept_b)  # only the aliased tensor differs from the packed set
    out_alias = run(g_alias, d)
    assert _rel(out_alias, reference(g_alias, d)) < 1e-4


# ------------------------------------------------------------------ labels: one check, no device read when cached

def test_label_range_is_read_once_per_tensor_and_shared_by_views(monkeypatch):
    """The CUDA path of validate_labels (run here on CPU tensors): one range read per tensor and
    version, none for its views, a fresh read after an in-place change."""
    from lsdm_fast.ops import encode_generate as eg

    reads = []
    real = eg._observed_range
    monkeypatch.setattr(eg, "_observed_range", lambda t: reads.append(t.numel()) or real(t))
    labels = torch.randint(0, 10, (100,))
    assert eg._label_range(labels, 10, cache=True) == tuple(real(labels))
    eg._label_range(labels, 10, cache=True)
    eg._label_range(labels[10:40], 10, cache=True)  # a chunk of generate_chunked
    assert reads == [100]
    labels[3] = 11  # version bump: read again; the view (whose base is now out of range) reads itself
    assert eg._label_range(labels, 10, cache=True)[1] == 11
    lo, hi = eg._label_range(labels[10:40], 10, cache=True)
    assert hi < 10 and reads == [100, 100, 30]
    fresh = labels.clone()  # same values, another tensor: read once more
    eg._label_range(fresh, 12, cache=True)
    assert reads == [100, 100, 30, 100]


@pytest.mark.parametrize("backend", ["torch"] + CPU_BACKENDS_GEN)
def test_generate_chunked_checks_labels_once(rng, backend, monkeypatch):
    from lsdm_fast.ops import encode_generate as eg

    calls = []
    real = eg.validate_labels
    monkeypatch.setattr(eg, "validate_labels", lambda t, c: calls.append(t.numel()) or real(t, c))
    monkeypatch.setattr("lsdm_fast.sampling.validate_labels", eg.validate_labels)
    g, d, cond, _ = _gen_setup(rng, *GEN_GRID[0])
    g, d = _cast(g, torch.float32), _cast(d, torch.float32)
    generate_chunked(g, d, torch.from_numpy(rng.integers(0, 10, 40)), noise_dim=3, num_classes=10, chunk_size=16,
                     progress=False, backend=backend)
    assert calls[0] == 40  # the whole batch first, then each chunk (free: cached, or host memory)
    bad = torch.from_numpy(rng.integers(0, 10, 40))
    bad[-1] = 10
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\), got range \[\d+, 10\]"):
        generate_chunked(g, d, bad, noise_dim=3, num_classes=10, chunk_size=16, progress=False, backend=backend)


@needs_cuda
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_cuda_generate_and_encode_do_not_synchronise_and_capture_in_a_graph(backend):
    if backend not in available_backends("generate", "cuda"):
        pytest.skip(f"{backend} not available on cuda")
    torch.manual_seed(0)

    def mlp(widths, out_act=None):
        return MLPParams([torch.randn(o, i, device="cuda") / i**0.5 for i, o in zip(widths[:-1], widths[1:])],
                         [torch.zeros(o, device="cuda") for o in widths[1:]], output_activation=out_act)

    g, d, e = mlp([26, 64, 16]), mlp([16, 64, 784], "sigmoid"), mlp([784, 64, 16])
    labels = torch.randint(0, 10, (4096,), device="cuda")
    y = torch.rand(4096, 784, device="cuda")
    kw = dict(noise_dim=16, num_classes=10, seed=1, backend=backend)
    first, z = generate(g, d, labels, **kw), encode(e, y, backend=backend)  # warm-up: labels checked, weights packed
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        again, z_again = generate(g, d, labels[:1000], **kw), encode(e, y, batch_size=1000, backend=backend)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    same = _same_rows(backend, "cuda", torch.float32)  # float32 on "cuda" is cuBLAS's: not bitwise per batch size
    assert same(first[:1000], again) and same(z, z_again)
    graph, stream = torch.cuda.CUDAGraph(), torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        with torch.cuda.graph(graph):
            captured = generate(g, d, labels, **kw)
    graph.replay()
    torch.cuda.synchronize()
    assert same(captured, first)


# ------------------------------------------------------------------ one answer per bad call, every backend

def _backend_param(op, b):
    """Every backend registered for `op`, skipped only where it cannot run on CPU tensors here."""
    from lsdm_fast.ops._registry import _IMPLS

    impl = _IMPLS[op].get(b)
    if impl is None:
        return pytest.param(b, marks=pytest.mark.skip(reason=f"no {b!r} backend is registered for {op}"))
    if not impl.available(torch.device("cpu")):
        why = impl.why_unavailable() if impl.why_unavailable else "unavailable"
        return pytest.param(b, marks=pytest.mark.skip(reason=f"{b} unavailable for CPU tensors here: {why}"))
    return b


ALL_BACKENDS = ("torch", "cpp", "triton", "cuda")


def _outcome(fn):
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the exception itself is what is compared
        return type(exc), str(exc)
    return None, None


_ENC = MLPParams([torch.randn(8, 37), torch.randn(3, 8)], [torch.randn(8), torch.randn(3)])
_Y = torch.rand(5, 37)
BAD_ENCODE = {  # name: (keyword changes, exception type, message pattern)
    "y-not-a-tensor": (dict(y=_Y.numpy()), TypeError, r"y must be a torch\.Tensor, got ndarray"),
    "y-wrong-width": (dict(y=_Y[:, :36]), ValueError, r"encode: y must be \(N, 37\), got shape \(5, 36\)"),
    "y-1-d": (dict(y=_Y[0]), ValueError, r"encode: y must be \(N, 37\), got shape \(37,\)"),
    "y-integer": (dict(y=_Y.long()), ValueError, r"encode: y must be floating point, got torch\.int64"),
    "batch-size-0": (dict(batch_size=0), ValueError, r"batch_size must be >= 1, got 0"),
    "batch-size-negative": (dict(batch_size=-4), ValueError, r"batch_size must be >= 1, got -4"),
    "batch-size-float": (dict(batch_size=2.5), TypeError, r"batch_size must be an int, got float 2\.5"),
    "batch-size-bool": (dict(batch_size=True), TypeError, r"batch_size must be an int, got bool True"),
    "integer-weights": (dict(encoder=_ENC._replace(weights=[_ENC.weights[0].long(), _ENC.weights[1]])), ValueError,
                        r"encoder: layer 0 weight must be floating point, got torch\.int64"),
    "layers-mismatch": (dict(encoder=_ENC._replace(weights=[_ENC.weights[0], torch.randn(3, 9)])), ValueError,
                        r"encoder: layer 1 expects 9 inputs but layer 0 gives 8"),
}


@pytest.mark.parametrize("backend", [_backend_param("encode", b) for b in ALL_BACKENDS] + ["auto"])
@pytest.mark.parametrize("name", list(BAD_ENCODE))
def test_bad_encode_calls_get_the_same_error_from_every_backend(name, backend):
    changes, exc_type, pattern = BAD_ENCODE[name]
    kw = {"encoder": _ENC, "y": _Y, **changes}
    encoder, y = kw.pop("encoder"), kw.pop("y")
    got = _outcome(lambda: encode(encoder, y, backend=backend, **kw))
    assert got == _outcome(lambda: encode(encoder, y, backend="torch", **kw))
    assert got[0] is exc_type and re.fullmatch(pattern, got[1]), got


_GEN = MLPParams([torch.randn(8, 13), torch.randn(4, 8)], [torch.randn(8), torch.randn(4)])
_DEC = MLPParams([torch.randn(6, 4), torch.randn(7, 6)], [torch.randn(6), torch.randn(7)], output_activation="sigmoid")
_LABELS = torch.tensor([0, 2, 1, 2, 0])
BAD_GENERATE = {
    "seed-negative": (dict(seed=-1), ValueError, r"seed must be in \[0, 2\^64\), got -1"),
    "seed-2^64": (dict(seed=2**64), ValueError, r"seed must be in \[0, 2\^64\), got 18446744073709551616"),
    "seed-float": (dict(seed=1.0), TypeError, r"seed must be an int, got float 1\.0"),
    "offset-negative": (dict(offset=-3), ValueError, r"offset must be >= 0, got -3"),
    "offset-overflows-counter": (dict(offset=2**62), ValueError, r"offset 4611686018427387904 \+ 5 rows times "
                                 r"noise_dim 10 reaches 2\^63: the Philox counter would overflow"),
    "label-too-large": (dict(cond=torch.tensor([0, 3, 1])), ValueError, r"labels must be in \[0, 3\), got range \[0, 3\]"),
    "label-negative": (dict(cond=torch.tensor([-1, 2], dtype=torch.int8)), ValueError,
                       r"labels must be in \[0, 3\), got range \[-1, 2\]"),
    "labels-2-d": (dict(cond=_LABELS[:, None]), ValueError, r"labels must be 1-D \(N,\), got shape \(5, 1\)"),
    "labels-without-num-classes": (dict(num_classes=None), ValueError, r"integer labels given but num_classes is None"),
    "num-classes-zero": (dict(num_classes=0), ValueError, r"num_classes must be >= 1, got 0"),
    "bool-condition": (dict(cond=torch.ones(5, dtype=torch.bool)), ValueError,
                       r"cond must be integer labels \(.*\) or a floating condition tensor, got torch\.bool"),
    "float-condition-1-d": (dict(cond=torch.rand(5)), ValueError,
                            r"a condition tensor must be 2-D \(N, cond_dim\), got shape \(5,\)"),
    "float-condition-wrong-width": (dict(cond=torch.rand(5, 4)), ValueError,
                                    r"generator takes 13 inputs but noise_dim \(10\) \+ condition \(4\) give 14"),
    "noise-dim-mismatch": (dict(noise_dim=9), ValueError,
                           r"generator takes 13 inputs but noise_dim \(9\) \+ condition \(3\) give 12"),
    "noise-dim-negative": (dict(noise_dim=-1), ValueError, r"noise_dim must be >= 0, got -1"),
    "eta-wrong-shape": (dict(eta=torch.randn(5, 9)), ValueError, r"eta must be \(5, 10\), got shape \(5, 9\)"),
    "eta-integer": (dict(eta=torch.zeros(5, 10, dtype=torch.int32)), ValueError,
                    r"eta must be floating point, got torch\.int32"),
    "eta-not-a-tensor": (dict(eta=[[0.0] * 10] * 5), TypeError, r"eta must be a torch\.Tensor, got list"),
    "out-dtype-int32": (dict(out_dtype=torch.int32), ValueError, r"out_dtype must be one of .*, got torch\.int32"),
    "decoder-mismatch": (dict(decoder=_DEC._replace(weights=[torch.randn(6, 5), _DEC.weights[1]])), ValueError,
                         r"generator gives 4 latents, decoder takes 5"),
    "cond-not-a-tensor": (dict(cond=[0, 1]), TypeError, r"cond must be a torch\.Tensor, got list"),
}


@pytest.mark.parametrize("backend", [_backend_param("generate", b) for b in ALL_BACKENDS] + ["auto"])
@pytest.mark.parametrize("name", list(BAD_GENERATE))
def test_bad_generate_calls_get_the_same_error_from_every_backend(name, backend):
    changes, exc_type, pattern = BAD_GENERATE[name]
    kw = {"generator": _GEN, "decoder": _DEC, "cond": _LABELS, "noise_dim": 10, "num_classes": 3, **changes}
    g, d, cond = kw.pop("generator"), kw.pop("decoder"), kw.pop("cond")
    got = _outcome(lambda: generate(g, d, cond, backend=backend, **kw))
    assert got == _outcome(lambda: generate(g, d, cond, backend="torch", **kw))
    assert got[0] is exc_type and re.fullmatch(pattern, got[1]), got


@pytest.mark.parametrize("backend", [_backend_param("generate", b) for b in ALL_BACKENDS] + ["auto"])
def test_empty_batches_and_float16_on_cpu(backend):
    """N = 0 gives an empty result (no error, nothing launched); float16 weights and inputs on CPU
    work with every backend that runs here, "auto" included (it picks the torch reference on CPU)."""
    z = encode(_ENC, _Y[:0], backend=backend)
    assert z.shape == (0, 3) and z.dtype == torch.float32
    y = generate(_GEN, _DEC, _LABELS[:0], noise_dim=10, num_classes=3, out_dtype=torch.uint8, backend=backend)
    assert y.shape == (0, 7) and y.dtype == torch.uint8
    h = _cast(_ENC, torch.float16)
    ref = encode(_ENC, _Y.double(), backend="torch")
    assert _rel(encode(h, _Y.half(), backend=backend), ref) < 1e-2
    g16, d16 = _cast(_GEN, torch.float16), _cast(_DEC, torch.float16)
    out = generate(g16, d16, _LABELS, noise_dim=10, num_classes=3, seed=2, out_dtype=torch.float16, backend=backend)
    ref = generate(_cast(_GEN, torch.float64), _cast(_DEC, torch.float64), _LABELS, noise_dim=10, num_classes=3,
                   seed=2, out_dtype=torch.float64, backend="torch")
    assert out.dtype == torch.float16 and _rel(out, ref) < 1e-2


@pytest.mark.parametrize("case", GEN_CASES, ids=lambda c: "-".join(c))
def test_inference_mode_tensors(rng, case):
    """Tensors made under torch.inference_mode have no version counter: nothing may be cached on
    them, and every call still follows their values."""
    backend, device = case
    _skip_if_unavailable(backend, device, "generate")
    g, d, cond, _ = _gen_setup(rng, *GEN_GRID[0])
    with torch.inference_mode():
        g32, d32 = _cast(g, torch.float32, device), _cast(d, torch.float32, device)
        labels = cond.to(device)
        first = generate(g32, d32, labels, noise_dim=3, num_classes=10, seed=1, backend=backend)
        g32.weights[0].mul_(2.0)
        second = generate(g32, d32, labels, noise_dim=3, num_classes=10, seed=1, backend=backend)
        z = encode(d32, torch.rand(4, d32.in_features, device=device), backend=backend)
    assert not torch.allclose(first, second) and z.shape == (4, d32.out_features)
    ref = generate(_cast(g32, torch.float64, "cpu"), _cast(d32, torch.float64, "cpu"), cond, noise_dim=3,
                   num_classes=10, seed=1, backend="torch")
    assert _rel(second, ref) < 1e-4


@pytest.mark.parity
@pytest.mark.parametrize("case", [c for c in GEN_CASES if (c.values[0] if hasattr(c, "values") else c)[0] == "triton"],
                         ids=lambda c: "-".join(c))
def test_generate_past_the_descriptor_slots(rng, case):
    """A chain longer than the Triton kernel's TMA weight-descriptor arguments (DESC_SLOTS): 4 generator + 5
    decoder layers in bf16, weights by pointer, against the float64 reference."""
    from lsdm_fast.ops.encode_generate_triton import DESC_SLOTS

    backend, device = case
    _skip_if_unavailable(backend, device, "generate")
    g = _mlp(rng, [6 + 10, 32, 32, 32, 8])
    d = _mlp(rng, [8, 32, 32, 32, 32, 40], out_act="sigmoid")
    assert len(g.weights) + len(d.weights) > DESC_SLOTS
    cond = torch.from_numpy(rng.integers(0, 10, 19)).to(device)
    out = generate(_cast(g, torch.bfloat16, device), _cast(d, torch.bfloat16, device), cond, noise_dim=6,
                   num_classes=10, seed=4, backend=backend)
    ref = generate(g, d, cond.cpu(), noise_dim=6, num_classes=10, seed=4, backend="torch")
    assert _rel(out, ref) < 3e-2
