"""Allocations refused before they are made: a request that cannot fit in memory gets one line naming its size
and what is available, not an allocator's error (or the OOM killer) after minutes of work."""
from __future__ import annotations

import os

import torch

from .io import format_bytes

SMALL = 64 * 2**20


def available_memory_bytes(device: torch.device | str = "cpu") -> int | None:
    """Memory a new allocation can use now on `device`: free GPU memory, or the host's MemAvailable (Linux;
    elsewhere the free physical pages). None where it cannot be asked."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_allocation(nbytes: int, what: str, device: torch.device | str = "cpu", hint: str = "") -> None:
    """ValueError naming `what`, its size and the memory available, if `nbytes` cannot fit on `device`. Requests
    under SMALL bytes are not asked about (no query on every small call)."""
    if nbytes < SMALL:
        return
    avail = available_memory_bytes(device)
    if avail is not None and nbytes > avail:
        raise ValueError(f"{what} need {format_bytes(nbytes)} of memory, more than the {format_bytes(avail)} "
                         f"available on {torch.device(device)}" + (f"; {hint}" if hint else ""))
