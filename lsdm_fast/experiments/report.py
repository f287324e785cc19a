"""What an experiment writes: mean ± std over seeds, the markdown tables, the figures, README.md and
results.json."""
from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict

import numpy as np
import torch

from .. import metrics as M
from ..io import atomic_write_bytes, atomic_write_json
from ..viz import save_figure
from ..config import LATENT_START, MATCH_STEPS, MATCH_STEPS_WIDTH
from .registry import Budget

TABLE_METRICS = [("conditional_accuracy", "cond. acc. ↑", 100, "{:.1f}"), ("classifier_fd", "clf-FD ↓", 1, "{:.2f}"),
                 ("inception_fid", "Inception-FID ↓", 1, "{:.2f}"),
                 ("reconstruction_fd", "recon-FD ↓", 1, "{:.2f}"),
                 ("precision", "prec. ↑", 1, "{:.3f}"), ("recall", "rec. ↑", 1, "{:.3f}"),
                 ("density", "dens.", 1, "{:.3f}"), ("coverage", "cov. ↑", 1, "{:.3f}"),
                 ("train_nn_ratio", "train-NN ratio", 1, "{:.2f}"),
                 ("latent_w1", "latent W1 ↓", 1, "{:.3f}"), ("psnr_db", "PSNR ↑", 1, "{:.2f}"),
                 ("ssim", "SSIM ↑", 1, "{:.3f}"), ("consistency_rmse", "consist. ↓", 1, "{:.4f}"),
                 ("samples_per_second", "samples/s", 1, "{:.0f}"), ("fit_seconds", "fit s", 1, "{:.0f}"),
                 ("latent_dim", "latent d", 1, "{:.0f}"), ("stage1_steps", "stage-1 steps", 1, "{:.0f}"),
                 ("stage2_steps", "stage-2 steps", 1, "{:.0f}")]


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


