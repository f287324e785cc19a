"""Where TF32 hurts the critic step: the closed-form step (docs/design.md §3) with the inputs
of chosen GEMMs rounded to TF32 (mantissa truncated to 10 bits, as tensor cores read float32
operands), against float64. CPU only; it decides which GEMMs of the Triton backend must run in
3xTF32 (lsdm_fast/ops/critic_gp_triton.py).

    python bench/tf32_critic_error.py

Rows: all float32; all TF32; TF32 except the interpolated rows' backward GEMMs and g_0 (the
ones that feed ||g_0|| - 1), which is what the Triton backend does; the same with the
interpolated rows' forward also exact. Columns: largest relative error over the loss terms and
every gradient, and the penalty's own error. Critics as initialised, and rescaled so that the
mean ||g_0|| is 1 (a trained critic: ||g|| - 1 is then a difference of nearly equal numbers).
"""
from __future__ import annotations

import math

import torch

EXACT, TF32, FP32 = "float64", "tf32", "float32"


def _round_tf32(a: torch.Tensor) -> torch.Tensor:
    bits = a.float().contiguous().view(torch.int32) & ~0x1FFF
    return bits.view(torch.float32).double()


def _mm(a, b, prec):
    if prec == TF32:
        return (_round_tf32(a) @ _round_tf32(b)).float().double()
    if prec == FP32:
        return (a.float().double() @ b.float().double()).float().double()
    return a @ b


def step(ws, bs, x, zr, zf, t, gp, slope, fwd, fwd_i, bwd, bwd_i, grad, rest):
    """Loss terms and gradients; each GEMM group in its own precision (_i: interpolated rows)."""
    B, L = x.shape[0], len(ws)

    def rows(A, W, p, p_i):
        return torch.cat([_mm(A[:2 * B], W, p), _mm(A[2 * B:], W, p_i)])

    tt = t[:, None]
    U = [torch.cat([torch.cat([x, zr], 1), torch.cat([x, zf], 1), torch.cat([x, tt * zr + (1 - tt) * zf], 1)])]
    S = [None]
    for l in range(L - 1):
        a = rows(U[-1], ws[l].T, fwd, fwd_i) + bs[l]
        S.append(torch.where(a > 0, 1.0, slope).double())
        U.append(a * S[-1])
    f = U[-1] @ ws[-1][0] + bs[-1][0]
    wass = f[:B].mean() - f[B:2 * B].mean()
    c = torch.cat([torch.full((B,), -1.0 / B), torch.full((B,), 1.0 / B), torch.ones(B)]).double()
    D = [None] * L
    D[L - 1] = S[L - 1] * ws[-1][0] * c[:, None]
    for l in range(L - 1, 1, -1):
        D[l - 1] = rows(D[l], ws[l - 1], bwd, bwd_i) * S[l - 1]
    g0 = _mm(D[1][2 * B:], ws[0], grad)
    nrm = g0.norm(dim=1)
    pen = ((nrm - 1) ** 2).mean()
    R = [g0 * (2 * gp * (nrm - 1) / (nrm * B))[:, None]]
    for l in range(1, L):
        R.append(_mm(R[-1], ws[l - 1].T, rest) * S[l][2 * B:])
    D.append(c[:, None])  # D_L
    gw = [_mm(D[l].T, torch.cat([U[l - 1][:2 * B], R[l - 1]]), rest) for l in range(1, L + 1)]
    gb = [D[l][:2 * B].sum(0) for l in range(1, L)]
    return [wass, pen, -wass + gp * pen, *gw, *gb], nrm


VARIANTS = {
    "float32 everywhere": [FP32] * 6,
    "TF32 everywhere": [TF32] * 6,
    "TF32, norm path 3xTF32 (Triton)": [TF32, TF32, TF32, FP32, FP32, TF32],
    "... and interpolated forward": [TF32, FP32, TF32, FP32, FP32, TF32],
}


def main():
    torch.manual_seed(0)
    print("| critic | mean ||g_0|| | variant | max rel. error | penalty rel. error |")
    print("|---|---:|---|---:|---:|")
    for hidden in ([512, 512], [512, 512, 512], [1024, 1024]):
        widths, B = [42, *hidden, 1], 4096
        ws = [torch.randn(o, i, dtype=torch.float64) / math.sqrt(i) * 1.4 for i, o in zip(widths, widths[1:])]
        bs = [torch.randn(o, dtype=torch.float64) * 0.1 for o in widths[1:]]
        x, zr = torch.randn(B, 10).double(), torch.randn(B, 32).double()
        zf, t = torch.randn(B, 32).double() * 0.5 + 0.3, torch.rand(B).double()
        for trained in (False, True):
            if trained:
                _, nrm = step(ws, bs, x, zr, zf, t, 10.0, 0.2, *[EXACT] * 6)
                ws[-1], bs[-1] = ws[-1] / nrm.mean(), bs[-1] / nrm.mean()
            ref, nrm = step(ws, bs, x, zr, zf, t, 10.0, 0.2, *[EXACT] * 6)
            for name, precs in VARIANTS.items():
                out, _ = step(ws, bs, x, zr, zf, t, 10.0, 0.2, *precs)
                # the W estimate is a difference of means: its error relative to their size
                errs = [abs(out[0] - ref[0]).item() / (ref[0].abs().item() + 1.0)]
                errs += [((a - b).norm() / b.norm()).item() for a, b in zip(out[1:], ref[1:])]
                print(f"| {'-'.join(map(str, widths))} | {nrm.mean():.2f} | {name} | {max(errs):.1e} | {errs[1]:.1e} |")


if __name__ == "__main__":
    main()
