"""One run end to end: load, split, fit, evaluate, write pictures and metrics. The CLI's
`demo` and `train` are this with different defaults."""
from __future__ import annotations

import contextlib
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
from .io import WriteError, atomic_write_json, check_writable_dir
from .run_outputs import RunOutputs, current_outputs, new_run_id, recover, run_state
from .runlock import RunLockedError, run_lock
from .viz import save_grid, save_loss_plot


@dataclass
class RunSpec:
    data: str = "digits"  # "digits" (embedded), or a file/folder in any format of lsdm_fast.data
    format: str | None = None  # None: detected from `data`
    rescale: bool = False  # float images outside [0, 1]: map the training split's range onto [0, 1]
    task: str = "class"  # "class" or "superres"
    # super-resolution pooling factor for data without their own low-resolution images (None: 4); pair data have
    # their own, which a factor given here must match
    factor: int | None = None
    n_per_class: int | None = None  # pairs per class, labelled data only (None: 100, unless n_pairs)
    n_pairs: int | None = None
    m_unpaired: int | None = None  # None: every remaining training image
    out: str = "runs/demo"
    grid_columns: int = 10
    eval_per_class: int = 200  # generated samples per class for the accuracy
    classifier_steps: int = 2000
    progress: bool = True
    evaluate: bool = True  # False: train and save the model only
    # replace a run already in `out` (refused otherwise): its outputs, as a unit once the new model is saved, and
    # (a new run) the checkpoint in checkpoint_dir; resuming, redo the outputs of a finished run
    overwrite: bool = False
    config: LSDMConfig = field(default_factory=LSDMConfig)
    run_id: str | None = None  # ties the outputs to the run's checkpoint (run.json); None: a new run
    started_with_overwrite: bool = False  # resuming: the run replaces the outputs of another, maybe still in `out`


DEFAULT_PAIRS_PER_CLASS = 100


class EvaluationError(RuntimeError):
    """Training and the model's save succeeded, a later, optional output (evaluation, pictures) failed."""


@contextlib.contextmanager
def locked_output_folder(out: str, what: str = "lsdm train"):
    """Hold the one-writer lock of run folder `out` (lsdm_fast.runlock); a folder that cannot be written fails here,
    before any training, with a ValueError naming it."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(run_lock(out, what))
        except RunLockedError:
            raise
        except OSError as exc:
            raise ValueError(f"{out}: cannot write the run's output there ({exc.strerror or exc})") from None
        yield


def prepare_output_folder(out: str, overwrite: bool, *, resume: bool = False, run_id: str | None = None,
                          started_with_overwrite: bool = False) -> None:
    """Under the folder's lock (locked_output_folder), before any training: finish a replacement of outputs that a
    killed writer left half done, then refuse what would lose a run, and a folder that cannot be written: nothing
    is lost and no training time is wasted. A new run refuses a folder holding a run's outputs unless overwrite.
    A resumed run (`run_id`) refuses its own finished outputs unless overwrite (which redoes them all), and another
    run's unless overwrite or the run was started with overwrite. Nothing is removed here: the outputs are replaced
    as a unit when the new model is saved (run_outputs.py)."""
    recover(out)
    existing = current_outputs(out)
    if resume:
        state, listed = run_state(out, run_id), ", ".join(existing)
        if state == "finished" and not overwrite:
            raise FileExistsError(f"{out}: this run is finished ({listed}); --resume continues unfinished runs only: "
                                  "pass --overwrite to redo its outputs (all of them, as one), or start a new run "
                                  "in another folder")
        if state == "other" and not (overwrite or started_with_overwrite):
            raise FileExistsError(f"{out}: holds the outputs of another run ({listed}); pass --overwrite to replace "
                                  "them, or resume a copy of the checkpoint folder elsewhere")
    elif existing and not overwrite:
        if run_state(out, None) == "partial":
            raise FileExistsError(f"{out}: holds the outputs of an unfinished run ({', '.join(existing)}); finish it "
                                  f"with `lsdm train --resume {out}`, pass --overwrite to replace it (or "
                                  "overwrite=True), or choose another output folder")
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
    backend, the checkpoint folder; the output folder's one-writer lock is taken before anything is
    written. Under torch.distributed only rank 0 evaluates and writes."""
    from . import distributed as D

    t_start = time.perf_counter()
    cfg = spec.config
    model = LSDM(cfg)  # checks the config before the data are read
    train, test = (load_dataset(spec.data, split, format=spec.format, rescale=spec.rescale, seed=cfg.seed)
                   for split in ("train", "test"))
    paired_x, paired_y, unpaired_y, factor = task_data(train, spec, cfg.seed)
    # after the data checks (bad data must not leave a folder behind), before anything is written: one writer
    with locked_output_folder(spec.out) if D.is_main() else contextlib.nullcontext():
        if D.is_main():
            prepare_output_folder(spec.out, spec.overwrite, resume=resume, run_id=spec.run_id,
                                  started_with_overwrite=spec.started_with_overwrite)
        model.fit(paired_x, paired_y, unpaired_y, num_classes=train.num_classes, progress=spec.progress and D.is_main(),
                  checkpoint_dir=checkpoint_dir, resume=resume, run_record=run_record, overwrite=spec.overwrite)
        if not D.is_main():
            return {"rank": D.rank_world()[0], "fit_seconds": model.history["seconds"]}
        return _write_outputs(model, spec, train, test, paired_y, unpaired_y, factor, checkpoint_dir, t_start)


