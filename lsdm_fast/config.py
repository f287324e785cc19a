"""Configuration as plain dataclasses (saved as JSON beside every checkpoint)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class AutoencoderConfig:
    kind: str = "mlp"  # "mlp" or "conv" (conv needs square images whose side is divisible by 4)
    latent_dim: int = 16
    hidden: tuple[int, ...] = (512, 256)
    steps: int = 3000
    batch_size: int = 256
    lr: float = 1e-3
    loss: str = "bce"  # "bce" (images in [0, 1]) or "mse"
    latent_l2: float = 1e-4  # keeps the latent cloud compact: easier for stage 2 to match
    # decode z + latent_noise * std_batch(z) * N(0, I) in training: the decoder learns to map a
    # neighbourhood of each latent to a clean image, which forgives stage 2's small misses (0: off)
    latent_noise: float = 0.0
    checkpoint_every: int = 0  # steps between checkpoints (0: only at the end of the stage); needs a checkpoint_dir


@dataclass
class MatchingConfig:
    noise_dim: int | None = None  # None: same as latent_dim
    generator_hidden: tuple[int, ...] = (256, 256)
    critic_hidden: tuple[int, ...] = (256, 256)
    negative_slope: float = 0.2
    gp_weight: float = 10.0
    penalty_over: str = "joint"  # gradient norm over (x, z) jointly, or "latent": over z only
    critic_steps: int = 5
    steps: int = 3000  # generator steps
    batch_size: int = 256
    lr: float = 3e-4  # 1e-4 (the literature's default) left stage 2 unconverged at 4000 steps: 92-94 % vs 97 % (MNIST, 100 pairs/class)
    betas: tuple[float, float] = (0.5, 0.9)
    backend: str = "auto"  # for the critic step; the results do not depend on it
    generator_ema: float = 0.0  # decay of an EMA of the generator's weights, used for sampling (0: off)
    checkpoint_every: int = 0  # generator steps between checkpoints (0: only at the end); needs a checkpoint_dir


@dataclass
class LSDMConfig:
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    matching: MatchingConfig = field(default_factory=MatchingConfig)
    seed: int = 0
    device: str = "cpu"
    # "fp32", "bf16" or "fp16": autocast for stage 1 and the generator forward. The critic step
    # (with its gradient penalty, a double backward) always runs in float32; see stages.py.
    precision: str = "fp32"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LSDMConfig":
        def build(klass, values):
            names = {f.name for f in fields(klass)}
            unknown = set(values) - names
            if unknown:
                raise ValueError(f"{klass.__name__}: unknown config keys {sorted(unknown)}")
            out = {}
            for f in fields(klass):
                if f.name in values:
                    v = values[f.name]
                    out[f.name] = tuple(v) if isinstance(v, list) else v
            return klass(**out)

        d = dict(d)
        ae = build(AutoencoderConfig, d.pop("autoencoder", {}))
        mt = build(MatchingConfig, d.pop("matching", {}))
        return build(cls, {**d, "autoencoder": ae, "matching": mt})

    @classmethod
    def from_knobs(cls, *, latent_dim: int = 16, ae_hidden=(512, 256), ae_kind: str = "mlp", ae_steps: int = 3000,
                   steps: int = 3000, batch_size: int = 256, match_hidden=None, latent_noise: float = 0.0,
                   backend: str = "auto", seed: int = 0, device: str = "cpu", precision: str = "fp32",
                   checkpoint_every: int = 0) -> "LSDMConfig":
        """The config from the few knobs `lsdm train`/`demo` and `lsdm experiment` expose (one translation for
        both); everything else keeps its default. match_hidden: generator and critic widths (None: defaults)."""
        nets = {} if match_hidden is None else {"generator_hidden": tuple(match_hidden),
                                                 "critic_hidden": tuple(match_hidden)}
        return cls(autoencoder=AutoencoderConfig(kind=ae_kind, latent_dim=latent_dim, hidden=tuple(ae_hidden),
                                                 steps=ae_steps, batch_size=batch_size, latent_noise=latent_noise,
                                                 checkpoint_every=checkpoint_every),
                   matching=MatchingConfig(steps=steps, batch_size=batch_size, backend=backend,
                                           checkpoint_every=checkpoint_every, **nets),
                   seed=seed, device=device, precision=precision)

    def validate(self) -> None:
        for section in (self, self.autoencoder, self.matching):
            _check_types(section)
        a, m = self.autoencoder, self.matching
        checks = [
            (a.kind in ("mlp", "conv"), f"autoencoder.kind must be 'mlp' or 'conv', got {a.kind!r}"),
            (0 <= m.generator_ema < 1, f"matching.generator_ema must be in [0, 1), got {m.generator_ema}"),
            (a.latent_noise >= 0, f"autoencoder.latent_noise must be >= 0, got {a.latent_noise}"),
            (a.latent_dim >= 1, f"autoencoder.latent_dim must be >= 1, got {a.latent_dim}"),
            (a.loss in ("bce", "mse"), f"autoencoder.loss must be 'bce' or 'mse', got {a.loss!r}"),
            (a.steps >= 0 and m.steps >= 0, "steps must be >= 0"),
            (a.batch_size >= 1 and m.batch_size >= 1, "batch sizes must be >= 1"),
            (m.critic_steps >= 1, f"matching.critic_steps must be >= 1, got {m.critic_steps}"),
            (m.penalty_over in ("joint", "latent"), f"matching.penalty_over must be 'joint' or 'latent', got {m.penalty_over!r}"),
            (m.gp_weight >= 0, f"matching.gp_weight must be >= 0, got {m.gp_weight}"),
            (len(m.critic_hidden) >= 1, "matching.critic_hidden needs at least one width (a hidden layer)"),
            (all(w >= 1 for w in (*a.hidden, *m.generator_hidden, *m.critic_hidden)), "layer widths must be >= 1"),
            (a.lr > 0 and m.lr > 0, "learning rates must be positive"),
            (a.checkpoint_every >= 0 and m.checkpoint_every >= 0, "checkpoint_every must be >= 0"),
            (self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return _is_int(v) or isinstance(v, float)


# annotation (as written above) -> (check, what it wants)
_TYPE_CHECKS = {
    "int": (_is_int, "an integer"),
    "float": (_is_number, "a number"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "int | None": (lambda v: v is None or _is_int(v), "an integer or None"),
    "tuple[int, ...]": (lambda v: isinstance(v, (tuple, list)) and all(_is_int(x) for x in v),
                        "a tuple of integers"),
    "tuple[float, float]": (lambda v: isinstance(v, (tuple, list)) and len(v) == 2 and all(_is_number(x) for x in v),
                            "a pair of numbers"),
}


def _check_types(section) -> None:
    """A field of the wrong type (latent_dim="16", say) is named here, before any comparison trips on it."""
    for f in fields(section):
        check = _TYPE_CHECKS.get(f.type) if isinstance(f.type, str) else None
        if check is None:
            continue
        ok, want = check
        value = getattr(section, f.name)
        if not ok(value):
            name = {"AutoencoderConfig": "autoencoder.", "MatchingConfig": "matching."}.get(type(section).__name__, "")
            raise ValueError(f"{name}{f.name} must be {want}, got {value!r} ({type(value).__name__})")
