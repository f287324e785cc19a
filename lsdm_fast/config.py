"""Configuration as plain dataclasses (saved as JSON beside every checkpoint)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields


PRECISIONS = ("fp32", "bf16", "fp16")
# training seeds: torch.manual_seed takes 64 bits and the runs derive seeds from it (seed + 1000, ...): [0, 2^63)
SEED_LIMIT = 2**63
KINDS = ("auto", "mlp", "conv")
CONV_DESIGNS = ("patch", "strided")
STOPS = ("plateau", "steps")
PSEUDO_LABEL_AUTO = 0.99  # MatchingConfig.pseudo_label=None with class labels
PSEUDO_CONDITION_AUTO = 0.99  # MatchingConfig.pseudo_condition=None with float conditions (a held-out R^2)
PSEUDO_CONDITION_STEPS = 2  # stage 2's generator steps are this many times the latent's (within steps_max) with them

# Fields added after configs were first saved, and what a saved config without them meant: an old
# checkpoint or model keeps its behaviour (and still resumes) instead of taking today's default.
# the patch autoencoder's stage-1 schedule where its fields are None (AutoencoderConfig.schedule); before issue 24's
# schedule it trained at LEGACY_PATCH_LR with patience 2, which checkpoints written then resume with
PATCH_LR, PATCH_PATIENCE, LEGACY_PATCH_LR = 6e-3, 1, 3e-3
# ... except at latents of WIDE_LATENT and more (issue 25, results/experiments/issue25_wide_schedule): the texture
# set's d = 128 stage 1 at PATCH_LR, patience 1 ended anywhere between 6.1 and 7.6 % of the held-out variance
# unexplained over 3 seeds (a grown attempt once at 17.7 %), at 3e-3 with patience 2 at 6.1-6.2 % on every seed;
# at d = 64 the two end alike (11.4-11.8 %) and PATCH_LR in fewer steps. Patience 3 (2 before 2026-12-05), not
# a lower rate, is what the 512-d latent the texture set grows to still lacked: its stage 1 at 3e-3 / 2 stopped
# early (seed 0: reconstruction FD 9.2; 3 checks: 7.1, 1.14x the stage-1 steps; 1.5e-3 / 2: 13.4), and the grown
# default fit, 3 seeds: reconstruction FD 10.41 -> 7.26, sample FD 31.73 -> 26.60, 1.12x the fit's CPU time
# (results/experiments/issue25_wide_patience)
WIDE_LATENT, WIDE_PATCH_LR, WIDE_PATCH_PATIENCE = 128, 3e-3, 3
# stage 2's generator steps (MatchingConfig.steps=None): MATCH_STEPS per MATCH_STEPS_WIDTH latent dimensions (at
# least once), at most MatchingConfig.steps_max (MATCH_STEPS_MAX): d = 32 and 64 take 4,000, 128 8,000, 256 and more
# 16,000. Issue 25: on the texture set's grown d = 128 latent 4,000 steps left stage 2 unconverged (3 seeds: accuracy
# 59.5 -> 72.5 %, FD 79.2 -> 61.6 at 8,000; results/experiments/issue25_wide_schedule), and at its grown d = 256
# 8,000 did too (results/experiments/issue25_stage2_steps); MNIST and the digits keep d = 32 and 4,000 steps.
# Configs saved before steps_max existed ran with a cap of 8,000 (IMPLIED_BY_ABSENCE)
MATCH_STEPS, MATCH_STEPS_WIDTH, MATCH_STEPS_MAX, LEGACY_MATCH_STEPS_MAX = 4000, 64, 16000, 8000
# stage 2's rate (MatchingConfig.lr) before 2026-12-05; saved configs carry theirs, experiment budgets before
# Budget.match_lr existed ran at it (BUDGET_IMPLIED_BY_ABSENCE)
LEGACY_MATCH_LR = 3e-4
LATENT_START = 32  # AutoencoderConfig.latent_dim=None: stage 1 starts at this size (grow_latent)
IMPLIED_BY_ABSENCE = {
    "autoencoder": {"stop": "steps", "epochs": 0.0, "conv_channels": (32, 64), "res_blocks": 0,
                    "conv_design": "strided", "warmup_steps": 0, "ema": 0.0, "check_epochs": 1.0,
                    "backend": "auto", "grow_latent": 0.0, "grow_gain": 0.0},
    "matching": {"marginal_weight": 0.0, "pseudo_label": 0.0, "pseudo_condition": 0.0,
                 "steps_max": LEGACY_MATCH_STEPS_MAX},
}


@dataclass
class AutoencoderConfig:
    # "auto": "conv" for square images (H, W) or (C, H, W) that the conv design takes (models.conv_fits), else
    # "mlp" (flat rows). A convolutional stage 1 was what let unpaired data lower the sample FD (MNIST, 100 pairs
    # per class: reconstruction FD 4.9 against 24.5 for the former MLP default; results/experiments/README.md)
    kind: str = "auto"
    # None: fitted to the data, LATENT_START (16 left MNIST's reconstruction FD at 25 whatever the autoencoder,
    # same study) doubled by grow_latent's rule; an integer: exactly that size
    latent_dim: int | None = None
    hidden: tuple[int, ...] = (1024, 512)  # MLP widths (kind "mlp")
    # kind "conv": "patch" (models.PatchEncoder/PatchDecoder: every layer a GEMM on channels-last patches, a fused
    # C++ stage-1 step and fused C++ sampling: 4x faster stage-1 steps, 6x faster sampling on one thread) or
    # "strided" (issue 14's 4x4 stride-2 convolutions, `conv_channels` and `res_blocks`; the default until issue 25).
    # With stage 2's pseudo-pairs (MatchingConfig.pseudo_label) the two sample alike: MNIST, 100 pairs/class, seeds
    # 0-2, FD 7.8 +- 1.8 against 7.5 +- 1.8, accuracy 99.5 % both; digits and textures (seed 0) no worse
    # (results/experiments/issue25_pseudo). Without pseudo-pairs strided scored the lower FD (11.4 +- 1.1 against
    # 13.6 +- 0.8, results/experiments/issue24_patch)
    conv_design: str = "patch"
    patch_width: int = 96  # "patch": channels at the H/stride x W/stride positions (64: faster, sample FD 19.4)
    patch_depth: int = 1  # "patch": per-position layers after the convolution (and before the transposed one)
    patch_stride: int = 4  # "patch": the (2 stride) x (2 stride) convolution's stride; the image side divides by it
    conv_channels: tuple[int, ...] = (32, 64)  # "strided": one stride-2 stage per entry
    res_blocks: int = 0  # "strided": residual blocks at the lowest resolution
    # the budget: "plateau" trains until the held-out reconstruction loss stops improving (to convergence,
    # capped at `steps`); "steps" trains exactly `steps` steps (cosine learning-rate decay); `epochs` > 0
    # turns either cap into that many passes over the training images
    stop: str = "plateau"
    steps: int = 20000
    epochs: float = 0.0
    holdout: float = 0.05  # plateau: fraction of the images held out to measure the loss on (at most 2048)
    check_every: int = 200  # plateau: steps between held-out checks, at least (at least check_epochs epochs)
    check_epochs: float = 1.0  # plateau: ... and at least this many passes over the training images between checks
    plateau_tol: float = 0.002  # plateau: a relative improvement below this is no improvement
    # plateau: checks without improvement before the learning rate drops (x0.2); None: by the model, schedule()
    plateau_patience: int | None = None
    plateau_decays: int = 2  # plateau: drops before stopping (the next plateau ends stage 1)
    batch_size: int = 256
    # None: by the model, schedule(): the patch autoencoder PATCH_LR after a 100-step warm-up, patience
    # PATCH_PATIENCE (WIDE_PATCH_LR, WIDE_PATCH_PATIENCE from latent WIDE_LATENT up)
    # (issue 24: the plateau in half the steps, results/experiments/issue24_stage1_schedule; the
    # warm-up keeps a first step at full rate from unsettling other data), every other model 1e-3 without warm-up,
    # patience 2 (what they were tuned with)
    lr: float | None = None
    warmup_steps: int | None = None  # linear learning-rate warm-up from lr / warmup_steps over the first steps
    # decay of an average of the weights that the plateau checks measure and stage 1 ends with (0: off). 0.999 helps
    # MNIST (3 seeds: sample FD 8.25 -> 6.58) but not the texture set (72 -> 80): off by default,
    # results/experiments/issue25_ema
    ema: float = 0.0
    loss: str = "bce"  # "bce" (images in [0, 1]) or "mse"
    latent_l2: float = 1e-4  # keeps the latent cloud compact: easier for stage 2 to match
    # decode z + latent_noise * std_batch(z) * N(0, I) in training: the decoder learns to map a
    # neighbourhood of each latent to a clean image, which forgives stage 2's small misses (0: off)
    latent_noise: float = 0.0
    # latent_dim None, plateau rule: stage 1 starts at LATENT_START, and when it ends leaving more than this
    # fraction of the held-out images' pixel variance unexplained (mean squared reconstruction error over
    # variance), it starts again from scratch with twice the latent, up to latent_max (0: off). Issue 25: MNIST
    # leaves 4 % at latent 32 and keeps it; the texture set 18 % at 32, 11 % at 64, 6 % at 128, 3 % at 256
    # (reconstruction FD 325 -> 141 -> 52 -> 19; docs/design.md §1, §7; results/experiments/issue25_cond_penalty).
    # ... and, once the threshold has started growing it, also while the doubling that led to this latent divided
    # the held-out miss by at least grow_gain (0: off): growth that still pays goes on. The texture set's doublings
    # to 256 divided it by 1.8-2.0 (3 seeds) and 256 -> 512 by 1.2-1.5, so it goes on to 512 and stops there
    # (3 seeds: FD 38.0 -> 31.7, reconstruction FD 19.2 -> 10.4, accuracy 80.3 -> 79.5 %, 1.4x the fit;
    # results/experiments/issue25_grow_gain; with WIDE_PATCH_PATIENCE 3: 26.6 and 7.3), while MNIST, which starts
    # below the threshold (4 % at 32), never grows
    grow_latent: float = 0.05
    grow_gain: float = 1.5
    latent_max: int = 512
    checkpoint_every: int = 0  # steps between checkpoints (0: only at the end of the stage); needs a checkpoint_dir
    # of ops.autoencoder_loss_grads, the fused step of the patch autoencoder at fp32 (other models and precisions
    # train through autograd); the results do not depend on it
    backend: str = "auto"

    def schedule(self, patch: bool) -> tuple[float, int, int]:
        """(learning rate, warm-up steps, plateau patience) for a patch autoencoder (`patch`) or any other model:
        the fields, or where they are None the defaults measured for that model and latent size (the comment on
        `lr`; latent_dim None counts as LATENT_START, where a fit starts)."""
        wide = (self.latent_dim if self.latent_dim is not None else LATENT_START) >= WIDE_LATENT
        patch_lr, patch_patience = (WIDE_PATCH_LR, WIDE_PATCH_PATIENCE) if wide else (PATCH_LR, PATCH_PATIENCE)
        lr = self.lr if self.lr is not None else (patch_lr if patch else 1e-3)
        warmup = self.warmup_steps if self.warmup_steps is not None else (100 if patch else 0)
        patience = self.plateau_patience if self.plateau_patience is not None else (patch_patience if patch else 2)
        return lr, warmup, patience

    def arch_kwargs(self) -> dict:
        """The conv architecture's fields, as models.build_autoencoder / conv_fits take them."""
        return dict(conv_design=self.conv_design, conv_channels=self.conv_channels, res_blocks=self.res_blocks,
                    patch_width=self.patch_width, patch_depth=self.patch_depth, patch_stride=self.patch_stride)


