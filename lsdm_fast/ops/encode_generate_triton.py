"""Triton backend for `encode` and `generate` (docs/design.md §3-4).

One kernel, `_fused_mlp_kernel`, serves both ops; each call is ONE Triton launch (plus, the
first time a given set of weights is seen, a few torch ops that pack them; the packing is
cached in a DerivedCache: the weights' identity and version, held weakly).

The entry points in encode_generate.py validate every argument before dispatch (see the
contract there); nothing here reads a device value on the host, so a call never synchronises
and can be captured in a CUDA graph once the weights are packed (one warm-up call).

Structure (FullyFusedMLP idea):
- Every width is padded to a multiple of 16 (zero weights and biases, so padded activations
  are exactly 0) and passed as a constexpr, with the weight offsets, activations and block
  sizes of each layer: all loads have provable 16-byte alignment and bounds, and each layer's
  K loop is software-pipelined (NUM_STAGES deep) into the dot.
- Weights reach shared memory by TMA (host-side tensor descriptors, one per layer and column
  block shape, `_weight_descriptors`) on the tensor-core paths: no address registers for them,
  and a K step past a layer's width reads zeros (784 in steps of 64: the last step is 16 wide).
  The FMA path (float32 "ieee") loads them by pointer.
- A persistent grid (one program per SM on a GPU) walks row tiles of BM rows and runs all
  layers of a tile back to back. Between layers the tile's activations ping-pong through a
  per-program scratch (2 x BM x scratch width, compute dtype) that only this program touches;
  the grid is capped so that the whole scratch takes at most `_L2_SHARE` of the L2 and stays
  there. The last layer writes the output exactly once, in its dtype.
- Each layer is a loop over BN-wide column tiles, each a pipelined loop over BK-wide K steps;
  per layer the host picks power-of-two blocks up to the config's widest and one narrower tail
  tile for what is left (`_blocks`: 784 = 6 x 128 + 16 = 3 x 256 + 16), so no padded column
  beyond the 16-grid is computed.
- L2 traffic, what bounds this design (lsdm_fast/ops/roofline.py; H200 estimates, never run on a
  GPU): per BM = 128-row tile every weight is read once and each layer's input N / BN times.
  generate 2^20 (26->512->512->32->512->512->784, bf16, BN 128): 2.04 TFLOP, 1.65 GB HBM,
  39.7 GB L2->SM: 3.97-5.7 ms, L2-bound (the bf16 peak alone would allow 2.6 ms). encode 2^20
  (784->512->512->32, bf16): 1.43 TFLOP, 1.78 GB HBM (the bf16 input), 19.9 GB L2->SM with
  256-wide column tiles, 25.4 GB with 128 before issue 22: 2.0-3.0 ms (was 2.5-3.6). BN = 256
  compiles without spills only for the bf16 / fp16 encode kernels (ptxas for sm_90: the generate
  kernels spill 8-324 bytes at 256, TF32 at 256 asks for 272 KB of shared memory), so generate
  keeps 128 (see _config). The default conv model's dense parts are small: its head (generator
  42->512->512->32, then 32->3136) writes 3136 activations a row, 6.6 GB in bf16 for 2^20 rows.
- generate: a prologue builds the generator input cat(eta, x) for the tile: eta from
  `tl.randn(seed, (row_offset + i) * noise_dim + j)` as int64 (exactly
  lsdm_fast.ops.philox.philox_normal, so noise is independent of tiling and of batch splits),
  or loaded when `eta` is given; x a one-hot built from integer labels (the entry point has
  checked their range) or the loaded condition tensor.
- uint8 output: clamp(y * 255, 0, 255) rounded half to even (adding and subtracting 2^23 in
  float32), the rule of torch.round in the reference; the clamp sits between the multiply and
  the add so that no fused multiply-add changes the rounding.

Precision: float32 weights use `tl.dot(..., input_precision="ieee")` by default (the fp32 FMA
path, parity < 1e-4 against float64); LSDM_MATMUL_PRECISION=tf32 (or `precision="tf32"`)
selects TF32 tensor cores (wgmma) instead. bf16/fp16 weights run on the tensor cores in that
dtype (wgmma) with float32 accumulation; activations are rounded to that dtype between layers.
Under the interpreter (whose tl.dot mishandles bf16) the half operands are upcast exactly to
float32 before the dot, so CPU tests check the rounding of weights and activations, not the
tensor-core instruction. float64 weights or inputs are served by the torch reference.

Availability: CUDA tensors, or CPU tensors when TRITON_INTERPRET=1 (the interpreter; each
program costs tens of milliseconds there, so its grid is small).

Verified without a GPU: interpreter parity (tests/test_parity_encode_generate.py) and sm_90
compilation of every configuration the host code can pick (tests/test_sm90_mlp.py: no spills,
wgmma/HGMMA for bf16, fp16 and tf32). Block sizes, stages and the L2 share are untimed choices.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from ._backend_util import env_precision
from ._backend_util import triton_available as _available
from ._backend_util import triton_interpreting as _interpreting
from ._backend_util import triton_why_unavailable as _why_unavailable
from ._registry import register
from ._weight_cache import DerivedCache
from .encode_generate import LABEL_DTYPES, encode_torch, fp32_ieee_is_slower, generate_torch
from .mlp import ACT_CODE, MLPParams

_HALF = (torch.bfloat16, torch.float16)
PRECISIONS = ("ieee", "tf32")
_L2_SHARE = 0.75  # fraction of the L2 the scratch of the whole grid may take (untimed choice)
_TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


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
def _dense_tile(src, src_stride, src_mask, dst, dst_stride, dst_mask, w_desc, w_ptr, b_ptr, slope, z, n0,
                K_LOAD: tl.constexpr, K: tl.constexpr, N: tl.constexpr, N_STORE: tl.constexpr, ACT: tl.constexpr,
                TO_UINT8: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, MASK_N: tl.constexpr, BK: tl.constexpr,
                NUM_STAGES: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                W_TMA: tl.constexpr):
    """Output columns n0 .. n0 + BN of one layer for the BM rows of a tile: BK steps through K
    (software-pipelined; a last step past K reads zero weights and masked activations), then
    bias, activation, store. W_TMA: W tiles by TMA (w_desc, block (BN, BK)), which needs no
    address registers (what lets the encode kernel's tiles be 256 wide without spills);
    otherwise (the FMA path) by pointer from w_ptr, W (N x K) row-major."""
    r = tl.arange(0, BM) + z
    rn = n0 + tl.arange(0, BN) + z
    rk0 = tl.arange(0, BK) + tl.multiple_of(n0 * z, 16)  # + 0, not hoistable out of the column loop
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in tl.range(0, K, BK, num_stages=NUM_STAGES):
        rk = k0 + rk0
        a = tl.load(src + r[:, None] * src_stride + rk[None, :], mask=src_mask[:, None] & (rk < K_LOAD)[None, :],
                    other=0.0)
        if W_TMA:
            w = w_desc.load([n0, k0])
        elif MASK_N or (K % BK != 0):
            w = tl.load(w_ptr + rn[:, None] * K + rk[None, :], mask=(rn < N)[:, None] & (rk < K)[None, :], other=0.0)
        else:
            w = tl.load(w_ptr + rn[:, None] * K + rk[None, :])
        if UPCAST:  # interpreter: its tl.dot mishandles bf16, so dot the (exact) fp32 upcasts
            acc = tl.dot(a.to(DOT).to(tl.float32), tl.trans(w.to(DOT).to(tl.float32)), acc,
                         input_precision=PRECISION)
        else:
            acc = tl.dot(a.to(DOT), tl.trans(w), acc, input_precision=PRECISION)
    if MASK_N:
        bias = tl.load(b_ptr + rn, mask=rn < N, other=0.0)
    else:
        bias = tl.load(b_ptr + rn)
    v = _activate(acc + bias[None, :], slope, ACT)
    if TO_UINT8:
        # round half to even as torch.round: x + 2^23 - 2^23 in float32 for 0 <= x <= 255
        v = tl.minimum(tl.maximum(v * 255.0, 0.0), 255.0)
        v = (v + 8388608.0) - 8388608.0
    tl.store(dst + r[:, None] * dst_stride + rn[None, :], v.to(dst.dtype.element_ty),
             mask=dst_mask[:, None] & (rn < N_STORE)[None, :])


@triton.jit
def _dense_layer(src, src_stride, src_mask, dst, dst_stride, dst_mask, w_desc, w_tail_desc, w_ptr, b_ptr, slope, z,
                 K_LOAD: tl.constexpr, K: tl.constexpr, N: tl.constexpr, N_STORE: tl.constexpr,
                 ACT: tl.constexpr, TO_UINT8: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                 BN_TAIL: tl.constexpr, BK: tl.constexpr, NUM_STAGES: tl.constexpr,
                 DOT: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, W_TMA: tl.constexpr):
    """dst[r, :N_STORE] = act(src[r, :K] @ W^T + b) for the BM rows r of a tile.

    W is (N, K) row-major in the dots' operand dtype DOT (N, K padded to multiples of 16, padding
    zero), at w_ptr, read through w_desc (block (BN, BK)) and, for the last BN_TAIL columns,
    w_tail_desc (block (BN_TAIL, BK)) when W_TMA; b float32 (N,). Row r of the tile lives at src + r * src_stride (K_LOAD <= K
    valid columns, the rest read as 0; rows outside src_mask read as 0) and dst + r * dst_stride (rows
    outside dst_mask are not stored). Full BN-wide column tiles, then one BN_TAIL-wide tile for the
    rest (784 = 3 x 256 + 16: no padded columns computed). `z` is 0 at run time, opaque to the
    compiler: index vectors that depend on it are not hoisted out of the tile and column loops,
    where they would hold registers across every layer (see _fused_mlp_kernel)."""
    N_FULL: tl.constexpr = N // BN * BN
    for n0 in range(0, N_FULL, BN):
        _dense_tile(src, src_stride, src_mask, dst, dst_stride, dst_mask, w_desc, w_ptr, b_ptr, slope, z, n0, K_LOAD,
                    K, N, N_STORE, ACT, TO_UINT8, BM, BN, False, BK, NUM_STAGES, DOT, PRECISION, UPCAST, W_TMA)
    if BN_TAIL > 0:
        MASK_TAIL: tl.constexpr = N_FULL + BN_TAIL > N
        _dense_tile(src, src_stride, src_mask, dst, dst_stride, dst_mask, w_tail_desc, w_ptr, b_ptr, slope, z,
                    N_FULL, K_LOAD, K, N, N_STORE, ACT, TO_UINT8, BM, BN_TAIL, MASK_TAIL, BK, NUM_STAGES, DOT,
                    PRECISION, UPCAST, W_TMA)


@triton.jit
def _generator_input(in_tile, in_stride, cond_tile, cond_stride, dst, row_mask, first_row, seed, z,
                     SW: tl.constexpr, NOISE: tl.constexpr, COND: tl.constexpr, WIDTH: tl.constexpr,
                     MODE: tl.constexpr, LABELS: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr):
    """dst[r, :WIDTH] = cat(eta, x, zero padding) for the BM rows r of a tile; first_row is the
    global index (with the op's offset) of row 0, the Philox row of the noise."""
    r = tl.arange(0, BM) + z
    rc0 = tl.arange(0, BK)
    if LABELS:
        lab = tl.load(cond_tile + r * cond_stride, mask=row_mask, other=-1).to(tl.int32)
    for c0 in range(0, WIDTH, BK):
        cols = c0 + rc0
        is_noise = cols < NOISE
        is_cond = (cols >= NOISE) & (cols < NOISE + COND)
        if MODE == 1:
            eta = tl.randn(seed, (first_row + r.to(tl.int64))[:, None] * NOISE + cols[None, :].to(tl.int64))
        else:
            eta = tl.load(in_tile + r[:, None] * in_stride + cols[None, :],
                          mask=row_mask[:, None] & is_noise[None, :], other=0.0).to(tl.float32)
        ccol = cols - NOISE
        if LABELS:
            x = (ccol[None, :] == lab[:, None]).to(tl.float32)
        else:
            x = tl.load(cond_tile + r[:, None] * cond_stride + ccol[None, :],
                        mask=row_mask[:, None] & is_cond[None, :], other=0.0).to(tl.float32)
        v = tl.where(is_noise[None, :], eta, tl.where(is_cond[None, :], x, 0.0))
        tl.store(dst + r[:, None] * SW + cols[None, :], v.to(dst.dtype.element_ty),
                 mask=(r >= 0)[:, None] & (cols < WIDTH)[None, :])


@triton.jit(do_not_specialize=["M", "seed", "row_offset", "zero"])
def _fused_mlp_kernel(in_ptr, in_stride, cond_ptr, cond_stride, out_ptr, out_stride,
                      wd0, wd1, wd2, wd3, wd4, wd5, wd6, wd7, wt0, wt1, wt2, wt3, wt4, wt5, wt6, wt7, w_ptr,
                      b_ptr, slope_ptr, scratch_ptr, M, seed, row_offset, zero,
                      NL: tl.constexpr, DIMS: tl.constexpr, IN_DIM: tl.constexpr, OUT_DIM: tl.constexpr,
                      W_OFF: tl.constexpr, B_OFF: tl.constexpr, ACTS: tl.constexpr, BNS: tl.constexpr,
                      BN_TAILS: tl.constexpr, BKS: tl.constexpr, SW: tl.constexpr, MODE: tl.constexpr, NOISE: tl.constexpr,
                      COND: tl.constexpr, LABELS: tl.constexpr, TO_UINT8: tl.constexpr, BM: tl.constexpr,
                      NUM_STAGES: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                      W_TMA: tl.constexpr):
    """MODE 0: encode (layer 0 reads IN_DIM columns of in_ptr). MODE 1: generate with in-kernel
    noise. MODE 2: generate with eta loaded from in_ptr. Layer l maps DIMS[l] -> DIMS[l + 1]
    (padded widths); the last layer stores OUT_DIM columns.

    Estimate (H200, module docstring): 2^20 MNIST generations 3.97-5.7 ms, 2^20 encodings 2.0-3.0
    ms, both bound by L2 -> SM traffic (39.7 and 19.9 GB).

    Registers: every address is a 64-bit tile base plus 32-bit offsets within the tile, and the
    index vectors of each layer depend on `z = tile * zero` (zero is 0, passed at run time), so
    the compiler cannot hoist them out of the tile loop: hoisted, the fully unrolled K loops of
    all layers would keep their addresses live for the whole kernel and spill."""
    # the weight descriptors, one argument each (DESC_SLOTS = 8), indexed by layer below
    w_descs = (wd0, wd1, wd2, wd3, wd4, wd5, wd6, wd7)
    w_tail_descs = (wt0, wt1, wt2, wt3, wt4, wt5, wt6, wt7)  # read as [l % 8]: past 8 layers (W_TMA off) unused
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    buf0 = scratch_ptr + pid.to(tl.int64) * (2 * BM * SW)
    buf1 = buf0 + BM * SW
    r = tl.arange(0, BM)
    all_rows = r >= 0
    for tile in range(pid, tl.cdiv(M, BM), nprog):
        row0 = tl.cast(tile, tl.int64) * BM
        row_mask = r < M - row0
        z = tl.multiple_of(tile * zero, 16)
        out_tile = out_ptr + row0 * out_stride
        if MODE != 0:
            # 16 columns at a time: Philox state for wider chunks costs registers the layers need
            _generator_input(in_ptr + row0 * in_stride, in_stride, cond_ptr + row0 * cond_stride, cond_stride, buf1,
                             row_mask, row_offset + row0, seed, z, SW, NOISE, COND, DIMS[0], MODE, LABELS, BM, 16)
            tl.debug_barrier()
        for l in tl.static_range(NL):
            b_l = b_ptr + B_OFF[l]
            slope = tl.load(slope_ptr + l)
            if l % 2 == 0:
                s_src = buf1
                s_dst = buf0
            else:
                s_src = buf0
                s_dst = buf1
            if l == 0 and MODE == 0:
                src, src_stride, src_mask, k_load = in_ptr + row0 * in_stride, in_stride, row_mask, IN_DIM
            else:
                src, src_stride, src_mask, k_load = s_src, SW, all_rows, DIMS[l]
            if l == NL - 1:
                _dense_layer(src, src_stride, src_mask, out_tile, out_stride, row_mask, w_descs[l % 8],
                             w_tail_descs[l % 8], w_ptr + W_OFF[l], b_l, slope, z, k_load, DIMS[l], DIMS[l + 1], OUT_DIM, ACTS[l], TO_UINT8,
                             BM, BNS[l], BN_TAILS[l], BKS[l], NUM_STAGES, DOT, PRECISION, UPCAST, W_TMA)
            else:
                # rows past M read zeros (or noise) and are never stored
                _dense_layer(src, src_stride, src_mask, s_dst, SW, all_rows, w_descs[l % 8], w_tail_descs[l % 8],
                             w_ptr + W_OFF[l], b_l, slope, z, k_load, DIMS[l], DIMS[l + 1], DIMS[l + 1], ACTS[l], False,
                             BM, BNS[l], BN_TAILS[l], BKS[l], NUM_STAGES, DOT, PRECISION, UPCAST, W_TMA)
            tl.debug_barrier()


# ----------------------------------------------------------------------------- host side

BN_MAX = 128  # widest column tile
BN_MAX_ENCODE_HALF = 256  # widest column tile of the bf16 / fp16 encode kernel


class _Config(NamedTuple):
    bm: int
    bn_max: int  # widest column tile (generate)
    bn_max_encode: int  # widest column tile (encode)
    bk_max: int
    warps: int
    stages: int
    precision: str
    w_tma: bool  # weights by TMA (tensor-core paths) or by pointer (FMA)
    maxnreg: int | None = None


def _config(dtype: torch.dtype, precision: str) -> _Config:
    if _interpreting():  # every program and every op is Python: few tiles, a GPU's BN/BK (same tails)
        return _Config(32, BN_MAX, BN_MAX_ENCODE_HALF, 64, 4, 1, precision, precision == "tf32" or dtype in _HALF)
    # Weights by TMA: no address registers for them. Column tiles of 256 (each layer's input
    # re-read from L2 N / BN times: half as often as at 128) compile without spills only for the
    # bf16 / fp16 encode kernels; the generate kernels (more layers, the noise prologue, the uint8
    # epilogue) spill 8-324 bytes at 256 and TF32 at 256 asks for 272 KB of shared memory, so
    # they keep 128 (ptxas for sm_90, tests/test_sm90_mlp.py). Two stages: deeper spills.
    if dtype in _HALF:
        return _Config(128, BN_MAX, BN_MAX_ENCODE_HALF, 64, 8, 2, precision, True)
    if precision == "tf32":
        return _Config(128, BN_MAX, BN_MAX, 32, 8, 2, precision, True)
    # ieee fp32 FMA path: register-bound, small tiles; 255 registers because one program per SM
    # leaves no occupancy to trade them for (ptxas otherwise caps at 168 and spills); weights by
    # pointer (by TMA this path spilled 80 bytes in one case)
    return _Config(64, 64, 64, 16, 4, 2, precision, False, maxnreg=255)


def _pad16(n: int) -> int:
    return (n + 15) // 16 * 16


def _blocks(width: int, block_max: int) -> tuple[int, int]:
    """(block, tail) for a width that is a multiple of 16: full power-of-two blocks, as wide as
    possible up to block_max, then one power-of-two tail (0 if none) at most half a block wide, so
    that width = k * block + rest, rest <= tail < block (784 = 6 x 128 + 16, 208 = 3 x 64 + 16)."""
    block = min(block_max, 1 << (width.bit_length() - 1))
    while width % block and triton.next_power_of_2(width % block) > block // 2:
        block //= 2
    rest = width % block
    return block, (triton.next_power_of_2(rest) if rest else 0)


def _k_step(width: int, block_max: int) -> int:
    """The K step of a layer: a power of two up to block_max; a last step past the width reads zero
    weights (TMA) and masked activations. The one that pads least, counting a step as 16 columns of
    overhead (784 -> 64: 13 steps, 832 columns)."""
    cands = [b for b in (16, 32, 64, 128) if b <= block_max]
    return min(cands, key=lambda b: (-(-width // b) * (b + 16), -b))


class _Packed(NamedTuple):
    w: torch.Tensor  # every layer's (N_pad, K_pad) weight, row-major, compute dtype, one buffer
    b: torch.Tensor  # every layer's (N_pad,) bias, float32
    slopes: torch.Tensor  # (layers,) float32
    dims: tuple  # padded widths
    w_off: tuple
    b_off: tuple
    acts: tuple


_PACKS = DerivedCache(maxsize=16)


def _layers(*mlps: MLPParams):
    """(weight, bias, activation code, slope) per layer of the MLPs run back to back."""
    out = []
    for p in mlps:
        n = len(p.weights)
        for l, (w, b) in enumerate(zip(p.weights, p.biases)):
            code = ACT_CODE[p.activation] if l < n - 1 else ACT_CODE[p.output_activation]
            out.append((w, b, code, float(p.negative_slope)))
    return out


def _pack(layers, dtype: torch.dtype, device: torch.device) -> _Packed:
    def build():
        dims = [_pad16(int(layers[0][0].shape[1]))] + [_pad16(int(w.shape[0])) for w, _, _, _ in layers]
        ws, bs, w_off, b_off, wo, bo = [], [], [], [], 0, 0
        for l, (w, b, _, _) in enumerate(layers):
            wp = torch.zeros(dims[l + 1], dims[l], dtype=dtype, device=device)
            wp[:w.shape[0], :w.shape[1]] = w.detach()
            bp = torch.zeros(dims[l + 1], dtype=torch.float32, device=device)
            bp[:b.shape[0]] = b.detach()
            ws.append(wp.reshape(-1))
            bs.append(bp)
            w_off.append(wo)
            b_off.append(bo)
            wo += wp.numel()
            bo += bp.numel()
        slopes = torch.tensor([s for _, _, _, s in layers], dtype=torch.float32, device=device)
        return _Packed(torch.cat(ws), torch.cat(bs), slopes, tuple(dims), tuple(w_off), tuple(b_off),
                       tuple(a for _, _, a, _ in layers))

    sources = [t for w, b, _, _ in layers for t in (w, b)]
    extra = (tuple((a, s) for _, _, a, s in layers), dtype, device)
    return _PACKS.get(sources, extra, build)


@functools.lru_cache(maxsize=None)
def _device_limits(device: torch.device) -> tuple[int, int]:
    """(multiprocessors, L2 bytes); an H100's without a GPU (the sm_90 compile check)."""
    if device.type != "cuda":
        return 132, 50 * 2**20
    props = torch.cuda.get_device_properties(device)
    return props.multi_processor_count, props.L2_cache_size


def _precision(dtype: torch.dtype, precision: str | None) -> str:
    if precision is None:
        precision = env_precision("LSDM_TRITON_FP32_PRECISION", "ieee").lower() if dtype == torch.float32 else "ieee"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision if dtype == torch.float32 else "ieee"  # half dtypes always run on the tensor cores


# Layers whose weights a kernel takes by TMA: one TensorDescriptor argument per layer and block shape, as separate
# top-level arguments. Triton 3.6's launcher expands only top-level descriptors: a tuple of them compiles (and runs
# under the interpreter) but fails at the first launch on a GPU (seen on an H200, 2026-12-04; tests/sm90.py now
# builds every kernel's launcher). Longer chains take their weights by pointer (in bf16 at 9 layers of 128 that
# spills 4 bytes a thread: tests/test_sm90_mlp.py).
DESC_SLOTS = 8


def _desc_args(w_descs: tuple, w_tail_descs: tuple) -> tuple:
    """The DESC_SLOTS main and DESC_SLOTS tail weight arguments of a kernel: the layers' own, then the last one
    again in the slots no layer reads (every argument of a specialisation keeps its type)."""
    assert 0 < len(w_descs) == len(w_tail_descs) <= DESC_SLOTS
    pad = DESC_SLOTS - len(w_descs)
    return (*w_descs, *(w_descs[-1],) * pad, *w_tail_descs, *(w_tail_descs[-1],) * pad)


def _weight_args(w_tma: bool, pk: _Packed, bns, bn_tails, bks) -> tuple[bool, tuple]:
    """(W_TMA, the kernel's DESC_SLOTS x 2 weight arguments) for a chain `pk`: its TMA descriptors where the config
    takes weights by TMA and the chain fits the slots, else the packed weights as unused placeholders (the kernel
    then reads them by pointer)."""
    w_tma = w_tma and len(pk.dims) - 1 <= DESC_SLOTS
    if not w_tma:
        return False, _desc_args((pk.w,), (pk.w,))
    return True, _desc_args(*_weight_descriptors(pk, bns, bn_tails, bks))


def _weight_descriptors(pk: _Packed, bns, bn_tails, bks) -> tuple[tuple, tuple]:
    """Per layer, TMA descriptors of its packed (N, K) weight with blocks (BN, BK) and (BN_TAIL, BK)
    (the main one again where there is no tail). Packed widths are multiples of 16 and every
    layer's offset a multiple of 256 elements: the 16-byte alignment TMA needs."""
    main, tail = [], []
    for l, (bn, bt, bk) in enumerate(zip(bns, bn_tails, bks)):
        n, k = pk.dims[l + 1], pk.dims[l]
        base = pk.w[pk.w_off[l]:pk.w_off[l] + n * k]
        main.append(TensorDescriptor(base, [n, k], [k, 1], [bn, bk]))
        tail.append(TensorDescriptor(base, [n, k], [k, 1], [bt, bk]) if bt else main[-1])
    return tuple(main), tuple(tail)


def _launch(layers, compute_dtype, *, mode, in_t, cond_t, labels, out, seed=0, row_offset=0, noise_dim=0,
            cond_dim=0, precision=None):
    M = out.shape[0]
    if M == 0:
        return out
    device = out.device
    pk = _pack(layers, compute_dtype, device)
    cfg = _config(compute_dtype, _precision(compute_dtype, precision))
    nl = len(layers)
    bn_max = cfg.bn_max_encode if mode == 0 else cfg.bn_max
    bns, bn_tails = zip(*(_blocks(n, bn_max) for n in pk.dims[1:]))
    bk_max = [cfg.bk_max] * nl
    if mode == 0 and in_t.dtype != compute_dtype:  # converted in registers on the way in: narrower K steps
        bk_max[0] = max(16, cfg.bk_max // 2)
    bks = tuple(_k_step(k, b) for k, b in zip(pk.dims[:-1], bk_max))
    w_tma, w_args = _weight_args(cfg.w_tma, pk, bns, bn_tails, bks)
    # scratch: the generator input (generate) and every hidden activation
    sw = max(pk.dims[1:-1] + ((pk.dims[0],) if mode != 0 else ()), default=16)
    elt = compute_dtype.itemsize
    tiles = triton.cdiv(M, cfg.bm)
    if _interpreting():
        nprog = min(tiles, 4)
    else:
        sms, l2 = _device_limits(device)
        nprog = max(1, min(tiles, sms, int(l2 * _L2_SHARE) // (2 * cfg.bm * sw * elt)))
    scratch = torch.empty((nprog, 2, cfg.bm, sw), dtype=compute_dtype, device=device)
    in_t = scratch if in_t is None else in_t  # unused in MODE 1
    cond_t = scratch if cond_t is None else cond_t  # unused in MODE 0
    _fused_mlp_kernel[(nprog,)](
        in_t, in_t.stride(0), cond_t, cond_t.stride(0), out, out.stride(0), *w_args, pk.w, pk.b,
        pk.slopes, scratch, M, int(seed), int(row_offset), 0,
        NL=nl, DIMS=pk.dims, IN_DIM=int(layers[0][0].shape[1]), OUT_DIM=int(layers[-1][0].shape[0]),
        W_OFF=pk.w_off, B_OFF=pk.b_off, ACTS=pk.acts, BNS=bns, BN_TAILS=bn_tails, BKS=bks,
        SW=sw, MODE=mode,
        NOISE=int(noise_dim), COND=int(cond_dim), LABELS=bool(labels), TO_UINT8=out.dtype == torch.uint8,
        BM=cfg.bm, NUM_STAGES=cfg.stages, DOT=_TL_DTYPES[compute_dtype], PRECISION=cfg.precision,
        UPCAST=_interpreting(), W_TMA=w_tma,
        num_warps=cfg.warps, maxnreg=cfg.maxnreg,
    )
    return out


def _row_major(t: torch.Tensor) -> torch.Tensor:
    """t itself when its rows are contiguous and a tile's row offsets (< 128 * stride) fit in int32."""
    ok = (t.dim() == 1 or t.shape[1] <= 1 or t.stride(1) == 1) and t.stride(0) < 2**31 // 128
    return t if ok else t.contiguous()


def _fuses(part, mlps, precision) -> bool:
    return _patch.can_fuse(part, mlps, precision)


@register("encode", "triton", available=_available, why_unavailable=_why_unavailable, fuses=_fuses,
          auto_skip=fp32_ieee_is_slower)
@torch.no_grad()
def encode_triton(encoder: MLPParams, y: torch.Tensor, *, batch_size=None, precision: str | None = None,
                  front=None):
    if front is not None:  # a PatchEncoder's front, fused with the fc (encode_generate_triton_patch.py)
        return _patch.encode_patch(encoder, y, front, precision=precision)
    if y.dtype == torch.float64 or any(w.dtype == torch.float64 for w in encoder.weights):
        return encode_torch(encoder, y, batch_size=batch_size)  # float64 stays on the reference
    # the weights' dtype sets the dots' (as in generate); y is read in its own dtype and converted
    # tile by tile, never copied
    compute = encoder.weights[0].dtype if encoder.weights[0].dtype in _HALF else torch.float32
    y = _row_major(y)
    layers = _layers(encoder)
    out = torch.empty((y.shape[0], encoder.out_features), dtype=torch.float32, device=y.device)
    step = y.shape[0] if batch_size is None else min(int(batch_size), max(y.shape[0], 1))
    for i in range(0, y.shape[0], max(step, 1)):
        _launch(layers, compute, mode=0, in_t=y[i:i + step], cond_t=None, labels=False, out=out[i:i + step],
                precision=precision)
    return out


@register("generate", "triton", available=_available, why_unavailable=_why_unavailable, fuses=_fuses,
          auto_skip=fp32_ieee_is_slower)
@torch.no_grad()
def generate_triton(generator: MLPParams, decoder: MLPParams, cond: torch.Tensor, *, noise_dim, num_classes,
                    seed, offset, eta, out_dtype, precision: str | None = None, tail=None):
    if tail is not None:  # a PatchDecoder's tail, fused with the generator and the head (..._triton_patch.py)
        return _patch.generate_patch(generator, decoder, cond, tail, noise_dim=noise_dim, num_classes=num_classes,
                                       seed=seed, offset=offset, eta=eta, out_dtype=out_dtype, precision=precision)
    if generator.weights[0].dtype == torch.float64 or decoder.weights[0].dtype == torch.float64:
        return generate_torch(generator, decoder, cond, noise_dim=noise_dim, num_classes=num_classes, seed=seed,
                              offset=offset, eta=eta, out_dtype=out_dtype)  # float64 stays on the reference
    wdt = generator.weights[0].dtype
    compute = wdt if wdt in _HALF else torch.float32
    labels = cond.dtype in LABEL_DTYPES
    cond_t = _row_major(cond)
    cond_dim = int(num_classes) if labels else int(cond.shape[1])
    out = torch.empty((cond.shape[0], decoder.out_features), dtype=out_dtype, device=cond.device)
    mode, in_t = (1, None) if eta is None else (2, _row_major(eta))
    return _launch(_layers(generator, decoder), compute, mode=mode, in_t=in_t, cond_t=cond_t, labels=labels,
                   out=out, seed=seed, row_offset=offset, noise_dim=noise_dim, cond_dim=cond_dim,
                   precision=precision)


# the patch autoencoder's fused kernels build on this module's kernels and host code: imported last
from . import encode_generate_triton_patch as _patch  # noqa: E402