def _write_outputs(model: LSDM, spec: RunSpec, train: Dataset, test: Dataset, paired_y, unpaired_y, factor,
                   checkpoint_dir: str | None, t_start: float) -> dict:
    """The model first, replacing the folder's previous outputs as a unit (run_outputs.py), then the optional
    outputs (evaluation, pictures, metrics), each added to the manifest: a late failure loses nothing trained."""
    if spec.task == "superres":  # lets `lsdm sample --data` make inputs the way training did
        model.meta.update(task="superres", factor=factor)
    outputs = RunOutputs(spec.out, spec.run_id or new_run_id())
    model_dir = os.path.join(spec.out, "model")
    try:
        outputs.publish("model", lambda folder: model.save(folder))
    except OSError as exc:
        kept = (f"the trained state is kept in {os.path.join(checkpoint_dir, 'checkpoint.pt')}: make room and run "
                f"`lsdm train --resume {spec.out}` to finish the save" if checkpoint_dir else
                "no checkpoint folder was given, so the trained model is lost (give checkpoint_dir to keep one)")
        raise WriteError(exc.errno, f"saving the model failed: {exc}; {kept}") from None
    written = [model_dir + os.sep]
    try:
        return _optional_outputs(model, spec, train, test, paired_y, unpaired_y, factor, outputs, written, t_start)
    except (OSError, ValueError, RuntimeError) as exc:
        raise EvaluationError(f"{exc} (after training: the model is saved in {model_dir}; `lsdm train --resume "
                              f"{spec.out}` redoes the evaluation and pictures)") from exc


def _optional_outputs(model, spec, train, test, paired_y, unpaired_y, factor, outputs: RunOutputs, written: list,
                      t_start: float) -> dict:
    cfg = spec.config

    metrics = {"data": train.describe(), "provenance": {"train": train.provenance, "test": test.provenance},
               "task": spec.task, "paired": len(paired_y), "unpaired": len(unpaired_y), "seed": cfg.seed,
               "fit_seconds": model.history["seconds"], "critic_backend": model.history.get("backend"),
               "versions": _versions(), "config": cfg.to_dict()}
    # the latent size the fit chose (AutoencoderConfig.latent_dim None: grown by grow_latent's rule) and why
    metrics["latent_dim"] = model.config.autoencoder.latent_dim
    metrics["stage1"] = {k: model.history[k] for k in ("stage1_steps", "stage1_unexplained", "latent_search")
                         if k in model.history}
    if "pseudo_pairs" in model.history:  # matching.pseudo_label: the unpaired images that joined stage 2's pairs
        metrics["pseudo_pairs"] = model.history["pseudo_pairs"]
    y_test = torch.from_numpy(test.images).reshape(len(test), -1)
    with torch.no_grad():
        rec = model.decode(model.encode(y_test)).cpu()
    metrics["test_reconstruction_mse"] = float(((rec - y_test) ** 2).mean())

    if spec.evaluate:
        metrics.update(_evaluate_class(model, train, test, spec) if spec.task == "class"
                       else _evaluate_superres(model, test, spec, factor))
        written.append(os.path.join(spec.out, "samples.png"))
        outputs.add("samples.png")
    written.append(save_loss_plot(model.history, os.path.join(spec.out, "losses.png")))
    outputs.add("losses.png")
    metrics["total_seconds"] = time.perf_counter() - t_start
    written.append(os.path.join(spec.out, "metrics.json"))
    metrics["written"] = written
    atomic_write_json(written[-1], metrics)
    outputs.add("metrics.json")
    outputs.complete()
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
        if spec.n_per_class is not None:
            raise DataError(f"{train.name}: holds super-resolution pairs without labels, so --n-per-class "
                            f"{spec.n_per_class} (pairs per class) does not apply; give --n-pairs N (pairs in total) "
                            f"or nothing (all {len(train)} pairs)")
        if spec.factor is not None and spec.factor != train.superres_factor:
            raise DataError(f"{train.name}: its low-resolution images are 1/{train.superres_factor} of the high ones "
                            f"(factor {train.superres_factor}); --factor {spec.factor} does not match: drop it or "
                            f"give {train.superres_factor}")
        n_pairs = spec.n_pairs if spec.n_pairs is not None else len(train)
        split = split_paired_unpaired(np.zeros(len(train), dtype=np.int64), n_pairs=n_pairs,
                                      m_unpaired=spec.m_unpaired, seed=seed, num_classes=1)
        unpaired = train.images[split.unpaired]
        if train.unpaired is not None:
            unpaired = np.concatenate([unpaired, train.unpaired])
        x = make_conditions(train, "superres", None)[split.paired]
        return torch.from_numpy(x), torch.from_numpy(train.images[split.paired]), torch.from_numpy(unpaired), \
            train.superres_factor
    n_per_class = spec.n_per_class if spec.n_per_class is not None or spec.n_pairs is not None \
        else DEFAULT_PAIRS_PER_CLASS
    split = split_paired_unpaired(train.labels, n_per_class=None if spec.n_pairs is not None else n_per_class,
                                  n_pairs=spec.n_pairs, m_unpaired=spec.m_unpaired, seed=seed,
                                  num_classes=train.num_classes)
    factor = (spec.factor or 4) if spec.task == "superres" else None
    if spec.task == "class":
        x = torch.from_numpy(train.labels[split.paired])
    else:
        x = torch.from_numpy(make_conditions(train, "superres", factor)[split.paired])
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
