"""Triton backend of the fused WGAN-GP critic step and of the generator-side score gradient
(docs/design.md §3-4).

Rows. The real, fake and interpolated batches are stacked as three "kinds" of Bp rows each
(Bp = B rounded up to the row tile BM), so that every row tile holds one kind. Rows past B are
padding: their loss weight is 0, so every gradient they would carry is exactly 0. With
c = -1/B (real), +1/B (fake), 1 (interpolated), 0 (padding) every parameter gradient is one sum
over the stacked rows (docs/design.md §3):

    dW_l = sum_rows D_l^T U_{l-1},   db_l = sum_{real, fake rows} D_l          (l = 1 .. L)
    D_{L-1} = c s'(a_{L-1}) w_L,     D_{l-1} = s'(a_{l-1}) (D_l W_l),  D_L = c
    U = u (forward activations) on real/fake rows, r on interpolated rows:
    r_0 = 2 gp (||g_0|| - 1) g_0 / (B ||g_0||) with g_0 = D_1 W_1,  r_l = s'(a_l) (r_{l-1} W_l^T)

Launches per critic step with L linear layers: L-1 forward layers, L-2 backward layers, one
input-gradient kernel (g_0, its norm, the penalty, r_0 and r_1), L-2 r-sweep layers, one
weight-gradient kernel and one finishing kernel: 4 / 7 / 10 for L = 2 / 3 / 4. Each layer is a
tiled tensor-core GEMM over (row tile, column tile) with its element-wise work fused:

  forward   u_l = s(U_{l-1} W_l^T + b_l); the input (x, z or t z_real + (1 - t) z_fake) is built
            in the first layer's operand load; the activation signs are stored as an int8 mask
            and reused by every later pass (never recomputed from re-rounded values). The last
            hidden layer stores no u: its epilogue writes D_{L-1}, per-tile sums of f and
            per-tile column sums c u for dw_L.
  backward  D_{l-1} = mask ? D_l W_l : slope D_l W_l.
  r sweep   the same for r; the last one keeps only per-tile column sums (dw_L).
  weights   dW_l tiles over all layers in one launch, the rows split into SPLIT fixed ranges;
            each split writes its own partial, and the finishing kernel adds the partials in
            split order. No atomics: two runs on the same inputs give the same bits.

Precision (float32). "tf32" (the default) runs the GEMMs on tensor cores with TF32 inputs and
float32 accumulation, except the ones that feed ||g_0|| - 1 (the backward GEMMs of the
interpolated rows and g_0 itself), which use 3xTF32 (float32 accuracy): (||g|| - 1) is a
difference of nearly equal numbers when the critic is near 1-Lipschitz, and plain TF32 there
puts ~1e-2 errors on the gradients. bench/tf32_critic_error.py emulates TF32 rounding on the CPU
(B = 4096; 42-512-512-1, 42-512-512-512-1, 42-1024-1024-1): largest relative error over the
loss terms and gradients 0.95-1.5e-2 all-TF32, 2.2-3.7e-3 with the 3xTF32 norm path.
Documented tolerance: relative error <= 1e-2 on every gradient against the float64 reference.
"ieee" (precision="ieee" at the entry point, or LSDM_MATMUL_PRECISION=ieee) uses exact float32 FMA, parity
~1e-6, much slower. float64 always runs "ieee". Under TRITON_INTERPRET=1 every tl.dot is
computed in float32 whatever the precision, so CPU tests check the TF32 code path at float32
accuracy. The entry point (critic_gp.py) validates inputs and hands this backend float32 or
float64 tensors of one dtype.

Memory traffic (issue 22). Every layer GEMM's grid runs column tiles fastest, so the programs of
one row tile run together and its input rows come from HBM once (row tiles fastest re-streamed
the whole input once per column tile: 4x at width 512). Every TF32 operand is K-major in memory
or reaches the dot through registers (see "Operand layouts" below), so operand tiles are copied
16 bytes at a time; before, the weight-gradient kernel and the backward's W loads copied 4.

Estimates for an H200 (lsdm_fast/ops/roofline.py: HBM 4.8 TB/s, L2->SM 7-10 TB/s, TF32 434
TFLOP/s measured on an H100, 60-100 % of the matrix peak, 75-100 % of HBM; never run on a GPU),
critic 26-512-512-1, float32, B = 65536 (R = 3B = 196608 stacked rows):

  kernel             GFLOP (TF32 executed)  HBM GB  L2->SM GB  bound    time
  forward 1             5.2                   0.81     0.16     HBM      0.17-0.23 ms
  forward 2           103                     0.91     3.2      L2       0.32-0.47 ms
  backward 2          103 (172: 3xTF32 rows)  0.91     3.2      TF32     0.40-0.66 ms
  input gradient        3.5 (7.0)             0.33     0.19     HBM      0.07-0.10 ms
  r sweep 2            34                     0.17     1.1      L2       0.11-0.16 ms
  weight gradients    108                     1.23     3.7      L2       0.37-0.53 ms
  finish                -                     0.003    -        launch
  step                358 (431)               4.35    11.6               1.5-2.2 ms (7 launches)

Before issue 22 the same step moved 6.90 GB through HBM (forward 2 and backward 2 2.11 GB each,
both HBM-bound at 0.44-0.66 ms; r sweep 0.57 GB): 1.6-2.3 ms by the same model, which does not
price the 4-byte copies. B = 4096: 22 GFLOP, 0.28 GB, 0.10-0.16 ms in a CUDA graph
(compute-bound); B = 256: 1.4 GFLOP, launch-bound, 0.02-0.04 ms for the 7 kernels in a graph.
The L2 column is what 128 x 128 tiles cost (every row tile re-reads W, every column tile the
input): wider tiles would need the operands by TMA to stay within the registers.

No host synchronisation and no data-dependent host work: a step can be captured in a CUDA
graph. Scratch and outputs are allocated per call from PyTorch's caching allocator (three
allocations; no cudaMalloc after the first step, and under graph capture they live in the
graph's private pool). A module-level scratch cache would be unsafe under capture: a graph
replays into whatever address it captured, even after the cache hands that buffer to another
call or frees it.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import torch
import triton
import triton.language as tl

from ._backend_util import env_precision
from ._backend_util import triton_available as _available
from ._backend_util import triton_interpreting as _interpreting
from ._backend_util import triton_why_unavailable as _why_unavailable
from ._registry import register
from .critic_gp import CriticStepOutput, layer_limits

LAYERS = (2, 4)  # the weight-gradient kernel has slots for 3 hidden layers
from .mlp import hidden_slope

PRECISIONS = ("tf32", "ieee")
MODE_FWD, MODE_BWD, MODE_RSWEEP = 0, 1, 2


# ------------------------------------------------------------------------------ kernels

@triton.jit
def _scalar(hi, lo, DT: tl.constexpr):
    """A host float passed as a float32 pair (hi + lo): exact to ~1e-15 for float64 kernels
    (Triton passes float arguments as float32)."""
    return tl.cast(hi, DT) + tl.cast(lo, DT)


# Addressing: a 64-bit scalar pointer to each tile's first row plus int32 offsets inside the
# tile, so that no tensor of 64-bit addresses stays live across a GEMM loop or an epilogue.
#
# Operand layouts (why some buffers are stored twice or transposed): TF32 wgmma reads both
# operands from shared memory K-major (contiguous along the contraction), and Triton fills a
# K-major tile from a layout that is not with 4-byte cp.async, one element each. So every GEMM
# operand here is K-major in memory, or goes through registers (A operand only):
#   forward / r sweep  U W^T          A = U row-major, B = W (N x K row-major): both K-major
#   backward, g_0      D W            A = D row-major, B = W^T, a transposed copy of W made by the
#                                     forward of the same layer (_transpose_w)
#   weight gradients   D^T V          B = V^T: the activations the weight gradients need (u of the
#                                     real and fake rows, r of the interpolated rows) are also
#                                     stored column-major; A = D^T is loaded row-major (16-byte)
#                                     and transposed in registers (_as_register_operand)
#   r sweep            r W^T          A = r, read from its column-major copy through registers
# tests/test_sm90_critic.py checks from the SASS that the GEMM operands load with 16-byte copies.

@triton.jit
def _as_register_operand(t, one, PREC: tl.constexpr):
    """For the tensor cores, t * one (one = 1 at run time): the product is a computed value, so
    Triton feeds it to the dot from registers, in whatever layout it was loaded, instead of asking
    shared memory for a K-major copy (which TF32 needs and a transposed load cannot give 16 bytes
    at a time). The FMA path ("ieee") takes any layout: t as it is."""
    if PREC == "ieee":
        return t
    else:
        return t * one


@triton.jit
def _mm(acc, A, K, W, n, nm, BK: tl.constexpr, PREC: tl.constexpr):
    """acc += A[:, :K] @ Wk[:K, n] with Wk[k, n] = W[n * K + k] (W: N x K row-major, K-major as an
    operand); A: the tile's first row of a row-major matrix with K columns."""
    kk = tl.arange(0, BK)
    a_off = tl.arange(0, acc.shape[0])[:, None] * K + kk[None, :]
    w_off = kk[:, None] + n[None, :] * K
    for k0 in range(0, K, BK):
        km = (k0 + kk) < K
        a = tl.load(A + k0 + a_off, mask=km[None, :], other=0.0)
        w = tl.load(W + k0 + w_off, mask=km[:, None] & nm[None, :], other=0.0)
        acc = tl.dot(a, w, acc, input_precision=PREC, out_dtype=acc.dtype)
    return acc


