"""Measuring aids for the benchmarks: the floating-point operations a piece of code asks of torch."""
from __future__ import annotations

from typing import Callable

from torch.utils.flop_counter import FlopCounterMode


def count_flops(fn: Callable[[], object]) -> int:
    """The FLOPs (a multiply-add = 2) of the matrix products and convolutions `fn` runs through torch's
    dispatcher (torch.utils.flop_counter: elementwise work is not counted), forward and backward, including
    those a C++ extension calls through ATen."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())
