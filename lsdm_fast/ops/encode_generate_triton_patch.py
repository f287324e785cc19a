"""Triton kernels for the patch autoencoder (models.PatchEncoder / PatchDecoder, issue 24), fused end to end
(issue 22 phase 2): `encode` with a PatchEncoder's front and `generate` with a PatchDecoder's tail, each ONE
launch that reads the images (encode) or the labels (generate) and writes the latents or the images, with no
intermediate tensor in device memory. encode_generate_triton.py dispatches here when the entry point hands it
a PatchPart (ops/patch.py); the contract is ops/encode_generate.py's.

generate, per tile of BM images (a persistent grid walks the tiles):
  1. the generator (and any decoder layers before its last) exactly as the fused MLP kernel runs them
     (encode_generate_triton._generator_input / _dense_layer: noise in the kernel, activations through a
     per-program scratch in L2); z (BM x latent) is then held in registers;
  2. the low x low positions in row-major order, each a chain of small GEMMs on the tile with the image rows
     as M: the decoder's dense head sliced to the position (h0 = act(z Wfc_p^T + b_p), W columns), K mix
     layers (leaky_relu(h M_k^T + b_k)), and the transposed convolution as four (BM x S*S*C) GEMMs, one per
     quarter (du, dv) of the position's (2S x 2S) patch;
  3. the overlap-add: quarter (du, dv) of position (i, j) belongs to cell (i + du, j + dv). Cell (i, j) is
     complete once position (i, j) is done: its (0, 0) quarter and the (0, 1) quarter of position (i, j - 1)
     (carried in registers along the row, with the (1, 1) one), plus the du = 1 quarters of row i - 1, which
     that row left in a small per-program carry buffer (2 x (low + 1) cell slots of BM x S*S*C float32,
     ping-pong by row parity; L2/L1 resident). A complete cell gets the bias, the sigmoid, the clamp and
     uint8 rounding (the package's rule), and is stored at its pixels, cropped by S/2 on each side, in the
     flat channels-first output. The last cell column and the last cell row close the image.
encode, per tile of BM images: for each position the (C, 2S, 2S) window of the zero-padded image is loaded
  straight from the flat channels-first input (implicit GEMM: masked gathers, no im2col copy) and multiplied
  by the convolution weight, + bias, leaky_relu; K mix layers; then the position's slice of the dense fc is
  accumulated into the tile's latents in registers (z += h_p Wfc_p^T); bias (and activation) at the end.

Every GEMM runs through tl.dot on wgmma (HGMMA): bf16, fp16, and float32 as TF32 (precision "tf32"); the
weight tiles of the tail / front come by TMA (tensor descriptors), straight into shared memory, pipelined over
the positions by the compiler. The weights' dtype sets the dots' dtype; activations are rounded to it between
layers, as eager bf16 does. float32 at the default precision "ieee" is not fused (can_fuse: the entry point
runs the MLP kernel, then the module), nor TF32 with W > 64; float64 weights or inputs run the reference (the
module's own front / tail and the torch MLP). Widths are padded to powers of two (register tiles): W = 64 is
exact, W = 96 computes 128 (the mix layers 1.8x their FLOPs); S*S*C = 16 (S = 4, C = 1) is exact. Rows: BM =
128 a tile (8 warps, two warpgroups of 64 rows), 64 where a tile is wider than the patch model's (W 64) or the dots
are TF32 (registers: _patch_config).

Roofline estimates (lsdm_fast/ops/roofline.py: patch_generate_triton / patch_encode_triton; H200: 4.8 TB/s HBM,
790 TFLOP/s bf16, L2->SM 7-10 TB/s, 132 SMs, 60 MB L2; never run on a GPU), 2^20 rows of the patch model (W 64)
(generator 42->512->512->32, head 32->3136, W 64, K 1, S 4, 28 x 28 x 1), bf16, one CTA of 8 warps per SM:
  generate  1.68 TFLOP (0.63 generator, 1.05 tail; no padding at W 64, S*S*C 16), 1.65 GB HBM (the bf16
            images; 0.83 uint8), 30.5 GB L2->SM: the generator 13.1 GB (weights per 128-row tile, each layer's
            input per column tile), the tail 17.4 GB (per position the head's slice, the mix and conv tiles by
            TMA: 8.2 GB; the carry buffer 7.5 GB; the images). L2 and compute are within 15 % of each other at
            full rate; the pessimistic side takes the tail's chains of small dependent GEMMs (N = 16..64, one
            CTA per SM) at 30 % of the peak: 3.1-6.3 ms. Target <= 8 ms: reached on the estimate. Peak extra
            memory: the scratch (132 x 2 x 128 x 512 bf16) and carry buffers, ~52 MB, beyond the result
            (1.6 GB bf16): target <= 4 GB reached. At W 96 (padded 128, BM 64 for registers) the mix and conv
            tiles re-read per position more than double the L2 traffic and the padding makes the tail's work
            1.6x: 7.3-15 ms (W 96 generate, uint8 or bf16), the target would be missed.
  encode    1.05 TFLOP, 1.78 GB HBM (bf16 images; 3.4 GB float32), 14.9 GB L2->SM (each pixel gathered by the
            2 x 2 windows that cover it: 4x the image bytes, plus the weight tiles per position): 1.5-4.5 ms
            (float32 images 2.2-4.5). Target <= 8 ms: reached on the estimate.
  before (MLP kernel for the head, then the module's tail in eager torch, 16 chunks): 13-19 ms, 57 GB HBM.
Verified without a GPU: interpreter parity against float64 (tests/test_parity_patch.py) and sm_90
compilation of every configuration the host code picks (tests/test_sm90_patch.py: no spills, wgmma/HGMMA for
bf16, fp16 and TF32). Tile sizes are untimed choices.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from ._backend_util import triton_interpreting as _interpreting
from ._weight_cache import DerivedCache
from .encode_generate import LABEL_DTYPES, encode_torch, generate_torch, to_out_dtype
from .encode_generate_triton import (_HALF, _L2_SHARE, _TL_DTYPES, _activate, _blocks, _config, _dense_layer,
                                     _device_limits, _generator_input, _k_step, _layers, _pack, _precision,
                                     _row_major, _weight_args)
from .mlp import ACT_CODE, MLPParams
from .patch import PatchPart

MAX_TILE = 256  # widest padded W, S*S*C and latent the register tiles take (wider: not fused)


# ----------------------------------------------------------------------------- kernels

@triton.jit
def _mma(a, w, acc, DOT: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """acc + a @ w^T on the matrix units; w (N, K) as stored (K-major, what TF32 wgmma needs)."""
    if UPCAST:  # interpreter: its tl.dot mishandles bf16, so dot the (exact) fp32 upcasts
        out = tl.dot(a.to(DOT).to(tl.float32), tl.trans(w.to(DOT).to(tl.float32)), acc, input_precision=PRECISION)
    else:
        out = tl.dot(a.to(DOT), tl.trans(w), acc, input_precision=PRECISION)
    return out


@triton.jit
def _linear(a, w, b_ptr, slope, z, N: tl.constexpr, ACT: tl.constexpr, BM: tl.constexpr, DOT: tl.constexpr,
            PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """act(a @ w^T + b) in the dots' dtype: a (BM, K), w (N, K), b (N,) float32 at b_ptr."""
    acc = _mma(a, w, tl.zeros((BM, N), dtype=tl.float32), DOT, PRECISION, UPCAST)
    return _activate(acc + tl.load(b_ptr + tl.arange(0, N) + z)[None, :], slope, ACT).to(DOT)


