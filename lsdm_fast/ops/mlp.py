"""A plain description of an MLP that every backend understands, and its reference forward."""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F

ACTIVATIONS = ("leaky_relu", "relu", "silu")
OUTPUT_ACTIVATIONS = (None, "sigmoid", "leaky_relu")  # leaky_relu: a conv decoder's dense head
# activation codes shared by the fused kernels (Triton and CUDA): hidden or output activation
ACT_CODE = {None: 0, "leaky_relu": 1, "relu": 2, "silu": 3, "sigmoid": 4}


class MLPParams(NamedTuple):
    """weights[l]: (out_l, in_l) as in nn.Linear; biases[l]: (out_l,).

    Hidden layers use `activation` (LeakyReLU with `negative_slope` by default); the last
    layer is affine, followed by `output_activation` (None or "sigmoid").
    """

    weights: Sequence[torch.Tensor]
    biases: Sequence[torch.Tensor]
    activation: str = "leaky_relu"
    negative_slope: float = 0.2
    output_activation: str | None = None

    @property
    def in_features(self) -> int:
        return int(self.weights[0].shape[1])

    @property
    def out_features(self) -> int:
        return int(self.weights[-1].shape[0])

    @property
    def widths(self) -> list[int]:
        return [self.in_features] + [int(w.shape[0]) for w in self.weights]


def hidden_slope(p: MLPParams) -> float:
    """The slope of the hidden activation's negative part, as the critic kernels take it: 0 for ReLU."""
    return 0.0 if p.activation == "relu" else float(p.negative_slope)


def work_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a float32/float64 kernel computes in for input x: itself, or float32 for half types."""
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


def check_mlp(p: MLPParams, name: str = "mlp") -> None:
    if len(p.weights) == 0 or len(p.weights) != len(p.biases):
        raise ValueError(f"{name}: need as many biases as weights and at least one layer, "
                         f"got {len(p.weights)} weights and {len(p.biases)} biases")
    if p.activation not in ACTIVATIONS:
        raise ValueError(f"{name}: activation {p.activation!r} not in {ACTIVATIONS}")
    if p.output_activation not in OUTPUT_ACTIVATIONS:
        raise ValueError(f"{name}: output_activation {p.output_activation!r} not in {OUTPUT_ACTIVATIONS}")
    prev = None
    for l, (w, b) in enumerate(zip(p.weights, p.biases)):
        if w.dim() != 2 or b.dim() != 1 or b.shape[0] != w.shape[0]:
            raise ValueError(f"{name}: layer {l} has weight {tuple(w.shape)} and bias {tuple(b.shape)}; "
                             "expected (out, in) and (out,)")
        if prev is not None and w.shape[1] != prev:
            raise ValueError(f"{name}: layer {l} expects {w.shape[1]} inputs but layer {l-1} gives {prev}")
        prev = w.shape[0]


def activate(a: torch.Tensor, activation: str, negative_slope: float) -> torch.Tensor:
    if activation == "leaky_relu":
        return F.leaky_relu(a, negative_slope)
    if activation == "relu":
        return F.relu(a)
    if activation == "silu":
        return F.silu(a)
    raise ValueError(f"unknown activation {activation!r}")


def mlp_forward_reference(p: MLPParams, u: torch.Tensor) -> torch.Tensor:
    """Eager PyTorch forward; differentiable."""
    n = len(p.weights)
    for l, (w, b) in enumerate(zip(p.weights, p.biases)):
        u = F.linear(u, w, b)
        if l < n - 1:
            u = activate(u, p.activation, p.negative_slope)
    if p.output_activation == "sigmoid":
        u = torch.sigmoid(u)
    elif p.output_activation == "leaky_relu":
        u = F.leaky_relu(u, p.negative_slope)
    return u