@triton.jit
def _mm_colmajor(acc, AT, lda, K, W, n, nm, one, BK: tl.constexpr, PREC: tl.constexpr):
    """_mm with A stored column-major: A[i, k] = AT[k * lda + i] (AT: the tile's first row)."""
    kk = tl.arange(0, BK)
    at_off = kk[:, None] * lda + tl.arange(0, acc.shape[0])[None, :]
    w_off = kk[:, None] + n[None, :] * K
    for k0 in range(0, K, BK):
        km = (k0 + kk) < K
        at = tl.load(AT + k0 * lda + at_off, mask=km[:, None], other=0.0)
        w = tl.load(W + k0 + w_off, mask=km[:, None] & nm[None, :], other=0.0)
        acc = tl.dot(_as_register_operand(tl.trans(at), one, PREC), w, acc, input_precision=PREC, out_dtype=acc.dtype)
    return acc


@triton.jit
def _mm_by_kind(acc, A, K, W, n, nm, kind, BK: tl.constexpr, PREC: tl.constexpr, PREC_I: tl.constexpr):
    """_mm in PREC, or in PREC_I for a tile of interpolated rows (kind 2)."""
    if PREC_I == PREC:
        acc = _mm(acc, A, K, W, n, nm, BK, PREC)
    else:
        if kind == 2:
            acc = _mm(acc, A, K, W, n, nm, BK, PREC_I)
        else:
            acc = _mm(acc, A, K, W, n, nm, BK, PREC)
    return acc


@triton.jit
def _store_colmajor(VT, vs, col0, i, n, nm, v):
    """v (rows i of a tile, columns n) into VT column-major: element (col0 + i, n) at n * vs + col0 + i."""
    tl.store(VT + col0 + n[None, :] * vs + i[:, None], v, mask=nm[None, :])


@triton.jit
def _r_epilogue(acc, MASK, loc, i, n, nm, slope, VT, vs, col0, WLP, last):
    """r_l = s'(a_l) * acc for interpolated rows (MASK: the tile's first row; loc: offsets in the
    tile); stored column-major into VT at columns col0 + i, or (last hidden layer) reduced to a
    column-sum partial of dw_L (WLP)."""
    pos = tl.load(MASK + loc, mask=nm[None, :], other=0) != 0
    r = tl.where(pos, acc, acc * slope)
    if last:
        tl.store(WLP + n, tl.sum(r, axis=0), mask=nm)
    else:
        _store_colmajor(VT, vs, col0, i, n, nm, r)


