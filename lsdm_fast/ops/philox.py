"""Counter-based normal noise, bit-compatible with Triton's `tl.randn(seed, offset)`.

Element (i, j) of a (rows, cols) noise block starting at row `row_offset` takes the Philox4x32-10
counter ((row_offset + i) * cols + j) split into (lo, hi, 0, 0) and key (seed_lo, seed_hi), then
Box-Muller on the first two outputs exactly as triton.language.random does. Because the value
depends only on (seed, global row, column), it is independent of tiling and of batch splits.
This pure-PyTorch version is the reference for the Triton and CUDA kernels.
"""
from __future__ import annotations

import math

import torch

_M32 = 0xFFFFFFFF
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57


def _mul_hi_lo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32 bits of a * b for a constant uint32 a and int64 tensor b < 2^32."""
    a_hi, a_lo = a >> 16, a & 0xFFFF
    p_hi = a_hi * b  # < 2^48
    p_lo = a_lo * b  # < 2^48
    hi = (p_hi + (p_lo >> 16)) >> 16
    lo = (((p_hi & 0xFFFF) << 16) + p_lo) & _M32
    return hi & _M32, lo


def philox4x32(c0, c1, c2, c3, k0: int, k1: int, rounds: int = 10):
    for _ in range(rounds):
        hi_b, lo_b = _mul_hi_lo(_ROUND_B, c2)
        hi_a, lo_a = _mul_hi_lo(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _KEY_A) & _M32, (k1 + _KEY_B) & _M32
    return c0, c1, c2, c3


def _uint_to_uniform(x: torch.Tensor) -> torch.Tensor:
    x = torch.where(x >= 2**31, x - 2**32, x)  # bitcast to int32
    x = torch.where(x < 0, -x - 1, x)
    return x.to(torch.float32) * 4.6566127342e-10


def philox_normal(seed: int, row_offset: int, rows: int, cols: int, device="cpu",
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    if not (0 <= seed < 2**64):
        raise ValueError(f"seed must be in [0, 2^64), got {seed}")
    if row_offset < 0:
        raise ValueError(f"row_offset must be >= 0, got {row_offset}")
    idx = (torch.arange(rows, dtype=torch.int64, device=device)[:, None] + row_offset) * cols \
        + torch.arange(cols, dtype=torch.int64, device=device)[None, :]
    c0, c1 = idx & _M32, (idx >> 32) & _M32
    zero = torch.zeros_like(c0)
    r0, r1, _, _ = philox4x32(c0, c1, zero, zero, seed & _M32, (seed >> 32) & _M32)
    u1 = torch.clamp(_uint_to_uniform(r0), min=1.0e-7)
    u2 = _uint_to_uniform(r1)
    n = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * math.pi * u2)
    return n.to(dtype)
