"""One run end to end: load, split, fit, evaluate, write pictures and metrics. The CLI's
`demo` and `train` are this with different defaults."""
from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .api import LSDM
from .classifier import accuracy, train_classifier
from .config import LSDMConfig
from .data import TASKS, DataError, Dataset, average_pool, load_dataset, make_conditions, split_paired_unpaired
from .io import atomic_write_json, check_writable_dir
from .viz import save_grid, save_loss_plot


@dataclass
class RunSpec:
    data: str = "digits"  # "digits" (embedded), or a file/folder in any format of lsdm_fast.data
    format: str | None = None  # None: detected from `data`
    rescale: bool = False  # float images outside [0, 1]: map the training split's range onto [0, 1]
    task: str = "class"  # "class" or "superres"
    factor: int = 4  # super-resolution pooling factor (data without their own low-resolution images)
    n_per_class: int | None = 20
    n_pairs: int | None = None
    m_unpaired: int | None = None  # None: every remaining training image
    out: str = "runs/demo"
    grid_columns: int = 10
    eval_per_class: int = 200  # generated samples per class for the accuracy
    classifier_steps: int = 2000
    progress: bool = True
    evaluate: bool = True  # False: train and save the model only
    overwrite: bool = False  # replace a finished run already in `out` (refused otherwise)
    config: LSDMConfig = field(default_factory=LSDMConfig)


RUN_OUTPUTS = ("model", "metrics.json", "samples.png", "losses.png")


def prepare_output_folder(out: str, overwrite: bool) -> None:
    """Refuse a folder that holds a finished run (unless overwrite), and one that cannot be written, before any
    training: nothing is lost and no training time is wasted."""
    existing = [f for f in RUN_OUTPUTS if os.path.exists(os.path.join(out, f))]
    if existing and not overwrite:
        raise FileExistsError(f"{out}: holds a finished run ({', '.join(existing)}); pass --overwrite to replace it "
                              "(or overwrite=True), or choose another output folder")
    try:
        check_writable_dir(out)
    except OSError as exc:
        raise ValueError(f"{out}: cannot write the run's output there ({exc.strerror or exc})") from None


def _versions() -> dict:
    from . import __version__
    return {"lsdm_fast": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
            "torch_threads": torch.get_num_threads()}


def run(spec: RunSpec, *, checkpoint_dir: str | None = None, resume: bool = False,
        run_record: dict | None = None) -> dict:
    """Train and evaluate. With checkpoint_dir, training is checkpointed there (and resumed from it
    when resume=True; see LSDM.fit, which also writes `run_record`). Every check of the run is made
    once, here or in LSDM, before any training: the config, the data, the output folder, the
    backend, the checkpoint folder. Under torch.distributed only rank 0 evaluates and writes."""
    from . import distributed as D

    t_start = time.perf_counter()
    cfg = spec.config
    model = LSDM(cfg)  # checks the config before the data are read
    train, test = (load_dataset(spec.data, split, format=spec.format, rescale=spec.rescale, seed=cfg.seed)
                   for split in ("train", "test"))
    paired_x, paired_y, unpaired_y, factor = task_data(train, spec, cfg.seed)
    if D.is_main():  # after the data checks (bad data must not leave a folder behind), before any training
        prepare_output_folder(spec.out, spec.overwrite)
    model.fit(paired_x, paired_y, unpaired_y, num_classes=train.num_classes, progress=spec.progress and D.is_main(),
              checkpoint_dir=checkpoint_dir, resume=resume, run_record=run_record)
    if not D.is_main():
        return {"rank": D.rank_world()[0], "fit_seconds": model.history["seconds"]}
    if spec.task == "superres":  # lets `lsdm sample --data` make inputs the way training did
        model.meta.update(task="superres", factor=factor)
    model.save(os.path.join(spec.out, "model"), overwrite=spec.overwrite)
    written = [os.path.join(spec.out, "model") + os.sep]

    metrics = {"data": train.describe(), "provenance": {"train": train.provenance, "test": test.provenance},
               "task": spec.task, "paired": len(paired_y), "unpaired": len(unpaired_y), "seed": cfg.seed,
               "fit_seconds": model.history["seconds"], "critic_backend": model.history.get("backend"),
               "versions": _versions(), "config": cfg.to_dict()}
    y_test = torch.from_numpy(test.images).reshape(len(test), -1)
    with torch.no_grad():
        rec = model.decode(model.encode(y_test)).cpu()
    metrics["test_reconstruction_mse"] = float(((rec - y_test) ** 2).mean())

    if spec.evaluate:
        metrics.update(_evaluate_class(model, train, test, spec) if spec.task == "class"
                       else _evaluate_superres(model, test, spec, factor))
        written.append(os.path.join(spec.out, "samples.png"))
    written.append(save_loss_plot(model.history, os.path.join(spec.out, "losses.png")))
    metrics["total_seconds"] = time.perf_counter() - t_start
    written.append(os.path.join(spec.out, "metrics.json"))
    metrics["written"] = written
    atomic_write_json(written[-1], metrics)
    return metrics


