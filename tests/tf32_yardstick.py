"""Yardsticks for reduced-precision parity on a GPU: what the design's own arithmetic loses on the same inputs.

One fixed relative tolerance cannot hold for every quantity at TF32 (10-bit mantissas): the bias gradients, the
Wasserstein estimate and the score are differences of batch means and cancel to a small fraction of their terms
when the real and fake batches are alike (the tests draw both from N(0, 1)), so their relative error grows with the
cancellation. On an H200 (2026-12-04) the Triton critic step's bias gradients were 2-14 % off at TF32 where its
weight gradients were 0.1-4 % off.

`emulated_step`: the critic step in closed form (docs/design.md §3, the sums of critic_gp_triton.py's docstring)
in float64 on the CPU, with each GEMM's operands truncated to TF32 (as tensor cores read float32) or its result
rounded to float32, GEMM by GEMM as the Triton backend runs them (TRITON_TF32: TF32 everywhere except the
interpolated rows' backward and g_0, in 3xTF32, emulated as float32). Checked on the H200's failures: at B = 4,096
(42-512-512-1) the emulation loses 2.8 % on db and 0.16-0.20 % on dW; the kernel lost 2.6 % and 0.15-0.18 %. The
Triton TF32 parity tests hold each quantity to FACTOR times the emulation's error on the same inputs, or the
fixed tolerance, whichever is larger: a kernel that loses more than its own arithmetic explains fails.

`torch_tf32_step_errors`: PyTorch's float32 step with TF32 matmuls allowed, on the same inputs, for the CUDA
backend's "tf32" / "tf32x3" (tests/test_cuda_backend.py). cuBLAS may run small or odd shapes without TF32, so this
yardstick can be stricter than TF32 arithmetic on them."""
from __future__ import annotations

import contextlib
from types import SimpleNamespace

import torch

from lsdm_fast.ops import critic_gradient_penalty

FACTOR = 3.0
TF32, FP32, EXACT = "tf32", "fp32", "exact"
# GEMM groups: forward of the real / fake rows, of the interpolated rows; backward (D) of the real / fake rows, of
# the interpolated rows; g_0 (the input gradient); the rest (the r sweep and the weight gradients)
TRITON_TF32 = dict(fwd=TF32, fwd_i=TF32, bwd=TF32, bwd_i=FP32, grad=FP32, rest=TF32)
ALL_EXACT = dict(fwd=EXACT, fwd_i=EXACT, bwd=EXACT, bwd_i=EXACT, grad=EXACT, rest=EXACT)


def _tf32(a: torch.Tensor) -> torch.Tensor:
    """float32 with the mantissa truncated to TF32's 10 bits (as a tensor core reads a float32 operand)."""
    bits = a.float().contiguous().view(torch.int32) & ~0x1FFF
    return bits.view(torch.float32).double()


def _mm(a: torch.Tensor, b: torch.Tensor, prec: str) -> torch.Tensor:
    if prec == TF32:
        return (_tf32(a) @ _tf32(b)).float().double()
    if prec == FP32:
        return (a.float().double() @ b.float().double()).float().double()
    return a @ b


