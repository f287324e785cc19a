"""Where TF32 hurts the critic step: the closed-form step (docs/design.md §3) with the operands of chosen GEMM
groups truncated to TF32 (as tensor cores read float32 operands), against float64: the emulation of
tests/tf32_yardstick.py (which the TF32 parity tests use, and which reproduced the H200's errors). CPU only; it
decides which GEMMs of the Triton backend must run in 3xTF32 (lsdm_fast/ops/critic_gp_triton.py).

    python bench/tf32_critic_error.py

Rows: all float32; all TF32; TF32 except the interpolated rows' backward GEMMs and g_0 (the
ones that feed ||g_0|| - 1), which is what the Triton backend does; the same with the
interpolated rows' forward also exact. Columns: largest relative error over the loss terms and
every gradient, and the penalty's own error. Critics as initialised, and rescaled so that the
mean ||g_0|| is 1 (a trained critic: ||g|| - 1 is then a difference of nearly equal numbers).
"""
from __future__ import annotations

import math
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from tf32_yardstick import ALL_EXACT, FP32, TF32, TRITON_TF32, emulated_step  # noqa: E402

from lsdm_fast.ops import MLPParams  # noqa: E402

GROUPS = ("fwd", "fwd_i", "bwd", "bwd_i", "grad", "rest")
VARIANTS = {
    "float32 everywhere": dict.fromkeys(GROUPS, FP32),
    "TF32 everywhere": dict.fromkeys(GROUPS, TF32),
    "TF32, norm path 3xTF32 (Triton)": TRITON_TF32,
    "... and interpolated forward": {**TRITON_TF32, "fwd_i": FP32},
}


def _terms(out) -> list[torch.Tensor]:
    # db_L is 0 by construction (no error to measure)
    return [out.wasserstein, out.penalty, out.loss, *out.weight_grads, *out.bias_grads[:-1]]


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
                nrm = emulated_step(MLPParams(ws, bs, negative_slope=0.2), x, zr, zf, t, 10.0, "joint",
                                    ALL_EXACT).grad_norm
                ws[-1], bs[-1] = ws[-1] / nrm.mean(), bs[-1] / nrm.mean()
            critic = MLPParams(ws, bs, negative_slope=0.2)
            ref = emulated_step(critic, x, zr, zf, t, 10.0, "joint", ALL_EXACT)
            for name, plan in VARIANTS.items():
                out = _terms(emulated_step(critic, x, zr, zf, t, 10.0, "joint", plan))
                want = _terms(ref)
                # the W estimate is a difference of means: its error relative to their size
                errs = [abs(out[0] - want[0]).item() / (want[0].abs().item() + 1.0)]
                errs += [((a - b).norm() / b.norm()).item() for a, b in zip(out[1:], want[1:])]
                print(f"| {'-'.join(map(str, widths))} | {ref.grad_norm.mean():.2f} | {name} | {max(errs):.1e} | "
                      f"{errs[1]:.1e} |")


if __name__ == "__main__":
    main()
