"""Running an experiment: every (setting, seed) cell fits LSDM and the baselines on the same split with
the same budgets, scores them (evaluate.py), and rewrites the report after each cell (report.py)."""
from __future__ import annotations

import io
import json
import os
import time
from dataclasses import asdict, replace

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import metrics as M
from ..api import LSDM
from ..baselines import LatentDiffusion, PixelMatching, fit_paired_only, one_hot
from ..data import load_dataset, make_conditions, split_paired_unpaired
from ..io import atomic_write_bytes
from ..runlock import run_lock
from .evaluate import Evaluator, timed
from .registry import BUDGET_IMPLIED_BY_ABSENCE, DIGITS, EXPERIMENTS, QUICK, Budget, Setting, lsdm_config, scale_setting
from .report import slug, write_report


def _grid(y: np.ndarray, labels: np.ndarray, task: str, cols: int = 8) -> np.ndarray:
    """Rows of the sample picture: per class, `cols` samples (class task); or the first inputs'
    samples, 8 to a row (superres)."""
    if task == "class":
        return np.stack([y[labels == c][:cols] for c in np.unique(labels)])
    c = max(1, min(cols, len(y) // 8))
    return y[:8 * c].reshape(-1, c, y.shape[1])


def _fit_record(model) -> dict:
    """A fitted LSDM's latent size (fitted or given) and steps per stage, as its row records them."""
    return {"latent_dim": model.config.autoencoder.latent_dim, "stage1_steps": model.history["stage1_steps"],
            "stage2_steps": model.history["stage2_steps"]}


def _run_cell(setting: Setting, seed: int, data: str, budget: Budget, quick: bool, backend: str, nets, log,
              progress: bool = False, inception=None):
    # the train/test split is the one the evaluation nets were trained on, whatever the seed (the seed varies
    # the pairs, the initialisation and every draw): otherwise the sklearn digits' test images of seeds > 0
    # would be in the nets' training set
    train, test = load_dataset(data, "train"), load_dataset(data, "test")
    s = scale_setting(setting, train.labels, quick)
    split = split_paired_unpaired(train.labels, n_per_class=s.n_per_class, n_pairs=s.n_pairs, m_unpaired=s.m_unpaired,
                                  seed=seed, num_classes=train.num_classes)
    feat, judge = nets
    ev = Evaluator(s.task, train, test, feat, judge, budget, s.factor, seed, split.paired, inception=inception)
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

    cfg = lsdm_config(budget, seed, backend)
    base = {"setting": s.label, "seed": seed, "paired": int(len(split.paired)), "unpaired": int(len(split.unpaired))}
    rows, grids = [], {}

    def record(method, fit_seconds, res, y, **extra):
        row = {**base, "method": method, "fit_seconds": fit_seconds, **res, **extra}
        rows.append(row)
        grids[method if "ddim_steps" not in extra else f"{method}[{extra['ddim_steps']}]"] = _grid(y, ev.labels, s.task)
        log(f"  [{s.label} seed {seed}] {method}{'' if 'ddim_steps' not in extra else ' ' + str(extra['ddim_steps']) + ' steps'}: "
            f"acc {res['conditional_accuracy']:.3f}  FD {res['classifier_fd']:.2f}  "
            + (f"Inception-FID {res['inception_fid']:.2f}  " if "inception_fid" in res else "") + f"fit {fit_seconds:.0f}s")

    if s.task == "superres":
        grids["ground truth"] = _grid(ev.truth.reshape(len(ev.truth), -1), ev.labels, s.task)
        lowres = np.kron(ev.cond.numpy().reshape(-1, *(d // s.factor for d in ev.shape)), np.ones((s.factor, s.factor)))
        grids["low-res input"] = _grid(lowres.reshape(len(lowres), -1), ev.labels, s.task)
    if s.task == "class":  # reference row: real training images, as many per class as generated
        pick = np.random.default_rng(seed + 99)
        real = np.concatenate([pick.choice(np.flatnonzero(train.labels == c), (ev.labels == c).sum(), replace=False)
                               for c in np.unique(ev.labels)])
        real_y = torch.from_numpy(train.images[real].reshape(len(real), -1))
    ref, dt = timed(lambda: LSDM(cfg).fit(px, py, uy, num_classes=train.num_classes, progress=progress))
    if "lsdm" in s.methods:
        res, y = ev(lsdm_sampler(ref), ref, ref)
        record("lsdm", dt, res, y, **_fit_record(ref))
    if s.task == "class":
        res, y = ev(lambda c: real_y, ref)
        record("real_data (reference)", 0.0, res, y)
    if "lsdm_all_labels" in s.methods:
        allx = torch.from_numpy(train.labels) if s.task == "class" else \
            torch.from_numpy(make_conditions(train, "superres", s.factor))
        model, dt = timed(lambda: LSDM(cfg).fit(allx, torch.from_numpy(train.images), None,
                                                   num_classes=train.num_classes, progress=progress))
        res, y = ev(lsdm_sampler(model), ref, model)
        record("lsdm_all_labels", dt, res, y, **_fit_record(model),
               paired=len(train.images), unpaired=0)  # every training image is a pair here
    if "lsdm_paired_only" in s.methods:
        model, dt = timed(lambda: fit_paired_only(cfg, px, py, num_classes=train.num_classes, progress=progress))
        res, y = ev(lsdm_sampler(model), ref, model)
        record("lsdm_paired_only", dt, res, y, **_fit_record(model))
    if "lsdm_paired_only_equal_steps" in s.methods:  # equal compute: LSDM's stage-1 step count, no early stop
        n1 = ref.history["stage1_steps"]
        equal = replace(cfg, autoencoder=replace(cfg.autoencoder, stop="steps", steps=n1, epochs=0.0))
        model, dt = timed(lambda: fit_paired_only(equal, px, py, num_classes=train.num_classes, progress=progress))
        res, y = ev(lsdm_sampler(model), ref, model)
        record("lsdm_paired_only_equal_steps", dt, res, y, **_fit_record(model))
    if "pixel_matching" in s.methods:
        pm, dt = timed(lambda: PixelMatching(cfg.matching, seed=seed, generator_hidden=budget.match_hidden,
                                             critic_hidden=budget.match_hidden).fit(cond, py.reshape(len(py), -1),
                                                                                         progress=progress))
        res, y = ev(lambda c: pm.sample(c, seed=seed + 1000), ref)
        record("pixel_matching", dt, res, y, stage2_steps=pm.history["stage2_steps"])
    if "latent_diffusion" in s.methods:
        ld, dt = timed(lambda: LatentDiffusion(ref, steps=budget.diffusion_steps, batch_size=budget.batch_size,
                                                seed=seed).fit(cond, py, progress=progress))
        for n_steps in budget.ddim_steps:  # Inception-FID (slow) for the main table's step counts only
            res, y = ev(lambda c: ld.sample(c, n_steps, seed=seed + 1000), ref, ref,
                        inception_fid=n_steps in (budget.ddim_few, budget.ddim_many))
            record("latent_diffusion", dt, res, y, ddim_steps=n_steps)
    return rows, grids, train.image_shape, (ev.inception_seconds, ev.inception_images)


def run_experiment(name: str, *, data: str = "digits", seeds=(0, 1, 2), out: str | None = None, quick: bool = False,
                   backend: str = "auto", budget: Budget | None = None, cache_dir: str | None = None,
                   methods: tuple | None = None, command: str | None = None, resume: bool = False,
                   settings: tuple | None = None, fid: str = "none", progress: bool = False,
                   log=print) -> dict:
    """Run experiment `name` for every seed; write results.json, table.md, README.md and figures to `out` (held
    by one writer: lsdm_fast.runlock). progress: a bar over the (setting, seed) cells with an ETA, and one per fit
    (stage 1's says its stop rule's state). fid="inception" adds the Inception-FID of every row's samples against
    the test images (slow on a CPU; needs the weights: lsdm_fast.metrics.inception_weights_path)."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose from {sorted(EXPERIMENTS)}")
    exp = EXPERIMENTS[name]
    labels = [st.label for st in exp.settings]
    if settings is not None and set(settings) - set(labels):
        raise ValueError(f"unknown setting(s) {sorted(set(settings) - set(labels))} for {name}; choose from {labels}")
    if fid not in ("none", "inception"):
        raise ValueError(f"fid must be 'none' or 'inception', got {fid!r}")
    inception_net = M.inception_net() if fid == "inception" else None  # missing weights: fail before any training
    if budget is None:
        budget = QUICK if quick else (DIGITS if data in ("digits", "sklearn-digits") else Budget())
    out = out or os.path.join("results", "experiments", name)
    with run_lock(out, "lsdm experiment"):
        return _run_experiment(name, exp, data, seeds, out, quick, backend, budget, cache_dir, methods, command,
                               resume, settings, fid, inception_net, progress, log)


def _run_experiment(name, exp, data, seeds, out, quick, backend, budget, cache_dir, methods, command, resume,
                    settings, fid, inception_net, progress, log) -> dict:
    t_start = time.perf_counter()
    train = load_dataset(data, "train")
    if train.labels is None or len(train.image_shape) != 2:
        raise ValueError(f"{train.name}: the experiments need labelled single-channel images (their evaluation nets "
                         "are a grey-image CNN and a label judge); this data set has "
                         + ("super-resolution pairs without labels" if train.labels is None
                            else f"images of shape {train.image_shape}"))
    log(f"experiment {name}: {exp.about}; data {train.name}; seeds {list(seeds)}; budget {asdict(budget)}")
    (feat, t_feat) = timed(lambda: M.feature_net(train.images, train.labels, train.num_classes,
                                                  steps=budget.feature_steps, cache_dir=cache_dir))
    (judge, t_judge) = timed(lambda: M.judge_net(train.images, train.labels, train.num_classes,
                                                  steps=budget.judge_steps, cache_dir=cache_dir))
    test = load_dataset(data, "test")
    eval_nets = {"feature_net_test_accuracy": M.conditional_accuracy(feat, test.images, test.labels),
                 "judge_test_accuracy": M.conditional_accuracy(judge, test.images, test.labels),
                 "feature_net_seconds": t_feat, "judge_seconds": t_judge}
    log(f"  eval nets: feature CNN test acc {eval_nets['feature_net_test_accuracy']:.4f}, "
        f"judge MLP test acc {eval_nets['judge_test_accuracy']:.4f}")
    rows, done, prior_seconds, prior_commands = [], set(), 0.0, []
    prior_fid_cost = {"seconds": 0.0, "images": 0}  # Inception forward passes over the samples (all cells)
    res_path = os.path.join(out, "results.json")
    if resume and os.path.exists(res_path):
        with open(res_path) as fh:
            old = json.load(fh)
        # a field added to Budget since: the value its absence meant (the run was made without it)
        old_budget = None if old.get("budget") is None else {**BUDGET_IMPLIED_BY_ABSENCE, **old["budget"]}
        now = json.loads(json.dumps(asdict(budget)))
        if all(s.task == "class" for s in exp.settings):  # pseudo-conditions never apply: auto and off are alike
            for b in (old_budget, now):
                if b is not None and b.get("pseudo_condition") is None:
                    b["pseudo_condition"] = 0.0
        if old_budget not in (None, now):
            differ = ", ".join(f"{k} {old_budget.get(k)!r} there, {now.get(k)!r} here"
                               for k in sorted(set(old_budget) | set(now)) if old_budget.get(k) != now.get(k))
            raise ValueError(f"{res_path}: written with a different budget ({differ}); give the options that set it "
                             "as it was there (e.g. --steps), use another --out, or drop --resume")
        if old.get("fid", "none") != fid:
            raise ValueError(f"{res_path}: written with --fid {old.get('fid', 'none')}, this run has --fid {fid}; "
                             "use another --out or the same --fid")
        rows = old.get("rows", [])
        done = {(r["setting"], r["seed"]) for r in rows}
        prior_seconds = float(old.get("cell_seconds", 0.0))
        prior_fid_cost = dict(old.get("inception_cost", prior_fid_cost))
        prior_commands = old.get("commands", [old["command"]] if "command" in old else [])
        log(f"  resuming: {len(done)} (setting, seed) cells already in {res_path}")
    inception = None
    if inception_net is not None:
        (ref_stats, t_ref) = timed(lambda: M.inception_stats(inception_net, test.images, test.image_shape,
                                                             cache_dir=cache_dir))
        inception = (inception_net, ref_stats)
        eval_nets.update(inception_reference_images=len(test), inception_reference_seconds=t_ref,
                         inception_sha1=inception_net.sha1)
        log(f"  Inception reference statistics of {len(test)} test images: {t_ref:.0f}s (cached after the first run)")
    command = command or "lsdm_fast.experiments.run_experiment(" + repr(name) + ")"
    commands = prior_commands + ([command] if command not in prior_commands else [])
    ctx = dict(name=name, exp=exp, out=out, budget=budget, quick=quick, eval_nets=eval_nets, commands=commands,
               data=train.name, shape=train.image_shape, fid=fid)
    cell_seconds = prior_seconds
    ctx["inception_cost"] = prior_fid_cost
    summary = None
    cells = []  # (setting, seed) to run: only the chosen settings (rows of others in results.json are kept)
    for setting in exp.settings:
        if settings is None or setting.label in settings:
            setting = setting if methods is None else replace(setting, methods=tuple(methods))
            label = scale_setting(setting, train.labels, quick).label
            cells += [(setting, label, seed) for seed in seeds if (label, seed) not in done]
    # a bar over the cells (ETA from the cells done), the fits' own bars under it; log lines printed above them
    bar = tqdm(total=len(cells), desc=f"experiment {name}", unit="cell", disable=not progress, position=0)
    cell_log = (lambda *a: bar.write(" ".join(map(str, a)))) if progress and log is print else log
    try:
        for setting, label, seed in cells:
            bar.set_postfix_str(f"{label} seed {seed}: {', '.join(setting.methods)}")
            t_cell = time.perf_counter()
            r, grids, _, (fid_s, fid_n) = _run_cell(setting, seed, data, budget, quick, backend, (feat, judge),
                                                     cell_log, progress, inception)
            cell_seconds += time.perf_counter() - t_cell
            bar.update(1)
            ctx["inception_cost"] = {"seconds": ctx["inception_cost"]["seconds"] + fid_s,
                                     "images": ctx["inception_cost"]["images"] + fid_n}
            rows += r
            buf = io.BytesIO()
            np.savez_compressed(buf, **{k: np.round(np.clip(v, 0, 1) * 255).astype(np.uint8) for k, v in grids.items()})
            atomic_write_bytes(os.path.join(out, f"grids_{slug(label)}_seed{seed}.npz"), buf.getvalue())
            summary = write_report(ctx, rows, cell_seconds)  # after every cell: partial results survive a kill
    finally:
        bar.close()
    if summary is None:
        summary = write_report(ctx, rows, cell_seconds)
    log(f"wrote {out}/README.md, table.md, results.json and {len(summary['figures'])} figures "
        f"({(time.perf_counter() - t_start) / 60:.1f} min this invocation)")
    return summary