def figures(out: str, agg: list[dict], grids_by_setting: dict, image_shape, budget: Budget) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    h, w = image_shape

    def save(fig, name: str, title: str | None = None) -> None:
        if title:
            fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        written.append(save_figure(fig, os.path.join(out, name), dpi=130))
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
            ax.imshow(canvas, cmap="gray", vmin=0, vmax=1, interpolation="nearest")  # 0 black, 1 white, as in the data
            ax.set_title(name.replace("latent_diffusion", "latent diff.").replace("[", " (").replace("]", " steps)"),
                         fontsize=8)
            ax.axis("off")
        save(fig, f"samples_{slug(setting)}.png", f"{setting} (first seed)")

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
            save(fig, f"steps_{slug(setting)}.png",
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


def slug(s: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in s).strip("_")


def machine() -> str:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((l.split(":", 1)[1].strip() for l in fh if l.startswith("model name")), "")
    except OSError:
        pass
    return (f"{platform.machine()} {cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}")


def load_grids(out: str, rows: list[dict]) -> dict:
    """The first seed's sample grids of every setting, from the grids_*.npz files."""
    grids = {}
    for r in rows:
        if r["setting"] in grids:
            continue
        path = os.path.join(out, f"grids_{slug(r['setting'])}_seed{r['seed']}.npz")
        if os.path.exists(path):
            with np.load(path) as z:
                grids[r["setting"]] = {k: z[k].astype(np.float32) / (255 if z[k].dtype == np.uint8 else 1)
                                       for k in z.files}
    return grids


def budget_note(b: Budget) -> str:
    """What 'the same budget' means in this experiment's table, in words."""
    if b.ae_stop == "plateau":
        stage1 = (f"Stage 1: every method's autoencoder trains to convergence (held-out reconstruction loss on a "
                  f"plateau, learning rate dropped 5x twice, stopped at the third plateau; cap {b.ae_steps} steps); "
                  "the 'stage-1 steps' column says how many it took. Equal compute: lsdm_paired_only_equal_steps "
                  "trains the paired-only autoencoder for exactly as many steps as LSDM's in the same cell.")
    else:
        stage1 = f"Stage 1: every method's autoencoder trains exactly {b.ae_steps} steps (equal compute)."
    if b.latent_dim is None:
        stage1 += (f" The latent size is fitted per method and cell (AutoencoderConfig.latent_dim None): from "
                   f"{LATENT_START}, "
                   f"doubled while the held-out images keep more than {b.grow_latent:g} of their variance unexplained"
                   + (f" or, once that has grown it, while the last doubling divided the miss by at least "
                      f"{b.grow_gain:g}" if b.grow_gain > 0 else "")
                   + f", up to {b.latent_max}; the 'latent d' column says which.")
    return (stage1 + f" Stage 2 (LSDM, paired-only LSDM), pixel matching and the latent-diffusion denoiser: "
            f"{_match_steps(b)} generator steps / {b.diffusion_steps} denoiser steps, batch {b.batch_size}; latent "
            "diffusion uses LSDM's autoencoder from the same cell.")


def _match_steps(b) -> str:
    if b.match_steps is not None:
        return str(b.match_steps)
    return (f"{MATCH_STEPS} (stage 2: {MATCH_STEPS} per {MATCH_STEPS_WIDTH} latent dimensions, at least once, at most "
            f"{b.match_steps_max}; LSDM with pseudo-conditions, float conditions only, twice that within the same cap; "
            "MatchingConfig.generator_steps; the stage2_steps field of results.json says which)")


def fid_note(ctx: dict, eval_nets: dict) -> str:
    """What the Inception-FID column is and what it cost in this run."""
    cost = ctx.get("inception_cost", {"seconds": 0.0, "images": 0})
    per_k = f"{1000 * cost['seconds'] / cost['images']:.0f} s per 1,000 images" if cost["images"] else "no samples yet"
    per_row = (f"{ctx['budget'].eval_per_class} samples per class" if ctx["exp"].settings[0].task == "class"
               else f"{ctx['budget'].eval_sr} samples")
    t_ref = eval_nets.get("inception_reference_seconds", 0.0)
    ref_cost = (f"plus {t_ref:.0f} s for the test images' statistics (cached for later runs)" if t_ref >= 1 else
                "the test images' statistics were read from the cache (computed once per data set)")
    return (f"{M.FID_NOTE}. Here each row's {per_row} against all "
            f"{eval_nets.get('inception_reference_images', '?')} test images (weights SHA-1 "
            f"{eval_nets.get('inception_sha1', '?')}); latent diffusion only at {ctx['budget'].ddim_few} and "
            f"{ctx['budget'].ddim_many} DDIM steps. Cost: {cost['seconds'] / 60:.1f} min for {cost['images']} "
            f"samples ({per_k}, {torch.get_num_threads()} torch threads); " + ref_cost + ".")


def write_report(ctx: dict, rows: list[dict], cell_seconds: float) -> dict:
    out, budget, eval_nets = ctx["out"], ctx["budget"], ctx["eval_nets"]
    order = [st.label for st in ctx["exp"].settings]  # table and curve in the experiment's order, however run
    rows = sorted(rows, key=lambda r: order.index(r["setting"]) if r["setting"] in order else len(order))
    agg = aggregate(rows)
    figs = figures(out, agg, load_grids(out, rows), ctx["shape"], budget)
    wall = cell_seconds + eval_nets["feature_net_seconds"] + eval_nets["judge_seconds"]
    seeds = sorted({r["seed"] for r in rows})
    table = markdown_table(agg, main_only=True, budget=budget)
    steps_table = markdown_table([a for a in agg if "ddim_steps" in a]) if any("ddim_steps" in a for a in agg) else ""
    report = [f"# Experiment `{ctx['name']}`", "", ctx["exp"].about + ".", "",
              ("Command" if len(ctx["commands"]) == 1 else "Commands (in order; --resume reuses finished cells)")
              + ": " + "; ".join(f"`{c}`" for c in ctx["commands"]) + "  ", f"Machine: {machine()}  ",
              f"Wall time: {wall / 60:.1f} min (all cells, plus training the evaluation nets when not cached) for "
              f"seeds {seeds}{' (QUICK budget: a smoke run, numbers meaningless)' if ctx['quick'] else ''}",
              "", f"Budget: {json.dumps(asdict(budget))}", "", budget_note(budget), "",
              f"Evaluation nets: {M.FD_NOTE}; its test accuracy {eval_nets['feature_net_test_accuracy']:.4f}. "
              f"Conditional accuracy is judged by a separately trained MLP (test accuracy "
              f"{eval_nets['judge_test_accuracy']:.4f}). Precision/recall/density/coverage: k-NN (k=5) in the "
              "feature CNN's space against 2000 real test images. Latent W1: exact W1 (POT) in the seed's LSDM "
              "latent space (its all-data encoder, standardised), per class between generated and real test images "
              f"({budget.w1_per_class} each), averaged over classes. train-NN ratio: median feature distance from "
              "a sample to its nearest paired training image over the same median for real test images (~1: as "
              "novel as fresh data; near 0: copies of the paired images, which a low FD does not reveal). "
              "recon-FD: the same FD for real test images passed through the method's own encoder and decoder "
              "(as many as samples): the floor its stage 1 puts under its samples (latent diffusion decodes "
              "with LSDM's). samples/s: one batch on this CPU, so it "
              "moves with the machine's load. Values: mean ± std over seeds.", ""]
    if ctx.get("fid") == "inception":
        report += [fid_note(ctx, eval_nets), ""]
    report += [table, ""]
    if steps_table:
        report += ["Latent diffusion against DDIM sampling steps (same denoiser):", "", steps_table, ""]
    report += ["Figures: " + ", ".join(os.path.basename(f) for f in figs), ""]
    atomic_write_bytes(os.path.join(out, "README.md"), "\n".join(report).encode())
    atomic_write_bytes(os.path.join(out, "table.md"),
                       (table + "\n" + ("\n" + steps_table + "\n" if steps_table else "")).encode())
    summary = {"name": ctx["name"], "data": ctx["data"], "seeds": seeds, "quick": ctx["quick"],
               "budget": asdict(budget), "commands": ctx["commands"], "machine": machine(), "wall_seconds": wall,
               "cell_seconds": cell_seconds, "eval_nets": eval_nets, "fid": ctx.get("fid", "none"),
               "inception_cost": ctx.get("inception_cost", {"seconds": 0.0, "images": 0}), "aggregate": agg, "rows": rows,
               "figures": [os.path.basename(f) for f in figs]}
    atomic_write_json(os.path.join(out, "results.json"), summary)
    return summary