@triton.jit
def _quarter(h, cw_desc, q, acc, QW: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
             UPCAST: tl.constexpr):
    """acc + h @ Wt_q^T: quarter q = 2 du + dv of each position's (2S x 2S x C) patch, columns (c, a, b)."""
    return _mma(h, cw_desc.load([q * QW, 0]), acc, DOT, PRECISION, UPCAST)


@triton.jit
def _tile_rows(tile, M, zero, BM: tl.constexpr):
    """Row tile `tile` of M rows: its first row (int64), the mask of its rows inside M, and z = 0 computed from
    the run-time `zero` (index vectors built on it are not hoisted out of the tile loop)."""
    row0 = tl.cast(tile, tl.int64) * BM
    return row0, tl.arange(0, BM) < M - row0, tl.multiple_of(tile * zero, 16)


@triton.jit
def _carry_ptrs(carry, parity, j, z, LOW: tl.constexpr, BM: tl.constexpr, QW: tl.constexpr):
    """Cell slot j of the carry buffer of row parity `parity`: (2, LOW + 1, BM, QW) float32."""
    r = tl.arange(0, BM) + z
    q = tl.arange(0, QW)
    return carry + ((parity * (LOW + 1) + j) * BM + r[:, None]) * QW + q[None, :]


@triton.jit
def _store_cell(acc, ci, cj, out_tile, out_stride, row_mask, cb_ptr, z, S: tl.constexpr, C: tl.constexpr,
                SIDE: tl.constexpr, QW: tl.constexpr, BM: tl.constexpr, TO_UINT8: tl.constexpr):
    """Cell (ci, cj) of the (LOW + 1)^2 grid, complete: + bias, sigmoid, (uint8), stored at its pixels inside
    the image (the grid overhangs it by S/2 on each side) in the flat channels-first output."""
    r = tl.arange(0, BM) + z
    q = tl.arange(0, QW)
    c = q // (S * S)
    y = ci * S + (q // S) % S - S // 2
    x = cj * S + q % S - S // 2
    inside = (q < S * S * C) & (y >= 0) & (y < SIDE) & (x >= 0) & (x < SIDE)
    v = acc + tl.load(cb_ptr + q)[None, :]
    v = 1.0 / (1.0 + tl.exp(-v))
    if TO_UINT8:
        # round half to even as torch.round: x + 2^23 - 2^23 in float32 for 0 <= x <= 255; the clamp sits
        # between the multiply and the add so that no fused multiply-add changes the rounding
        v = tl.minimum(tl.maximum(v * 255.0, 0.0), 255.0)
        v = (v + 8388608.0) - 8388608.0
    tl.store(out_tile + r[:, None] * out_stride + (c * (SIDE * SIDE) + y * SIDE + x)[None, :],
             v.to(out_tile.dtype.element_ty), mask=row_mask[:, None] & inside[None, :])


@triton.jit(do_not_specialize=["M", "seed", "row_offset", "zero"])
def _patch_generate_kernel(
        in_ptr, in_stride, cond_ptr, cond_stride, out_ptr, out_stride,
        wd0, wd1, wd2, wd3, wd4, wd5, wd6, wd7, wt0, wt1, wt2, wt3, wt4, wt5, wt6, wt7, w_ptr, b_ptr,
        slope_ptr, scratch_ptr, hw_desc, hb_ptr, mw_desc, mb_ptr, cw_desc, cb_ptr, carry_ptr, head_slope, mix_slope,
        M, seed, row_offset, zero,
        NL: tl.constexpr, DIMS: tl.constexpr, W_OFF: tl.constexpr, B_OFF: tl.constexpr, ACTS: tl.constexpr,
        BNS: tl.constexpr, BN_TAILS: tl.constexpr, BKS: tl.constexpr, SW: tl.constexpr, MODE: tl.constexpr,
        NOISE: tl.constexpr, COND: tl.constexpr, LABELS: tl.constexpr, HEAD_ACT: tl.constexpr, LP: tl.constexpr,
        WP: tl.constexpr, QW: tl.constexpr, DEPTH: tl.constexpr, LOW: tl.constexpr, S: tl.constexpr,
        C: tl.constexpr, SIDE: tl.constexpr, TO_UINT8: tl.constexpr, BM: tl.constexpr, NUM_STAGES: tl.constexpr,
        TAIL_STAGES: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
        W_TMA: tl.constexpr):
    """Images (M, C * SIDE * SIDE) from labels / conditions (module docstring). MODE 1: noise drawn here,
    MODE 2: eta from in_ptr. NL layers (generator + the decoder's layers before its head, padded widths DIMS)
    as in encode_generate_triton._fused_mlp_kernel; then the head (LOW^2 slices (WP, LP), rows of hw_desc,
    biases hb_ptr), DEPTH mix layers (WP, WP) (mw_desc) and the four conv quarters (QW, WP) (cw_desc; biases
    cb_ptr per quarter column), all in the dots' dtype DOT, biases float32. Every weight tile comes by TMA
    (tensor descriptors): straight into shared memory, no registers (by pointer W = 128 spilled).

    Estimate (H200, patch model W 64, bf16, 2^20 rows; module docstring): 1.68 TFLOP, 1.65 GB HBM, 30.5 GB
    L2->SM, 3.1-6.3 ms, bound by L2 and the tail's small dependent GEMMs alike."""
    # the chain's weight descriptors, one argument each (encode_generate_triton.DESC_SLOTS)
    w_descs = (wd0, wd1, wd2, wd3, wd4, wd5, wd6, wd7)
    w_tail_descs = (wt0, wt1, wt2, wt3, wt4, wt5, wt6, wt7)  # read as [l % 8]: past 8 layers (W_TMA off) unused
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    buf0 = scratch_ptr + pid.to(tl.int64) * (2 * BM * SW)
    carry = carry_ptr + pid.to(tl.int64) * (2 * (LOW + 1) * BM * QW)
    r = tl.arange(0, BM)
    all_rows = r >= 0
    rq = tl.arange(0, QW)
    for tile in range(pid, tl.cdiv(M, BM), nprog):
        row0, row_mask, z = _tile_rows(tile, M, zero, BM)
        out_tile = out_ptr + row0 * out_stride
        # 1. the generator's input and layers, into the scratch (rows past M are computed, never stored)
        _generator_input(in_ptr + row0 * in_stride, in_stride, cond_ptr + row0 * cond_stride, cond_stride,
                         buf0 + BM * SW, row_mask, row_offset + row0, seed, z, SW, NOISE, COND, DIMS[0], MODE, LABELS,
                         BM, 16)
        tl.debug_barrier()
        for l in tl.static_range(NL):  # layer l reads scratch buffer (l + 1) % 2 and writes buffer l % 2
            _dense_layer(buf0 + ((l + 1) % 2) * (BM * SW), SW, all_rows, buf0 + (l % 2) * (BM * SW), SW, all_rows,
                         w_descs[l % 8], w_tail_descs[l % 8], w_ptr + W_OFF[l], b_ptr + B_OFF[l],
                         tl.load(slope_ptr + l), z,
                         DIMS[l], DIMS[l], DIMS[l + 1], DIMS[l + 1], ACTS[l], False, BM, BNS[l], BN_TAILS[l], BKS[l],
                         NUM_STAGES, DOT, PRECISION, UPCAST, W_TMA)
            tl.debug_barrier()
        rk = tl.arange(0, LP) + z
        zt = tl.load(buf0 + ((NL - 1) % 2) * (BM * SW) + r[:, None] * SW + rk[None, :],
                     mask=all_rows[:, None] & (rk < DIMS[NL])[None, :], other=0.0)
        # 2-3. the positions row by row, each cell stored as soon as it is complete (the compiler pipelines
        # the weight tiles' TMA copies over the positions)
        for i in range(LOW):
            parity = i % 2
            gate = all_rows[:, None] & (rq < tl.where(i > 0, QW, 0))[None, :]  # row 0: nothing above
            right = tl.zeros((BM, QW), dtype=tl.float32)  # quarter (0, 1) of position (i, j - 1)
            right_below = tl.zeros((BM, QW), dtype=tl.float32)  # quarter (1, 1) of position (i, j - 1)
            for j in tl.range(LOW, num_stages=TAIL_STAGES):
                p = i * LOW + j
                above = tl.load(_carry_ptrs(carry, parity, j, z, LOW, BM, QW), mask=gate, other=0.0)
                h = _linear(zt, hw_desc.load([p * WP, 0]), hb_ptr + p * WP, head_slope, z, WP, HEAD_ACT, BM, DOT,
                            PRECISION, UPCAST)
                for k in tl.static_range(DEPTH):
                    h = _linear(h, mw_desc.load([k * WP, 0]), mb_ptr + k * WP, mix_slope, z, WP, 1, BM, DOT, PRECISION,
                                UPCAST)
                cell = _quarter(h, cw_desc, 0, right + above, QW, DOT, PRECISION, UPCAST)
                _store_cell(cell, i, j, out_tile, out_stride, row_mask, cb_ptr, z, S, C, SIDE, QW, BM, TO_UINT8)
                below = _quarter(h, cw_desc, 2, right_below, QW, DOT, PRECISION, UPCAST)
                tl.store(_carry_ptrs(carry, 1 - parity, j, z, LOW, BM, QW), below)
                zero_q = tl.zeros((BM, QW), dtype=tl.float32)
                right = _quarter(h, cw_desc, 1, zero_q, QW, DOT, PRECISION, UPCAST)
                right_below = _quarter(h, cw_desc, 3, zero_q, QW, DOT, PRECISION, UPCAST)
            # the row's last cell column: only the (., 1) quarters of its last position
            cell = right + tl.load(_carry_ptrs(carry, parity, LOW, z, LOW, BM, QW), mask=gate, other=0.0)
            _store_cell(cell, i, LOW, out_tile, out_stride, row_mask, cb_ptr, z, S, C, SIDE, QW, BM, TO_UINT8)
            tl.store(_carry_ptrs(carry, 1 - parity, LOW, z, LOW, BM, QW), right_below)
            tl.debug_barrier()  # the next row reads what every thread of this one carried
        # the last cell row: only the (1, .) quarters of the last position row
        for j in range(LOW + 1):
            cell = tl.load(_carry_ptrs(carry, LOW % 2, j, z, LOW, BM, QW))
            _store_cell(cell, LOW, j, out_tile, out_stride, row_mask, cb_ptr, z, S, C, SIDE, QW, BM, TO_UINT8)
        tl.debug_barrier()


@triton.jit(do_not_specialize=["M", "zero"])
def _patch_encode_kernel(
        y_ptr, y_stride, out_ptr, out_stride, fw_desc, fb_ptr, mw_desc, mb_ptr, dw_desc, db_ptr, conv_slope,
        dense_slope, M, zero,
        KF: tl.constexpr, BKF: tl.constexpr, KFP: tl.constexpr, WP: tl.constexpr, LATP: tl.constexpr,
        LAT: tl.constexpr, DEPTH: tl.constexpr, LOW: tl.constexpr, S: tl.constexpr, SIDE: tl.constexpr,
        DENSE_ACT: tl.constexpr, BM: tl.constexpr, STAGES: tl.constexpr, DOT: tl.constexpr,
        PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """Latents (M, LAT) float32 from images (M, C * SIDE * SIDE) in any float dtype (module docstring): the
    convolution (WP, KFP) (fw_desc), its columns (c, ky, kx) as nn.Conv2d's weight (KF = C (2S)^2 real ones),
    in BKF-wide K steps; DEPTH mix layers (WP, WP) (mw_desc); the fc's LOW^2 slices (LATP, WP) (dw_desc); every
    weight tile by TMA.

    Estimate (H200, patch model W 64, bf16 images, 2^20 rows; module docstring): 1.05 TFLOP, 1.78 GB HBM,
    14.9 GB L2->SM, 1.5-4.5 ms, bound by L2 (the gathers) and the small dependent GEMMs alike."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    r = tl.arange(0, BM)
    for tile in range(pid, tl.cdiv(M, BM), nprog):
        row0, row_mask, z = _tile_rows(tile, M, zero, BM)
        y_tile = y_ptr + row0 * y_stride
        zacc = tl.zeros((BM, LATP), dtype=tl.float32)
        for i in range(LOW):
            for j in tl.range(LOW, num_stages=STAGES):
                acc = tl.zeros((BM, WP), dtype=tl.float32)
                rn = tl.arange(0, WP) + z
                for k0 in tl.static_range(0, KFP, BKF):
                    kk = k0 + tl.arange(0, BKF) + z
                    yy = i * S - S // 2 + (kk // (2 * S)) % (2 * S)
                    xx = j * S - S // 2 + kk % (2 * S)
                    ok = (kk < KF) & (yy >= 0) & (yy < SIDE) & (xx >= 0) & (xx < SIDE)
                    a = tl.load(y_tile + r[:, None] * y_stride + ((kk // (4 * S * S)) * (SIDE * SIDE) + yy * SIDE
                                                                  + xx)[None, :],
                                mask=row_mask[:, None] & ok[None, :], other=0.0)
                    acc = _mma(a, fw_desc.load([0, k0]), acc, DOT, PRECISION, UPCAST)
                h = _activate(acc + tl.load(fb_ptr + rn)[None, :], conv_slope, 1).to(DOT)
                for k in tl.static_range(DEPTH):
                    h = _linear(h, mw_desc.load([k * WP, 0]), mb_ptr + k * WP, conv_slope, z, WP, 1, BM, DOT,
                                PRECISION, UPCAST)
                zacc = _mma(h, dw_desc.load([(i * LOW + j) * LATP, 0]), zacc, DOT, PRECISION, UPCAST)
        rl = tl.arange(0, LATP) + z
        v = _activate(zacc + tl.load(db_ptr + rl)[None, :], dense_slope, DENSE_ACT)
        tl.store(out_ptr + row0 * out_stride + r[:, None] * out_stride + rl[None, :], v,
                 mask=row_mask[:, None] & (rl < LAT)[None, :])


# ----------------------------------------------------------------------------- host side

def _pow2(n: int) -> int:
    return max(16, triton.next_power_of_2(int(n)))


def can_fuse(part: PatchPart, mlps: tuple, precision: str | None) -> bool:
    """Whether these kernels run `part` with `mlps` ((encoder,) / (generator, decoder)), the registry's
    `fuses`: on the matrix units (bf16, fp16, float32 as TF32; float64 by the reference), with padded widths
    within the register tiles and, for encode, a dense part of one layer (the fc, accumulated per position).
    Not float32 "ieee": the FMA dots hold a whole K = W operand per thread and spill (ptxas for sm_90), and at
    the FMA rate (52 TFLOP/s) generate 2^20 is >= 30 ms fused or not (1.7 TFLOP), so the unfused path (the MLP
    kernel, then the module's tail on cuBLAS) stays. Not TF32 with W > 64 (96 pads to 128): wgmma's register
    A operand (each position's activations, float32) is then 64 registers a thread on each warpgroup and the
    kernels spill."""
    dense = mlps[-1]
    dtype = mlps[0].weights[0].dtype
    if dtype == torch.float32 and _precision(dtype, precision) == "ieee":
        return False
    if dtype == torch.float32 and _pow2(part.width) > 64:
        return False
    latent = dense.out_features if part.kind == "front" else int(dense.weights[-1].shape[1])
    if part.kind == "front" and len(dense.weights) != 1:
        return False
    return max(_pow2(part.width), _pow2(part.stride ** 2 * part.channels), _pow2(latent)) <= MAX_TILE


class _PatchPack(NamedTuple):
    conv_w: torch.Tensor  # front (WP, KFP); tail (4, QW, WP): the quarters, columns (c, a, b)
    conv_b: torch.Tensor  # front (WP,); tail (QW,): the channel's bias per quarter column
    mix_w: torch.Tensor  # (max(K, 1), WP, WP)
    mix_b: torch.Tensor  # (max(K, 1), WP)
    dense_w: torch.Tensor  # front: the fc's slices (P, LATP, WP); tail: the head's (P, WP, LP)
    dense_b: torch.Tensor  # front (LATP,); tail (P, WP)


_PACKS = DerivedCache(maxsize=16)


def _pack_patch(part: PatchPart, dense_w: torch.Tensor, dense_b: torch.Tensor, dtype: torch.dtype,
                device: torch.device) -> _PatchPack:
    """The part's weights (and its slice of the dense layer next to it) zero-padded into the kernels' tiles,
    in the dots' dtype (biases float32); cached per set of weights (DerivedCache)."""
    s, c, w, p = part.stride, part.channels, part.width, part.positions
    wp = _pow2(w)

    def zeros(*shape, dt=dtype):
        return torch.zeros(shape, dtype=dt, device=device)

    def build():
        depth = part.depth
        mix_w, mix_b = zeros(max(depth, 1), wp, wp), zeros(max(depth, 1), wp, dt=torch.float32)
        for k in range(depth):
            mix_w[k, :w, :w] = part.mix_weights[k].detach()
            mix_b[k, :w] = part.mix_biases[k].detach()
        weight = part.conv_weight.detach()
        if part.kind == "front":
            kf = c * 4 * s * s
            kfp = -(-kf // _front_k_step(kf)) * _front_k_step(kf)
            conv_w, conv_b = zeros(wp, kfp), zeros(wp, dt=torch.float32)
            conv_w[:w, :kf] = weight.reshape(w, kf)
            conv_b[:w] = part.conv_bias.detach()
            lat = dense_w.shape[0]
            dw, db = zeros(p, _pow2(lat), wp), zeros(_pow2(lat), dt=torch.float32)
            dw[:, :lat, :w] = dense_w.detach().reshape(lat, p, w).permute(1, 0, 2)
            db[:lat] = dense_b.detach()
        else:
            qw = _pow2(s * s * c)
            conv_w, conv_b = zeros(4, qw, wp), zeros(qw, dt=torch.float32)
            # (W, C, 2S, 2S) -> quarter (du, dv), columns (c, a, b), rows the W input channels
            conv_w[:, :s * s * c, :w] = weight.reshape(w, c, 2, s, 2, s).permute(2, 4, 1, 3, 5, 0).reshape(
                4, c * s * s, w)
            conv_b[:s * s * c] = part.conv_bias.detach().repeat_interleave(s * s)
            lat = dense_w.shape[1]
            dw, db = zeros(p, wp, _pow2(lat)), zeros(p, wp, dt=torch.float32)
            dw[:, :w, :lat] = dense_w.detach().reshape(p, w, lat)
            db[:, :w] = dense_b.detach().reshape(p, w)
        return _PatchPack(conv_w, conv_b, mix_w, mix_b, dw, db)

    return _PACKS.get([dense_w, dense_b, *part.tensors()], (part.kind, dtype, device), build)


def _desc(t: torch.Tensor, block: list) -> TensorDescriptor:
    """A TMA descriptor of a packed tensor viewed as (rows, last dim), in tiles `block`."""
    t2 = t.reshape(-1, t.shape[-1])
    return TensorDescriptor(t2, list(t2.shape), [t2.shape[1], 1], block)


def _front_k_step(kf: int) -> int:
    return _k_step(-(-kf // 16) * 16, 64)


def _patch_config(compute: torch.dtype, precision: str | None, widths: tuple):
    """The fused MLP's config for the dots' dtype and precision (encode_generate_triton._config), with BM = 64
    rows where a padded tile width of the tail / front (`widths`: W, S*S*C or half the front's K, the latent) is
    past the W 64 patch model's (64, 32, 32), and for TF32 (float32 operands): the 8 warps then split the columns
    of every accumulator, which halves each thread's share of them (BM = 128 spilled there, ptxas for sm_90;
    wgmma's register A operand is not split, each warpgroup holds all 64 rows' of it)."""
    cfg = _config(compute, _precision(compute, precision))
    wp, qw, lp = widths
    if not _interpreting() and (wp > 64 or qw > 32 or lp > 32 or compute == torch.float32):
        cfg = cfg._replace(bm=64)
    return cfg


_STAGE_SMEM = 150 * 1024  # shared memory the pipelined position loop may take (an H100 block gets 227 KB)


def _loop_stages(per_stage_bytes: int, most: int) -> int:
    """Software-pipelining depth of a position loop: as deep as `most` while its buffers (per_stage_bytes for each
    stage: the weight tiles and gathered inputs of one position) stay within _STAGE_SMEM; 1 (no prefetch) else.
    Untimed choice; the sm_90 compile reports (tests/test_sm90_patch.py) check the result fits."""
    return max(1, min(most, _STAGE_SMEM // max(per_stage_bytes, 1)))


def _grid(tiles: int, device: torch.device, per_program_bytes: int) -> int:
    """Persistent grid: one program per SM, fewer where the programs' scratch would not stay in L2."""
    if _interpreting():
        return min(tiles, 4)
    sms, l2 = _device_limits(device)
    return max(1, min(tiles, sms, int(l2 * _L2_SHARE) // max(per_program_bytes, 1)))


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return tensors[0].dtype if tensors[0].dtype in _HALF else torch.float32


def generate_patch(generator: MLPParams, decoder: MLPParams, cond: torch.Tensor, tail: PatchPart, *, noise_dim,
                   num_classes, seed, offset, eta, out_dtype, precision=None) -> torch.Tensor:
    """The fused generate with a PatchDecoder's tail (the entry point has validated everything)."""
    float64 = any(t.dtype == torch.float64 for t in (generator.weights[0], decoder.weights[0], tail.conv_weight))
    if float64:  # the reference: what the entry point runs for a backend that does not fuse
        work = torch.float64 if decoder.weights[0].dtype == torch.float64 else torch.float32
        h = generate_torch(generator, decoder, cond, noise_dim=noise_dim, num_classes=num_classes, seed=seed,
                           offset=offset, eta=eta, out_dtype=work)
        return to_out_dtype(tail(h.to(tail.dtype)), out_dtype)
    n = int(cond.shape[0])
    out = torch.empty((n, tail.pixels), dtype=out_dtype, device=cond.device)
    if n == 0:
        return out
    device = cond.device
    compute = _compute_dtype(generator.weights[0])
    tp = _pack_patch(tail, decoder.weights[-1], decoder.biases[-1], compute, device)
    cfg = _patch_config(compute, precision, (tp.conv_w.shape[2], tp.conv_w.shape[1], tp.dense_w.shape[2]))
    # the chain the MLP machinery runs: the generator, then any decoder layers before its head
    body = decoder._replace(weights=decoder.weights[:-1], biases=decoder.biases[:-1],
                            output_activation=decoder.activation)
    layers = _layers(generator) + (_layers(body) if len(body.weights) else [])
    pk = _pack(layers, compute, device)
    nl = len(layers)
    bns, bn_tails = zip(*(_blocks(d, cfg.bn_max) for d in pk.dims[1:]))
    bks = tuple(_k_step(k, cfg.bk_max) for k in pk.dims[:-1])
    w_tma, w_args = _weight_args(cfg.w_tma, pk, bns, bn_tails, bks)
    sw = max(pk.dims)
    qw, wp, low = tp.conv_w.shape[1], tp.conv_w.shape[2], tail.low
    elt = compute.itemsize
    carry_bytes = 2 * (low + 1) * cfg.bm * qw * 4
    nprog = _grid(triton.cdiv(n, cfg.bm), device, 2 * cfg.bm * sw * elt + carry_bytes)
    scratch = torch.empty((nprog, 2, cfg.bm, sw), dtype=compute, device=device)
    carry = torch.empty((nprog, 2, low + 1, cfg.bm, qw), dtype=torch.float32, device=device)
    labels = cond.dtype in LABEL_DTYPES
    cond_t = _row_major(cond)
    cond_dim = int(num_classes) if labels else int(cond.shape[1])
    mode, in_t = (1, scratch) if eta is None else (2, _row_major(eta))
    lp = tp.dense_w.shape[2]
    stages = _loop_stages(elt * (wp * lp + tail.depth * wp * wp + 4 * qw * wp), 2)
    _patch_generate_kernel[(nprog,)](
        in_t, in_t.stride(0), cond_t, cond_t.stride(0), out, out.stride(0), *w_args,
        pk.w, pk.b, pk.slopes, scratch, _desc(tp.dense_w, [wp, lp]), tp.dense_b, _desc(tp.mix_w, [wp, wp]), tp.mix_b,
        _desc(tp.conv_w, [qw, wp]), tp.conv_b, carry,
        float(decoder.negative_slope), float(tail.negative_slope), n, int(seed), int(offset), 0,
        NL=nl, DIMS=pk.dims, W_OFF=pk.w_off, B_OFF=pk.b_off, ACTS=pk.acts, BNS=bns, BN_TAILS=bn_tails, BKS=bks,
        SW=sw, MODE=mode, NOISE=int(noise_dim), COND=cond_dim, LABELS=labels,
        HEAD_ACT=ACT_CODE[decoder.output_activation], LP=lp, WP=wp, QW=qw, DEPTH=tail.depth,
        LOW=low, S=tail.stride, C=tail.channels, SIDE=tail.side, TO_UINT8=out_dtype == torch.uint8, BM=cfg.bm,
        NUM_STAGES=cfg.stages, TAIL_STAGES=stages, DOT=_TL_DTYPES[compute], PRECISION=cfg.precision,
        UPCAST=_interpreting(), W_TMA=w_tma, num_warps=cfg.warps, maxnreg=cfg.maxnreg,
    )
    return out


def encode_patch(encoder: MLPParams, y: torch.Tensor, front: PatchPart, *, precision=None) -> torch.Tensor:
    """The fused encode with a PatchEncoder's front: y (N, C * side * side) flat, any float dtype."""
    if any(t.dtype == torch.float64 for t in (y, encoder.weights[0], front.conv_weight)):
        with torch.no_grad():
            return encode_torch(encoder, front(y.to(front.dtype)))  # as for a backend that does not fuse
    n = int(y.shape[0])
    out = torch.empty((n, encoder.out_features), dtype=torch.float32, device=y.device)
    if n == 0:
        return out
    compute = _compute_dtype(encoder.weights[0])
    tp = _pack_patch(front, encoder.weights[0], encoder.biases[0], compute, y.device)
    cfg = _patch_config(compute, precision, (tp.conv_w.shape[0], tp.conv_w.shape[1] // 2, tp.dense_w.shape[1]))
    kf = front.channels * 4 * front.stride ** 2
    y = _row_major(y)
    nprog = _grid(triton.cdiv(n, cfg.bm), y.device, 0)
    wp, kfp, latp, bkf = tp.conv_w.shape[0], tp.conv_w.shape[1], tp.dense_w.shape[1], _front_k_step(kf)
    stages = _loop_stages(compute.itemsize * (kfp * wp + front.depth * wp * wp + latp * wp) + y.element_size() * cfg.bm
                          * kfp, 3)
    _patch_encode_kernel[(nprog,)](
        y, y.stride(0), out, out.stride(0), _desc(tp.conv_w, [wp, bkf]), tp.conv_b, _desc(tp.mix_w, [wp, wp]),
        tp.mix_b, _desc(tp.dense_w, [latp, wp]), tp.dense_b, float(front.negative_slope),
        float(encoder.negative_slope), n, 0,
        KF=kf, BKF=bkf, KFP=kfp, WP=wp, LATP=latp,
        LAT=encoder.out_features, DEPTH=front.depth, LOW=front.low, S=front.stride, SIDE=front.side,
        DENSE_ACT=ACT_CODE[encoder.output_activation], BM=cfg.bm, STAGES=stages, DOT=_TL_DTYPES[compute],
        PRECISION=cfg.precision, UPCAST=_interpreting(), num_warps=cfg.warps, num_stages=stages, maxnreg=cfg.maxnreg,
    )
    return out
