"""LSDM as an estimator: fit on pairs plus unpaired data, sample in one step, save and load."""
from __future__ import annotations

import os
import time

import numpy as np
import torch

from . import ops
from .config import LSDMConfig
from .model_folder import FORMAT_VERSION, MODEL_FILES, ModelFolderError, load_model, meta_json, save_model  # noqa: F401
from .models import MLP, Critic, Generator, build_autoencoder, resolve_kind
from .ops._weight_cache import DerivedCache
from .ops.encode_generate import condition_tensor
from .state import Stage, TrainingState


def _as_tensor(a, name: str, dtype=None) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(a)) if not isinstance(a, torch.Tensor) else a
    if dtype is not None:
        t = t.to(dtype)
    if t.is_floating_point() and not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return t


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available here")
    return dev


class LSDM:
    """Latent Space Distribution Matching.

    >>> model = LSDM(LSDMConfig()).fit(paired_x, paired_y, unpaired_y)
    >>> images = model.sample(torch.arange(10), n_per_x=8, seed=0)

    paired_x: integer labels (N,) (one-hot conditions) or a float tensor (N, cond_dim).
    paired_y, unpaired_y: images (N, H, W) or flat (N, D), values in [0, 1].
    """

    def __init__(self, config: LSDMConfig | None = None):
        self.config = config or LSDMConfig()
        self.config.validate()
        self.encoder = self.decoder = self.generator = self.critic = None
        self.meta: dict = {}
        self.history: dict = {}
        self._folded = DerivedCache(maxsize=1)

    # ------------------------------------------------------------------ building
    def _build(self, data_dim: int, cond_dim: int, image_shape) -> None:
        a, m = self.config.autoencoder, self.config.matching
        k = m.noise_dim or a.latent_dim
        self.encoder, self.decoder = build_autoencoder(a.kind, data_dim, a.latent_dim, a.hidden, image_shape,
                                                       conv_channels=a.conv_channels, res_blocks=a.res_blocks)
        self.meta["autoencoder_kind"] = resolve_kind(a.kind, image_shape, a.conv_channels)
        self.generator = Generator(k, cond_dim, a.latent_dim, m.generator_hidden, m.negative_slope)
        self.critic = Critic(cond_dim, a.latent_dim, m.critic_hidden, m.negative_slope)
        self.latent_mean = torch.zeros(a.latent_dim)
        self.latent_std = torch.ones(a.latent_dim)
        for mod in self.modules():
            mod.to(self.device)

    def modules(self):
        return [self.encoder, self.decoder, self.generator, self.critic]

    @property
    def device(self) -> torch.device:
        return resolve_device(self.config.device)

    def _conditions(self, x, what: str) -> torch.Tensor:
        x = _as_tensor(x, what)
        if self.meta["cond_kind"] == "onehot":
            if x.is_floating_point():
                raise ValueError(f"{what}: this model is conditioned on class labels; give integer labels, got {x.dtype}")
            return condition_tensor(x, self.meta["num_classes"], torch.float32)
        if not x.is_floating_point() or x.dim() != 2 or x.shape[1] != self.meta["cond_dim"]:
            raise ValueError(f"{what}: expected a float tensor (N, {self.meta['cond_dim']}), got {x.dtype} {tuple(x.shape)}")
        return x.float()

    # ------------------------------------------------------------------ training
    def fit(self, paired_x, paired_y, unpaired_y=None, *, num_classes: int | None = None, progress: bool = True,
            checkpoint_dir: str | None = None, resume: bool = False, run_record: dict | None = None) -> "LSDM":
        """Train both stages. With `checkpoint_dir`, a checkpoint is written there atomically every
        `checkpoint_every` steps of each stage (config) and at the end of each stage; with
        `resume=True` the checkpoint there is continued exactly (bit-identical on CPU to a run
        that was never interrupted), after checking that its config and data match these.
        `run_record` (a new checkpointed run): JSON written to checkpoint_dir/run.json once every check
        has passed, before training (`lsdm train` keeps its arguments there for --resume)."""
        from .stages import train_autoencoder, train_joint_matching

        cfg = self.config
        x, all_y, n_pairs = self._fit_data(paired_x, paired_y, unpaired_y, num_classes)
        backends = self._check_backend()
        ck = self._checkpointer(checkpoint_dir, resume, (x, all_y), run_record)
        state = self._new_state()
        if resume:
            ck.restore(state, ck.load())
        resumed_from = {"stage": int(state.stage), "step": state.step} if resume else None
        kw = dict(precision=cfg.precision, progress=progress, checkpoint=ck)

        t0 = time.perf_counter()
        if state.stage == Stage.AUTOENCODER:  # stage 1 on every image
            train_autoencoder(state, all_y, cfg.autoencoder, seed=cfg.seed, **kw)
        t1 = time.perf_counter()
        for mod in (self.encoder, self.decoder):
            mod.eval().requires_grad_(False)  # frozen from here on
        z_all = self.encode(all_y)
        if state.stage == Stage.AUTOENCODER:
            state.latent_mean, state.latent_std = z_all.mean(0), z_all.std(0).clamp_min(1e-6)
            state.enter(Stage.MATCHING)
            if ck is not None:
                ck.save(state)
        self.latent_mean, self.latent_std = state.latent_mean, state.latent_std
        if state.stage == Stage.MATCHING:  # stage 2 on the pairs, which come first in all_y
            z_pairs = (z_all[:n_pairs] - state.latent_mean) / state.latent_std
            train_joint_matching(state, x, z_pairs, cfg.matching, backends=backends, **kw)
            state.stage, state.optim = Stage.DONE, None  # the step count stays: resumed_from says where it ended
            if ck is not None:
                ck.save(state)
        self.history = {**state.history, "seconds": {"stage1": t1 - t0, "stage2": time.perf_counter() - t1},
                        "counts": {"paired": n_pairs, "unpaired": len(all_y) - n_pairs}}
        if resumed_from is not None:
            self.history["resumed_from"] = resumed_from
        return self

    def _checkpointer(self, folder: str | None, resume: bool, data: tuple, run_record: dict | None):
        """The run's Checkpointer (None without a folder). A new run refuses a folder that holds a checkpoint."""
        from . import distributed as D
        from .checkpoint import RUN_FILE, Checkpointer, find_checkpoint
        from .io import atomic_write_json

        if folder is None:
            if resume:
                raise ValueError("resume=True needs the checkpoint_dir to resume from")
            return None
        if not resume and find_checkpoint(folder):
            raise ValueError(f"{folder} already holds a checkpoint; continue it with `lsdm train --resume {folder}` "
                             "(LSDM.fit(..., resume=True)) or choose another checkpoint folder (--out/--checkpoint-dir)")
        ck = Checkpointer(folder, self.config.to_dict(), data, meta=meta_json(self.meta))
        if run_record is not None and not resume and D.is_main():
            atomic_write_json(os.path.join(folder, RUN_FILE), run_record)
        return ck

    def _fit_data(self, paired_x, paired_y, unpaired_y, num_classes):
        """Checked conditions (on the device), every image (pairs first, flat, on the device), and the number of
        pairs; sets self.meta and builds the networks (seeded)."""
        py = _as_tensor(paired_y, "paired_y", torch.float32)
        image_shape = tuple(py.shape[1:]) if py.dim() >= 3 else None
        if py.dim() < 2 or py.dim() > 4 or len(py) == 0:
            raise ValueError(f"paired_y is empty or not a batch (shape {tuple(py.shape)}): LSDM needs at least one "
                             "(x, y) pair, given as (N, H, W) or (N, C, H, W) images or flat (N, D) rows")
        py = py.flatten(1)
        uy = torch.zeros(0, py.shape[1]) if unpaired_y is None else _as_tensor(unpaired_y, "unpaired_y", torch.float32)
        if uy.dim() < 2:
            raise ValueError(f"unpaired_y must be (M, H, W), (M, C, H, W) or (M, D), got shape {tuple(uy.shape)}")
        uy = uy.flatten(1)
        if uy.shape[1] != py.shape[1]:
            raise ValueError(f"unpaired_y has {uy.shape[1]} values per sample but paired_y has {py.shape[1]}")
        px = _as_tensor(paired_x, "paired_x")
        if len(px) != len(py):
            raise ValueError(f"paired_x has {len(px)} rows but paired_y has {len(py)}")
        if not px.is_floating_point():
            ncls = num_classes if num_classes is not None else int(px.max()) + 1
            self.meta = {"cond_kind": "onehot", "num_classes": ncls, "cond_dim": ncls}
        else:
            if px.dim() != 2:
                raise ValueError(f"paired_x as a float condition must be 2-D (N, cond_dim), got {tuple(px.shape)}")
            self.meta = {"cond_kind": "tensor", "num_classes": None, "cond_dim": int(px.shape[1])}
        for name, t in (("paired_y", py), ("unpaired_y", uy)):
            if t.numel() and (t.min() < 0 or t.max() > 1):
                raise ValueError(f"{name} must have values in [0, 1], got [{float(t.min()):.3g}, {float(t.max()):.3g}]")
        self.meta.update(data_dim=int(py.shape[1]), image_shape=image_shape, format_version=FORMAT_VERSION)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            self._build(py.shape[1], self.meta["cond_dim"], image_shape)
        x = self._conditions(px, "paired_x").to(self.device)
        return x, torch.cat([py, uy]).to(self.device), len(py)

    def _check_backend(self) -> dict[str, str]:
        """The backend of each stage-2 op, resolved once: an unusable one fails now, not after stage 1."""
        from .matching_step import resolve_backends

        m = self.config.matching
        try:
            return resolve_backends(m.backend, self.device, len(m.critic_hidden) + 1)
        except (RuntimeError, KeyError, ValueError) as exc:
            raise ValueError(f"matching.backend={m.backend!r}: {exc}") from None

    def _new_state(self) -> TrainingState:
        rng = torch.Generator(device=self.device).manual_seed(self.config.seed)
        return TrainingState(self.encoder, self.decoder, self.generator, self.critic, rng)

    # ------------------------------------------------------------------ inference
    def _require_fitted(self):
        if self.generator is None:
            raise RuntimeError("this LSDM is not fitted: call fit() or LSDM.load(dir) first")

    def encode(self, y, *, backend: str = "auto", batch_size: int = 65536) -> torch.Tensor:
        """Raw latents E(y) (before stage 2's standardisation)."""
        if self.encoder is None:
            raise RuntimeError("this LSDM is not fitted: call fit() or LSDM.load(dir) first")
        y = _as_tensor(y, "y", torch.float32)
        y = y.reshape(len(y), -1).to(self.device)
        if isinstance(self.encoder, MLP):
            return ops.encode(self.encoder.params(), y, batch_size=batch_size, backend=backend)
        # conv encoder: the convolutions through torch, the dense layer through the fused op
        return ops.encode(self.encoder.dense(), y, batch_size=batch_size, front=self.encoder.front, backend=backend)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        self._require_fitted()
        with torch.no_grad():
            return self.decoder(z.to(self.device))

    def _generator_params(self):
        """Generator with the latent de-standardisation folded into its last layer. Built once per set of
        weights (DerivedCache: rebuilt when a weight or the latent statistics change), so the fused kernels'
        own caches of converted weights see the same tensors call after call."""
        p = self.generator.mlp.params()

        def fold():
            w, b = p.weights[-1].detach(), p.biases[-1].detach()
            s, mu = self.latent_std.to(w), self.latent_mean.to(w)
            weights = [t.detach() for t in p.weights[:-1]] + [w * s[:, None]]
            biases = [t.detach() for t in p.biases[:-1]] + [b * s + mu]
            return p._replace(weights=weights, biases=biases)

        return self._folded.get([*p.weights, *p.biases, self.latent_mean, self.latent_std], None, fold)

    def sample(self, x, n_per_x: int = 1, *, seed: int = 0, offset: int = 0, backend: str = "auto",
               out_dtype: torch.dtype = torch.float32, eta: torch.Tensor | None = None,
               path: str | None = None, chunk_size: int = 65536, progress: bool = False):
        """n_per_x samples y ~ P(Y | x) for each condition; rows grouped by condition, flat (N, D).

        Reproducible: the noise of row i is a function of (seed, offset + i) only. With `path`
        (a .npy file) the samples are generated `chunk_size` rows at a time straight into a
        memory-mapped file, for batches larger than memory; the memmap is returned.
        """
        self._require_fitted()
        if n_per_x < 1:
            raise ValueError(f"n_per_x must be >= 1, got {n_per_x}")
        x = _as_tensor(x, "x")
        x = x.repeat_interleave(n_per_x, 0).to(self.device)
        if self.meta["cond_kind"] == "onehot":
            self._conditions(x, "x")  # validates labels
            cond, ncls = x.long(), self.meta["num_classes"]
        else:
            cond, ncls = self._conditions(x, "x"), None
        gen = self._generator_params()
        k = self.generator.noise_dim
        # the parameters themselves (frozen): stable identities for the backends' weight caches. A conv decoder's
        # dense head runs fused with the generator, its convolutions after it (ops.generate's tail)
        if isinstance(self.decoder, MLP):
            dec, tail = self.decoder.params(), None
        else:
            dec, tail = self.decoder.dense(), self.decoder.tail
        if path is not None:
            if eta is not None:
                raise ValueError("give either eta or path, not both")
            from .sampling import generate_chunked
            return generate_chunked(gen, dec, cond, noise_dim=k, num_classes=ncls, seed=seed, offset=offset,
                                    chunk_size=chunk_size, path=path, out_dtype=out_dtype, backend=backend,
                                    progress=progress, tail=tail, out_features=self.meta["data_dim"])
        return ops.generate(gen, dec, cond, noise_dim=k, num_classes=ncls, seed=seed, offset=offset,
                            eta=eta, out_dtype=out_dtype, tail=tail, backend=backend)

    # ------------------------------------------------------------------ persistence (lsdm_fast.model_folder)
    def save(self, folder: str, *, overwrite: bool = False) -> str:
        """Write the model to `folder` (safetensors weights, config.json, history.json), each file atomically.
        A folder that already holds a saved model is refused unless overwrite=True."""
        self._require_fitted()
        return save_model(self, folder, overwrite=overwrite)

    @classmethod
    def load(cls, folder: str, device: str | None = None) -> "LSDM":
        """A model written by `save`. A missing file raises FileNotFoundError; a damaged one ModelFolderError
        naming the file and the field."""
        return load_model(cls, folder, device)
