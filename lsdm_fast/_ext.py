"""Loading the compiled extensions. The package runs without them (pure PyTorch)."""
from __future__ import annotations

import importlib
import warnings
from types import ModuleType

_cache: dict[str, tuple[ModuleType | None, str | None]] = {}
_warned: set[str] = set()


def _load(name: str) -> tuple[ModuleType | None, str | None]:
    if name not in _cache:
        try:
            _cache[name] = (importlib.import_module(f"lsdm_fast.{name}"), None)
        except ImportError as exc:  # not built, or built against another torch
            _cache[name] = (None, f"{type(exc).__name__}: {exc}")
    return _cache[name]


def extension(name: str) -> ModuleType | None:
    """The extension `lsdm_fast.<name>` ("_C", "_C_cuda"), or None when it is not built."""
    return _load(name)[0]


def cpu_extension() -> ModuleType | None:
    """The C++ CPU extension `lsdm_fast._C`, or None when it is not built."""
    return _load("_C")[0]


def cuda_extension() -> ModuleType | None:
    """The CUDA extension `lsdm_fast._C_cuda`, or None when it is not built."""
    return _load("_C_cuda")[0]


def load_error(name: str) -> str | None:
    """Why `lsdm_fast.<name>` failed to import (None if it imported)."""
    return _load(name)[1]


def warn_once(key: str, message: str) -> None:
    """One warning per key per process: a missing extension should not flood the log."""
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
