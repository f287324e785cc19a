"""A fitted LSDM on disk: a folder of model.safetensors (the four networks and the latent statistics),
config.json (the config and `meta`: what load needs to rebuild and condition the networks) and
history.json. Written file by file, each atomically (lsdm_fast.io); read back with every field
checked (ModelFolderError names the file and the field)."""
from __future__ import annotations

import json
import math
import os

from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .config import LSDMConfig
from .guards import check_finite_state_dict
from .io import atomic_write_bytes, atomic_write_json
from .state import MODEL_NAMES

FORMAT_VERSION = 1
MODEL_FILES = ("model.safetensors", "config.json", "history.json")


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


# meta field -> check of its value (what load needs to rebuild the networks and condition them)
_META_FIELDS = {
    "cond_kind": lambda v: v in ("onehot", "tensor"),
    "cond_dim": _positive_int,
    "num_classes": lambda v: v is None or _positive_int(v),
    "data_dim": _positive_int,
    "image_shape": lambda v: v is None or (isinstance(v, list) and all(_positive_int(d) for d in v)),
}


class ModelFolderError(ValueError):
    """A model folder that cannot be loaded: a file missing or damaged (the message names file and field)."""


def _check_meta_consistent(meta: dict, cfg_path: str) -> None:
    """The meta fields agree with each other (an edited config.json may make each valid alone, wrong together)."""
    problems = []
    if meta["cond_kind"] == "onehot" and meta["num_classes"] != meta["cond_dim"]:
        problems.append(f"a label-conditioned model has cond_dim = num_classes, but cond_dim is {meta['cond_dim']} "
                        f"and num_classes {meta['num_classes']}")
    if meta["cond_kind"] == "tensor" and meta["num_classes"] is not None:
        problems.append(f"a model conditioned on tensors has no num_classes (got {meta['num_classes']})")
    shape = meta["image_shape"]
    if shape is not None and math.prod(shape) != meta["data_dim"]:
        problems.append(f"image_shape {shape} holds {math.prod(shape)} values but data_dim is {meta['data_dim']}")
    if problems:
        raise ModelFolderError(f"{cfg_path}: damaged: 'meta' is inconsistent: " + "; ".join(problems))


def meta_json(meta: dict) -> dict:
    """`meta` as JSON holds it (image_shape a list)."""
    return {**meta, "image_shape": list(meta["image_shape"]) if meta.get("image_shape") else None}


def save_model(model, folder: str, *, overwrite: bool = False) -> str:
    """Write a fitted LSDM to `folder`; a folder that already holds a saved model is refused unless overwrite."""
    if not overwrite and any(os.path.exists(os.path.join(folder, f)) for f in MODEL_FILES):
        raise FileExistsError(f"{folder}: already holds a saved model; choose another folder or pass "
                              "overwrite=True (`lsdm train --overwrite`)")
    tensors = {}
    for name, mod in zip(MODEL_NAMES, model.modules()):
        for k, v in mod.state_dict().items():
            tensors[f"{name}.{k}"] = v.detach().cpu().contiguous()
    tensors["latent_mean"] = model.latent_mean.detach().cpu().contiguous()
    tensors["latent_std"] = model.latent_std.detach().cpu().contiguous()
    os.makedirs(folder, exist_ok=True)
    atomic_write_bytes(os.path.join(folder, "model.safetensors"), st_save(tensors))
    atomic_write_json(os.path.join(folder, "config.json"), {"config": model.config.to_dict(),
                                                           "meta": meta_json(model.meta)})
    atomic_write_json(os.path.join(folder, "history.json"), dict(model.history))
    return folder


def _read_json(path: str):
    try:
        with open(path) as fh:
            return json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFolderError(f"{path}: not valid JSON ({exc})") from None


def _read_config(cfg_path: str) -> tuple[LSDMConfig, dict]:
    """The checked config and meta of config.json."""
    blob = _read_json(cfg_path)
    for key, kind in (("config", dict), ("meta", dict)):
        if not isinstance(blob, dict) or not isinstance(blob.get(key), kind):
            raise ModelFolderError(f"{cfg_path}: damaged: the field {key!r} is missing or not an object")
    try:
        config = LSDMConfig.from_dict(blob["config"], saved=True)
        config.validate()
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFolderError(f"{cfg_path}: not a valid LSDM config ({exc})") from None
    meta = blob["meta"]
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelFolderError(f"{cfg_path}: format_version {meta.get('format_version')!r} is not {FORMAT_VERSION}")
    for key, ok in _META_FIELDS.items():
        if key not in meta:
            raise ModelFolderError(f"{cfg_path}: damaged: the field 'meta.{key}' is missing")
        if not ok(meta[key]):
            raise ModelFolderError(f"{cfg_path}: damaged: 'meta.{key}' has an invalid value {meta[key]!r}")
    _check_meta_consistent(meta, cfg_path)
    return config, meta


def load_model(cls, folder: str, device: str | None = None):
    """The model `save_model` wrote to `folder`, as an instance of `cls` (LSDM). A missing file raises
    FileNotFoundError; a damaged one ModelFolderError naming the file and the field."""
    cfg_path, w_path = os.path.join(folder, "config.json"), os.path.join(folder, "model.safetensors")
    for p in (cfg_path, w_path):
        if not os.path.exists(p):
            raise FileNotFoundError(f"{p}: not found; is {folder!r} a folder written by LSDM.save?")
    config, meta = _read_config(cfg_path)
    if device is not None:
        config.device = device
    model = cls(config)
    model.meta = {**meta, "image_shape": tuple(meta["image_shape"]) if meta.get("image_shape") else None}
    try:
        model.device  # noqa: B018 - resolved now: a device this machine lacks is named with the file
    except (ValueError, RuntimeError) as exc:
        raise ModelFolderError(f"{cfg_path}: the model's config asks for device {config.device!r}: {exc}; load "
                               "it with device='cpu' (`lsdm sample --device cpu`)") from None
    try:
        model._build(meta["data_dim"], meta["cond_dim"], model.meta["image_shape"])
    except Exception as exc:  # noqa: BLE001 - an edited config can break the networks' construction anywhere
        raise ModelFolderError(f"{cfg_path}: its config and meta do not describe a model that can be built "
                               f"({type(exc).__name__}: {exc})") from None
    with open(w_path, "rb") as fh:
        try:
            tensors = st_load(fh.read())
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise ModelFolderError(f"{w_path}: cannot read the safetensors file ({exc})") from None
    check_finite_state_dict(tensors, w_path, ModelFolderError)
    for name, mod in zip(MODEL_NAMES, model.modules()):
        sd = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")}
        try:
            mod.load_state_dict(sd)
        except RuntimeError as exc:
            raise ModelFolderError(f"{w_path}: the {name} weights do not match the networks {cfg_path} "
                                   f"describes ({exc})") from None
        mod.to(model.device).eval().requires_grad_(False)
    for key in ("latent_mean", "latent_std"):
        t = tensors.get(key)
        if t is None or tuple(t.shape) != (config.autoencoder.latent_dim,):
            raise ModelFolderError(f"{w_path}: damaged: {key!r} is missing or not of shape "
                                   f"({config.autoencoder.latent_dim},)")
    model.latent_mean = tensors["latent_mean"].to(model.device)
    model.latent_std = tensors["latent_std"].to(model.device)
    hist_path = os.path.join(folder, "history.json")
    if os.path.exists(hist_path):
        model.history = _read_json(hist_path)
    return model
