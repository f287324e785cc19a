"""Where bf16 hurts the CPU critic step: the cpp backend (csrc/critic_gp_cpu.cpp) with each GEMM group
in float32, bf16 or bf16x3 (its `matmul_plan`), against the float64 reference. It decides the plan of
precision="bf16" (lsdm_fast/ops/critic_gp_cpp.py).

    python bench/bf16_critic_error.py                  # the table of docs/design.md §4, "Precision"
    python bench/bf16_critic_error.py --critic FILE    # also a critic saved with torch.save({"weights": [...], "biases": [...]})

Columns: the relative error of the loss terms (the W estimate and the loss relative to the size of
the terms they subtract, as tests/test_parity_critic_gp.py), the largest over every weight and bias
gradient, and of |‖g‖ - 1| per interpolated row (from batch-1 calls of the same kernel, whose
penalty is (‖g‖ - 1)^2). Critics: as initialised (gain 1.4), and rescaled so that the mean ‖g‖ is 1
(a trained critic: ‖g‖ - 1 is then a difference of nearly equal numbers). One float64 draw per
row of the table (seed 0).
"""
from __future__ import annotations

import argparse
import math

import torch

from lsdm_fast import _ext
from lsdm_fast.ops import MLPParams, critic_gradient_penalty, mlp_forward_reference

DX, DZ, GP = 10, 32, 10.0
# groups: forward real/fake, forward interpolated, backward real/fake, backward interpolated (g_0),
# r sweep, weight gradients; 0 float32, 1 bf16, 2 bf16x3
PLANS = {
    "float32 (ieee)": (0, 0, 0, 0, 0, 0),
    "bf16 everywhere": (1, 1, 1, 1, 1, 1),
    "precision='bf16': forward bf16x3, g_0 float32": (2, 2, 1, 0, 1, 1),
    "forward bf16x3, g_0 bf16": (2, 2, 1, 1, 1, 1),
    "interpolated forward + g_0 bf16x3": (1, 2, 1, 2, 1, 1),
}


def _critic(widths, gen):
    ws = [torch.randn(o, i, generator=gen, dtype=torch.float64) / math.sqrt(i) * 1.4 for i, o in zip(widths, widths[1:])]
    bs = [torch.randn(o, generator=gen, dtype=torch.float64) * 0.1 for o in widths[1:]]
    return MLPParams(ws, bs, "leaky_relu", 0.2)


def _batch(B, gen):
    x = torch.eye(DX, dtype=torch.float64)[torch.randint(DX, (B,), generator=gen)]
    zr = torch.randn(B, DZ, generator=gen, dtype=torch.float64)
    zf = torch.randn(B, DZ, generator=gen, dtype=torch.float64) * 0.7 + 0.3
    return x, zr, zf, torch.rand(B, generator=gen, dtype=torch.float64)


def _f32(critic, *xs):
    r = lambda a: a.float()  # noqa: E731
    return (critic._replace(weights=[r(w) for w in critic.weights], biases=[r(b) for b in critic.biases]),
            *[r(a) for a in xs])


def _run(critic32, x, zr, zf, t, plan, native):
    out = _ext.cpu_extension().critic_gp_cpu(list(critic32.weights), list(critic32.biases), x, zr, zf, t, GP, "joint",
                                             0.2, list(plan), native)
    return out


def _norm_minus_one(critic, x, zr, zf, t, plan=None, native=True):
    """|‖g_i‖ - 1| per interpolated row: the penalty of a batch-1 call (the reference: float64 torch)."""
    vals = []
    for i in range(x.shape[0]):
        sl = slice(i, i + 1)
        if plan is None:
            pen = critic_gradient_penalty(critic, x[sl], zr[sl], zf[sl], t[sl], gp_weight=GP, backend="torch").penalty
        else:
            pen = _run(critic, x[sl], zr[sl], zf[sl], t[sl], plan, native)[2]
        vals.append(pen.double().sqrt())
    return torch.stack(vals)