def task_data(train: Dataset, spec: RunSpec, seed: int):
    """(paired conditions, paired images, unpaired images, super-resolution factor or None) for the task:
    a seeded class-stratified split of labelled images; for super-resolution, conditions are the data's own
    low-resolution partners (pair data: every pair, or --n-pairs of them, the rest with any unpaired
    high-resolution images unpaired) or the images average-pooled by spec.factor."""
    if spec.task not in TASKS:
        raise DataError(f"task must be one of {TASKS}, got {spec.task!r}")
    if train.low is not None:  # pair data: no labels, the pairs are given
        if spec.task != "superres":
            raise DataError(f"{train.name}: holds super-resolution pairs (no labels); use --task superres")
        n_pairs = spec.n_pairs if spec.n_pairs is not None else len(train)
        split = split_paired_unpaired(np.zeros(len(train), dtype=np.int64), n_pairs=n_pairs,
                                      m_unpaired=spec.m_unpaired, seed=seed, num_classes=1)
        unpaired = train.images[split.unpaired]
        if train.unpaired is not None:
            unpaired = np.concatenate([unpaired, train.unpaired])
        x = make_conditions(train, "superres", None)[split.paired]
        return torch.from_numpy(x), torch.from_numpy(train.images[split.paired]), torch.from_numpy(unpaired), \
            train.superres_factor
    split = split_paired_unpaired(train.labels, n_per_class=spec.n_per_class, n_pairs=spec.n_pairs,
                                  m_unpaired=spec.m_unpaired, seed=seed, num_classes=train.num_classes)
    if spec.task == "class":
        x = torch.from_numpy(train.labels[split.paired])
    else:
        x = torch.from_numpy(make_conditions(train, "superres", spec.factor)[split.paired])
    factor = spec.factor if spec.task == "superres" else None
    return x, torch.from_numpy(train.images[split.paired]), torch.from_numpy(train.images[split.unpaired]), factor


def _evaluate_class(model: LSDM, train: Dataset, test: Dataset, spec: RunSpec) -> dict:
    clf = train_classifier(torch.from_numpy(train.images), torch.from_numpy(train.labels), train.num_classes,
                           steps=spec.classifier_steps, seed=spec.config.seed + 1, progress=spec.progress)
    real_acc = accuracy(clf, torch.from_numpy(test.images), torch.from_numpy(test.labels))
    labels = torch.arange(train.num_classes)
    t0 = time.perf_counter()
    samples = model.sample(labels, spec.eval_per_class, seed=spec.config.seed + 1000).cpu()
    dt = time.perf_counter() - t0
    want = labels.repeat_interleave(spec.eval_per_class)
    gen_acc = accuracy(clf, samples, want)
    per_class = [accuracy(clf, samples[want == c], want[want == c]) for c in labels.tolist()]
    grid = model.sample(labels, spec.grid_columns, seed=spec.config.seed).cpu()
    save_grid(grid, os.path.join(spec.out, "samples.png"), train.num_classes, spec.grid_columns, train.image_shape,
              row_labels=labels.tolist(), title="LSDM samples: row = requested class")
    return {"classifier_test_accuracy": real_acc, "conditional_accuracy": gen_acc,
            "conditional_accuracy_per_class": per_class, "eval_samples": int(len(samples)),
            "samples_per_second": len(samples) / dt,
            "note": "accuracy of generated samples under a quick MLP classifier trained on the real training set"}


def _evaluate_superres(model: LSDM, test: Dataset, spec: RunSpec, factor: int) -> dict:
    n = min(len(test), 1000)
    x = torch.from_numpy(make_conditions(test, "superres", factor if test.low is None else None)[:n])
    truth = torch.from_numpy(test.images[:n]).reshape(n, -1)
    t0 = time.perf_counter()
    y_hat = model.sample(x, 1, seed=spec.config.seed + 1000).cpu()
    dt = time.perf_counter() - t0
    mse = ((y_hat - truth) ** 2).mean(1)
    psnr = float((10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean())
    pooled = torch.from_numpy(average_pool(y_hat.reshape(n, *test.image_shape).numpy(), factor)).reshape(n, -1)
    consistency = float(((pooled - x) ** 2).mean().sqrt())
    rows, cols = 8, 6  # low-res, 4 samples, truth
    rows = min(rows, n)
    low_shape = (*test.image_shape[:-2], test.image_shape[-2] // factor, test.image_shape[-1] // factor)
    lowres = np.kron(x[:rows].reshape(rows, *low_shape).numpy(),  # each low-res pixel as a factor x factor block
                     np.ones((factor, factor), dtype=np.float32)).reshape(rows, -1)
    draws = model.sample(x[:rows], 4, seed=spec.config.seed).cpu().reshape(rows, 4, -1).numpy()
    grid = np.concatenate([lowres[:, None], draws, truth[:rows].numpy()[:, None]], 1).reshape(rows * cols, -1)
    save_grid(grid, os.path.join(spec.out, "samples.png"), rows, cols, test.image_shape,
              title="columns: low-res input | 4 LSDM samples | ground truth")
    return {"psnr_db": psnr, "consistency_rmse": consistency, "eval_samples": n, "samples_per_second": n / dt}
