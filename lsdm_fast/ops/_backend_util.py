"""What the compiled backends share: when Triton can run, whether an extension has a function, and
the matmul precision a call that names none gets (docs/design.md §4, "Precision")."""
from __future__ import annotations

import os
from typing import Callable

import torch

from .._ext import extension, load_error, warn_once

# ------------------------------------------------------------------ Triton

def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_available(device: torch.device) -> bool:
    return device.type == "cuda" or (device.type == "cpu" and triton_interpreting())


def triton_why_unavailable() -> str:
    return ("the Triton backend needs CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 set "
            "before lsdm_fast is imported (the interpreter: slow, for testing)")


# ------------------------------------------------------------------ the C++ and CUDA extensions

def extension_has(name: str, *functions: str) -> bool:
    """The extension lsdm_fast.<name> loaded and has every one of `functions`."""
    ext = extension(name)
    return ext is not None and all(hasattr(ext, f) for f in functions)


def extension_available(name: str, device_type: str, *functions: str) -> Callable[[torch.device], bool]:
    """A registry `available=`: tensors on `device_type` and lsdm_fast.<name> with `functions`."""
    return lambda device: device.type == device_type and extension_has(name, *functions)


def extension_why_unavailable(name: str, device_type: str, *functions: str) -> Callable[[], str]:
    """A registry `why_unavailable=` for extension_available(name, device_type, *functions)."""
    def why() -> str:
        err = load_error(name)
        if err:
            return f"the extension lsdm_fast.{name} is not built or failed to load ({err})"
        missing = [f for f in functions if not hasattr(extension(name), f)]
        if missing:
            return (f"lsdm_fast.{name} lacks {', '.join(missing)} (built from older sources?); rebuild it with "
                    "`pip install --no-build-isolation -e .`")
        return f"this backend needs {device_type} tensors"
    return why


# ------------------------------------------------------------------ matmul precision

PRECISION_ENV = "LSDM_MATMUL_PRECISION"
# every value a backend takes (tf32x3: the CUDA critic kernels only; bf16: the cpp critic kernels only)
PRECISIONS = ("ieee", "tf32", "tf32x3", "bf16")
ENV_PRECISIONS = ("ieee", "tf32")  # the values every GPU backend of every op takes
# taken only by the backends that register them (`precisions=`), refused by every other one
DECLARED_PRECISIONS = ("bf16",)
CPU_PRECISION_ENV = "LSDM_CPU_MATMUL_PRECISION"  # the cpp backend's default (it has no TF32)
CPU_PRECISIONS = ("ieee", "bf16")


def env_precision(former: str, default: str) -> str:
    """The matmul precision of a compiled backend's call that names none: $LSDM_MATMUL_PRECISION, else
    the backend's former variable `former` (deprecated, still honoured, with a warning), else the
    backend's `default`."""
    p = os.environ.get(PRECISION_ENV)
    if p:
        if p not in ENV_PRECISIONS:
            raise ValueError(f"{PRECISION_ENV} must be one of {ENV_PRECISIONS}, got {p!r}")
        return p
    p = os.environ.get(former)
    if p is None:
        return default
    warn_once(f"deprecated:{former}", f"lsdm_fast: {former} is deprecated (still honoured); set {PRECISION_ENV} "
                                      "(one variable for every op and backend) or pass precision= to the op")
    return p


def cpu_env_precision() -> str:
    """The cpp critic ops' matmul precision for a call that names none: $LSDM_CPU_MATMUL_PRECISION, else "ieee"."""
    p = os.environ.get(CPU_PRECISION_ENV) or "ieee"
    if p not in CPU_PRECISIONS:
        raise ValueError(f"{CPU_PRECISION_ENV} must be one of {CPU_PRECISIONS}, got {p!r}")
    return p