def _errors(out, ref, terms):
    loss, wass, pen, gw, gb = out
    pen_terms = terms + abs(float(ref.loss + ref.wasserstein))
    e = {"wass": abs(float(wass) - float(ref.wasserstein)) / max(abs(float(ref.wasserstein)), terms),
         "loss": abs(float(loss) - float(ref.loss)) / max(abs(float(ref.loss)), pen_terms),
         "penalty": abs(float(pen) - float(ref.penalty)) / abs(float(ref.penalty))}
    grads = [(a, b) for a, b in zip(gw, ref.weight_grads)] + [(a, b) for a, b in zip(gb[:-1], ref.bias_grads[:-1])]
    e["grads"] = max(((a.double() - b).norm() / b.norm()).item() for a, b in grads)
    return e


def table(critics, batches, norm_rows=256, native=True):
    print("| critic | batch | mean ‖g‖ | plan | W | loss | penalty | max grad | |‖g‖-1| (rows) |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|")
    for name, critic in critics:
        for B in batches:
            gen = torch.Generator().manual_seed(0)
            x, zr, zf, t = _batch(B, gen)
            c32, x32, zr32, zf32, t32 = _f32(critic, x, zr, zf, t)
            c64 = c32._replace(weights=[w.double() for w in c32.weights], biases=[b.double() for b in c32.biases])
            x, zr, zf, t = (a.double() for a in (x32, zr32, zf32, t32))  # the reference sees what the kernel sees
            ref = critic_gradient_penalty(c64, x, zr, zf, t, gp_weight=GP, backend="torch")
            terms = float(mlp_forward_reference(c64, torch.cat([x, zr], 1)).abs().mean()
                          + mlp_forward_reference(c64, torch.cat([x, zf], 1)).abs().mean())
            k = min(norm_rows, B)
            nm_ref = _norm_minus_one(c64, x[:k], zr[:k], zf[:k], t[:k])
            gmean = float(_gnorm(c64, x, zr, zf, t).mean())
            for pname, plan in PLANS.items():
                e = _errors(_run(c32, x32, zr32, zf32, t32, plan, native), ref, terms)
                nm = _norm_minus_one(c32, x32[:k], zr32[:k], zf32[:k], t32[:k], plan, native)
                e_nm = ((nm - nm_ref).norm() / nm_ref.norm()).item()
                print(f"| {name} | {B} | {gmean:.2f} | {pname} | {e['wass']:.1e} | {e['loss']:.1e} | "
                      f"{e['penalty']:.1e} | {e['grads']:.1e} | {e_nm:.1e} |", flush=True)


def _gnorm(c64, x, zr, zf, t):
    """‖g_i‖ of the interpolated rows in float64 (autograd)."""
    tt = t[:, None]
    u = torch.cat([x, tt * zr + (1 - tt) * zf], 1).requires_grad_(True)
    (g,) = torch.autograd.grad(mlp_forward_reference(c64, u).sum(), u)
    return g.norm(dim=1)


def rescaled(critic, gen):
    """The critic with its last layer scaled so that the mean ‖g‖ over a batch is 1."""
    x, zr, zf, t = _batch(4096, gen)
    s = float(_gnorm(critic, x, zr, zf, t).mean())
    return critic._replace(weights=[*critic.weights[:-1], critic.weights[-1] / s],
                           biases=[*critic.biases[:-1], critic.biases[-1] / s])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--critic", action="append", default=[])
    ap.add_argument("--widths", type=int, nargs="*", default=[256, 512])
    ap.add_argument("--batches", type=int, nargs="*", default=[256, 4096])
    ap.add_argument("--emulated", action="store_true", help="bf16 GEMMs emulated by float32 GEMMs")
    args = ap.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    critics = []
    for w in args.widths:
        c = _critic([DX + DZ, w, w, 1], gen)
        critics += [(f"init {w}-{w}", c), (f"mean‖g‖=1 {w}-{w}", rescaled(c, gen))]
    for path in args.critic:
        d = torch.load(path)
        critics.append((path.rsplit("/", 1)[-1], MLPParams([w.double() for w in d["weights"]],
                                                         [b.double() for b in d["biases"]], "leaky_relu", 0.2)))
    table(critics, args.batches, native=not args.emulated)


if __name__ == "__main__":
    main()
