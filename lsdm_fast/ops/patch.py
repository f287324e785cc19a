"""The patch autoencoder's convolutional parts (models.PatchEncoder.front, models.PatchDecoder.tail) as the
fused encode / generate kernels take them.

`ops.encode(..., front=enc.front)` and `ops.generate(..., tail=dec.tail)` hand any callable to torch; when
that callable is the bound `front` / `tail` of a PatchEncoder / PatchDecoder (the package's default image
autoencoder, issue 24), `patch_front` / `patch_tail` describe it: the module, its sizes read from the module
(width W, depth K, stride S, channels C, side, low = side / S), and its parameters in the layouts of
nn.Conv2d / nn.ConvTranspose2d (`conv.weight`, (W, C, 2S, 2S) for both) and nn.Linear (`mix`). A backend
that registers `fuses=` (lsdm_fast.ops._registry) can then run the whole chain in one kernel instead of
calling the module; every other backend calls the module itself, as for any other front / tail.

What the kernels compute (channels-last inside, the package's flat channels-first images outside):
  tail  h0 (N, low, low, W) -> K x [h = leaky_relu(h M_k^T + b_k, 0.2)] -> per position the (2S x 2S x C)
        patch h Wt, overlap-added (quarter (du, dv) of position (i, j) onto cell (i + du, j + dv) of an
        (low + 1)^2 grid of S x S cells), cropped by S/2 on each side, + bias -> sigmoid
  front image (N, C, side, side) -> zero pad S/2 -> per position (i, j) the (C, 2S, 2S) window at
        (i S - S/2, j S - S/2) times the conv weight + bias -> leaky_relu(0.2) -> K mix layers
        -> (N, low * low * W) in (i, j, channel) order, the input of the dense fc
"""
from __future__ import annotations

from typing import NamedTuple

import torch

# F.leaky_relu(., 0.2) after the convolution and each mix layer in models.PatchEncoder / PatchDecoder; the
# parity tests (tests/test_parity_patch.py) compare the fused kernels with the modules themselves, so a
# change there shows up as a failure
PATCH_SLOPE = 0.2


class PatchPart(NamedTuple):
    """A PatchEncoder's front or a PatchDecoder's tail, with what the kernels read from it."""

    module: torch.nn.Module  # the PatchEncoder / PatchDecoder
    kind: str  # "front" or "tail"
    side: int
    stride: int  # S
    channels: int  # C, the image's
    width: int  # W, channels at each of the low x low positions
    low: int  # side // S
    conv_weight: torch.Tensor  # (W, C, 2S, 2S): nn.Conv2d's (front) / nn.ConvTranspose2d's (tail) layout
    conv_bias: torch.Tensor  # (W,) front, (C,) tail
    mix_weights: tuple  # K x (W, W)
    mix_biases: tuple  # K x (W,)
    negative_slope: float = PATCH_SLOPE

    @property
    def depth(self) -> int:
        return len(self.mix_weights)

    @property
    def positions(self) -> int:
        return self.low * self.low

    @property
    def features(self) -> int:
        """Width of the dense side: the front's output, the tail's input (low * low * W)."""
        return self.positions * self.width

    @property
    def pixels(self) -> int:
        """Width of the image side: the front's input, the tail's output (C * side * side)."""
        return self.channels * self.side * self.side

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_weight.dtype

    def tensors(self) -> list[torch.Tensor]:
        """Every parameter the kernels read (a weight cache's sources)."""
        return [self.conv_weight, self.conv_bias, *self.mix_weights, *self.mix_biases]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The module's own front / tail (what a backend that does not fuse runs)."""
        return getattr(self.module, self.kind)(x)


def _bound_method_of(fn, cls_name: str, method: str):
    """fn's module when fn is `module.<method>` of a models.<cls_name> that does not override it."""
    from .. import models  # noqa: PLC0415 - models imports ops.mlp: import at call time

    cls = getattr(models, cls_name)
    owner = getattr(fn, "__self__", None)
    if isinstance(owner, cls) and getattr(fn, "__func__", None) is getattr(cls, method) \
            and getattr(type(owner), method) is getattr(cls, method):
        return owner
    return None


def _part(m, kind: str, channels: int) -> PatchPart:
    return PatchPart(m, kind, int(m.side), int(m.stride), int(channels), int(m.width), int(m.low), m.conv.weight,
                     m.conv.bias, tuple(l.weight for l in m.mix), tuple(l.bias for l in m.mix))


def patch_tail(tail) -> PatchPart | None:
    """The PatchPart of `tail` when it is a PatchDecoder's bound `tail` method, else None."""
    m = _bound_method_of(tail, "PatchDecoder", "tail")
    return None if m is None else _part(m, "tail", m.out_channels)


def patch_front(front) -> PatchPart | None:
    """The PatchPart of `front` when it is a PatchEncoder's bound `front` method, else None."""
    m = _bound_method_of(front, "PatchEncoder", "front")
    return None if m is None else _part(m, "front", m.in_channels)