@dataclass
class MatchingConfig:
    noise_dim: int | None = None  # None: same as latent_dim
    # 512-wide nets: with the d-32 latent, 256 left stage 2 short (FD 17.0 against 11.7, one seed)
    generator_hidden: tuple[int, ...] = (512, 512)
    critic_hidden: tuple[int, ...] = (512, 512)
    negative_slope: float = 0.2
    gp_weight: float = 10.0
    # the gradient penalty's norm: "latent", over z only (f is 1-Lipschitz in z for each condition: the critic
    # estimates the mean over x of the conditional laws' W1, which ties every class to its own latents), or "joint",
    # over (x, z) (the joint law's W1, where a wrong class costs only the one-hot distance, small beside a wide
    # latent's). None: "latent" for class labels (one-hot conditions) in a latent of WIDE_LATENT or more, "joint"
    # otherwise (penalty_for). Issue 25 (results/experiments/issue25_cond_penalty): the texture set, d = 256,
    # accuracy 23 -> 74 %, d = 128 74 -> 82 %; at d = 32 (MNIST, digits) and 8 (the demo) joint is as good or better
    penalty_over: str | None = None
    critic_steps: int = 5
    # generator steps; None: sized to the latent (generator_steps: MATCH_STEPS per MATCH_STEPS_WIDTH dimensions, at
    # most steps_max)
    steps: int | None = None
    steps_max: int = MATCH_STEPS_MAX
    batch_size: int = 256
    # 1e-4 (the literature's default) left stage 2 unconverged at 4000 steps: 92-94 % vs 97 % (MNIST, 100 pairs/class);
    # 3e-4 (until 2026-12-05) still did: at 6e-4 MNIST's d = 32, 3 seeds, FD 8.25 -> 7.41 (lower on every seed),
    # accuracy 99.50 -> 99.62 %, recall the same; the texture set's d = 512, seed 0, FD 28.6 -> 25.7 (a rate decayed
    # over the second half: 30.2); the same steps, the same time (results/experiments/issue25_stage2_rate). Saved
    # configs keep the rate they were written with
    lr: float = 6e-4
    betas: tuple[float, float] = (0.5, 0.9)
    backend: str = "auto"  # for the critic step; the results do not depend on it
    generator_ema: float = 0.0  # decay of an EMA of the generator's weights, used for sampling (0: off)
    # weight of the marginal critic h(z), which matches G's latent law (x drawn from the pairs) to the latents of
    # every image, paired and unpaired (matching_step.py; 0: off). Opt-in: MNIST, 100 pairs/class, it raised recall
    # 0.77 -> 0.88 at the same FD but cost accuracy (98.6 -> 97.5 %) and 1.75x the step (docs/design.md §7); for
    # class labels only: with float conditions the few paired x do not stand for the x of the unpaired images
    marginal_weight: float = 0.0
    # class labels: a classifier trained on the pairs' latents labels the unpaired images' latents, and those it
    # labels with probability >= pseudo_label join stage 2's pairs (pseudo_labels.py). None: PSEUDO_LABEL_AUTO for
    # class labels, off for float conditions; 0: off. MNIST, 100 pairs/class, 3 seeds: FD 11.0 -> 7.5, accuracy
    # 98.5 -> 99.5 % (results/experiments/issue25_pseudo)
    pseudo_label: float | None = None
    # float conditions (super-resolution's low-resolution image): every unpaired image joins stage 2's pairs with a
    # condition predicted from it by a regressor trained on the pairs (ridge from the pixels, or MLPs from the
    # latent), if that regressor explains >= pseudo_condition of the held-out pairs' condition variance (R^2;
    # pseudo_labels.pseudo_condition); stage 2 then takes PSEUDO_CONDITION_STEPS times the generator steps (within
    # steps_max). None: PSEUDO_CONDITION_AUTO for float conditions, off for class labels; 0: off. MNIST x4, 1,000
    # pairs, seeds 0-2: FD below paired-only LSDM's, PSNR above it (results/experiments/issue25_pseudo_conditions)
    pseudo_condition: float | None = None
    checkpoint_every: int = 0  # generator steps between checkpoints (0: only at the end); needs a checkpoint_dir

    def penalty_for(self, class_labels: bool, latent_dim: int) -> str:
        """The gradient penalty's norm for conditions that are class labels (one-hot) or not, in a `latent_dim`-wide
        latent: `penalty_over`, or where it is None "latent" for class labels from WIDE_LATENT up, else "joint"."""
        if self.penalty_over is not None:
            return self.penalty_over
        return "latent" if class_labels and latent_dim >= WIDE_LATENT else "joint"

    def generator_steps(self, latent_dim: int, pseudo_conditions: bool = False) -> int:
        """Stage 2's generator steps for a `latent_dim`-wide latent: `steps`, or where it is None MATCH_STEPS for
        each whole MATCH_STEPS_WIDTH dimensions (at least once), at most `steps_max`: 4,000 at d = 32 or 64, 8,000
        at 128, 16,000 from 256 up; with `pseudo_conditions` (every unpaired image a pair) PSEUDO_CONDITION_STEPS
        times that, at most `steps_max`: 8,000 at d = 32."""
        if self.steps is not None:
            return self.steps
        base = MATCH_STEPS * max(1, latent_dim // MATCH_STEPS_WIDTH)
        return min(self.steps_max, base * (PSEUDO_CONDITION_STEPS if pseudo_conditions else 1))


@dataclass
class LSDMConfig:
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    matching: MatchingConfig = field(default_factory=MatchingConfig)
    seed: int = 0
    device: str = "cpu"
    # "fp32", "bf16" or "fp16": autocast for stage 1 and the generator forward. The critic step
    # (with its gradient penalty, a double backward) always runs in float32; see docs/design.md §6.
    precision: str = "fp32"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, *, saved: bool = False) -> "LSDMConfig":
        """A config from LSDMConfig.to_dict()'s layout. A field left out takes today's default, except with
        `saved` (a config.json / checkpoint written by an earlier version): then it takes IMPLIED_BY_ABSENCE,
        what that version did without the field."""
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
        implied = IMPLIED_BY_ABSENCE if saved else {"autoencoder": {}, "matching": {}}
        ae = build(AutoencoderConfig, {**implied["autoencoder"], **d.pop("autoencoder", {})})
        mt = build(MatchingConfig, {**implied["matching"], **d.pop("matching", {})})
        return build(cls, {**d, "autoencoder": ae, "matching": mt})

    @classmethod
    def from_knobs(cls, *, latent_dim: int | None = None, ae_kind: str = "auto", ae_hidden=(1024, 512), ae_stop: str = "plateau",
                   ae_steps: int = 20000, steps: int | None = None, batch_size: int = 256, match_hidden=None,
                   latent_noise: float = 0.0, backend: str = "auto", seed: int = 0, device: str = "cpu",
                   precision: str = "fp32", checkpoint_every: int = 0, conv_design: str | None = None,
                   marginal_weight: float = 0.0, pseudo_label: float | None = None,
                   pseudo_condition: float | None = None, penalty_over: str | None = None,
                   grow_latent: float | None = None, ae_ema: float | None = None,
                   latent_max: int | None = None, steps_max: int | None = None,
                   grow_gain: float | None = None, match_lr: float | None = None) -> "LSDMConfig":
        """The config from the few knobs `lsdm train`/`demo` and `lsdm experiment` expose (one translation for
        all); everything else keeps its default. ae_steps: stage 1's steps ("steps") or their cap ("plateau");
        steps: stage 2's generator steps (None: sized to the latent, MatchingConfig.generator_steps, at most
        steps_max, None: its default);
        match_hidden: generator and critic widths (None: the defaults); conv_design: None for the default;
        marginal_weight, pseudo_label, pseudo_condition, penalty_over, match_lr (its `lr`): MatchingConfig's (None:
        its default);
        grow_latent, grow_gain, latent_max, ae_ema (its `ema`): AutoencoderConfig's (None: its default)."""
        nets = {} if match_hidden is None else {"generator_hidden": tuple(match_hidden),
                                                 "critic_hidden": tuple(match_hidden)}
        design = {} if conv_design is None else {"conv_design": conv_design}
        if grow_latent is not None:
            design["grow_latent"] = grow_latent
        if ae_ema is not None:
            design["ema"] = ae_ema
        if latent_max is not None:
            design["latent_max"] = latent_max
        if grow_gain is not None:
            design["grow_gain"] = grow_gain
        return cls(autoencoder=AutoencoderConfig(kind=ae_kind, latent_dim=latent_dim, hidden=tuple(ae_hidden),
                                                 stop=ae_stop, steps=ae_steps, batch_size=batch_size,
                                                 latent_noise=latent_noise, checkpoint_every=checkpoint_every, **design),
                   matching=MatchingConfig(steps=steps, batch_size=batch_size, backend=backend,
                                           checkpoint_every=checkpoint_every, marginal_weight=marginal_weight,
                                           pseudo_label=pseudo_label, pseudo_condition=pseudo_condition,
                                           penalty_over=penalty_over,
                                           **({} if steps_max is None else {"steps_max": steps_max}),
                                           **({} if match_lr is None else {"lr": match_lr}), **nets),
                   seed=seed, device=device, precision=precision)

    def validate(self) -> None:
        for section in (self, self.autoencoder, self.matching):
            _check_types(section)
        check_seed(self.seed)
        a, m = self.autoencoder, self.matching
        checks = [
            (a.kind in KINDS, f"autoencoder.kind must be one of {KINDS}, got {a.kind!r}"),
            (a.stop in STOPS, f"autoencoder.stop must be one of {STOPS}, got {a.stop!r}"),
            (a.epochs >= 0, f"autoencoder.epochs must be >= 0, got {a.epochs}"),
            (0 < a.holdout < 1, f"autoencoder.holdout must be in (0, 1), got {a.holdout}"),
            (a.check_every >= 1 and (a.plateau_patience is None or a.plateau_patience >= 1) and a.plateau_decays >= 0 and a.plateau_tol >= 0,
             "autoencoder.check_every and plateau_patience must be >= 1, plateau_decays and plateau_tol >= 0"),
            (len(a.conv_channels) >= 1 and min(a.conv_channels) >= 1 and a.res_blocks >= 0,
             "autoencoder.conv_channels needs positive widths, res_blocks >= 0"),
            (a.conv_design in CONV_DESIGNS, f"autoencoder.conv_design must be one of {CONV_DESIGNS}, got {a.conv_design!r}"),
            (a.patch_width >= 1 and a.patch_depth >= 0, "autoencoder.patch_width must be >= 1, patch_depth >= 0"),
            (a.patch_stride >= 2 and a.patch_stride % 2 == 0,
             f"autoencoder.patch_stride must be an even number >= 2, got {a.patch_stride}"),
            (a.warmup_steps is None or a.warmup_steps >= 0, f"autoencoder.warmup_steps must be >= 0, got {a.warmup_steps}"),
            (a.check_epochs >= 0, f"autoencoder.check_epochs must be >= 0, got {a.check_epochs}"),
            (0 <= a.ema < 1, f"autoencoder.ema must be in [0, 1), got {a.ema}"),
            (0 <= a.grow_latent < 1, f"autoencoder.grow_latent must be in [0, 1) (0: off), got {a.grow_latent}"),
            (a.grow_gain == 0 or a.grow_gain > 1, f"autoencoder.grow_gain must be 0 (off) or > 1, got {a.grow_gain}"),
            (a.latent_max >= 1, f"autoencoder.latent_max must be >= 1, got {a.latent_max}"),
            (0 <= m.generator_ema < 1, f"matching.generator_ema must be in [0, 1), got {m.generator_ema}"),
            (a.latent_noise >= 0, f"autoencoder.latent_noise must be >= 0, got {a.latent_noise}"),
            (a.latent_dim is None or a.latent_dim >= 1,
             f"autoencoder.latent_dim must be None (fitted to the data) or >= 1, got {a.latent_dim}"),
            (a.loss in ("bce", "mse"), f"autoencoder.loss must be 'bce' or 'mse', got {a.loss!r}"),
            (a.steps >= 0 and (m.steps is None or m.steps >= 0), "steps must be >= 0"),
            (a.batch_size >= 1 and m.batch_size >= 1, "batch sizes must be >= 1"),
            (m.critic_steps >= 1, f"matching.critic_steps must be >= 1, got {m.critic_steps}"),
            (m.steps_max >= 1, f"matching.steps_max must be >= 1, got {m.steps_max}"),
            (m.penalty_over in (None, "joint", "latent"),
             f"matching.penalty_over must be None (auto), 'joint' or 'latent', got {m.penalty_over!r}"),
            (m.gp_weight >= 0, f"matching.gp_weight must be >= 0, got {m.gp_weight}"),
            (math.isfinite(m.marginal_weight) and m.marginal_weight >= 0,
             f"matching.marginal_weight must be a finite number >= 0, got {m.marginal_weight}"),
            (m.pseudo_label is None or 0 <= m.pseudo_label <= 1,
             f"matching.pseudo_label must be None (auto), 0 (off) or a confidence in (0, 1], got {m.pseudo_label}"),
            (m.pseudo_condition is None or 0 <= m.pseudo_condition <= 1,
             f"matching.pseudo_condition must be None (auto), 0 (off) or a held-out R^2 in (0, 1], got "
             f"{m.pseudo_condition}"),
            (len(m.critic_hidden) >= 1, "matching.critic_hidden needs at least one width (a hidden layer)"),
            (all(w >= 1 for w in (*a.hidden, *m.generator_hidden, *m.critic_hidden)), "layer widths must be >= 1"),
            ((a.lr is None or a.lr > 0) and m.lr > 0, "learning rates must be positive"),
            (a.checkpoint_every >= 0 and m.checkpoint_every >= 0, "checkpoint_every must be >= 0"),
            (self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)


def check_seed(seed) -> int:
    """A training seed: an integer in [0, 2^63) (the one message for the API and `lsdm train --seed`)."""
    if not _is_int(seed) or not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"seed must be an integer in [0, 2^63), got {seed!r}")
    return seed


