"""The CUDA extension's Philox noise kernel alone, for the tests that compare it with
lsdm_fast.ops.philox.philox_normal (the fused generate kernel draws the same noise inside)."""
import torch

from lsdm_fast._ext import cuda_extension


def philox_normal_cuda(seed: int, row_offset: int, rows: int, cols: int, device="cuda") -> torch.Tensor:
    return cuda_extension().philox_normal(int(seed), int(row_offset), int(rows), int(cols), torch.device(device))
