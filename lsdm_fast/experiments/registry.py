"""The experiments `lsdm experiment` can run: methods, budgets and settings (what is compared, on what)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ..config import LEGACY_MATCH_LR, LEGACY_MATCH_STEPS_MAX, AutoencoderConfig, LSDMConfig, MatchingConfig

# lsdm_paired_only: its stage 1 to convergence, like LSDM's; ..._equal_steps: as many stage-1 steps as LSDM's
# took in the same cell (equal compute). Stage 2, the denoiser and pixel matching take equal steps and batches.
METHODS = ("lsdm", "lsdm_paired_only", "lsdm_paired_only_equal_steps", "pixel_matching", "latent_diffusion")
LABELS = {"lsdm": "LSDM (stage 1 on paired + unpaired)", "lsdm_paired_only": "LSDM, stage 1 on paired only",
          "lsdm_paired_only_equal_steps": "LSDM, stage 1 on paired only, as many stage-1 steps as LSDM's",
          "pixel_matching": "pixel-space joint matching", "latent_diffusion": "latent diffusion (DDIM)",
          "lsdm_all_labels": "LSDM with every training label paired",
          "real_data (reference)": "real training images (the metric's best attainable value at this sample size)"}


@dataclass
class Budget:
    ae_kind: str = "auto"  # conv for the 28x28 images (AutoencoderConfig.kind)
    ae_stop: str = "plateau"  # each method's stage 1 to convergence; "steps": exactly ae_steps
    ae_steps: int = 20000  # stage-1 steps ("steps") or their cap ("plateau")
    match_steps: int | None = None  # None: stage 2 sized to the latent (MatchingConfig.generator_steps), pixels MATCH_STEPS
    match_steps_max: int = MatchingConfig().steps_max  # ... at most this many (MatchingConfig.steps_max)
    match_lr: float = MatchingConfig().lr  # stage 2's rate (pixel matching's too; MatchingConfig.lr)
    diffusion_steps: int = 8000
    batch_size: int = 256
    latent_dim: int | None = None  # None: fitted to the data (AutoencoderConfig.latent_dim)
    grow_latent: float = AutoencoderConfig().grow_latent  # the fitting rule's threshold (AutoencoderConfig's)
    grow_gain: float = AutoencoderConfig().grow_gain  # ... the gain per doubling that keeps it growing
    latent_max: int = AutoencoderConfig().latent_max  # ... and its largest latent
    ae_hidden: tuple = (1024, 512)  # MLP autoencoder widths (when ae_kind resolves to "mlp")
    ae_design: str = AutoencoderConfig().conv_design  # the conv autoencoder's (AutoencoderConfig.conv_design)
    latent_noise: float = 0.0
    ae_ema: float = 0.0  # stage 1's weight average's decay (AutoencoderConfig.ema; 0: off)
    match_hidden: tuple = (512, 512)  # generator and critic widths (stage 2; pixel matching too)
    marginal_weight: float = 0.0  # stage 2's marginal critic (MatchingConfig's; 0: off)
    pseudo_label: float | None = None  # stage 2's pseudo-pairs' confidence (MatchingConfig's; None: auto, 0: off)
    pseudo_condition: float | None = None  # float conditions' pseudo-pairs' held-out R^2 (MatchingConfig's; ditto)
    penalty_over: str | None = None  # stage 2's gradient penalty (MatchingConfig's; None: by the conditions and latent)
    eval_per_class: int = 200  # class task: generated samples per class
    eval_sr: int = 1000  # superres task: test inputs
    feature_steps: int = 1500
    judge_steps: int = 2000
    ddim_steps: tuple = (1, 2, 5, 10, 25, 50, 100)
    ddim_few: int = 5
    ddim_many: int = 50
    w1_per_class: int = 100


# Budget fields added since results were first written, and what a results.json without them was run with
BUDGET_IMPLIED_BY_ABSENCE = {"marginal_weight": 0.0, "pseudo_label": 0.0, "pseudo_condition": 0.0, "ae_design": "strided", "ae_ema": 0.0,
                             "penalty_over": "joint", "grow_latent": 0.1, "grow_gain": 0.0, "latent_max": 128,
                             "match_steps_max": LEGACY_MATCH_STEPS_MAX, "match_lr": LEGACY_MATCH_LR}

QUICK = Budget(ae_kind="mlp", ae_stop="steps", ae_steps=40, match_steps=6, diffusion_steps=40, batch_size=32,
               latent_dim=4, ae_hidden=(64, 32), match_hidden=(32, 32), eval_per_class=8, eval_sr=40, feature_steps=20,
               judge_steps=20, ddim_steps=(1, 4), ddim_few=1, ddim_many=4, w1_per_class=6)
DIGITS = replace(Budget(), ae_steps=2000, match_steps=1500, diffusion_steps=4000, latent_dim=8, ae_hidden=(256, 128),
                 match_hidden=(256, 256), eval_per_class=36, feature_steps=600, judge_steps=1500)


@dataclass
class Setting:
    label: str
    task: str = "class"
    n_per_class: int | None = None
    n_pairs: int | None = None
    m_unpaired: int | None = None
    factor: int = 4
    methods: tuple = METHODS


@dataclass
class Experiment:
    about: str
    settings: list[Setting] = field(default_factory=list)


EXPERIMENTS: dict[str, Experiment] = {
    "class_n10": Experiment("MNIST class-conditional, 10 pairs per class, the rest unpaired",
                            [Setting("n=10/class", n_per_class=10)]),
    "class_n100": Experiment("MNIST class-conditional, 100 pairs per class, the rest unpaired",
                             [Setting("n=100/class", n_per_class=100)]),
    "superres_x4": Experiment("super-resolution x4 (7x7 -> 28x28), 1000 pairs, the rest unpaired",
                              [Setting("SR x4, 1000 pairs", task="superres", n_pairs=1000)]),
    "unpaired_curve": Experiment("LSDM quality against m (unpaired count), 100 pairs per class",
                                 [Setting(f"m={m if m is not None else 'all'}", n_per_class=100, m_unpaired=m,
                                          methods=("lsdm",)) for m in (0, 1000, 10000, None)]),
    "paired_curve": Experiment("LSDM and paired-only LSDM against n (pairs per class), all the rest unpaired",
                               [Setting(f"n={n}/class", n_per_class=n, methods=("lsdm", "lsdm_paired_only"))
                                for n in (10, 30, 100)]),
}


def scale_setting(s: Setting, labels: np.ndarray, quick: bool) -> Setting:
    """Quick runs and small data sets (the 8x8 digits): shrink the pair / unpaired counts so the
    split stays valid (and quick runs stay tiny). MNIST-size data with quick=False is unchanged."""
    n_train, min_class = len(labels), int(np.bincount(labels).min())
    if quick:
        cap_c, cap_p, cap_m = 3, 30, 200
    elif n_train >= 10000:
        return s
    else:
        cap_c, cap_p, cap_m = min_class // 2, n_train // 2, n_train // 2
    return replace(s, n_per_class=None if s.n_per_class is None else min(s.n_per_class, cap_c),
                   n_pairs=None if s.n_pairs is None else min(s.n_pairs, cap_p),
                   m_unpaired=None if s.m_unpaired is None else min(s.m_unpaired, cap_m))


def lsdm_config(b: Budget, seed: int, backend: str) -> LSDMConfig:
    return LSDMConfig.from_knobs(latent_dim=b.latent_dim, ae_kind=b.ae_kind, ae_hidden=b.ae_hidden, ae_stop=b.ae_stop,
                                 ae_steps=b.ae_steps, steps=b.match_steps, batch_size=b.batch_size,
                                 match_hidden=b.match_hidden, latent_noise=b.latent_noise, backend=backend, seed=seed,
                                 marginal_weight=b.marginal_weight, pseudo_label=b.pseudo_label,
                                 pseudo_condition=b.pseudo_condition, penalty_over=b.penalty_over,
                                 conv_design=b.ae_design, ae_ema=b.ae_ema, grow_latent=b.grow_latent,
                                 grow_gain=b.grow_gain, latent_max=b.latent_max, steps_max=b.match_steps_max,
                                 match_lr=b.match_lr)
