"""Triton backend of the fused WGAN-GP critic step (DESIGN.md sections 3-4).

Two launches per critic step, one (+ a torch mean) for the generator-side score gradient.

The three batches (real, fake, interpolated) are stacked as M = 3B "rows"; kind k = 0, 1, 2.
With c_k = -1/B, +1/B, 1 every parameter gradient is one sum over the stacked rows:

    dL/dW_l = sum_rows D_l[row]^T U_{l-1}[row]       (l = 1..L; U extended by a bias column)

    D_l  = c_k * delta_l       delta_l = s'(a_l) * g_l, g_{L-1} = w_L, g_{l-1} = W_l^T delta_l
    U_l  = u_l (forward activation)                       for real / fake rows, bias column 1
    U_l  = r_l (r_0 = dP/dg_0, r_l = s'(a_l) W_l r_{l-1}) for interpolated rows, bias column 0

(the bias column gives db_l; db_L = 0 exactly and is written as 0).

Kernel 1 (`_critic_rows_kernel`, grid (ceil(B/BM), 3)): for one tile of BM samples and one kind:
  input build (x, z or t z_real + (1-t) z_fake), forward through all layers, the backward sweep
  writing D_l, and for the interpolated kind the norm of g_0, r_0 and the r sweep. Activations
  live in a per-call scratch buffer in global memory (L1/L2 resident for one row tile; read back
  by the same program after a barrier) rather than registers/shared memory: widths up to 1024
  do not fit a register tile, and this keeps the kernel one code path for every width.
Kernel 2 (`_wgrad_kernel`, grid (weight tiles of all layers + 1, SPLIT)): dW_l = D_l^T U_{l-1}
  tile GEMMs over the 3B rows (split over rows with atomics when SPLIT > 1, which needs a
  zeroed output: one memset), and one extra program reducing loss / wasserstein / penalty.

Precision: tl.dot(..., input_precision="ieee") by default (float32 exact FMA path, parity
~1e-6). Set LSDM_TRITON_PRECISION=tf32 (or pass input_precision="tf32" to the functions
below) for tensor-core TF32 on a GPU: documented parity tolerance ~1e-2. float64 is supported
natively (tl.dot on float64; always "ieee"). float16/bfloat16 inputs are upcast to float32
and the results cast back.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ._registry import register
from .critic_gp import CriticStepOutput
from .mlp import hidden_slope, work_dtype

PRECISIONS = ("ieee", "tf32", "tf32x3")


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _available(device: torch.device) -> bool:
    return device.type == "cuda" or (device.type == "cpu" and _interpreting())


def _why_unavailable() -> str:
    return ("the Triton backend needs CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 set "
            "before lsdm_fast is imported (the interpreter: slow, for testing)")


# ------------------------------------------------------------------------------ kernels

@triton.jit
def _sel4(l: tl.constexpr, a, b, c, d):
    r = a
    if l == 1:
        r = b
    if l == 2:
        r = c
    if l == 3:
        r = d
    return r


@triton.jit
def _mm(a_ptr, a_rows, a_rmask, K, w_ptr, w_sk, w_sn, n_offs, n_mask,
        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    """acc[m, n] = sum_k A[a_rows[m], k] * W[k * w_sk + n * w_sn]   (A row-major with K cols)."""
    acc = tl.zeros((BM, BN), dtype=a_ptr.dtype.element_ty)
    for k0 in range(0, K, BK):
        k = k0 + tl.arange(0, BK)
        km = k < K
        a = tl.load(a_ptr + a_rows[:, None] * K + k[None, :], mask=a_rmask[:, None] & km[None, :], other=0.0)
        w = tl.load(w_ptr + k[:, None] * w_sk + n_offs[None, :] * w_sn, mask=km[:, None] & n_mask[None, :],
                    other=0.0)
        acc = tl.dot(a, w, acc, input_precision=PREC, out_dtype=acc.dtype)
    return acc


@triton.jit
def _critic_rows_kernel(
    X, Z1, Z2, T,
    W0, W1, W2, W3, B0, B1, B2, B3,
    S, DZ,
    B, M, DX, N0, N1, N2, N3,
    OA0, OA1, OA2, OA3, OD1, OD2, OD3, OD4, OR0, OR1, OR2, OR3, OF, OP,
    slope, gp_weight, P,
    NL: tl.constexpr, LATENT: tl.constexpr, SCORE: tl.constexpr, PIN: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr,
):
    # NL linear layers; weights W0..W{NL-1}; widths N0 (input) .. N{NL-1} (last hidden), output 1.
    # Scratch S: ACT_l at OA_l (M x N_l), D_l at OD_l (M x N_l, l = 1..NL; N_NL = 1),
    # R_l at OR_l (B x N_l, interpolated rows only), f values at OF (M), penalty terms at OP (B).
    pid = tl.program_id(0)
    kind = tl.program_id(1)
    rows = pid * BM + tl.arange(0, BM)
    rmask = rows < B
    rows64 = rows.to(tl.int64)
    grow = kind.to(tl.int64) * B + rows64  # stacked row
    DZW = N0 - DX
    if PIN:  # float64: slope and gp_weight from memory (Triton scalar float args are float32)
        slope = tl.load(P)
        gp_weight = tl.load(P + 1)
    inv_b = (tl.zeros((BM,), dtype=S.dtype.element_ty) + 1.0) / B

    # ---- input u_0 = (x, z) ------------------------------------------------------------
    tt = tl.load(T + rows64, mask=rmask & (kind == 2), other=0.0)
    for c0 in range(0, N0, BN):
        cols = c0 + tl.arange(0, BN)
        cm = cols < N0
        isx = cols < DX
        zc = tl.where(isx, 0, cols - DX)
        xv = tl.load(X + rows64[:, None] * DX + cols[None, :], mask=rmask[:, None] & (cm & isx)[None, :], other=0.0)
        zm = rmask[:, None] & (cm & (cols >= DX))[None, :]
        z1 = tl.load(Z1 + rows64[:, None] * DZW + zc[None, :], mask=zm, other=0.0)
        if SCORE:
            zv = z1
        else:
            z2 = tl.load(Z2 + rows64[:, None] * DZW + zc[None, :], mask=zm, other=0.0)
            zh = tt[:, None] * z1 + (1 - tt[:, None]) * z2
            zv = tl.where(kind == 0, z1, tl.where(kind == 1, z2, zh))
        u = tl.where(isx[None, :], xv, zv)
        tl.store(S + OA0 + grow[:, None] * N0 + cols[None, :], u, mask=rmask[:, None] & cm[None, :])
    tl.debug_barrier()

    # ---- forward, hidden layers ----------------------------------------------------------
    for l in tl.static_range(1, NL):
        W = _sel4(l - 1, W0, W1, W2, W3)
        Bb = _sel4(l - 1, B0, B1, B2, B3)
        K = _sel4(l - 1, N0, N1, N2, N3)
        N = _sel4(l, N0, N1, N2, N3)
        OAi = _sel4(l - 1, OA0, OA1, OA2, OA3)
        OAo = _sel4(l, OA0, OA1, OA2, OA3)
        for n0 in range(0, N, BN):
            n = n0 + tl.arange(0, BN)
            nm = n < N
            acc = _mm(S + OAi, grow, rmask, K, W, 1, K, n, nm, BM, BN, BK, PREC)
            acc += tl.load(Bb + n, mask=nm, other=0.0)[None, :]
            acc = tl.where(acc > 0, acc, acc * slope)
            tl.store(S + OAo + grow[:, None] * N + n[None, :], acc, mask=rmask[:, None] & nm[None, :])
        tl.debug_barrier()

    # ---- output layer: f = w_L . u_{L-1} + b_L ---------------------------------------------
    WL = _sel4(NL - 1, W0, W1, W2, W3)
    BL = _sel4(NL - 1, B0, B1, B2, B3)
    KL = _sel4(NL - 1, N0, N1, N2, N3)
    OAL = _sel4(NL - 1, OA0, OA1, OA2, OA3)
    fsum = tl.zeros((BM,), dtype=S.dtype.element_ty)
    for k0 in range(0, KL, BK):
        k = k0 + tl.arange(0, BK)
        km = k < KL
        a = tl.load(S + OAL + grow[:, None] * KL + k[None, :], mask=rmask[:, None] & km[None, :], other=0.0)
        w = tl.load(WL + k, mask=km, other=0.0)
        fsum += tl.sum(a * w[None, :], axis=1)
    fsum += tl.load(BL)
    tl.store(S + OF + grow, fsum, mask=rmask)

    # ---- backward sweep: D_l = c * delta_l -------------------------------------------------
    if SCORE:
        c = inv_b
    else:
        c = tl.where(kind == 0, -inv_b, tl.where(kind == 1, inv_b, 1.0))
    ODL = _sel4(NL - 1, OD1, OD2, OD3, OD4)
    tl.store(S + ODL + grow, tl.zeros((BM,), dtype=S.dtype.element_ty) + c, mask=rmask)
    # D_{L-1} = c * s'(a_{L-1}) * w_L
    for n0 in range(0, KL, BN):
        n = n0 + tl.arange(0, BN)
        nm = n < KL
        m2 = rmask[:, None] & nm[None, :]
        a = tl.load(S + OAL + grow[:, None] * KL + n[None, :], mask=m2, other=0.0)
        w = tl.load(WL + n, mask=nm, other=0.0)
        d = tl.where(a > 0, 1.0, slope) * w[None, :] * c[:, None]
        ODh = _sel4(NL - 2, OD1, OD2, OD3, OD4)
        tl.store(S + ODh + grow[:, None] * KL + n[None, :], d, mask=m2)
    tl.debug_barrier()
    # D_{l-1} = s'(a_{l-1}) * (D_l W_l),  l = L-1 .. 2
    for j in tl.static_range(1, NL - 1):
        l = NL - j  # layer index of W_l as 1-based; its weight is W_{l-1} 0-based
        W = _sel4(l - 1, W0, W1, W2, W3)
        Kin = _sel4(l, N0, N1, N2, N3)  # width of D_l
        N = _sel4(l - 1, N0, N1, N2, N3)  # width of D_{l-1}
        ODi = _sel4(l - 1, OD1, OD2, OD3, OD4)
        ODo = _sel4(l - 2, OD1, OD2, OD3, OD4)
        OAo = _sel4(l - 1, OA0, OA1, OA2, OA3)
        for n0 in range(0, N, BN):
            n = n0 + tl.arange(0, BN)
            nm = n < N
            m2 = rmask[:, None] & nm[None, :]
            acc = _mm(S + ODi, grow, rmask, Kin, W, N, 1, n, nm, BM, BN, BK, PREC)
            a = tl.load(S + OAo + grow[:, None] * N + n[None, :], mask=m2, other=0.0)
            acc = tl.where(a > 0, acc, acc * slope)
            tl.store(S + ODo + grow[:, None] * N + n[None, :], acc, mask=m2)
        tl.debug_barrier()

    # ---- g_0 = W_1^T D_1 ---------------------------------------------------------------------
    N1w = _sel4(1, N0, N1, N2, N3)
    if SCORE:
        # d mean f / dz = g_0[:, DX:] (D already carries 1/B)
        for n0 in range(0, N0, BN):
            n = n0 + tl.arange(0, BN)
            nm = n < N0
            acc = _mm(S + OD1, grow, rmask, N1w, W0, N0, 1, n, nm, BM, BN, BK, PREC)
            zc = tl.where(n >= DX, n - DX, 0)
            tl.store(DZ + rows64[:, None] * DZW + zc[None, :], acc,
                     mask=rmask[:, None] & (nm & (n >= DX))[None, :])
    else:
        if kind == 2:
            ssq = tl.zeros((BM,), dtype=S.dtype.element_ty)
            for n0 in range(0, N0, BN):
                n = n0 + tl.arange(0, BN)
                nm = n < N0
                m2 = rmask[:, None] & nm[None, :]
                acc = _mm(S + OD1, grow, rmask, N1w, W0, N0, 1, n, nm, BM, BN, BK, PREC)
                if LATENT:
                    acc = tl.where((n >= DX)[None, :], acc, 0.0)
                ssq += tl.sum(acc * acc, axis=1)
                tl.store(S + OR0 + rows64[:, None] * N0 + n[None, :], acc, mask=m2)
            nrm = tl.sqrt(ssq)
            tl.store(S + OP + rows64, (nrm - 1) * (nrm - 1), mask=rmask)
            coef = tl.where(nrm > 0, 2.0 * gp_weight * (nrm - 1) * inv_b / tl.where(nrm > 0, nrm, 1.0), 0.0)
            tl.debug_barrier()
            for n0 in range(0, N0, BN):
                n = n0 + tl.arange(0, BN)
                m2 = rmask[:, None] & (n < N0)[None, :]
                g = tl.load(S + OR0 + rows64[:, None] * N0 + n[None, :], mask=m2, other=0.0)
                tl.store(S + OR0 + rows64[:, None] * N0 + n[None, :], g * coef[:, None], mask=m2)
            tl.debug_barrier()
            # r sweep: r_l = s'(a_l) * (W_l r_{l-1}),  l = 1 .. L-1
            for l in tl.static_range(1, NL):
                W = _sel4(l - 1, W0, W1, W2, W3)
                K = _sel4(l - 1, N0, N1, N2, N3)
                N = _sel4(l, N0, N1, N2, N3)
                ORi = _sel4(l - 1, OR0, OR1, OR2, OR3)
                ORo = _sel4(l, OR0, OR1, OR2, OR3)
                OAo = _sel4(l, OA0, OA1, OA2, OA3)
                for n0 in range(0, N, BN):
                    n = n0 + tl.arange(0, BN)
                    nm = n < N
                    m2 = rmask[:, None] & nm[None, :]
                    acc = _mm(S + ORi, rows64, rmask, K, W, 1, K, n, nm, BM, BN, BK, PREC)
                    a = tl.load(S + OAo + grow[:, None] * N + n[None, :], mask=m2, other=0.0)
                    acc = tl.where(a > 0, acc, acc * slope)
                    tl.store(S + ORo + rows64[:, None] * N + n[None, :], acc, mask=m2)
                tl.debug_barrier()


@triton.jit
def _wgrad_tile(S, GW, GB, local, split, RPS, B, M, O, K, OD, OA, OR, IS_LAST: tl.constexpr,
                ATOMIC: tl.constexpr, BO: tl.constexpr, BC: tl.constexpr, BR: tl.constexpr,
                PREC: tl.constexpr):
    # dW_ext[o, k] = sum_rows D[row, o] * U[row, k], k in [0, K]; column K is the bias.
    tiles_k = tl.cdiv(K + 1, BC)
    to = local // tiles_k
    tk = local % tiles_k
    o = to * BO + tl.arange(0, BO)
    k = tk * BC + tl.arange(0, BC)
    om = o < O
    km = k < K
    acc = tl.zeros((BO, BC), dtype=S.dtype.element_ty)
    lo = split * RPS
    hi = tl.minimum(lo + RPS, M)
    B2 = 2 * B
    for r0 in range(lo, hi, BR):
        r = r0 + tl.arange(0, BR)
        rm = r < hi
        r64 = r.to(tl.int64)
        dt = tl.load(S + OD + r64[None, :] * O + o[:, None], mask=rm[None, :] & om[:, None], other=0.0)
        isa = rm & (r < B2)
        isr = rm & (r >= B2)
        ua = tl.load(S + OA + r64[:, None] * K + k[None, :], mask=isa[:, None] & km[None, :], other=0.0)
        rr = tl.where(r >= B2, r64 - B2, 0)
        ur = tl.load(S + OR + rr[:, None] * K + k[None, :], mask=isr[:, None] & km[None, :], other=0.0)
        u = ua + ur + tl.where(isa[:, None] & (k == K)[None, :], 1.0, 0.0)
        acc = tl.dot(dt, u.to(dt.dtype), acc, input_precision=PREC, out_dtype=acc.dtype)
    wm = om[:, None] & km[None, :]
    wptr = GW + o[:, None] * K + k[None, :]
    bm = om[:, None] & (k == K)[None, :]
    bptr = GB + o[:, None] + k[None, :] * 0
    if IS_LAST:
        acc_b = acc * 0.0
    else:
        acc_b = acc
    if ATOMIC:
        tl.atomic_add(wptr, acc, mask=wm)
        if not IS_LAST:
            tl.atomic_add(bptr, acc_b, mask=bm)
    else:
        tl.store(wptr, acc, mask=wm)
        tl.store(bptr, acc_b, mask=bm)


@triton.jit
def _wgrad_kernel(
    S, GW0, GW1, GW2, GW3, GB0, GB1, GB2, GB3, OUT,
    B, M, RPS, N0, N1, N2, N3,
    OA0, OA1, OA2, OA3, OD1, OD2, OD3, OD4, OR0, OR1, OR2, OR3, OF, OP,
    T1, T2, T3, T4,
    gp_weight, P,
    NL: tl.constexpr, ATOMIC: tl.constexpr, PIN: tl.constexpr,
    BO: tl.constexpr, BC: tl.constexpr, BR: tl.constexpr, PREC: tl.constexpr,
):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    # layer l (1-based) has weight W_{l-1}: (N_l, N_{l-1}); N_NL = 1
    if pid < T1:
        _wgrad_tile(S, GW0, GB0, pid, split, RPS, B, M, N1 if NL > 1 else 1, N0, OD1, OA0, OR0, NL == 1,
                    ATOMIC, BO, BC, BR, PREC)
    if NL >= 2:
        if (pid >= T1) & (pid < T2):
            _wgrad_tile(S, GW1, GB1, pid - T1, split, RPS, B, M, N2 if NL > 2 else 1, N1, OD2, OA1, OR1,
                        NL == 2, ATOMIC, BO, BC, BR, PREC)
    if NL >= 3:
        if (pid >= T2) & (pid < T3):
            _wgrad_tile(S, GW2, GB2, pid - T2, split, RPS, B, M, N3 if NL > 3 else 1, N2, OD3, OA2, OR2,
                        NL == 3, ATOMIC, BO, BC, BR, PREC)
    if NL >= 4:
        if (pid >= T3) & (pid < T4):
            _wgrad_tile(S, GW3, GB3, pid - T3, split, RPS, B, M, 1, N3, OD4, OA3, OR3, True,
                        ATOMIC, BO, BC, BR, PREC)
    if (pid == T4) & (split == 0):
        sr = tl.zeros((BR,), dtype=S.dtype.element_ty)
        sf = tl.zeros((BR,), dtype=S.dtype.element_ty)
        sp = tl.zeros((BR,), dtype=S.dtype.element_ty)
        for r0 in range(0, B, BR):
            r = r0 + tl.arange(0, BR)
            rm = r < B
            r64 = r.to(tl.int64)
            sr += tl.load(S + OF + r64, mask=rm, other=0.0)
            sf += tl.load(S + OF + B + r64, mask=rm, other=0.0)
            sp += tl.load(S + OP + r64, mask=rm, other=0.0)
        if PIN:
            gp_weight = tl.load(P + 1)
        fr = tl.sum(sr, axis=0) / B
        ff = tl.sum(sf, axis=0) / B
        pen = tl.sum(sp, axis=0) / B
        tl.store(OUT + 0, ff - fr + gp_weight * pen)
        tl.store(OUT + 1, fr - ff)
        tl.store(OUT + 2, pen)


# ------------------------------------------------------------------------------ host side

def _precision(input_precision, dtype) -> str:
    p = input_precision or os.environ.get("LSDM_TRITON_PRECISION", "ieee")
    if p not in PRECISIONS:
        raise ValueError(f"input_precision must be one of {PRECISIONS}, got {p!r}")
    return "ieee" if dtype == torch.float64 else p


def _blocks(B: int):
    if _interpreting():  # every program and every op is Python: few, big tiles
        return dict(BM=max(16, min(64, triton.next_power_of_2(B))), BN=128, BK=128)
    return dict(BM=32, BN=64, BK=32)


def _prep(critic, dtype):
    n = len(critic.weights)
    if not 2 <= n <= 4:
        raise ValueError(f"triton critic step supports 2 to 4 linear layers, got {n}")
    Ws = [w.detach().to(dtype).contiguous() for w in critic.weights]
    bs = [b.detach().to(dtype).contiguous() for b in critic.biases]
    widths = [Ws[0].shape[1]] + [w.shape[0] for w in Ws]  # N_0 .. N_L (N_L = 1)
    slope = hidden_slope(critic)
    return Ws, bs, widths, slope


def _layout(B: int, M: int, widths: list[int], with_r: bool):
    """Offsets (elements) of the scratch regions, and the total size."""
    L = len(widths) - 1
    off = 0
    OA = []
    for l in range(L):
        OA.append(off)
        off += M * widths[l]
    OD = []
    for l in range(1, L + 1):
        OD.append(off)
        off += M * widths[l]
    OR = []
    for l in range(L):
        OR.append(off)
        if with_r:
            off += B * widths[l]
    OF = off
    off += M
    OP = off
    off += B
    pad = lambda v, n: list(v) + [0] * (n - len(v))  # noqa: E731
    return pad(OA, 4), pad(OD, 4), pad(OR, 4), OF, OP, off


def _params(slope, gp_weight, dtype, device, dummy):
    """float64 runs read slope and gp_weight from a small tensor (one host-to-device copy) so
    that they are not rounded to float32; float32 runs pass them as kernel scalars."""
    if dtype == torch.float64:
        return torch.tensor([slope, gp_weight], dtype=dtype, device=device), True
    return dummy, False


def critic_gradient_penalty_triton(critic, x, z_real, z_fake, t, *, gp_weight, penalty_over,
                                   input_precision: str | None = None, split: int | None = None):
    out_dtype = x.dtype
    dtype = work_dtype(x)
    prec = _precision(input_precision, dtype)
    Ws, bs, widths, slope = _prep(critic, dtype)
    L = len(Ws)
    x = x.detach().to(dtype).contiguous()
    z_real = z_real.detach().to(dtype).contiguous()
    z_fake = z_fake.detach().to(dtype).contiguous()
    t = t.detach().reshape(-1).to(dtype).contiguous()
    B, DX = x.shape
    M = 3 * B
    dev = x.device
    OA, OD, OR, OF, OP, total = _layout(B, M, widths, True)
    S = torch.empty(total, dtype=dtype, device=dev)
    P, pin = _params(slope, gp_weight, dtype, dev, S)
    bl = _blocks(B)
    Np = list(widths[:L]) + [1] * (4 - L)  # N0..N3 (hidden widths, padded)
    Wp = Ws + [Ws[0]] * (4 - L)
    Bp = bs + [bs[0]] * (4 - L)
    grid1 = (triton.cdiv(B, bl["BM"]), 3)
    _critic_rows_kernel[grid1](
        x, z_real, z_fake, t, *Wp, *Bp, S, S,
        B, M, DX, *Np, *OA[:4], *OD[:4], *OR[:4], OF, OP,
        slope, float(gp_weight), P,
        NL=L, LATENT=(penalty_over == "latent"), SCORE=False, PIN=pin, PREC=prec, **bl,
    )
    # kernel 2: weight gradient tiles + scalars
    if _interpreting():
        BO, BC, BR = 128, 128, 64
    else:
        BO, BC, BR = 64, 64, 32
    tiles, cum = [], []
    acc = 0
    for l in range(1, L + 1):
        acc += triton.cdiv(widths[l], BO) * triton.cdiv(widths[l - 1] + 1, BC)
        cum.append(acc)
    cum = cum + [acc] * (4 - L)
    if split is None:
        split = 1
        if not _interpreting() and dev.type == "cuda":
            sms = torch.cuda.get_device_properties(dev).multi_processor_count
            split = max(1, min(triton.cdiv(M, 4 * BR), triton.cdiv(2 * sms, acc)))
    rps = triton.cdiv(triton.cdiv(M, split), BR) * BR
    split = triton.cdiv(M, rps)
    atomic = split > 1
    nw = sum(widths[l] * widths[l - 1] for l in range(1, L + 1))
    nb = sum(widths[1:])
    G = (torch.zeros if atomic else torch.empty)(nw + nb + 3, dtype=dtype, device=dev)
    gws, gbs, o = [], [], 0
    for l in range(1, L + 1):
        gws.append(G[o:o + widths[l] * widths[l - 1]].view(widths[l], widths[l - 1]))
        o += widths[l] * widths[l - 1]
    for l in range(1, L + 1):
        gbs.append(G[o:o + widths[l]])
        o += widths[l]
    out3 = G[o:o + 3]
    _wgrad_kernel[(acc + 1, split)](
        S, *(gws + [gws[0]] * (4 - L)), *(gbs + [gbs[0]] * (4 - L)), out3,
        B, M, rps, *Np, *OA[:4], *OD[:4], *OR[:4], OF, OP,
        *cum, float(gp_weight), P,
        NL=L, ATOMIC=atomic, PIN=pin, BO=BO, BC=BC, BR=BR, PREC=prec,
    )
    cast = (lambda v: v.to(out_dtype)) if out_dtype != dtype else (lambda v: v)
    return CriticStepOutput(cast(out3[0]), cast(out3[1]), cast(out3[2]),
                            [cast(g) for g in gws], [cast(g) for g in gbs], backend="triton")


def critic_score_grad_triton(critic, x, z, *, input_precision: str | None = None):
    out_dtype = x.dtype
    dtype = work_dtype(x)
    prec = _precision(input_precision, dtype)
    Ws, bs, widths, slope = _prep(critic, dtype)
    L = len(Ws)
    x = x.detach().to(dtype).contiguous()
    z = z.detach().to(dtype).contiguous()
    B, DX = x.shape
    OA, OD, OR, OF, OP, total = _layout(B, B, widths, False)
    S = torch.empty(total, dtype=dtype, device=x.device)
    dz = torch.empty_like(z)
    P, pin = _params(slope, 0.0, dtype, x.device, S)
    bl = _blocks(B)
    Np = list(widths[:L]) + [1] * (4 - L)
    _critic_rows_kernel[(triton.cdiv(B, bl["BM"]), 1)](
        x, z, z, x, *(Ws + [Ws[0]] * (4 - L)), *(bs + [bs[0]] * (4 - L)), S, dz,
        B, B, DX, *Np, *OA[:4], *OD[:4], *OR[:4], OF, OP,
        slope, 0.0, P,
        NL=L, LATENT=False, SCORE=True, PIN=pin, PREC=prec, **bl,
    )
    score = S[OF:OF + B].mean()
    return score.to(out_dtype), dz.to(out_dtype)


@register("critic_gradient_penalty", "triton", available=_available, why_unavailable=_why_unavailable)
def _critic_gp_triton(critic, x, z_real, z_fake, t, *, gp_weight, penalty_over):
    return critic_gradient_penalty_triton(critic, x, z_real, z_fake, t, gp_weight=gp_weight,
                                          penalty_over=penalty_over)


@register("critic_score_grad", "triton", available=_available, why_unavailable=_why_unavailable)
def _critic_score_grad_triton(critic, x, z):
    return critic_score_grad_triton(critic, x, z)