@triton.jit
def _transpose_w(W, WT, K, N, pid, nprog, TB: tl.constexpr):
    """WT = W^T (K x N row-major) for W (N x K row-major), TB x TB tiles pid, pid + nprog, ...:
    the backward GEMMs' K-major B operand, made by programs of the forward of the same layer."""
    a = tl.arange(0, TB)
    tiles_n = tl.cdiv(N, TB)
    for t in range(pid, tl.cdiv(K, TB) * tiles_n, nprog):
        k = (t // tiles_n) * TB + a
        n = (t % tiles_n) * TB + a
        m = (k < K)[:, None] & (n < N)[None, :]
        tl.store(WT + k[:, None] * N + n[None, :], tl.load(W + n[None, :] * K + k[:, None], mask=m), mask=m)


# Flags that only steer uniform branches are runtime arguments, not constexprs, and are not
# specialised on: one compiled kernel per (mode, precision, tiles) instead of one per layer kind.
_RUNTIME_FLAGS = ["B", "DX", "wlp_row0", "first", "last", "score", "latent"]


@triton.jit(do_not_specialize=_RUNTIME_FLAGS)
def _layer_kernel(
    A, W, WT, BIAS, WL, MIN, MOUT, OUT, VT, VT0, DOUT, FPART, WLP,
    X, Z1, Z2, T,
    B, Bp, K, N, DX, wlp_row0, first, last, score,
    slope_hi, slope_lo, one,
    MODE: tl.constexpr, PREC: tl.constexpr, PREC_I: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BKI: tl.constexpr,
):
    """One (row tile, column tile) of one layer; MODE: forward, backward (D) or r sweep.
    first: build u_0 from x, z; last: the last hidden layer; score: one kind, weight 1/B.
    VT: the column-major copy of this layer's output (u of real / fake rows; r); VT0: u_0's.

    Grid: one program per tile, column tiles fastest, so that the programs of one row tile run
    together and its A rows come from HBM once (the other column tiles hit L2); with row tiles
    fastest every column tile streamed the whole A again (4x at width 512).

    Estimate (H200, B = 65536, 26-512-512-1; module docstring): forward 1 0.17-0.23 ms (HBM),
    forward 2 0.32-0.47 ms (L2), backward 2 0.40-0.66 ms (TF32, 3xTF32 on the interpolated rows),
    r sweep 0.11-0.16 ms (L2)."""
    DT: tl.constexpr = W.dtype.element_ty
    pid = tl.program_id(0)
    tiles_n = tl.cdiv(N, BN)
    pm = pid // tiles_n
    pn = pid % tiles_n
    slope = _scalar(slope_hi, slope_lo, DT)
    row0 = (pm * BM).to(tl.int64)
    kind = (pm * BM) // Bp  # one kind per tile: Bp is a multiple of BM
    lrow0 = row0 - kind * Bp  # the tile's first row within its kind
    i = tl.arange(0, BM)
    valid = lrow0 + i < B
    n = pn * BN + tl.arange(0, BN)
    nm = n < N
    loc = i[:, None] * N + n[None, :]  # (row, column) in the output tile
    acc = tl.zeros((BM, BN), dtype=DT)
    vs = 3 * Bp  # column stride of the column-major copies VT (step only)
    keep_v = (score == 0) & (kind < 2)  # the weight gradients take u of real / fake rows from VT

    if MODE == 0:  # forward: a = U W^T + b (W is (N, K): Wk[k, n] = W[n * K + k])
        if first:  # u_0 built from x and z here; its real / fake rows kept column-major in VT (u_0)
            DZ = K - DX
            tt = tl.load(T + lrow0 + i, mask=valid & (kind == 2), other=0.0)
            for k0 in range(0, K, BKI):  # x, z_real, z_fake and u_0 all live in registers: short steps
                k = k0 + tl.arange(0, BKI)
                km = k < K
                isx = k < DX
                zc = tl.where(isx, 0, k - DX)
                zm = valid[:, None] & (km & (k >= DX))[None, :]
                xv = tl.load(X + lrow0 * DX + i[:, None] * DX + k[None, :],
                             mask=valid[:, None] & (km & isx)[None, :], other=0.0)
                z_off = lrow0 * DZ + i[:, None] * DZ + zc[None, :]
                z1 = tl.load(Z1 + z_off, mask=zm, other=0.0)
                z2 = tl.load(Z2 + z_off, mask=zm & (kind > 0), other=0.0)
                zv = tl.where(kind == 0, z1, tl.where(kind == 1, z2, tt[:, None] * z1 + (1 - tt[:, None]) * z2))
                a = tl.where(isx[None, :], xv, zv)
                if (pn == 0) & keep_v:
                    _store_colmajor(VT0, vs, row0, i, k, km, a)
                w = tl.load(W + k[:, None] + n[None, :] * K, mask=km[:, None] & nm[None, :], other=0.0)
                acc = tl.dot(a, w, acc, input_precision=PREC, out_dtype=DT)
        else:
            acc = _mm(acc, A + row0 * K, K, W, n, nm, BK, PREC)
        a = acc + tl.load(BIAS + n, mask=nm, other=0.0)[None, :]
        pos = a > 0
        tl.store(MOUT + row0 * N + loc, pos.to(tl.int8), mask=nm[None, :])
        u = tl.where(pos, a, a * slope)
        if last:
            wl = tl.load(WL + n, mask=nm, other=0.0)
            inv_b = tl.full([], 1.0, DT) / B
            c = tl.where((kind == 0) & (score == 0), -inv_b, tl.where(kind == 2, 1.0, inv_b))
            cv = tl.where(valid, c, 0.0)
            tl.store(DOUT + row0 * N + loc, tl.where(pos, 1.0, slope) * wl[None, :] * cv[:, None], mask=nm[None, :])
            f = tl.where(valid, tl.sum(u * wl[None, :], axis=1), 0.0)
            tl.store(FPART + pid, tl.sum(f, axis=0))
            if (score == 0) & (kind < 2):  # real / fake rows: dw_L += c u (interpolated rows add r_{L-1} later)
                tl.store(WLP + pm * N + n, tl.sum(u * cv[:, None], axis=0), mask=nm)
        else:
            tl.store(OUT + row0 * N + loc, u, mask=nm[None, :])
            if keep_v:
                _store_colmajor(VT, vs, row0, i, n, nm, u)
        _transpose_w(W, WT, K, N, pid, tl.num_programs(0), 32)
    elif MODE == 1:  # backward: D_{l-1} = s'(a_{l-1}) (D_l W_l), B[k, n] = W_l[k, n] = WT[n * K + k]
        acc = _mm_by_kind(acc, A + row0 * K, K, WT, n, nm, kind, BK, PREC, PREC_I)
        pos = tl.load(MIN + row0 * N + loc, mask=nm[None, :], other=0) != 0
        tl.store(DOUT + row0 * N + loc, tl.where(pos, acc, acc * slope), mask=nm[None, :])
    else:  # r sweep (interpolated rows; row0 counts them): r_l = s'(a_l) (r_{l-1} W_l^T), r in VT
        acc = _mm_colmajor(acc, A + 2 * Bp + row0, vs, K, W, n, nm, one, BK, PREC)
        _r_epilogue(acc, MIN + (2 * Bp + row0) * N, loc, i, n, nm, slope, VT, vs, 2 * Bp + row0,
                    WLP + (wlp_row0 + pm) * N, last)


@triton.jit(do_not_specialize=_RUNTIME_FLAGS)
def _input_grad_kernel(
    D1, W1, W1T, M1, R0, VT0, VT1, WLP, PPART, DZ,
    B, Bp, N0, N1, DX, wlp_row0, last, score, latent,
    gp_hi, gp_lo, slope_hi, slope_lo,
    PREC: tl.constexpr, PREC_G: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BNG: tl.constexpr, BK: tl.constexpr,
):
    """Per row tile: g_0 = D_1 W_1 (column blocks of BNG: N_0 is small; B operand W_1^T). score:
    dz = g_0[:, DX:]. Otherwise (interpolated rows): ||g_0||, the penalty partial, r_0 = coef g_0
    (row-major in R0 for r_1, column-major in VT0 for dW_1) and r_1 = s'(a_1) (r_0 W_1^T)
    (column-major in VT1, or the dw_L partial when layer 1 is the last hidden layer).

    Estimate (H200, B = 65536, 26-512-512-1): 3.5 GFLOP (7 executed), 0.33 GB of HBM: 0.07-0.10 ms,
    HBM-bound."""
    DT: tl.constexpr = W1.dtype.element_ty
    pm = tl.program_id(0)
    row0 = (pm * BM).to(tl.int64)
    i = tl.arange(0, BM)
    valid = row0 + i < B
    drow0 = tl.where(score != 0, 0, 2 * Bp) + row0  # D_1's rows: the interpolated kind (step)
    ssq = tl.zeros((BM,), dtype=DT)
    for n0 in range(0, N0, BNG):
        n = n0 + tl.arange(0, BNG)
        nm = n < N0
        g = _mm(tl.zeros((BM, BNG), dtype=DT), D1 + drow0 * N1, N1, W1T, n, nm, BK, PREC_G)
        if score:
            tl.store(DZ + row0 * (N0 - DX) + i[:, None] * (N0 - DX) + (n - DX)[None, :], g,
                     mask=valid[:, None] & (nm & (n >= DX))[None, :])
        else:
            g = tl.where(((n >= DX) | (latent == 0))[None, :], g, 0.0)
            ssq += tl.sum(g * g, axis=1)
            tl.store(R0 + row0 * N0 + i[:, None] * N0 + n[None, :], g, mask=nm[None, :])
    if score == 0:
        gp = _scalar(gp_hi, gp_lo, DT)
        slope = _scalar(slope_hi, slope_lo, DT)
        vs = 3 * Bp
        nrm = tl.sqrt(ssq)
        tl.store(PPART + pm, tl.sum(tl.where(valid, (nrm - 1) * (nrm - 1), 0.0), axis=0))
        # ||g|| = 0: no gradient through the norm (as torch's norm backward)
        coef = tl.where(valid & (nrm > 0), 2.0 * gp * (nrm - 1) / (B * tl.where(nrm > 0, nrm, 1.0)), 0.0)
        tl.debug_barrier()  # g_0 was written by other threads of this program
        for n0 in range(0, N0, BNG):
            n = n0 + tl.arange(0, BNG)
            nm = n < N0
            ptrs = R0 + row0 * N0 + i[:, None] * N0 + n[None, :]
            r0 = tl.load(ptrs, mask=nm[None, :], other=0.0) * coef[:, None]
            tl.store(ptrs, r0, mask=nm[None, :])
            _store_colmajor(VT0, vs, 2 * Bp + row0, i, n, nm, r0)
        tl.debug_barrier()
        for n0 in range(0, N1, BN):  # Wk[k, n] = W1[n * N0 + k]
            n = n0 + tl.arange(0, BN)
            nm = n < N1
            acc = _mm(tl.zeros((BM, BN), dtype=DT), R0 + row0 * N0, N0, W1, n, nm, BK, PREC)
            _r_epilogue(acc, M1 + drow0 * N1, i[:, None] * N1 + n[None, :], i, n, nm, slope, VT1, vs,
                        2 * Bp + row0, WLP + (wlp_row0 + pm) * N1, last)


@triton.jit
def _wgrad_tile(S, OUT, local, lo, hi, Bp, OD, OV, OW, OB, O, K, one,
                PREC: tl.constexpr, BO: tl.constexpr, BC: tl.constexpr, BR: tl.constexpr):
    """One (BO x BC) tile `local` of dW_l = sum over rows [lo, hi) of D_l^T V_{l-1}, and (column
    tile 0) db_l = the sum of D_l over the real and fake rows [0, 2 Bp). D_l (rows x O) is
    row-major at S + OD; V_{l-1} column-major at S + OV (column stride 3 Bp: u of the real and
    fake rows, then r of the interpolated rows). Stored to OUT + OW (dW, O x K) and OUT + OB (db)."""
    tiles_k = tl.cdiv(K, BC)
    tk = local % tiles_k
    o = (local // tiles_k) * BO + tl.arange(0, BO)
    k = tk * BC + tl.arange(0, BC)
    om = o < O
    km = k < K
    j = tl.arange(0, BR)
    vs = 3 * Bp
    acc = tl.zeros((BO, BC), dtype=S.dtype.element_ty)
    bacc = tl.zeros((BO,), dtype=S.dtype.element_ty)
    D = S + OD + lo * O
    V = S + OV + lo
    d_off = j[:, None] * O + o[None, :]  # D tile (row, o): contiguous along o
    v_off = k[None, :] * vs + j[:, None]  # V tile (row, k): contiguous along the rows, K-major
    for r0 in range(lo, hi, BR):
        d = tl.load(D + d_off, mask=om[None, :], other=0.0)
        v = tl.load(V + v_off, mask=km[None, :], other=0.0)
        acc = tl.dot(_as_register_operand(tl.trans(d), one, PREC), v, acc, input_precision=PREC, out_dtype=acc.dtype)
        bacc += tl.sum(tl.where((r0 + j < 2 * Bp)[:, None], d, 0.0), axis=0)
        D += BR * O
        V += BR
    tl.store(OUT + OW + o[:, None] * K + k[None, :], acc, mask=om[:, None] & km[None, :])
    if tk == 0:
        tl.store(OUT + OB + o, bacc, mask=om)


@triton.jit(do_not_specialize=["T1", "T2"])
def _wgrad_kernel(
    S, OUT, Bp, RPS, out_stride, one,
    T1, T2, O1, O2, O3, K1, K2, K3,
    OD1, OD2, OD3, OV1, OV2, OV3, OW1, OW2, OW3, OB1, OB2, OB3,
    ALIGN: tl.constexpr, PREC: tl.constexpr, BO: tl.constexpr, BC: tl.constexpr, BR: tl.constexpr,
):
    """Program (t, s): one (BO x BC) tile of dW_l for the layer l that tile t falls in (tiles of
    the L-1 hidden layers laid end to end; T1, T2 where layers 2 and 3 start), summed over the
    rows of split s; column-tile-0 programs also sum db_l. Writes OUT[s * out_stride + ...].

    The layer's widths and offsets are picked at run time, so Triton cannot see their alignment;
    ALIGN (16 when every hidden width, D's row stride, is a multiple of 16, the host checks; arena
    offsets always are) states it, so that the operand copies are 16 bytes wide. The programs of one split are
    adjacent in the grid: they stream the same rows together, from HBM once.

    Estimate (H200, B = 65536, 26-512-512-1): 108 GFLOP, 1.23 GB of HBM, 3.7 GB L2 -> SM (128 x 128
    tiles): 0.37-0.53 ms, L2-bound."""
    t = tl.program_id(0)
    s = tl.program_id(1)
    li = (t >= T1).to(tl.int32) + (t >= T2).to(tl.int32)
    O = tl.multiple_of(tl.where(li == 0, O1, tl.where(li == 1, O2, O3)), ALIGN)  # D's row stride
    K = tl.where(li == 0, K1, tl.where(li == 1, K2, K3))  # V is read along its columns: K only counts them
    od = tl.multiple_of(tl.where(li == 0, OD1, tl.where(li == 1, OD2, OD3)), 16)
    ov = tl.multiple_of(tl.where(li == 0, OV1, tl.where(li == 1, OV2, OV3)), 16)
    ow = tl.where(li == 0, OW1, tl.where(li == 1, OW2, OW3))
    ob = tl.where(li == 0, OB1, tl.where(li == 1, OB2, OB3))
    local = t - tl.where(li == 0, 0, tl.where(li == 1, T1, T2))
    lo = (s * RPS).to(tl.int64)
    hi = tl.minimum(lo + RPS, 3 * Bp)
    _wgrad_tile(S, OUT + s.to(tl.int64) * out_stride, local, lo, hi, Bp, od, ov, ow, ob, O, K, one, PREC, BO, BC, BR)


@triton.jit(do_not_specialize=["NWB", "SPLIT", "NL1", "n_wlp", "tiles_n", "B", "Bp", "BM_ROWS", "PA", "score"])
def _finish_kernel(
    OUT, PART, WLP, FPART, PPART, BIAS_L,
    NWB, SPLIT, NL1, n_wlp, tiles_n, B, Bp, BM_ROWS, PA, score,
    gp_hi, gp_lo,
    FB: tl.constexpr,
):
    """Fixed-order reductions. Programs [0, PA): sum the SPLIT weight-gradient partials, FB
    elements each. Next cdiv(NL1, FB // 4): dw_L from its row-tile partials, FB // 4 columns
    each, in blocks of FB // 4 rows. Last: the scalars (and db_L = 0). score: one program,
    OUT[0] = mean f.

    Estimate: reads the split partials (split x 0.27 M gradients for 26-512-512-1) once: a few
    microseconds, launch-bound."""
    DT: tl.constexpr = OUT.dtype.element_ty
    CB: tl.constexpr = FB // 4
    pid = tl.program_id(0)
    PB = tl.cdiv(NL1, CB)
    idx = tl.arange(0, FB)
    tiles_kind = Bp // BM_ROWS  # FPART[row tile, column tile]: real tiles first, then fake tiles
    if score:
        s0 = tl.zeros((FB,), dtype=DT)
        for i0 in range(0, tiles_kind * tiles_n, FB):
            s0 += tl.load(FPART + i0 + idx, mask=i0 + idx < tiles_kind * tiles_n, other=0.0)
        tl.store(OUT, tl.sum(s0, axis=0) / B + tl.load(BIAS_L))
    elif pid < PA:
        i = pid * FB + idx
        m = i < NWB
        acc = tl.zeros((FB,), dtype=DT)
        ptrs = PART + i
        for _ in range(0, SPLIT):  # pointer increments: 64-bit offsets past 2^31 elements
            acc += tl.load(ptrs, mask=m, other=0.0)
            ptrs += NWB
        tl.store(OUT + i, acc, mask=m)
    elif pid < PA + PB:
        n = (pid - PA) * CB + tl.arange(0, CB)
        m = n < NL1
        r = tl.arange(0, CB)
        acc = tl.zeros((CB,), dtype=DT)
        for r0 in range(0, n_wlp, CB):
            blk = tl.load(WLP + (r0 + r)[:, None] * NL1 + n[None, :], mask=(r0 + r < n_wlp)[:, None] & m[None, :],
                          other=0.0)
            acc += tl.sum(blk, axis=0)
        tl.store(OUT + NWB + n, acc, mask=m)
    else:
        s0 = tl.zeros((FB,), dtype=DT)
        s1 = tl.zeros((FB,), dtype=DT)
        sp = tl.zeros((FB,), dtype=DT)
        for i0 in range(0, tiles_kind * tiles_n, FB):
            m = i0 + idx < tiles_kind * tiles_n
            s0 += tl.load(FPART + i0 + idx, mask=m, other=0.0)
            s1 += tl.load(FPART + tiles_kind * tiles_n + i0 + idx, mask=m, other=0.0)
        for i0 in range(0, tiles_kind, FB):
            sp += tl.load(PPART + i0 + idx, mask=i0 + idx < tiles_kind, other=0.0)
        f_real = tl.sum(s0, axis=0) / B
        f_fake = tl.sum(s1, axis=0) / B
        pen = tl.sum(sp, axis=0) / B
        gp = _scalar(gp_hi, gp_lo, DT)
        o = OUT + NWB + NL1
        tl.store(o, tl.zeros([], dtype=DT))  # db_L: mean over real minus mean over fake of 1
        tl.store(o + 1, f_fake - f_real + gp * pen)
        tl.store(o + 2, f_real - f_fake)
        tl.store(o + 3, pen)


# ------------------------------------------------------------------------------ host side

class Tiles(NamedTuple):
    BM: int  # rows per tile (forward, backward, r sweep, input gradient)
    BN: int
    BK: int
    BKI: int  # K step of the first layer, whose operand is built from x and z in registers
    BO: int  # weight-gradient tile (output rows x columns) and rows per step
    BC: int
    BR: int
    warps: int
    stages: int
    maxnreg: int | None = None  # per-thread register cap (None: the compiler's choice)


# Tensor-core tiles: wgmma wants 64-row multiples; 128 x 128 tiles load a third less operand
# data per flop than 64 x 128, worth it once a layer has enough tiles to fill the GPU.
TILES_TC_SMALL = Tiles(64, 128, 32, 16, 128, 128, 32, 8, 3)
TILES_TC_LARGE = Tiles(128, 128, 32, 16, 128, 128, 32, 8, 3)
TILES_TC_LARGE_FROM_B = 2048
# FMA tiles (ieee float32, float64): small enough that no accumulator spills. 255 registers: left
# to itself ptxas capped the 4-layer float32 weight-gradient kernel at 128 and spilled 40 bytes.
TILES_FMA = Tiles(32, 64, 16, 16, 64, 64, 16, 4, 2, 255)
# the interpreter runs every program in Python: few, big tiles
TILES_INTERPRETER = Tiles(32, 64, 64, 32, 64, 64, 32, 4, 1)


def tiles_for(dtype: torch.dtype, precision: str, B: int) -> Tiles:
    if _interpreting():
        return TILES_INTERPRETER
    if dtype == torch.float64 or precision == "ieee":
        return TILES_FMA
    return TILES_TC_LARGE if B >= TILES_TC_LARGE_FROM_B else TILES_TC_SMALL


def _precision(input_precision: str | None, dtype: torch.dtype) -> str:
    p = input_precision or env_precision("LSDM_TRITON_PRECISION", "tf32")
    if p not in PRECISIONS:
        raise ValueError(f"input_precision must be one of {PRECISIONS}, got {p!r}")
    return "ieee" if dtype == torch.float64 else p


def _grad_precision(prec: str) -> str:
    """The precision of the GEMMs that feed ||g_0|| - 1: float32-accurate."""
    return "tf32x3" if prec == "tf32" else prec


def _split_float(v: float) -> tuple[float, float]:
    hi = float(np.float32(v))
    return hi, float(np.float32(v - hi))


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


class _Arena:
    """Carves one flat allocation into 32-element-aligned regions (16-byte aligned pointers)."""

    def __init__(self):
        self.size = 0

    def take(self, n: int) -> int:
        off = self.size
        self.size += -(-n // 32) * 32
        return off


class _Run:
    """Scratch for one call, and the launches every call makes: the forward layers (D_{L-1}
    fused into the last), the backward layers, and g_0 (with, for the critic step, its norm,
    r_0 and r_1). kinds = 3 (critic step: real, fake, interpolated) or 1 (score gradient)."""

    def __init__(self, critic, x, kinds: int, input_precision: str | None):
        n = len(critic.weights)
        # dispatch checks this (layer_limits) before calling here; direct callers get the same answer
        why = layer_limits(*LAYERS)({"layers": n})
        if why is not None:
            raise ValueError(f"the triton critic step {why}")
        self.Ws = [w.detach().contiguous() for w in critic.weights]
        self.bs = [b.detach().contiguous() for b in critic.biases]
        self.L = L = n
        self.widths = widths = [self.Ws[0].shape[1]] + [w.shape[0] for w in self.Ws]  # N_0 .. N_L = 1
        self.dtype, self.dev = x.dtype, x.device
        self.prec = _precision(input_precision, x.dtype)
        self.B, self.DX = x.shape
        self.til = til = tiles_for(x.dtype, self.prec, self.B)
        self.Bp = Bp = triton.cdiv(self.B, til.BM) * til.BM
        self.R = R = kinds * Bp
        self.kinds = kinds
        self.tiles_m, self.tiles_n = R // til.BM, triton.cdiv(widths[L - 1], til.BN)
        self.slope = _split_float(hidden_slope(critic))
        self.opts = dict(num_warps=til.warps, num_stages=til.stages, maxnreg=til.maxnreg)
        ar = _Arena()
        # row-major: U_l (l = 1..L-2, every row; the next forward's A), D_l (l = 1..L-1)
        self.U_off = [0] + [ar.take(R * widths[l]) for l in range(1, L - 1)]
        self.D_off = [0] + [ar.take(R * widths[l]) for l in range(1, L)]
        # column-major V_l (l = 0..L-2, step only): N_l x 3Bp, u of the real and fake rows, then r
        self.V_off = [ar.take(3 * Bp * widths[l]) for l in range(L - 1)] if kinds == 3 else [0] * (L - 1)
        self.r0_off = ar.take(Bp * widths[0]) if kinds == 3 else 0  # r_0 row-major (the input gradient's)
        self.WT_off = [0] + [ar.take(widths[l] * widths[l - 1]) for l in range(1, L)]  # W_l^T
        self.fp_off = ar.take(self.tiles_m * self.tiles_n)  # sums of f per (row tile, column tile)
        self.pp_off = ar.take(Bp // til.BM)  # penalty sums per interpolated row tile
        # dw_L partials: real / fake tiles (forward), then interpolated tiles (r sweep)
        self.wlp_off = ar.take(self.tiles_m * widths[L - 1])
        self.arena = ar
        mar = _Arena()
        self.m_off = [0] + [mar.take(R * widths[l]) for l in range(1, L)]
        self.masks = torch.empty(mar.size, dtype=torch.int8, device=self.dev)

    def alloc(self):
        self.S = torch.empty(self.arena.size, dtype=self.dtype, device=self.dev)

    def region(self, off: int) -> torch.Tensor:
        return self.S[off:]

    def mask(self, l: int) -> torch.Tensor:
        return self.masks[self.m_off[l]:]

    def v(self, l: int) -> torch.Tensor:
        """The column-major V_l (step), or a placeholder where there is none."""
        return self.region(self.V_off[l]) if 0 <= l < self.L - 1 and self.kinds == 3 else self.S

    def layer(self, mode, grid_rows, A, l, mask, out, dout, x, z1, z2, t, first, last, score, prec_i,
              wlp_row0=0):
        K, N = (self.widths[l], self.widths[l - 1]) if mode == MODE_BWD else (self.widths[l - 1], self.widths[l])
        til = self.til
        vt = self.v(l - 1) if mode == MODE_BWD else self.v(l)
        _layer_kernel[((grid_rows // til.BM) * triton.cdiv(N, til.BN),)](
            A, self.Ws[l - 1], self.region(self.WT_off[l]), self.bs[l - 1], self.Ws[self.L - 1], mask, mask, out,
            vt, self.v(0), dout, self.region(self.fp_off), self.region(self.wlp_off), x, z1, z2, t,
            self.B, self.Bp, K, N, self.DX, wlp_row0, int(first), int(last), int(score), *self.slope, 1.0,
            MODE=mode, PREC=self.prec, PREC_I=prec_i, BM=til.BM, BN=til.BN, BK=til.BK, BKI=til.BKI, **self.opts)

    def forward_backward(self, x, z1, z2, t, score: bool):
        S, L, R = self.S, self.L, self.R
        for l in range(1, L):
            last = l == L - 1
            self.layer(MODE_FWD, R, self.region(self.U_off[l - 1]) if l > 1 else S, l, self.mask(l),
                       S if last else self.region(self.U_off[l]), self.region(self.D_off[l]) if last else S,
                       x, z1, z2, t, l == 1, last, score, self.prec)
        for l in range(L - 1, 1, -1):  # D_{l-1} from D_l; interpolated rows at float32 accuracy
            self.layer(MODE_BWD, R, self.region(self.D_off[l]), l, self.mask(l - 1), S,
                       self.region(self.D_off[l - 1]), x, z1, z2, t, False, False, score,
                       _grad_precision(self.prec))

    def input_grad(self, dz, gp_weight: float, latent: bool, score: bool):
        til, S = self.til, self.S
        _input_grad_kernel[(self.Bp // til.BM,)](
            self.region(self.D_off[1]), self.Ws[0], self.region(self.WT_off[1]), self.mask(1),
            self.region(self.r0_off), self.v(0), self.v(1), self.region(self.wlp_off), self.region(self.pp_off), dz,
            self.B, self.Bp, self.widths[0], self.widths[1], self.DX, 2 * self.Bp // til.BM,
            int(self.L == 2), int(score), int(latent), *_split_float(gp_weight), *self.slope,
            PREC=self.prec, PREC_G=_grad_precision(self.prec), BM=til.BM, BN=til.BN, BNG=til.BN // 4, BK=til.BK,
            **self.opts)

    def finish(self, out, part, split: int, nwb: int, gp_weight: float, score: bool):
        PA = triton.cdiv(nwb, FINISH_BLOCK) if split > 1 else 0
        grid = 1 if score else PA + triton.cdiv(self.widths[self.L - 1], FINISH_BLOCK // 4) + 1
        _finish_kernel[(grid,)](
            out, part, self.region(self.wlp_off), self.region(self.fp_off), self.region(self.pp_off),
            self.bs[self.L - 1], nwb, split, self.widths[self.L - 1], self.tiles_m, self.tiles_n, self.B, self.Bp,
            self.til.BM, PA, int(score), *_split_float(gp_weight), FB=FINISH_BLOCK)


FINISH_BLOCK = 256


def default_split(R: int, n_tiles: int, device: torch.device) -> int:
    """Row ranges for the weight-gradient sum: enough programs for two waves on the GPU, at
    least 256 rows each. Depends only on the shapes and the GPU, so results are reproducible."""
    if device.type != "cuda":
        return 1
    index = device.index if device.index is not None else torch.cuda.current_device()
    return max(1, min(triton.cdiv(2 * _sm_count(index), n_tiles), R // 256))


def critic_gradient_penalty_triton(critic, x, z_real, z_fake, t, *, gp_weight, penalty_over,
                                   input_precision: str | None = None, split: int | None = None):
    """The critic step (see the module docstring). Inputs: float32 or float64, one dtype for
    everything (the entry point checks). split: number of row ranges of the weight-gradient sum
    (default: default_split)."""
    run = _Run(critic, x, 3, input_precision)
    L, widths, til, R, Bp = run.L, run.widths, run.til, run.R, run.Bp
    x, z_real, z_fake = (v.detach().contiguous() for v in (x, z_real, z_fake))
    t = t.detach().reshape(-1).contiguous()

    tile_counts = [triton.cdiv(widths[l], til.BO) * triton.cdiv(widths[l - 1], til.BC) for l in range(1, L)]
    n_tiles = sum(tile_counts)
    rps = triton.cdiv(triton.cdiv(R, max(1, int(split or default_split(R, n_tiles, x.device)))), til.BR) * til.BR
    split = triton.cdiv(R, rps)

    # output: [dW_1 .. dW_{L-1}, db_1 .. db_{L-1} | dw_L, db_L | loss, wasserstein, penalty]
    w_off, b_off, o = [], [], 0
    for l in range(1, L):
        w_off.append(o)
        o += widths[l] * widths[l - 1]
    for l in range(1, L):
        b_off.append(o)
        o += widths[l]
    nwb = o
    G = torch.empty(nwb + widths[L - 1] + 1 + 3, dtype=x.dtype, device=x.device)
    part_off = run.arena.take(split * nwb) if split > 1 else 0
    run.alloc()
    S = run.S

    run.forward_backward(x, z_real, z_fake, t, score=False)
    run.input_grad(S, float(gp_weight), penalty_over == "latent", score=False)
    for l in range(2, L):  # r_l from r_{l-1} (both column-major, in V_{l-1} and V_l)
        run.layer(MODE_RSWEEP, Bp, run.v(l - 1), l, run.mask(l), S, S, x, z_real, z_fake, t, False, l == L - 1,
                  False, run.prec, wlp_row0=2 * Bp // til.BM)
    pad = lambda v: list(v) + [v[-1]] * (3 - len(v))  # noqa: E731  (unused layer slots repeat the last)
    ends = np.cumsum(tile_counts).tolist()
    starts = [ends[0], ends[min(1, len(ends) - 1)]]  # where layers 2 and 3 start (n_tiles: no such layer)
    target, stride = (run.region(part_off), nwb) if split > 1 else (G, 0)
    _wgrad_kernel[(n_tiles, split)](
        S, target, Bp, rps, stride, 1.0, *starts,
        *pad(widths[1:L]), *pad(widths[0:L - 1]),
        *pad(run.D_off[1:L]), *pad(run.V_off[0:L - 1]), *pad(w_off), *pad(b_off),
        ALIGN=16 if all(w % 16 == 0 for w in widths[1:L]) else 1, PREC=run.prec, BO=til.BO, BC=til.BC, BR=til.BR,
        **run.opts)
    run.finish(G, run.region(part_off), split, nwb, float(gp_weight), score=False)

    gws = [G[w_off[l - 1]:w_off[l - 1] + widths[l] * widths[l - 1]].view(widths[l], widths[l - 1])
           for l in range(1, L)] + [G[nwb:nwb + widths[L - 1]].view(1, widths[L - 1])]
    gbs = [G[b_off[l - 1]:b_off[l - 1] + widths[l]] for l in range(1, L)] + [G[nwb + widths[L - 1]:][:1]]
    s = nwb + widths[L - 1] + 1
    return CriticStepOutput(G[s], G[s + 1], G[s + 2], gws, gbs, backend="triton")


def critic_score_grad_triton(critic, x, z, *, input_precision: str | None = None):
    """(mean f(x, z), d mean f / dz); float32 or float64 inputs of the critic's dtype."""
    run = _Run(critic, x, 1, input_precision)
    x, z = x.detach().contiguous(), z.detach().contiguous()
    out = torch.empty(z.numel() + 1, dtype=x.dtype, device=x.device)  # [dz, score]
    run.alloc()
    run.forward_backward(x, z, z, x, score=True)
    run.input_grad(out, 0.0, False, score=True)
    run.finish(out[z.numel():], run.S, 1, 0, 0.0, score=True)
    return out[z.numel()], out[:z.numel()].view(z.shape)


@register("critic_gradient_penalty", "triton", available=_available, why_unavailable=_why_unavailable,
          limits=layer_limits(*LAYERS))
def _critic_gp_triton(critic, x, z_real, z_fake, t, *, gp_weight, penalty_over, input_precision=None):
    return critic_gradient_penalty_triton(critic, x, z_real, z_fake, t, gp_weight=gp_weight,
                                          penalty_over=penalty_over, input_precision=input_precision)


@register("critic_score_grad", "triton", available=_available, why_unavailable=_why_unavailable,
          limits=layer_limits(*LAYERS))
def _critic_score_grad_triton(critic, x, z, *, input_precision=None):
    return critic_score_grad_triton(critic, x, z, input_precision=input_precision)
