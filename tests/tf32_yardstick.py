"""The yardstick for TF32 parity on a GPU: PyTorch's own float32 step with TF32 matmuls, on the same inputs.

A fixed relative tolerance cannot hold for every quantity at TF32 (10-bit mantissas): the bias gradients and the
Wasserstein estimate are differences of batch means and can cancel to a small fraction of their terms, so their
relative error grows with the cancellation (seen on an H200, 2026-12-04: bias gradients 2-4 % off at TF32 where
the weight gradients were 0.1-0.5 % off). The kernels are held to what the same arithmetic gives in PyTorch:
each quantity within `factor` times PyTorch-TF32's error of it, or within the fixed tolerance, whichever is
larger; "tf32x3" (three TF32 passes) must beat one pass by `factor` (tests/test_cuda_backend.py)."""
from __future__ import annotations

import contextlib

import torch

from lsdm_fast.ops import critic_gradient_penalty, critic_score_grad


@contextlib.contextmanager
def tf32_matmuls():
    m = torch.backends.cuda.matmul
    old = m.allow_tf32
    m.allow_tf32 = True
    try:
        yield
    finally:
        m.allow_tf32 = old


def step_errors(out, ref, rel) -> dict[str, float]:
    """Relative error of each output of a critic step against the float64 reference `ref`."""
    errs = {"loss": rel(out.loss, ref.loss), "wasserstein": rel(out.wasserstein, ref.wasserstein),
            "penalty": rel(out.penalty, ref.penalty)}
    errs.update({f"dW{l}": rel(a, b) for l, (a, b) in enumerate(zip(out.weight_grads, ref.weight_grads))})
    errs.update({f"db{l}": rel(a, b) for l, (a, b) in enumerate(zip(out.bias_grads, ref.bias_grads))})
    return errs


def torch_tf32_step_errors(critic, x, zr, zf, t, gp, po, ref, rel) -> dict[str, float]:
    """step_errors of PyTorch's float32 step with TF32 matmuls (CUDA tensors) on these inputs."""
    with tf32_matmuls():
        out = critic_gradient_penalty(critic, x, zr, zf, t, gp_weight=gp, penalty_over=po, backend="torch")
    return step_errors(out, ref, rel)


def torch_tf32_score_errors(critic, x, z, sr, gzr, rel) -> tuple[float, float]:
    with tf32_matmuls():
        s, gz = critic_score_grad(critic, x, z, backend="torch")
    return rel(s, sr), rel(gz, gzr)


def limits(tol: float, yard: dict[str, float], factor: float = 4.0) -> dict[str, float]:
    return {k: max(tol, factor * v) for k, v in yard.items()}
