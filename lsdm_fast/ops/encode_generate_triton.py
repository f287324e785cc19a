"""Triton backend for `encode` and `generate` (DESIGN.md sections 3-4, issue 6).

One kernel, `_fused_mlp_kernel`, serves both ops; each call is ONE Triton launch (plus, the
first time a given set of weights is seen, a few torch ops that pack them into one flat
buffer; the packing is cached on the tensors' identity and version counter).

Structure (FullyFusedMLP idea):
- A persistent grid: each program walks row tiles of BM rows. For every tile it runs all
  layers back to back. Between layers the tile's activations live in a per-program scratch
  tile (2 x BM x max_width, ping-pong) that only this program touches: it is never re-read
  by another launch, stays L2-resident on a GPU (a few MB in total for the whole grid), and
  the final layer writes the output exactly once, already converted to the requested dtype.
  Each layer is a K/N-chunked GEMM (BN output columns x BK input columns per step), so any
  width up to 1024 (and beyond) works and non-multiples of the block are masked.
- generate: a prologue builds the generator input cat(eta, x) for the tile inside the kernel:
  eta from `tl.randn(seed, offsets)` with offsets = (row_offset + i) * noise_dim + j as int64
  (exactly lsdm_fast.ops.philox.philox_normal, so noise is independent of tiling and of batch
  splits), or loaded when `eta` is given; x a one-hot built from integer labels or the loaded
  condition tensor. Generator and decoder layers follow in the same launch.

Precision: float32 weights/inputs use `tl.dot(..., input_precision="ieee")` (true fp32 FMA
path, parity < 1e-4 against float64). Set LSDM_TRITON_FP32_PRECISION=tf32 (or pass
`precision="tf32"` to the launch helpers) to use TF32 tensor cores for float32 instead
(about 1e-3 relative error). bf16/fp16 inputs run on the tensor cores in that dtype with
float32 accumulation; activations are rounded to the input dtype between layers (about
1e-2 relative error against float64); under the interpreter (whose tl.dot mishandles bf16)
the bf16/fp16 operands are upcast exactly to float32 before the dot, so CPU tests check the
rounding of weights/activations but not the tensor-core instruction itself. float64 inputs/weights are served by the torch
reference (Triton float64 dots are not what this backend is for).

Availability: CUDA tensors, or CPU tensors when TRITON_INTERPRET=1 (the interpreter; each
program costs tens of milliseconds there, so keep grids small).

Performance note: the scratch tile is global memory (L2) rather than registers/shared memory;
a register/SMEM-resident variant for narrow widths and block-size tuning are GPU work.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ._registry import register
from .encode_generate import encode_torch, generate_torch
from .mlp import ACT_CODE, MLPParams

_LABEL_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8)
_COMPUTE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _available(device: torch.device) -> bool:
    return device.type == "cuda" or (device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")


def _why_unavailable() -> str:
    return "Triton runs on CUDA tensors, or on CPU tensors only with TRITON_INTERPRET=1 set before import"


# ----------------------------------------------------------------------------- kernel

@triton.jit
def _activate(v, slope, CODE: tl.constexpr):
    if CODE == 1:
        v = tl.where(v >= 0, v, v * slope)
    elif CODE == 2:
        v = tl.maximum(v, 0.0)
    elif CODE == 3:
        v = v / (1.0 + tl.exp(-v))
    elif CODE == 4:
        v = 1.0 / (1.0 + tl.exp(-v))
    return v


@triton.jit
def _dense_layer(src, src_stride, src_rows, dst, dst_stride, dst_rows, w_ptr, b_ptr, K, N, slope, row_mask,
                 ACT: tl.constexpr, TO_UINT8: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                 BK: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """dst[r, :N] = act(src[r, :K] @ W^T + b) for the BM rows of a tile, chunked over N and K.

    src row r lives at src + src_rows[r] * src_stride, dst row r at dst + dst_rows[r] * dst_stride
    (the row index within the tile for scratch, the global row for the op's input/output). W is (N, K) row-major in
    the compute dtype, b float32."""
    rk0 = tl.arange(0, BK)
    rn0 = tl.arange(0, BN)
    for n0 in range(0, N, BN):
        rn = n0 + rn0
        n_mask = rn < N
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(0, K, BK):
            rk = k0 + rk0
            k_mask = rk < K
            a = tl.load(src + src_rows[:, None] * src_stride + rk[None, :],
                        mask=row_mask[:, None] & k_mask[None, :], other=0.0)
            wt = tl.load(w_ptr + rn[None, :] * K + rk[:, None],
                         mask=k_mask[:, None] & n_mask[None, :], other=0.0)
            if UPCAST:  # interpreter: its tl.dot mishandles bf16, so dot the (exact) fp32 upcasts
                acc = tl.dot(a.to(wt.dtype).to(tl.float32), wt.to(tl.float32), acc, input_precision=PRECISION)
            else:
                acc = tl.dot(a.to(wt.dtype), wt, acc, input_precision=PRECISION)
        bias = tl.load(b_ptr + rn, mask=n_mask, other=0.0)
        v = _activate(acc + bias[None, :], slope, ACT)
        if TO_UINT8:
            v = tl.minimum(tl.maximum(v, 0.0), 1.0)
            v = tl.floor(v * 255.0 + 0.5)
        tl.store(dst + dst_rows[:, None] * dst_stride + rn[None, :], v.to(dst.dtype.element_ty),
                 mask=row_mask[:, None] & n_mask[None, :])


@triton.jit
def _fused_mlp_kernel(in_ptr, in_stride, cond_ptr, cond_stride, out_ptr, out_stride,
                      w_ptr, b_ptr, meta_ptr, slope_ptr, scratch_ptr, smax,
                      M, seed, row_offset, noise_dim, cond_dim,
                      NL: tl.constexpr, ACTS: tl.constexpr, MODE: tl.constexpr, LABELS: tl.constexpr,
                      TO_UINT8: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                      PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """MODE 0: encode (layer 0 reads in_ptr). MODE 1: generate with in-kernel noise. MODE 2:
    generate with eta loaded from in_ptr. meta = [dims (NL+1), weight offsets (NL), bias
    offsets (NL)] as int64; ACTS holds one octal digit per layer (see ACT_CODE)."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    s0 = scratch_ptr + pid.to(tl.int64) * (2 * BM) * smax
    s1 = s0 + BM * smax
    local = tl.arange(0, BM)
    num_tiles = tl.cdiv(M, BM)
    d0 = tl.load(meta_ptr)
    for tile in range(pid, num_tiles, nprog):
        rows = local.to(tl.int64) + tile * BM
        row_mask = rows < M
        if MODE != 0:
            # prologue: generator input cat(eta, x) -> s1
            rc0 = tl.arange(0, BK)
            if LABELS:
                lab = tl.load(cond_ptr + rows * cond_stride, mask=row_mask, other=0).to(tl.int64)
            for c0 in range(0, d0, BK):
                cols = c0 + rc0
                is_noise = cols < noise_dim
                is_cond = (cols >= noise_dim) & (cols < d0)
                if MODE == 1:
                    offs = (row_offset + rows)[:, None] * noise_dim + cols[None, :].to(tl.int64)
                    eta = tl.randn(seed, offs)
                else:
                    eta = tl.load(in_ptr + rows[:, None] * in_stride + cols[None, :],
                                  mask=row_mask[:, None] & is_noise[None, :], other=0.0).to(tl.float32)
                ccol = (cols - noise_dim).to(tl.int64)
                if LABELS:
                    x = (ccol[None, :] == lab[:, None]).to(tl.float32)
                else:
                    x = tl.load(cond_ptr + rows[:, None] * cond_stride + ccol[None, :],
                                mask=row_mask[:, None] & is_cond[None, :], other=0.0).to(tl.float32)
                v = tl.where(is_noise[None, :], eta, tl.where(is_cond[None, :], x, 0.0))
                tl.store(s1 + local[:, None] * smax + cols[None, :], v.to(s1.dtype.element_ty),
                         mask=(cols < d0)[None, :] & (local >= 0)[:, None])
            tl.debug_barrier()
        for l in tl.static_range(NL):
            K = tl.load(meta_ptr + l)
            N = tl.load(meta_ptr + l + 1)
            w_l = w_ptr + tl.load(meta_ptr + NL + 1 + l)
            b_l = b_ptr + tl.load(meta_ptr + 2 * NL + 1 + l)
            slope = tl.load(slope_ptr + l)
            if l % 2 == 0:
                s_src = s1
                s_dst = s0
            else:
                s_src = s0
                s_dst = s1
            if l == NL - 1:
                if l == 0 and MODE == 0:
                    _dense_layer(in_ptr, in_stride, rows, out_ptr, out_stride, rows, w_l, b_l, K, N, slope, row_mask,
                                 (ACTS >> (3 * l)) & 7, TO_UINT8, BM, BN, BK, PRECISION, UPCAST)
                else:
                    _dense_layer(s_src, smax, local, out_ptr, out_stride, rows, w_l, b_l, K, N, slope, row_mask,
                                 (ACTS >> (3 * l)) & 7, TO_UINT8, BM, BN, BK, PRECISION, UPCAST)
            else:
                if l == 0 and MODE == 0:
                    # rows past M are masked on load; their scratch rows hold zeros+bias, never stored
                    _dense_layer(in_ptr, in_stride, rows, s_dst, smax, local, w_l, b_l, K, N, slope, row_mask,
                                 (ACTS >> (3 * l)) & 7, False, BM, BN, BK, PRECISION, UPCAST)
                else:
                    _dense_layer(s_src, smax, local, s_dst, smax, local, w_l, b_l, K, N, slope, local >= 0,
                                 (ACTS >> (3 * l)) & 7, False, BM, BN, BK, PRECISION, UPCAST)
            tl.debug_barrier()


# ----------------------------------------------------------------------------- host side

_PACK_CACHE: dict = {}
_PACK_CACHE_MAX = 16


def _tensor_key(t: torch.Tensor):
    return (t.data_ptr(), t._version, tuple(t.shape), t.dtype, t.device)


def _pack(layers: list[tuple[torch.Tensor, torch.Tensor, int, float]], dtype: torch.dtype, device):
    """Flat weights (compute dtype), flat float32 biases, int64 meta, float32 slopes, ACTS."""
    key = (tuple((_tensor_key(w), _tensor_key(b), a, s) for w, b, a, s in layers), dtype, device)
    hit = _PACK_CACHE.get(key)
    if hit is not None:
        return hit
    ws = [w.detach().to(device=device, dtype=dtype).contiguous().reshape(-1) for w, _, _, _ in layers]
    bs = [b.detach().to(device=device, dtype=torch.float32).contiguous().reshape(-1) for _, b, _, _ in layers]
    dims = [int(layers[0][0].shape[1])] + [int(w.shape[0]) for w, _, _, _ in layers]
    w_off, b_off, wo, bo = [], [], 0, 0
    for w, b in zip(ws, bs):
        w_off.append(wo)
        b_off.append(bo)
        wo += w.numel()
        bo += b.numel()
    meta = torch.tensor(dims + w_off + b_off, dtype=torch.int64, device=device)
    slopes = torch.tensor([float(s) for _, _, _, s in layers], dtype=torch.float32, device=device)
    acts = 0
    for l, (_, _, a, _) in enumerate(layers):
        acts |= a << (3 * l)
    packed = (torch.cat(ws), torch.cat(bs), meta, slopes, acts, max(dims))
    if len(_PACK_CACHE) >= _PACK_CACHE_MAX:
        _PACK_CACHE.pop(next(iter(_PACK_CACHE)))
    _PACK_CACHE[key] = packed
    return packed


def _mlp_layers(p: MLPParams) -> list[tuple[torch.Tensor, torch.Tensor, int, float]]:
    n = len(p.weights)
    out = []
    for l, (w, b) in enumerate(zip(p.weights, p.biases)):
        if l < n - 1:
            code = ACT_CODE[p.activation]
        else:
            code = ACT_CODE[p.output_activation]
        out.append((w, b, code, p.negative_slope))
    return out


def _config(device: torch.device, dtype: torch.dtype, precision: str | None):
    if precision is None:
        precision = "ieee"
        if dtype == torch.float32 and os.environ.get("LSDM_TRITON_FP32_PRECISION", "").lower() == "tf32":
            precision = "tf32"
    if device.type == "cuda":
        bm, bn, bk = (64, 64, 32) if dtype == torch.float32 else (64, 64, 64)
        nsm = torch.cuda.get_device_properties(device).multi_processor_count
        max_prog = nsm * 4
        warps = 4
    else:  # interpreter: every program is costly, every op vectorised in numpy
        bm, bn, bk = 16, 64, 64
        max_prog = 4
        warps = 4
    return bm, bn, bk, max_prog, warps, precision


def _launch(layers, compute_dtype, *, mode, in_t, cond_t, labels, out, seed, row_offset, noise_dim,
            cond_dim, precision=None):
    device = out.device
    M = out.shape[0]
    if M == 0:
        return out
    w, b, meta, slopes, acts, smax = _pack(layers, compute_dtype, device)
    bm, bn, bk, max_prog, warps, prec = _config(device, compute_dtype, precision)
    nprog = max(1, min(triton.cdiv(M, bm), max_prog))
    alloc = torch.empty if device.type == "cuda" else torch.zeros  # zeros: no garbage rows on CPU
    scratch = alloc((nprog, 2, bm, smax), dtype=compute_dtype, device=device)
    if in_t is None:
        in_t = scratch  # unused (MODE 1)
    if cond_t is None:
        cond_t = scratch  # unused (MODE 0)
    to_uint8 = out.dtype == torch.uint8
    _fused_mlp_kernel[(nprog,)](
        in_t, in_t.stride(0) if in_t is not scratch else 0,
        cond_t, cond_t.stride(0) if cond_t is not scratch else 0,
        out, out.stride(0), w, b, meta, slopes, scratch, smax,
        M, int(seed), int(row_offset), int(noise_dim), int(cond_dim),
        NL=len(layers), ACTS=acts, MODE=mode, LABELS=bool(labels), TO_UINT8=to_uint8,
        BM=bm, BN=bn, BK=bk, PRECISION=prec, UPCAST=device.type != "cuda", num_warps=warps,
    )
    return out


def _row_major(t: torch.Tensor) -> torch.Tensor:
    return t if t.dim() == 2 and (t.shape[1] <= 1 or t.stride(1) == 1) else t.contiguous()


@register("encode", "triton", available=_available, why_unavailable=_why_unavailable)
@torch.no_grad()
def encode_triton(encoder: MLPParams, y: torch.Tensor, *, batch_size=None, precision: str | None = None):
    if y.dtype == torch.float64 or any(w.dtype == torch.float64 for w in encoder.weights):
        return encode_torch(encoder, y, batch_size=batch_size)  # float64 stays on the reference
    compute = y.dtype if y.dtype in _COMPUTE_DTYPES else torch.float32
    y = _row_major(y.to(compute))
    layers = _mlp_layers(encoder)
    out = torch.empty((y.shape[0], encoder.out_features), dtype=torch.float32, device=y.device)
    step = y.shape[0] if not batch_size or batch_size >= y.shape[0] else int(batch_size)
    for i in range(0, max(y.shape[0], 1), max(step, 1)):
        _launch(layers, compute, mode=0, in_t=y[i:i + step], cond_t=None, labels=False,
                out=out[i:i + step], seed=0, row_offset=0, noise_dim=0, cond_dim=0, precision=precision)
    return out


@register("generate", "triton", available=_available, why_unavailable=_why_unavailable)
@torch.no_grad()
def generate_triton(generator: MLPParams, decoder: MLPParams, cond: torch.Tensor, *, noise_dim, num_classes,
                    seed, offset, eta, out_dtype, out: torch.Tensor | None = None, precision: str | None = None):
    wdt = generator.weights[0].dtype
    if wdt == torch.float64 or decoder.weights[0].dtype == torch.float64:  # float64 stays on the reference
        y = generate_torch(generator, decoder, cond, noise_dim=noise_dim, num_classes=num_classes, seed=seed,
                           offset=offset, eta=eta, out_dtype=out_dtype)
        if out is not None:
            out.copy_(y)
            return out
        return y
    compute = wdt if wdt in _COMPUTE_DTYPES else torch.float32
    labels = cond.dtype in _LABEL_DTYPES
    if labels:
        if num_classes is None:
            raise ValueError("integer labels given but num_classes is None")
        if cond.numel() and (int(cond.min()) < 0 or int(cond.max()) >= num_classes):
            raise ValueError(f"labels must be in [0, {num_classes}), got range [{int(cond.min())}, {int(cond.max())}]")
        cond_t = cond.contiguous()
        cond_dim = int(num_classes)
    else:
        cond_t = _row_major(cond)
        cond_dim = int(cond.shape[1])
    n = cond.shape[0]
    if out is None:
        out = torch.empty((n, decoder.out_features), dtype=out_dtype, device=cond.device)
    layers = _mlp_layers(generator) + _mlp_layers(decoder)
    if eta is not None:
        in_t = _row_major(eta.to(device=cond.device))
        mode = 2
    else:
        in_t, mode = None, 1
    return _launch(layers, compute, mode=mode, in_t=in_t, cond_t=cond_t, labels=labels, out=out, seed=seed,
                   row_offset=offset, noise_dim=noise_dim, cond_dim=cond_dim, precision=precision)