def check_sampling_seed(seed) -> int:
    """A sampling seed (the Philox key of lsdm_fast.ops.generate): an integer in [0, 2^64), with the message the op
    itself gives, for `LSDM.sample` and `lsdm sample --seed` alike, before anything is allocated."""
    if isinstance(seed, bool) or not hasattr(seed, "__index__") or not 0 <= seed.__index__() < 2**64:
        raise ValueError(f"seed must be in [0, 2^64), got {seed!r}")
    return seed.__index__()


def as_config(config) -> "LSDMConfig":
    """`config` as an LSDMConfig: one already, None (the defaults), or a dict in LSDMConfig.to_dict()'s layout
    (sections as nested dicts, unknown keys refused by name)."""
    if config is None:
        return LSDMConfig()
    if isinstance(config, LSDMConfig):
        return config
    if isinstance(config, dict):
        return LSDMConfig.from_dict(config)
    raise TypeError(f"config must be an LSDMConfig (or a dict of its fields, or None), got {type(config).__name__} "
                    f"{config!r:.60}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return _is_int(v) or isinstance(v, float)


# annotation (as written above) -> (check, what it wants)
_TYPE_CHECKS = {
    "int": (_is_int, "an integer"),
    "float": (_is_number, "a number"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "str | None": (lambda v: v is None or isinstance(v, str), "a string or None"),
    "int | None": (lambda v: v is None or _is_int(v), "an integer or None"),
    "float | None": (lambda v: v is None or _is_number(v), "a number or None"),
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
