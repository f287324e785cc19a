"""Named experiments: LSDM against its baselines over seeds, a markdown table (mean +- std over
seeds) and figures. `lsdm experiment NAME` is `run_experiment(NAME, ...)`.

Every method in one (setting, seed) cell sees the same split of the same data and the same
budgets (stage-1 steps, stage-2 / denoiser steps, batch size). Evaluation nets (the FD feature
CNN and the accuracy judge) are trained once on the full labelled training set and cached.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from . import metrics as M
from .api import LSDM
from .baselines import LatentDiffusion, PixelMatching, fit_paired_only, one_hot
from .config import AutoencoderConfig, LSDMConfig, MatchingConfig
from .data import load_dataset, make_conditions, split_paired_unpaired
from .io import atomic_write_json

METHODS = ("lsdm", "lsdm_paired_only", "pixel_matching", "latent_diffusion")
LABELS = {"lsdm": "LSDM (stage 1 on paired + unpaired)", "lsdm_paired_only": "LSDM, stage 1 on paired only",
          "pixel_matching": "pixel-space joint matching", "latent_diffusion": "latent diffusion (DDIM)",
          "lsdm_all_labels": "LSDM with every training label paired",
          "real_data (reference)": "real training images (the metric's best attainable value at this sample size)"}


@dataclass
class Budget:
    ae_steps: int = 4000
    match_steps: int = 4000
    diffusion_steps: int = 8000
    batch_size: int = 256
    latent_dim: int = 16
    ae_hidden: tuple = (512, 256)
    latent_noise: float = 0.0
    match_hidden: tuple = (256, 256)  # generator and critic widths (stage 2)
    eval_per_class: int = 200  # class task: generated samples per class
    eval_sr: int = 1000  # superres task: test inputs
    feature_steps: int = 1500
    judge_steps: int = 2000
    ddim_steps: tuple = (1, 2, 5, 10, 25, 50, 100)
    ddim_few: int = 5
    ddim_many: int = 50
    w1_per_class: int = 100


QUICK = Budget(ae_steps=40, match_steps=6, diffusion_steps=40, batch_size=32, latent_dim=4, ae_hidden=(64, 32),
               eval_per_class=8, eval_sr=40, feature_steps=20, judge_steps=20, ddim_steps=(1, 4), ddim_few=1,
               ddim_many=4, w1_per_class=6)
DIGITS = replace(Budget(), ae_steps=2000, match_steps=1500, diffusion_steps=4000, latent_dim=8, ae_hidden=(256, 128),
                 eval_per_class=36, feature_steps=600, judge_steps=1500)


@dataclass
class Setting:
    label: str
    task: str = "class"
    n_per_class: int | None = None
    n_pairs: int | None = None
    m_unpaired: int | None = None
    factor: int = 4
    methods: tuple = METHODS


EXPERIMENTS: dict[str, dict] = {
    "class_n10": {"about": "MNIST class-conditional, 10 pairs per class, the rest unpaired",
                  "settings": [Setting("n=10/class", n_per_class=10)]},
    "class_n100": {"about": "MNIST class-conditional, 100 pairs per class, the rest unpaired",
                   "settings": [Setting("n=100/class", n_per_class=100)]},
    "superres_x4": {"about": "super-resolution x4 (7x7 -> 28x28), 1000 pairs, the rest unpaired",
                    "settings": [Setting("SR x4, 1000 pairs", task="superres", n_pairs=1000)]},
    "unpaired_curve": {"about": "LSDM quality against m (unpaired count), 100 pairs per class",
                       "settings": [Setting(f"m={m if m is not None else 'all'}", n_per_class=100, m_unpaired=m,
                                            methods=("lsdm",)) for m in (0, 1000, 10000, None)]},
    "paired_curve": {"about": "LSDM and paired-only LSDM against n (pairs per class), all the rest unpaired",
                     "settings": [Setting(f"n={n}/class", n_per_class=n, methods=("lsdm", "lsdm_paired_only"))
                                  for n in (10, 30, 100)]},
}


def _scale_setting(s: Setting, labels: np.ndarray, quick: bool) -> Setting:
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


def _config(b: Budget, seed: int, backend: str) -> LSDMConfig:
    return LSDMConfig(autoencoder=AutoencoderConfig(latent_dim=b.latent_dim, hidden=tuple(b.ae_hidden), steps=b.ae_steps,
                                                    batch_size=b.batch_size, latent_noise=b.latent_noise),
                      matching=MatchingConfig(steps=b.match_steps, batch_size=b.batch_size, backend=backend,
                                              generator_hidden=tuple(b.match_hidden), critic_hidden=tuple(b.match_hidden)),
                      seed=seed)


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


class _Evaluator:
    """Metrics of one method's samples for one (setting, seed); `ref` is the seed's LSDM, whose
    all-data encoder gives the common latent space for W1."""

    def __init__(self, task, train, test, feat, judge, budget: Budget, factor: int, seed: int, paired: np.ndarray):
        self.task, self.train, self.test, self.feat, self.judge, self.b = task, train, test, feat, judge, budget
        self.factor, self.seed = factor, seed
        self.shape = test.image_shape
        rng = np.random.default_rng(1234)
        self.test_feats = M.extract_features(feat, test.images)
        self.train_feats = M.extract_features(feat, train.images[paired])  # what stage 2 (and paired-only) saw
        self.prdc_real = self.test_feats[rng.permutation(len(test))[:2000]]
        if task == "class":
            self.labels = np.repeat(np.arange(train.num_classes), budget.eval_per_class)
            self.cond = one_hot(self.labels, train.num_classes)
        else:
            n = min(len(test), budget.eval_sr)
            self.labels = test.labels[:n]
            self.truth = test.images[:n]
            self.cond = torch.from_numpy(make_conditions(test, "superres", factor)[:n])

    def __call__(self, sample_fn, ref: LSDM) -> tuple[dict, np.ndarray]:
        y, dt = _timed(lambda: sample_fn(self.cond))
        y = np.asarray(torch.as_tensor(y).cpu().float().reshape(len(self.cond), -1))
        out = {"samples_per_second": len(y) / max(dt, 1e-9)}
        out["conditional_accuracy"] = M.conditional_accuracy(self.judge, y, self.labels)
        fy = M.extract_features(self.feat, y)
        out["classifier_fd"] = M.frechet_distance(*M.gaussian_stats(fy), *M.gaussian_stats(self.test_feats))
        k = 5 if min(len(fy), len(self.prdc_real)) > 10 else 2
        out.update(M.prdc(self.prdc_real, fy, k=k))
        out["train_nn_ratio"] = M.train_nn_ratio(self.train_feats, fy, self.prdc_real)
        zr = ((ref.encode(torch.from_numpy(self.test.images)) - ref.latent_mean) / ref.latent_std).cpu().numpy()
        zg = ((ref.encode(torch.from_numpy(y)) - ref.latent_mean) / ref.latent_std).cpu().numpy()
        w = self.b.w1_per_class
        if self.task == "class":
            out["latent_w1"] = float(np.mean([M.wasserstein1(zg[self.labels == c][:w], zr[self.test.labels == c][:w])
                                              for c in range(self.train.num_classes)]))
        else:
            out["latent_w1"] = M.wasserstein1(zg[: 5 * w], zr[: 5 * w])
            out["psnr_db"] = M.psnr(y, self.truth)
            out["ssim"] = M.ssim(y, self.truth, self.shape)
            out["consistency_rmse"] = M.consistency_error(y, self.cond.numpy(), self.factor, self.shape)
        return out, y


def _grid(y: np.ndarray, labels: np.ndarray, task: str, cols: int = 8) -> np.ndarray:
    """Rows of the sample picture: per class, `cols` samples (class task); or the first inputs'
    samples, 8 to a row (superres)."""
    if task == "class":
        return np.stack([y[labels == c][:cols] for c in np.unique(labels)])
    c = max(1, min(cols, len(y) // 8))
    return y[:8 * c].reshape(-1, c, y.shape[1])


def _run_cell(setting: Setting, seed: int, data: str, budget: Budget, quick: bool, backend: str, nets, log):
    train, test = load_dataset(data, "train", seed=seed), load_dataset(data, "test", seed=seed)
    s = _scale_setting(setting, train.labels, quick)
    split = split_paired_unpaired(train.labels, n_per_class=s.n_per_class, n_pairs=s.n_pairs, m_unpaired=s.m_unpaired,
                                  seed=seed, num_classes=train.num_classes)
    feat, judge = nets
    ev = _Evaluator(s.task, train, test, feat, judge, budget, s.factor, seed, split.paired)
    py = torch.from_numpy(train.images[split.paired])
    uy = torch.from_numpy(train.images[split.unpaired])
    if s.task == "class":
        px = torch.from_numpy(train.labels[split.paired])
        cond = one_hot(train.labels[split.paired], train.num_classes)
    else:
        px = cond = torch.from_numpy(make_conditions(train, "superres", s.factor)[split.paired])

    def lsdm_sampler(model):
        if s.task == "class":
            return lambda c: model.sample(c.argmax(1), 1, seed=seed + 1000)
        return lambda c: model.sample(c, 1, seed=seed + 1000)

    cfg = _config(budget, seed, backend)
    base = {"setting": s.label, "seed": seed, "paired": int(len(split.paired)), "unpaired": int(len(split.unpaired))}
    rows, grids = [], {}

    def record(method, fit_seconds, res, y, **extra):
        row = {**base, "method": method, "fit_seconds": fit_seconds, **res, **extra}
        rows.append(row)
        grids[method if "ddim_steps" not in extra else f"{method}[{extra['ddim_steps']}]"] = _grid(y, ev.labels, s.task)
        log(f"  [{s.label} seed {seed}] {method}{'' if 'ddim_steps' not in extra else ' ' + str(extra['ddim_steps']) + ' steps'}: "
            f"acc {res['conditional_accuracy']:.3f}  FD {res['classifier_fd']:.2f}  fit {fit_seconds:.0f}s")

    if s.task == "superres":
        grids["ground truth"] = _grid(ev.truth.reshape(len(ev.truth), -1), ev.labels, s.task)
        lowres = np.kron(ev.cond.numpy().reshape(-1, *(d // s.factor for d in ev.shape)), np.ones((s.factor, s.factor)))
        grids["low-res input"] = _grid(lowres.reshape(len(lowres), -1), ev.labels, s.task)
    if s.task == "class":  # reference row: real training images, as many per class as generated
        pick = np.random.default_rng(seed + 99)
        real = np.concatenate([pick.choice(np.flatnonzero(train.labels == c), (ev.labels == c).sum(), replace=False)
                               for c in np.unique(ev.labels)])
        real_y = torch.from_numpy(train.images[real].reshape(len(real), -1))
    ref, dt = _timed(lambda: LSDM(cfg).fit(px, py, uy, num_classes=train.num_classes, progress=False))
    if "lsdm" in s.methods:
        res, y = ev(lsdm_sampler(ref), ref)
        record("lsdm", dt, res, y)
    if s.task == "class":
        res, y = ev(lambda c: real_y, ref)
        record("real_data (reference)", 0.0, res, y)
    if "lsdm_all_labels" in s.methods:
        allx = torch.from_numpy(train.labels) if s.task == "class" else \
            torch.from_numpy(make_conditions(train, "superres", s.factor))
        model, dt = _timed(lambda: LSDM(cfg).fit(allx, torch.from_numpy(train.images), None,
                                                   num_classes=train.num_classes, progress=False))
        res, y = ev(lsdm_sampler(model), ref)
        record("lsdm_all_labels", dt, res, y)
    if "lsdm_paired_only" in s.methods:
        model, dt = _timed(lambda: fit_paired_only(cfg, px, py, num_classes=train.num_classes))
        res, y = ev(lsdm_sampler(model), ref)
        record("lsdm_paired_only", dt, res, y)
    if "pixel_matching" in s.methods:
        pm, dt = _timed(lambda: PixelMatching(cfg.matching, seed=seed).fit(cond, py.reshape(len(py), -1)))
        res, y = ev(lambda c: pm.sample(c, seed=seed + 1000), ref)
        record("pixel_matching", dt, res, y)
    if "latent_diffusion" in s.methods:
        ld, dt = _timed(lambda: LatentDiffusion(ref, steps=budget.diffusion_steps, batch_size=budget.batch_size,
                                                seed=seed).fit(cond, py))
        for n_steps in budget.ddim_steps:
            res, y = ev(lambda c: ld.sample(c, n_steps, seed=seed + 1000), ref)
            record("latent_diffusion", dt, res, y, ddim_steps=n_steps)
    return rows, grids, train.image_shape


# ------------------------------------------------------------------------------ reporting

TABLE_METRICS = [("conditional_accuracy", "cond. acc. ↑", 100, "{:.1f}"), ("classifier_fd", "clf-FD ↓", 1, "{:.2f}"),
                 ("precision", "prec. ↑", 1, "{:.3f}"), ("recall", "rec. ↑", 1, "{:.3f}"),
                 ("density", "dens.", 1, "{:.3f}"), ("coverage", "cov. ↑", 1, "{:.3f}"),
                 ("train_nn_ratio", "train-NN ratio", 1, "{:.2f}"),
                 ("latent_w1", "latent W1 ↓", 1, "{:.3f}"), ("psnr_db", "PSNR ↑", 1, "{:.2f}"),
                 ("ssim", "SSIM ↑", 1, "{:.3f}"), ("consistency_rmse", "consist. ↓", 1, "{:.4f}"),
                 ("samples_per_second", "samples/s", 1, "{:.0f}"), ("fit_seconds", "fit s", 1, "{:.0f}")]


def _method_name(row) -> str:
    return row["method"] + (f" ({row['ddim_steps']} steps)" if "ddim_steps" in row else "")


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean and std over seeds for each (setting, method[, steps]), in first-seen order."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["setting"], _method_name(r)), []).append(r)
    out = []
    for (setting, method), rs in groups.items():
        agg = {"setting": setting, "method": method, "seeds": [r["seed"] for r in rs],
               "paired": rs[0]["paired"], "unpaired": rs[0]["unpaired"]}
        for key, *_ in TABLE_METRICS:
            vals = [r[key] for r in rs if key in r]
            if vals:
                agg[key] = (float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0)
        if "ddim_steps" in rs[0]:
            agg["ddim_steps"] = rs[0]["ddim_steps"]
        out.append(agg)
    return out


def markdown_table(agg: list[dict], main_only: bool = False, budget: Budget | None = None) -> str:
    if main_only and budget is not None:
        agg = [a for a in agg if a.get("ddim_steps") in (None, budget.ddim_few, budget.ddim_many)]
    cols = [m for m in TABLE_METRICS if any(m[0] in a for a in agg)]
    head = "| setting | method | pairs | unpaired in split | " + " | ".join(c[1] for c in cols) + " |"
    sep = "|---|---|---:|---:|" + "---:|" * len(cols)
    lines = [head, sep]
    for a in agg:
        cells = []
        for key, _, scale, fmt in cols:
            if a["method"].startswith("real_data") and key in ("samples_per_second", "fit_seconds"):
                cells.append("")  # not a sampler: no speed, no fit
            elif key in a:
                m, s = a[key]
                cells.append(f"{fmt.format(m * scale)} ± {fmt.format(s * scale)}")
            else:
                cells.append("")
        lines.append(f"| {a['setting']} | {a['method']} | {a['paired']} | {a['unpaired']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _figures(out: str, agg: list[dict], grids_by_setting: dict, image_shape, budget: Budget) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    h, w = image_shape

    def save(fig, name: str, title: str | None = None) -> None:
        if title:
            fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        written.append(os.path.join(out, name))
        fig.savefig(written[-1], dpi=130)
        plt.close(fig)
    for setting, grids in grids_by_setting.items():
        keep = {k: v for k, v in grids.items() if "[" not in k or k in (f"latent_diffusion[{budget.ddim_few}]",
                                                                           f"latent_diffusion[{budget.ddim_many}]")}
        fig, axes = plt.subplots(1, len(keep), figsize=(2.6 * len(keep), 3.4), squeeze=False)
        for ax, (name, g) in zip(axes[0], keep.items()):
            r, c = g.shape[:2]
            canvas = np.ones((r * (h + 1) + 1, c * (w + 1) + 1))
            for i in range(r):
                for j in range(c):
                    canvas[1 + i * (h + 1): 1 + i * (h + 1) + h, 1 + j * (w + 1): 1 + j * (w + 1) + w] = g[i, j].reshape(h, w)
            ax.imshow(canvas, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(name.replace("latent_diffusion", "latent diff.").replace("[", " (").replace("]", " steps)"),
                         fontsize=8)
            ax.axis("off")
        save(fig, f"samples_{_slug(setting)}.png", f"{setting} (first seed)")

    settings = list(dict.fromkeys(a["setting"] for a in agg))
    diff = [a for a in agg if "ddim_steps" in a]
    if diff:
        for setting in settings:
            d = [a for a in diff if a["setting"] == setting]
            ls = [a for a in agg if a["setting"] == setting and a["method"] == "lsdm"]
            if not d:
                continue
            steps = [a["ddim_steps"] for a in d]
            fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
            for ax, key, name in zip(axes, ("classifier_fd", "conditional_accuracy", "samples_per_second"),
                                     ("classifier-feature FD (not Inception-FID) ↓", "conditional accuracy ↑",
                                      "samples per second ↑")):
                m = np.array([a[key][0] for a in d])
                s = np.array([a[key][1] for a in d])
                ax.errorbar(steps, m, yerr=s, marker="o", label="latent diffusion (DDIM)")
                if ls:
                    ax.errorbar([1], [ls[0][key][0]], yerr=[ls[0][key][1]], marker="*", ms=12, color="C3", ls="none",
                                label="LSDM (one step)")
                ax.set(xscale="log", xlabel="sampling steps", title=name)
                if key == "samples_per_second":
                    ax.set_yscale("log")
            axes[0].legend(fontsize=8)
            save(fig, f"steps_{_slug(setting)}.png",
                 f"{setting}: quality and speed against sampling steps (mean ± std over seeds)")

    if len(settings) > 1:  # a curve over settings (m or n)
        methods = list(dict.fromkeys(a["method"] for a in agg if "ddim_steps" not in a))
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
        for key, ax, name in (("classifier_fd", axes[0], "classifier-feature FD ↓"),
                              ("conditional_accuracy", axes[1], "conditional accuracy ↑")):
            for meth in methods:
                pts = [(i, a[key]) for i, st in enumerate(settings) for a in agg
                       if a["setting"] == st and a["method"] == meth and key in a]
                if pts:
                    ax.errorbar([p[0] for p in pts], [p[1][0] for p in pts], yerr=[p[1][1] for p in pts], marker="o",
                                label=meth, capsize=3)
            ax.set_xticks(range(len(settings)), settings, fontsize=8)
            ax.set_title(name, fontsize=9)
        axes[0].legend(fontsize=8)
        save(fig, "curve.png")
    return written


def _slug(s: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in s).strip("_")


def _machine() -> str:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((l.split(":", 1)[1].strip() for l in fh if l.startswith("model name")), "")
    except OSError:
        pass
    return (f"{platform.machine()} {cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}")


def run_experiment(name: str, *, data: str = "digits", seeds=(0, 1, 2), out: str | None = None, quick: bool = False,
                   backend: str = "auto", budget: Budget | None = None, cache_dir: str | None = None,
                   methods: tuple | None = None, command: str | None = None, resume: bool = False,
                   settings: tuple | None = None,
                   log=print) -> dict:
    """Run experiment `name` for every seed; write results.json, table.md, README.md and figures to `out`."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose from {sorted(EXPERIMENTS)}")
    exp = EXPERIMENTS[name]
    labels = [st.label for st in exp["settings"]]
    if settings is not None and set(settings) - set(labels):
        raise ValueError(f"unknown setting(s) {sorted(set(settings) - set(labels))} for {name}; choose from {labels}")
    if budget is None:
        budget = QUICK if quick else (DIGITS if data in ("digits", "sklearn-digits") else Budget())
    out = out or os.path.join("results", "experiments", name)
    os.makedirs(out, exist_ok=True)
    t_start = time.perf_counter()
    train = load_dataset(data, "train")
    log(f"experiment {name}: {exp['about']}; data {train.name}; seeds {list(seeds)}; budget {asdict(budget)}")
    (feat, t_feat) = _timed(lambda: M.feature_net(train.images, train.labels, train.num_classes,
                                                  steps=budget.feature_steps, cache_dir=cache_dir))
    (judge, t_judge) = _timed(lambda: M.judge_net(train.images, train.labels, train.num_classes,
                                                  steps=budget.judge_steps, cache_dir=cache_dir))
    test = load_dataset(data, "test")
    eval_nets = {"feature_net_test_accuracy": M.conditional_accuracy(feat, test.images, test.labels),
                 "judge_test_accuracy": M.conditional_accuracy(judge, test.images, test.labels),
                 "feature_net_seconds": t_feat, "judge_seconds": t_judge}
    log(f"  eval nets: feature CNN test acc {eval_nets['feature_net_test_accuracy']:.4f}, "
        f"judge MLP test acc {eval_nets['judge_test_accuracy']:.4f}")
    rows, done, prior_seconds, prior_commands = [], set(), 0.0, []
    res_path = os.path.join(out, "results.json")
    if resume and os.path.exists(res_path):
        with open(res_path) as fh:
            old = json.load(fh)
        if old.get("budget") not in (None, json.loads(json.dumps(asdict(budget)))):
            raise ValueError(f"{res_path}: written with a different budget; use another --out or drop --resume")
        rows = old.get("rows", [])
        done = {(r["setting"], r["seed"]) for r in rows}
        prior_seconds = float(old.get("cell_seconds", 0.0))
        prior_commands = old.get("commands", [old["command"]] if "command" in old else [])
        log(f"  resuming: {len(done)} (setting, seed) cells already in {res_path}")
    command = command or "lsdm_fast.experiments.run_experiment(" + repr(name) + ")"
    commands = prior_commands + ([command] if command not in prior_commands else [])
    ctx = dict(name=name, exp=exp, out=out, budget=budget, quick=quick, eval_nets=eval_nets, commands=commands,
               data=train.name, shape=train.image_shape)
    cell_seconds = prior_seconds
    summary = None
    for setting in exp["settings"]:
        if settings is not None and setting.label not in settings:
            continue  # run only the chosen settings (rows of others already in results.json are kept)
        if methods is not None:
            setting = replace(setting, methods=tuple(m for m in methods))
        for seed in seeds:
            label = _scale_setting(setting, train.labels, quick).label
            if (label, seed) in done:
                continue
            t_cell = time.perf_counter()
            r, grids, _ = _run_cell(setting, seed, data, budget, quick, backend, (feat, judge), log)
            cell_seconds += time.perf_counter() - t_cell
            rows += r
            np.savez_compressed(os.path.join(out, f"grids_{_slug(label)}_seed{seed}.npz"),
                                **{k: np.round(np.clip(v, 0, 1) * 255).astype(np.uint8) for k, v in grids.items()})
            summary = _write_report(ctx, rows, cell_seconds)  # after every cell: partial results survive a kill
    if summary is None:
        summary = _write_report(ctx, rows, cell_seconds)
    log(f"wrote {out}/README.md, table.md, results.json and {len(summary['figures'])} figures "
        f"({(time.perf_counter() - t_start) / 60:.1f} min this invocation)")
    return summary