def emulated_step(critic, x, zr, zf, t, gp: float, po: str, plan: dict = TRITON_TF32) -> SimpleNamespace:
    """The critic step's outputs (loss, wasserstein, penalty, weight_grads, bias_grads; and grad_norm, ||g|| per
    interpolated row), float64 CPU, with each GEMM group in `plan`'s precision. `critic`: MLPParams (any dtype /
    device: used in float64). bench/tf32_critic_error.py uses it to decide which GEMMs need 3xTF32."""
    ws = [w.detach().double().cpu() for w in critic.weights]
    bs = [b.detach().double().cpu() for b in critic.biases]
    x, zr, zf, t = (v.detach().double().cpu() for v in (x, zr, zf, t))
    slope = float(critic.negative_slope)
    B, L, dx = x.shape[0], len(ws), x.shape[1]

    def rows(A, W, p, p_i):
        return torch.cat([_mm(A[:2 * B], W, plan[p]), _mm(A[2 * B:], W, plan[p_i])])

    tt = t[:, None]
    U = [torch.cat([torch.cat([x, zr], 1), torch.cat([x, zf], 1), torch.cat([x, tt * zr + (1 - tt) * zf], 1)])]
    S = [None]
    for l in range(L - 1):
        a = rows(U[-1], ws[l].T, "fwd", "fwd_i") + bs[l]
        S.append(torch.where(a > 0, torch.ones_like(a), torch.full_like(a, slope)))
        U.append(a * S[-1])
    f = U[-1] @ ws[-1][0] + bs[-1][0]
    wass = f[:B].mean() - f[B:2 * B].mean()
    f64 = torch.float64
    c = torch.cat([torch.full((B,), -1.0 / B, dtype=f64), torch.full((B,), 1.0 / B, dtype=f64),
                   torch.ones(B, dtype=f64)])
    D = [None] * L
    D[L - 1] = S[L - 1] * ws[-1][0] * c[:, None]
    for l in range(L - 1, 1, -1):
        D[l - 1] = rows(D[l], ws[l - 1], "bwd", "bwd_i") * S[l - 1]
    g0 = _mm(D[1][2 * B:], ws[0], plan["grad"])
    g = g0[:, dx:] if po == "latent" else g0
    nrm = g.norm(dim=1)
    pen = ((nrm - 1) ** 2).mean()
    r0 = torch.zeros_like(g0)
    cols = slice(dx, None) if po == "latent" else slice(None)
    r0[:, cols] = g * (2 * gp * (nrm - 1) / (nrm * B))[:, None]
    R = [r0]
    for l in range(1, L):
        R.append(_mm(R[-1], ws[l - 1].T, plan["rest"]) * S[l][2 * B:])
    D.append(c[:, None])
    gw = [_mm(D[l].T, torch.cat([U[l - 1][:2 * B], R[l - 1]]), plan["rest"]) for l in range(1, L + 1)]
    gb = [D[l][:2 * B].sum(0) for l in range(1, L)] + [torch.zeros(1, dtype=torch.float64)]
    return SimpleNamespace(loss=-wass + gp * pen, wasserstein=wass, penalty=pen, weight_grads=gw, bias_grads=gb,
                           grad_norm=nrm)


def emulated_score(critic, x, z, plan_prec: str = TF32) -> tuple[torch.Tensor, torch.Tensor]:
    """critic_score_grad's (mean score, d score / d z) with every GEMM in `plan_prec`, float64 CPU."""
    ws = [w.detach().double().cpu() for w in critic.weights]
    bs = [b.detach().double().cpu() for b in critic.biases]
    x, z = x.detach().double().cpu(), z.detach().double().cpu()
    slope, B, L, dx = float(critic.negative_slope), x.shape[0], len(ws), x.shape[1]
    U, S = torch.cat([x, z], 1), [None]
    for l in range(L - 1):
        a = _mm(U, ws[l].T, plan_prec) + bs[l]
        S.append(torch.where(a > 0, torch.ones_like(a), torch.full_like(a, slope)))
        U = a * S[-1]
    score = (U @ ws[-1][0] + bs[-1][0]).mean()
    D = S[L - 1] * ws[-1][0] / B
    for l in range(L - 1, 1, -1):
        D = _mm(D, ws[l - 1], plan_prec) * S[l - 1]
    return score, _mm(D, ws[0], plan_prec)[:, dx:]


def step_errors(out, ref, rel) -> dict[str, float]:
    """Relative error of each output of a critic step against the float64 reference `ref`."""
    errs = {"loss": rel(out.loss, ref.loss), "wasserstein": rel(out.wasserstein, ref.wasserstein),
            "penalty": rel(out.penalty, ref.penalty)}
    errs.update({f"dW{l}": rel(a, b) for l, (a, b) in enumerate(zip(out.weight_grads, ref.weight_grads))})
    errs.update({f"db{l}": rel(a, b) for l, (a, b) in enumerate(zip(out.bias_grads, ref.bias_grads))})
    return errs


def emulated_step_errors(critic, x, zr, zf, t, gp, po, ref, rel) -> dict[str, float]:
    """step_errors of the emulated TRITON_TF32 step on these inputs."""
    return step_errors(emulated_step(critic, x, zr, zf, t, gp, po), ref, rel)


def limits(tol: float, yard: dict[str, float], factor: float = FACTOR) -> dict[str, float]:
    return {k: max(tol, factor * v) for k, v in yard.items()}


@contextlib.contextmanager
def tf32_matmuls():
    m = torch.backends.cuda.matmul
    old = m.allow_tf32
    m.allow_tf32 = True
    try:
        yield
    finally:
        m.allow_tf32 = old


def torch_tf32_step_errors(critic, x, zr, zf, t, gp, po, ref, rel) -> dict[str, float]:
    """step_errors of PyTorch's float32 step with TF32 matmuls (CUDA tensors) on these inputs."""
    with tf32_matmuls():
        out = critic_gradient_penalty(critic, x, zr, zf, t, gp_weight=gp, penalty_over=po, backend="torch")
    return step_errors(out, ref, rel)
