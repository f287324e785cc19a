"""Hot ops with one public entry point each and a `backend=` argument.

Backends register themselves from the modules of this package named `*_<backend>.py` for every
compiled backend of BACKENDS (`_registry.py`, the one list of names); a module that fails to
import (no Triton, no extension) only removes its backend, and the reason shows in `lsdm info`.
"""
from __future__ import annotations

import importlib
import pkgutil

from ._registry import BACKENDS, IMPORT_ERRORS, available_backends, registered_ops
from .autoencoder_step import AutoencoderStepOutput, autoencoder_loss_grads
from .critic_gp import CriticStepOutput, critic_gradient_penalty, critic_score_grad
from .encode_generate import encode, generate
from .mlp import MLPParams, mlp_forward_reference
from .philox import philox_normal

for _m in pkgutil.iter_modules(__path__):
    if _m.name.endswith(tuple(f"_{b}" for b in BACKENDS if b != "torch")):  # torch: the entry points' own modules
        try:
            importlib.import_module(f"{__name__}.{_m.name}")
        except Exception as _exc:  # noqa: BLE001 - a broken optional backend must not break the package
            IMPORT_ERRORS[_m.name] = f"{type(_exc).__name__}: {_exc}"

__all__ = [
    "BACKENDS", "IMPORT_ERRORS", "available_backends", "registered_ops", "AutoencoderStepOutput",
    "autoencoder_loss_grads", "CriticStepOutput",
    "critic_gradient_penalty", "critic_score_grad", "encode", "generate", "MLPParams",
    "mlp_forward_reference", "philox_normal",
]