def _load_grids(out: str, rows: list[dict]) -> dict:
    """The first seed's sample grids of every setting, from the grids_*.npz files."""
    grids = {}
    for r in rows:
        if r["setting"] in grids:
            continue
        path = os.path.join(out, f"grids_{_slug(r['setting'])}_seed{r['seed']}.npz")
        if os.path.exists(path):
            with np.load(path) as z:
                grids[r["setting"]] = {k: z[k].astype(np.float32) / (255 if z[k].dtype == np.uint8 else 1)
                                       for k in z.files}
    return grids


def _write_report(ctx: dict, rows: list[dict], cell_seconds: float) -> dict:
    out, budget, eval_nets = ctx["out"], ctx["budget"], ctx["eval_nets"]
    order = [st.label for st in ctx["exp"]["settings"]]  # table and curve in the experiment's order, however run
    rows = sorted(rows, key=lambda r: order.index(r["setting"]) if r["setting"] in order else len(order))
    agg = aggregate(rows)
    figs = _figures(out, agg, _load_grids(out, rows), ctx["shape"], budget)
    wall = cell_seconds + eval_nets["feature_net_seconds"] + eval_nets["judge_seconds"]
    seeds = sorted({r["seed"] for r in rows})
    table = markdown_table(agg, main_only=True, budget=budget)
    steps_table = markdown_table([a for a in agg if "ddim_steps" in a]) if any("ddim_steps" in a for a in agg) else ""
    report = [f"# Experiment `{ctx['name']}`", "", ctx["exp"]["about"] + ".", "",
              ("Command" if len(ctx["commands"]) == 1 else "Commands (in order; --resume reuses finished cells)")
              + ": " + "; ".join(f"`{c}`" for c in ctx["commands"]) + "  ", f"Machine: {_machine()}  ",
              f"Wall time: {wall / 60:.1f} min (all cells, plus training the evaluation nets when not cached) for "
              f"seeds {seeds}{' (QUICK budget: a smoke run, numbers meaningless)' if ctx['quick'] else ''}",
              "", f"Budget: {json.dumps(asdict(budget))}", "",
              f"Evaluation nets: {M.FD_NOTE}; its test accuracy {eval_nets['feature_net_test_accuracy']:.4f}. "
              f"Conditional accuracy is judged by a separately trained MLP (test accuracy "
              f"{eval_nets['judge_test_accuracy']:.4f}). Precision/recall/density/coverage: k-NN (k=5) in the "
              "feature CNN's space against 2000 real test images. Latent W1: exact W1 (POT) in the seed's LSDM "
              "latent space (its all-data encoder, standardised), per class between generated and real test images "
              f"({budget.w1_per_class} each), averaged over classes. train-NN ratio: median feature distance from "
              "a sample to its nearest paired training image over the same median for real test images (~1: as "
              "novel as fresh data; near 0: copies of the paired images, which a low FD does not reveal). "
              "samples/s: one batch on this CPU, so it "
              "moves with the machine's load. Values: mean ± std over seeds.", "",
              table, ""]
    if steps_table:
        report += ["Latent diffusion against DDIM sampling steps (same denoiser):", "", steps_table, ""]
    report += ["Figures: " + ", ".join(os.path.basename(f) for f in figs), ""]
    with open(os.path.join(out, "README.md"), "w") as fh:
        fh.write("\n".join(report))
    with open(os.path.join(out, "table.md"), "w") as fh:
        fh.write(table + "\n" + ("\n" + steps_table + "\n" if steps_table else ""))
    summary = {"name": ctx["name"], "data": ctx["data"], "seeds": seeds, "quick": ctx["quick"],
               "budget": asdict(budget), "commands": ctx["commands"], "machine": _machine(), "wall_seconds": wall,
               "cell_seconds": cell_seconds, "eval_nets": eval_nets, "aggregate": agg, "rows": rows,
               "figures": [os.path.basename(f) for f in figs]}
    atomic_write_json(os.path.join(out, "results.json"), summary)
    return summary
