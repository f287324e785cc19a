"""The `lsdm` command: demo, train, sample, experiment, info."""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import warnings

from .config import CONV_DESIGNS, AutoencoderConfig, check_sampling_seed, check_seed


def _positive(kind):
    def parse(s):
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {s}")
        return v
    return parse


def _nonneg_int(s):
    v = _int_arg(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {s}")
    return v


def _confidence(s):
    v = _nonneg_float(s)
    if v > 1:
        raise argparse.ArgumentTypeError(f"must be 0 (off) or a probability in (0, 1], got {s}")
    return v


def _fraction(s):
    v = _nonneg_float(s)
    if v >= 1:
        raise argparse.ArgumentTypeError(f"must be 0 (off) or a fraction in (0, 1), got {s}")
    return v


def _gain(s):
    v = _nonneg_float(s)
    if 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"must be 0 (off) or a ratio > 1, got {s}")
    return v


def _nonneg_float(s):
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not (math.isfinite(v) and v >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {s}")
    return v


def _int_arg(s) -> int:
    try:
        return int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None


def _seed(check):
    """A --seed parser giving the API's own message for a value out of range (`check` raises it)."""
    def parse(s):
        try:
            return check(_int_arg(s))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse


def _add_train_args(p: argparse.ArgumentParser, defaults: dict) -> None:
    p.add_argument("--out", default=defaults["out"], help="output folder")
    p.add_argument("--seed", type=_seed(check_seed), default=0, help="an integer in [0, 2^63)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--latent-dim", type=_positive(int), default=defaults["latent_dim"],
                   help="the latent size d (default: " + ("fitted to the data: 32, doubled by --grow-latent's rule"
                                                          if defaults["latent_dim"] is None else str(defaults["latent_dim"]))
                        + "; a number given here is used as it is)")
    p.add_argument("--ae-stop", choices=["plateau", "steps"], default=defaults["ae_stop"],
                   help="stage-1 budget: 'plateau' trains to convergence (held-out loss), 'steps' exactly --ae-steps")
    p.add_argument("--ae-steps", type=_nonneg_int, default=defaults["ae_steps"],
                   help="stage-1 steps (--ae-stop steps) or their cap (--ae-stop plateau)")
    p.add_argument("--grow-latent", type=_fraction, default=None, metavar="FRACTION",
                   help="without --latent-dim and with --ae-stop plateau: while stage 1 leaves more than this "
                        "fraction of the held-out images' pixel variance unexplained, train it again with twice the "
                        "latent, from 32 up to --latent-max (default: 0.05; 0: off; docs/design.md §1)")
    p.add_argument("--grow-gain", type=_gain, default=None, metavar="RATIO",
                   help="once --grow-latent has doubled the latent, also double it while the last doubling divided "
                        f"the held-out miss by at least this (default: {AutoencoderConfig().grow_gain:g}; 0: off)")
    p.add_argument("--latent-max", type=_positive(int), default=None,
                   help=f"the largest latent the fitting rule may reach (default: {AutoencoderConfig().latent_max})")
    p.add_argument("--ae-ema", type=_fraction, default=None, metavar="DECAY",
                   help="stage 1's average of the weights, which the plateau checks measure and stage 1 ends with "
                        "(default 0: off; 0.999 lowered MNIST's sample FD but raised the texture set's, "
                        "results/experiments/issue25_ema)")
    p.add_argument("--steps", type=_nonneg_int, default=defaults["steps"],
                   help="stage-2 generator steps" + (" (default: sized to the latent: 4000 per 64 dimensions, at "
                                                     "most 16000; docs/design.md §1)" if defaults["steps"] is None else ""))
    p.add_argument("--batch-size", type=_positive(int), default=256)
    p.add_argument("--marginal-weight", type=_nonneg_float, default=0.0,
                   help="weight of stage 2's marginal critic, which matches the generated latents to those of every "
                        "image, unpaired too (class labels; 0: off; 1: more diverse samples, lower accuracy, a 1.75x "
                        "slower stage 2, docs/design.md §7)")
    p.add_argument("--pseudo-label", type=_confidence, default=None, metavar="CONFIDENCE",
                   help="class labels: unpaired images whose latent a classifier trained on the pairs labels with "
                        "at least this probability join stage 2's pairs (default: 0.99 for --task class, off for "
                        "superres; 0: off; docs/design.md §1)")
    p.add_argument("--pseudo-condition", type=_confidence, default=None, metavar="R2",
                   help="float conditions (superres): every unpaired image joins stage 2's pairs with a condition "
                        "predicted from it by a regressor trained on the pairs, if that explains at least this share "
                        "of held-out pairs' condition variance; stage 2 then takes twice the steps (default: 0.99 for "
                        "superres; 0: off; docs/design.md §1)")
    p.add_argument("--penalty-over", choices=["joint", "latent"], default=None,
                   help="stage 2's gradient penalty: over the latent only, one 1-Lipschitz critic per condition, or "
                        "over (condition, latent) jointly (default: latent for class labels in a latent of 128 or more, "
                        "else joint; docs/design.md §1)")
    _add_backend_arg(p, "backend of the stage-2 critic step")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="autocast for stage 1 and the generator; the critic step stays fp32")
    p.add_argument("--checkpoint-every", type=_nonneg_int, default=0,
                   help="write a checkpoint every N steps of each stage (0: `lsdm train` checkpoints at the end of "
                        "each stage only; `lsdm demo` not at all unless --checkpoint-dir)")
    p.add_argument("--checkpoint-dir", default=None, help="checkpoint folder (default: OUT/checkpoint)")
    p.add_argument("--quiet", action="store_true", help="no progress bars and no summary: only errors, warnings and "
                                                         "the one line saying what was written")
    _add_threads_arg(p)


class _DefaultsShown(argparse.HelpFormatter):
    """--help shows every default, except where the help text already says it (or there is none)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


def _add_backend_arg(p: argparse.ArgumentParser, help: str, op: str | None = None) -> None:
    """--backend: "auto" and the names of ops.BACKENDS (the one list of backend names); with `op`, only those of
    them that implement it in this installation (the registry's), so that no choice is offered that always fails."""
    from .ops import BACKENDS
    from .ops._registry import implemented_backends

    p.add_argument("--backend", default="auto", choices=["auto", *(implemented_backends(op) if op else BACKENDS)],
                   help=help)


def _add_threads_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=_positive(int), default=None,
                   help="torch CPU threads (default: $LSDM_THREADS, else 1: the models are small, and on a busy "
                        "2-core machine 2 threads were measured 6x slower or worse; see README)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lsdm", description="Latent Space Distribution Matching")
    sub = parser.add_subparsers(dest="command", required=True)
    fmt = {"formatter_class": _DefaultsShown}

    demo = sub.add_parser("demo", help="train on scikit-learn's 8x8 digits (no files needed) and write "
                                       "samples.png, losses.png, metrics.json", **fmt)
    # the demo: a small MLP stage 1 for a fixed 2000 steps, 256-wide stage-2 nets for 1000 steps (1500 scored
    # the same on one seed, 96.3 vs 96.5 %, and took 20 s more on one thread); its judging classifier trains
    # 500 steps (the same 97.5 % test accuracy on the digits as 1500, ~15 s less): under a minute on one thread
    _add_train_args(demo, {"out": "runs/demo", "latent_dim": 8, "ae_stop": "steps", "ae_steps": 2000, "steps": 1000})
    demo.add_argument("--n-per-class", type=_positive(int), default=20)

    tr = sub.add_parser("train", help="train on your data (see --data) and evaluate", **fmt)
    tr.add_argument("--data", help="your data: an MNIST-format IDX folder, an .npz file, a folder of .npy files, a "
                                   "folder of images with one sub-folder per class, or 'digits' (the embedded 8x8 "
                                   "digits); the formats and array names: README, 'Your data' (required unless "
                                   "--resume)")
    tr.add_argument("--format", default=None, choices=["digits", "mnist-idx", "npz", "npy", "image-folder"],
                    help="the --data format (default: detected from the path)")
    tr.add_argument("--rescale", action="store_true", help="float images outside [0, 1]: map the training split's "
                                                           "min..max onto [0, 1] (the same map for test)")
    tr.add_argument("--resume", metavar="DIR", default=None,
                    help="continue the unfinished run checkpointed in DIR (its --out folder, or its checkpoint "
                         "folder) exactly, writing into DIR; the run's arguments (--no-eval too) are read from DIR. "
                         "A finished run is refused unless --overwrite (which redoes its outputs)")
    tr.add_argument("--task", choices=["class", "superres"], default="class")
    tr.add_argument("--factor", type=int, choices=[2, 4], default=None,
                    help="super-resolution pooling factor (default 4; data of low/high pairs have their own, which "
                         "--factor must match)")
    g = tr.add_mutually_exclusive_group()
    g.add_argument("--n-per-class", type=_positive(int), help="pairs per class (default 100)")
    g.add_argument("--n-pairs", type=_positive(int), help="pairs in total, class-stratified")
    tr.add_argument("--m-unpaired", type=_nonneg_int, default=None, help="unpaired images (default: all the rest)")
    tr.add_argument("--ae-kind", choices=["auto", "mlp", "conv"], default="auto",
                    help="stage-1 autoencoder: 'auto' is conv for square images, MLP for flat data")
    tr.add_argument("--ae-design", choices=list(CONV_DESIGNS), default=AutoencoderConfig().conv_design,
                    help="the conv autoencoder: 'patch' (the default: every layer a GEMM, fused C++ training step and "
                         "sampling, ~4x faster on a CPU) or 'strided' (stride-2 convolutions, the default before)")
    tr.add_argument("--classifier-steps", type=_positive(int), default=2000,
                    help="steps of the quick judge classifier used for the accuracy metric")
    tr.add_argument("--no-eval", action="store_true", help="train and save the model only: no classifier, no "
                                                           "accuracy, no sample pictures")
    tr.add_argument("--overwrite", action="store_true", help="replace a run already in --out, all its outputs as "
                                                              "one (refused otherwise)")
    tr.add_argument("--eval-per-class", type=_positive(int), default=200)
    _add_train_args(tr, {"out": "runs/train", "latent_dim": None, "ae_stop": "plateau", "ae_steps": 20000,
                         "steps": None})

    sm = sub.add_parser("sample", help="draw samples from a saved model (class labels, or low-resolution inputs "
                                       "for a super-resolution model)", **fmt)
    sm.add_argument("--model", required=True, help="folder written by train/demo (…/model)")
    sm.add_argument("--labels", default=None, help="class model: comma-separated class labels (default: every class)")
    sm.add_argument("--n-per-class", type=_positive(int), default=10,
                    help="samples per label (class model) or per input (super-resolution model)")
    sm.add_argument("--input", default=None, help="super-resolution model: low-resolution images, a .npy file "
                                                  "(N, h, w) or (N, h*w) with values in [0, 1]")
    sm.add_argument("--data", default=None, help="super-resolution model: take the first --n-inputs test images of "
                                                 "this data set, pooled by the model's factor, as inputs")
    sm.add_argument("--n-inputs", type=_positive(int), default=8, help="with --data: how many test images")
    sm.add_argument("--seed", type=_seed(check_sampling_seed), default=0, help="an integer in [0, 2^64)")
    sm.add_argument("--out", default="samples.png",
                    help=".png: a grid of pictures (one row per label or input); .npy: the raw samples as one float32 "
                         "array of shape (N, D), values in [0, 1], N = labels x --n-per-class (or inputs x "
                         "--n-per-class) with each label's (input's) samples in consecutive rows, D = the flat image "
                         "size (H*W, or C*H*W channels first: reshape to (N, C, H, W)); written chunk by chunk, so "
                         "any size that fits on the disk works")
    sm.add_argument("--overwrite", action="store_true", help="replace --out if it exists (refused otherwise)")
    _add_backend_arg(sm, "backend of one-step generation (those implemented for it here)", op="generate")
    sm.add_argument("--device", default=None)
    _add_threads_arg(sm)

    ex = sub.add_parser("experiment", help="run a named experiment (LSDM against its baselines) over seeds and "
                                           "write a markdown table and figures", **fmt)
    ex.add_argument("name", help="class_n10, class_n100, superres_x4, unpaired_curve, paired_curve")
    ex.add_argument("--data", default="digits", help="folder of MNIST-format IDX files, or 'digits' (default)")
    ex.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    ex.add_argument("--out", default=None, help="output folder (default: results/experiments/NAME)")
    ex.add_argument("--quick", action="store_true", help="tiny budgets: a smoke run for tests (numbers meaningless)")
    ex.add_argument("--methods", default=None,
                    help="comma-separated subset of lsdm, lsdm_paired_only, pixel_matching, latent_diffusion, "
                         "lsdm_all_labels (default: the experiment's own list)")
    ex.add_argument("--ae-steps", type=_nonneg_int, default=None, help="override the stage-1 steps")
    ex.add_argument("--steps", type=_nonneg_int, default=None, help="override stage-2 (and pixel matching) steps")
    ex.add_argument("--steps-max", type=_positive(int), default=None,
                    help="override the most stage-2 steps the latent-sized budget gives (default 16000)")
    ex.add_argument("--match-lr", type=_positive(float), default=None,
                    help="override stage 2's (and pixel matching's) learning rate (default 6e-4; 3e-4 resumes "
                         "results written before 2026-12-05)")
    ex.add_argument("--settings", default=None, help="comma-separated subset of the experiment's settings to run, "
                                                     "e.g. m=1000,m=10000 (default: all)")
    ex.add_argument("--latent-dim", type=_positive(int), default=None, help="override the latent dimension d")
    ex.add_argument("--grow-latent", type=_fraction, default=None, metavar="FRACTION",
                    help="override the latent fitting rule's threshold (default 0.05; 0: off)")
    ex.add_argument("--grow-gain", type=_gain, default=None, metavar="RATIO",
                    help="override the gain per doubling that keeps the latent growing "
                         f"(default {AutoencoderConfig().grow_gain:g}; 0: off)")
    ex.add_argument("--latent-max", type=_positive(int), default=None, help="override the largest fitted latent "
                                                                            f"(default {AutoencoderConfig().latent_max})")
    ex.add_argument("--ae-hidden", default=None, help="override the autoencoder widths, e.g. 1024,512")
    ex.add_argument("--match-hidden", default=None, help="override the generator and critic widths, e.g. 512,512")
    ex.add_argument("--ae-design", choices=list(CONV_DESIGNS), default=None,
                    help="override the conv autoencoder's design (default: the package's, patch)")
    ex.add_argument("--ae-ema", type=_fraction, default=None, metavar="DECAY",
                    help="override stage 1's weight average's decay (default 0: off)")
    ex.add_argument("--marginal-weight", type=_nonneg_float, default=None,
                    help="override the weight of stage 2's marginal critic (0: off)")
    ex.add_argument("--pseudo-label", type=_confidence, default=None, metavar="CONFIDENCE",
                    help="override stage 2's pseudo-label confidence (default: 0.99 for class labels; 0: off)")
    ex.add_argument("--pseudo-condition", type=_confidence, default=None, metavar="R2",
                    help="override the held-out R^2 stage 2's pseudo-conditions need (default: 0.99 for float "
                         "conditions; 0: off)")
    ex.add_argument("--penalty-over", choices=["joint", "latent"], default=None,
                    help="override stage 2's gradient penalty (default: latent for class labels from a 128-d "
                         "latent up, else joint)")
    ex.add_argument("--diffusion-steps", type=_nonneg_int, default=None, help="override denoiser training steps")
    ex.add_argument("--ddim-steps", default=None, help="comma-separated DDIM sampling steps to evaluate")
    ex.add_argument("--cache-dir", default=None, help="where the evaluation nets are cached "
                                                      "(default: $LSDM_FAST_CACHE or ~/.cache/lsdm_fast)")
    _add_backend_arg(ex, "backend of the hot ops")
    ex.add_argument("--resume", action="store_true", help="keep the (setting, seed) cells already in "
                                                          "OUT/results.json and run only the missing ones")
    ex.add_argument("--quiet", action="store_true", help="no progress bars and no per-cell lines")
    ex.add_argument("--fid", default="none", choices=["none", "inception"],
                    help="inception: add the literature's Inception-FID column (slow on a CPU, ~2 min per 1,000 "
                         "images on one thread; needs pip install 'lsdm_fast[fid]')")
    _add_threads_arg(ex)

    sub.add_parser("info", help="versions, devices and which backends are available")
    return parser


def _config_from_args(args, ae_kind="mlp"):
    from .config import LSDMConfig

    demo = args.command == "demo"
    return LSDMConfig.from_knobs(latent_dim=args.latent_dim, ae_kind=ae_kind,
                                 ae_hidden=(256, 128) if demo else (1024, 512), ae_stop=getattr(args, "ae_stop", "steps"),
                                 ae_steps=args.ae_steps, steps=args.steps, batch_size=args.batch_size,
                                 match_hidden=(256, 256) if demo else None, backend=args.backend, seed=args.seed,
                                 device=args.device, precision=args.precision, checkpoint_every=args.checkpoint_every,
                                 conv_design=getattr(args, "ae_design", None),
                                 marginal_weight=args.marginal_weight, pseudo_label=args.pseudo_label,
                                 pseudo_condition=args.pseudo_condition,
                                 penalty_over=args.penalty_over, grow_latent=getattr(args, "grow_latent", None),
                                 grow_gain=getattr(args, "grow_gain", None), latent_max=getattr(args, "latent_max", None),
                                 ae_ema=getattr(args, "ae_ema", None))


def cmd_demo(args) -> int:
    from .pipeline import RunSpec, run
    from .run_outputs import current_outputs

    spec = RunSpec(data="digits", task="class", n_per_class=args.n_per_class, out=args.out,
                   classifier_steps=500, progress=not args.quiet, config=_config_from_args(args),
                   overwrite=True)  # the demo replaces its own previous output (and says so)
    ckdir = args.checkpoint_dir or (os.path.join(args.out, "checkpoint") if args.checkpoint_every else None)
    if current_outputs(args.out) and not args.quiet:
        print(f"demo: replacing the previous demo output in {args.out}")
    m = run(spec, checkpoint_dir=ckdir)
    if "rank" in m:
        return 0
    if not args.quiet:
        print(f"demo: {m['paired']} pairs + {m['unpaired']} unpaired digits; conditional accuracy of samples "
              f"{m['conditional_accuracy']:.3f} (classifier on real test digits: {m['classifier_test_accuracy']:.3f}); "
              f"{m['total_seconds']:.0f} s")
    print(f"wrote {', '.join(m['written'])}")
    return 0


from .checkpoint import RUN_FILE  # noqa: E402  (the file beside the checkpoint that --resume reads)
# arguments a resumed run takes from the command that resumes it: how this invocation behaves, not what it computes
_RESUME_RUNTIME = {"command", "resume", "quiet", "threads", "overwrite"}
# arguments a resume may change when given explicitly (what is checkpointed or written, not what is trained);
# otherwise the run's own are kept: a run started with --no-eval stays --no-eval
_RESUME_FREE = {"checkpoint_every", "no_eval", "out"}


def _resolve_resume(args, explicit: set[str]):
    """The interrupted run's arguments (from its run.json), refusing explicit ones that differ. The run folder
    written is the one resumed (a copy of a run folder resumes in the copy): run.json's paths are a record."""
    from .checkpoint import read_checkpoint

    given = args.resume
    if not os.path.isdir(given):
        raise FileNotFoundError(f"--resume {given}: folder not found")
    if os.path.exists(os.path.join(given, RUN_FILE)):
        folder, out = given, None  # the checkpoint folder itself; its run folder is decided below
    elif os.path.exists(os.path.join(given, "checkpoint", RUN_FILE)):
        folder, out = os.path.join(given, "checkpoint"), given
    else:
        raise FileNotFoundError(f"--resume {given}: no {RUN_FILE} there; is it the checkpoint folder (or --out "
                                "folder) of a run started with --checkpoint-every?")
    path = os.path.join(folder, RUN_FILE)
    try:
        with open(path) as fh:
            blob = json.load(fh)
        saved = blob["args"]
        assert isinstance(saved, dict)
    except (ValueError, KeyError, TypeError, AssertionError) as exc:
        raise ValueError(f"{path}: not a valid run file ({exc})") from None
    if os.path.exists(os.path.join(folder, "checkpoint.pt")):
        read_checkpoint(os.path.join(folder, "checkpoint.pt"))  # a damaged checkpoint fails here, before training
    diffs = [f"--{k.replace('_', '-')} {getattr(args, k)!r} (the run has {saved.get(k)!r})"
             for k in sorted(explicit - _RESUME_RUNTIME - _RESUME_FREE) if saved.get(k) != getattr(args, k)]
    if diffs:
        raise ValueError(f"--resume {args.resume}: cannot change the run's arguments on resume: " + ", ".join(diffs)
                         + "; drop them to continue the run as it was started, or start a new run")
    if out is None:
        saved_out, saved_ck = saved.get("out"), saved.get("checkpoint_dir")
        inside = isinstance(saved_out, str) and isinstance(saved_ck, str) and \
            os.path.normpath(saved_ck) == os.path.normpath(os.path.join(saved_out, "checkpoint"))
        # OUT/checkpoint resumed: OUT is its parent. A --checkpoint-dir of its own: the run's --out (or --out now)
        out = os.path.dirname(os.path.normpath(folder)) if inside else saved_out
    merged = argparse.Namespace(**saved)
    for k in _RESUME_RUNTIME | (_RESUME_FREE & explicit):
        if hasattr(args, k):
            setattr(merged, k, getattr(args, k))
    if "out" not in explicit:
        merged.out = out
    merged.checkpoint_dir = folder
    merged.run_id, merged._run_file = blob.get("run_id"), blob
    merged.started_with_overwrite = bool(saved.get("overwrite"))
    for k, v in vars(args).items():  # options added since the run was started take their defaults
        if not hasattr(merged, k):
            setattr(merged, k, v)
    return merged


def cmd_train(args) -> int:
    from .pipeline import RunSpec, run
    from .run_outputs import new_run_id

    resume = args.resume is not None
    if resume:
        args = _resolve_resume(args, getattr(args, "_explicit", set()))
    # always a checkpoint folder (checkpoints at the end of each stage at least): a save that fails after training
    # (a full disk) loses nothing, `--resume` finishes it
    ckdir = args.checkpoint_dir or os.path.join(args.out, "checkpoint")
    run_id = getattr(args, "run_id", None) or new_run_id()
    spec = RunSpec(data=args.data, format=getattr(args, "format", None), rescale=getattr(args, "rescale", False),
                   task=args.task, factor=args.factor, n_per_class=args.n_per_class, n_pairs=args.n_pairs,
                   m_unpaired=args.m_unpaired, out=args.out, progress=not args.quiet,
                   classifier_steps=args.classifier_steps, eval_per_class=args.eval_per_class,
                   evaluate=not getattr(args, "no_eval", False), overwrite=getattr(args, "overwrite", False),
                   config=_config_from_args(args, args.ae_kind), run_id=run_id,
                   started_with_overwrite=getattr(args, "started_with_overwrite", False))
    # what --resume reads back, written by LSDM.fit once every check (of the config, data and folders) has passed
    if not resume:
        saved = {k: v for k, v in vars(args).items() if not k.startswith("_") and k not in ("resume", "argv")}
        record = {"args": {**saved, "checkpoint_dir": ckdir}, "run_id": run_id}
    else:  # a run.json from before run ids gets one, so that the run's outputs are known as its own
        record = None if args.run_id else {**args._run_file, "run_id": run_id}
    m = run(spec, checkpoint_dir=ckdir, resume=resume, run_record=record)
    if "rank" in m:  # not rank 0 under torch.distributed: rank 0 reports
        return 0
    if not args.quiet:
        print(_summary(m))
    print(f"wrote {', '.join(m['written'])}")
    return 0


def _summary(m: dict) -> str:
    """A few lines of what a run did and scored (the whole record is metrics.json)."""
    lines = [f"{m['paired']} pairs + {m['unpaired']} unpaired images; fit {sum(m['fit_seconds'].values()):.0f} s, "
             f"total {m['total_seconds']:.0f} s; critic backend {m.get('critic_backend')}",
             f"test reconstruction MSE {m['test_reconstruction_mse']:.4g}"
             + (f" (latent size {m['latent_dim']})" if m.get("latent_dim") is not None else "")]
    if "conditional_accuracy" in m:
        lines.append(f"conditional accuracy of samples {m['conditional_accuracy']:.3f} (the judging classifier on "
                     f"real test images: {m['classifier_test_accuracy']:.3f})")
    if "psnr_db" in m:
        lines.append(f"PSNR {m['psnr_db']:.2f} dB, consistency RMSE {m['consistency_rmse']:.4f}")
    return "\n".join(lines)


def cmd_sample(args) -> int:
    import torch

    from .api import LSDM
    from .pipeline import locked_output_folder
    from .run_outputs import register_output, run_folder_of
    from .viz import save_grid

    def refuse_existing():
        if os.path.exists(args.out) and not args.overwrite:
            raise FileExistsError(f"--out {args.out}: exists; pass --overwrite to replace it or choose another name")

    refuse_existing()
    model = LSDM.load(args.model, device=args.device)
    k = args.n_per_class
    if model.meta["cond_kind"] == "onehot":
        if args.input or args.data:
            raise ValueError("--input/--data are for super-resolution models; this model is conditioned on class "
                             "labels (use --labels)")
        labels = (list(range(model.meta["num_classes"])) if args.labels is None
                  else _int_list(args.labels, "--labels"))
        x, rows, row_labels = torch.tensor(labels), len(labels), labels
    else:
        x = _superres_inputs(model, args)
        rows, row_labels = len(x), None
    shape = model.meta["image_shape"] or (int(round(model.meta["data_dim"] ** 0.5)),) * 2
    run_folder = run_folder_of(args.out)  # a file written into a run folder: one writer, and replaced with the run
    with locked_output_folder(run_folder, "lsdm sample") if run_folder else contextlib.nullcontext():
        refuse_existing()
        if args.out.endswith(".npy"):  # chunked, straight to the file (temporary name, renamed when whole)
            model.sample(x, k, seed=args.seed, backend=args.backend, path=args.out, progress=True)
            n = len(x) * k
        else:
            y = model.sample(x, k, seed=args.seed, backend=args.backend).cpu()
            n = len(y)
            if model.meta["cond_kind"] == "onehot":
                save_grid(y, args.out, rows, k, shape, row_labels=row_labels)
            else:  # columns: the input (upsampled to the output size) | k samples
                up = torch.nn.functional.interpolate(x.reshape(len(x), 1, *_lowres_shape(model)), size=tuple(shape),
                                                     mode="nearest").reshape(len(x), 1, -1)
                grid = torch.cat([up, y.reshape(len(x), k, -1)], 1).reshape(-1, y.shape[1])
                save_grid(grid, args.out, rows, k + 1, shape, title="input | samples")
        if run_folder:
            register_output(run_folder, args.out)
    print(f"wrote {n} samples to {args.out}")
    return 0


def _lowres_shape(model) -> tuple[int, int]:
    side = int(round(model.meta["cond_dim"] ** 0.5))
    if side * side != model.meta["cond_dim"]:
        raise ValueError(f"this model's condition has {model.meta['cond_dim']} values: not a square image")
    return side, side


def _superres_inputs(model, args):
    """Low-resolution inputs as (N, cond_dim) floats in [0, 1], from --input or --data."""
    import numpy as np
    import torch

    if bool(args.input) == bool(args.data):
        raise ValueError("a super-resolution model needs its low-resolution inputs: give --input FILE.npy or "
                         "--data SOURCE (one of the two)")
    d = model.meta["cond_dim"]
    if args.input:
        try:
            x = np.load(args.input, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ValueError(f"--input {args.input}: cannot read a .npy array ({exc})") from None
        if x.size == 0:
            raise ValueError(f"--input {args.input}: holds no images (shape {x.shape}); give (N, h, w) or (N, {d}) "
                             "low-resolution images, N >= 1")
        x = x.reshape(len(x), -1) if x.ndim >= 2 else x
        if x.ndim != 2 or x.shape[1] != d:
            raise ValueError(f"--input {args.input}: expected (N, h, w) or (N, {d}) low-resolution images for this "
                             f"model, got shape {np.shape(x)}")
        if np.issubdtype(x.dtype, np.integer):
            raise ValueError(f"--input {args.input}: values must be floats in [0, 1], got {x.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    else:
        from .data import load_dataset, make_conditions
        factor = model.meta.get("factor")
        test = load_dataset(args.data, "test")
        if test.low is None and not factor:
            raise ValueError(f"{args.model}: the model does not record its super-resolution factor (trained by an "
                             "older version or through the Python API); give --input instead")
        x = make_conditions(test, "superres", None if test.low is not None else int(factor))[: args.n_inputs]
        if x.shape[1] != d:
            raise ValueError(f"--data {args.data}: its low-resolution images have {x.shape[1]} values, this model "
                             f"takes {d}")
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if len(x) == 0 or not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise ValueError("super-resolution inputs must be a non-empty set of finite values in [0, 1]")
    return x


def _int_list(text: str, what: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 0:
        raise ValueError(f"{what} must be non-empty non-negative integers, got {text!r}")
    return vals


def cmd_experiment(args) -> int:
    from dataclasses import replace

    from .experiments import DIGITS, EXPERIMENTS, METHODS, QUICK, Budget, run_experiment

    if args.name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {args.name!r}; choose from {', '.join(sorted(EXPERIMENTS))}")
    seeds = _int_list(args.seeds, "--seeds")
    methods = None
    if args.methods:
        methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
        bad = set(methods) - set(METHODS) - {"lsdm_all_labels"}
        if bad:
            raise ValueError(f"unknown method(s) {sorted(bad)}")
    budget = QUICK if args.quick else (DIGITS if args.data in ("digits", "sklearn-digits") else Budget())
    for key, val in (("ae_steps", args.ae_steps), ("match_steps", args.steps), ("diffusion_steps", args.diffusion_steps),
                     ("latent_dim", args.latent_dim), ("marginal_weight", args.marginal_weight),
                     ("pseudo_label", args.pseudo_label), ("pseudo_condition", args.pseudo_condition),
                     ("ae_design", args.ae_design), ("ae_ema", args.ae_ema),
                     ("penalty_over", args.penalty_over), ("grow_latent", args.grow_latent),
                     ("grow_gain", args.grow_gain), ("latent_max", args.latent_max),
                     ("match_steps_max", args.steps_max), ("match_lr", args.match_lr)):
        if val is not None:
            budget = replace(budget, **{key: val})
    for key, val in (("ae_hidden", args.ae_hidden), ("match_hidden", args.match_hidden)):
        if val:
            widths = tuple(_int_list(val, "--" + key.replace("_", "-")))
            if not widths or min(widths) < 1:
                raise ValueError(f"--{key.replace('_', '-')}: widths must be positive integers, got {val!r}")
            budget = replace(budget, **{key: widths})
    if (budget.pseudo_label or 0) > 0 and any(s.task != "class" for s in EXPERIMENTS[args.name].settings):
        raise ValueError(f"--pseudo-label labels unpaired images with classes; experiment {args.name!r} has "
                         "float conditions (super-resolution): leave it off there")
    if (budget.pseudo_condition or 0) > 0 and any(s.task == "class" for s in EXPERIMENTS[args.name].settings):
        raise ValueError(f"--pseudo-condition predicts float conditions; experiment {args.name!r} has class labels, "
                         "which get --pseudo-label: leave it off there")
    if args.ddim_steps:
        steps = tuple(_int_list(args.ddim_steps, "--ddim-steps"))
        budget = replace(budget, ddim_steps=steps, ddim_few=min(steps), ddim_many=max(steps))
    if args.data != "digits":
        from .data import load_dataset
        load_dataset(args.data, "train"), load_dataset(args.data, "test")
    out = args.out or os.path.join("results", "experiments", args.name)
    summary = run_experiment(
        args.name, data=args.data, seeds=seeds, out=out, quick=args.quick, backend=args.backend, budget=budget,
        cache_dir=args.cache_dir, methods=methods, resume=args.resume,
        settings=tuple(x.strip() for x in args.settings.split(",") if x.strip()) if args.settings else None,
        command="lsdm " + " ".join(args.argv), fid=args.fid, progress=not args.quiet,
        log=(lambda *a: None) if args.quiet else print)
    if args.quiet:
        print(f"wrote {out}: README.md, table.md, results.json and {len(summary['figures'])} figures")
    return 0


def cmd_info(args) -> int:
    import platform

    import torch

    from . import __version__, _ext, ops

    print(f"lsdm_fast {__version__}  python {platform.python_version()}  torch {torch.__version__}")
    try:
        import triton
        print(f"triton {triton.__version__}  (TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')})")
    except ImportError:
        print("triton: not installed")
    print(f"CUDA available: {torch.cuda.is_available()}"
          + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""))
    cpu = _ext.cpu_extension()
    print("C++ extension lsdm_fast._C: " + (json.dumps(cpu.build_info()) if cpu else f"missing ({_ext.load_error('_C')})"))
    from .precision import cpu_has_fast_bf16
    if "cpp" in ops.available_backends("critic_gradient_penalty", "cpu"):
        from .ops import critic_gp_cpp
        bf16 = "native" if critic_gp_cpp.native_bf16() else "emulated in float32 (slower than ieee)"
        try:
            default = repr(critic_gp_cpp.cpu_precision(None))
        except ValueError as exc:
            default = f"none: {exc}"
        print(f"CPU bf16 matmul units (AMX-BF16 / AVX512-BF16): {'yes' if cpu_has_fast_bf16() else 'no'}; cpp critic "
              f"precision='bf16': {bf16}; default {default} ($LSDM_CPU_MATMUL_PRECISION)")
    cu = _ext.cuda_extension()
    print("CUDA extension lsdm_fast._C_cuda: " + ("built" if cu else f"missing ({_ext.load_error('_C_cuda')})"))
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for op in ops.registered_ops():
        print(f"  {op:26s} " + "  ".join(f"{d}: {ops.available_backends(op, d)}" for d in devices))
    for mod, why in ops.IMPORT_ERRORS.items():
        print(f"  backend module {mod} not loaded: {why}")
    return 0


def _set_threads(n: int | None) -> None:
    """One torch thread unless told otherwise (--threads, $LSDM_THREADS): the models are small, and on a 2-core
    machine shared with other work the default of one thread per core made `lsdm demo` several times slower."""
    import torch

    if n is None:
        env = os.environ.get("LSDM_THREADS")
        try:
            n = int(env) if env else 1
        except ValueError:
            raise ValueError(f"LSDM_THREADS must be a positive integer, got {env!r}") from None
        if n < 1:
            raise ValueError(f"LSDM_THREADS must be a positive integer, got {env!r}")
    torch.set_num_threads(n)


def _init_distributed(args) -> None:
    """Under torchrun (WORLD_SIZE > 1): join the process group (nccl on GPUs, else gloo); each
    rank uses cuda:LOCAL_RANK when --device is cuda/auto on a GPU machine."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    local = int(os.environ.get("LOCAL_RANK", "0"))
    gpu = args.device in ("cuda", "auto") and torch.cuda.is_available()
    if gpu:
        torch.cuda.set_device(local)
        args.device = f"cuda:{local}"
    dist.init_process_group("nccl" if gpu else "gloo")


def _explicit_dests(argv) -> set[str]:
    """The options given on the command line (not defaulted): argv parsed with every default suppressed."""
    quiet = build_parser()
    for action in quiet._subparsers._group_actions[0].choices["train"]._actions:
        action.default = argparse.SUPPRESS
    return set(vars(quiet.parse_args(argv)))


def main(argv=None) -> int:
    from .data import DataError

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv)
    if args.command == "train":
        if args.data is None and args.resume is None:
            parser.error("train: --data is required (or --resume DIR to continue a checkpointed run)")
        args._explicit = _explicit_dests(argv)
    handler = {"demo": cmd_demo, "train": cmd_train, "sample": cmd_sample, "experiment": cmd_experiment,
               "info": cmd_info}[args.command]
    from .io import Terminated

    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning(args.command)
        try:
            if hasattr(args, "threads"):
                _set_threads(args.threads)
            if args.command in ("demo", "train"):
                _init_distributed(args)
            _note_interpreter(args)
            return handler(args)
        except (DataError, ValueError, OSError, RuntimeError) as exc:  # OSError: missing, existing, unwritable files
            print(f"lsdm {args.command}: error: {_one_line(exc)}", file=sys.stderr)
            return 2
        except Terminated as exc:
            print(f"lsdm {args.command}: {exc}; partial files removed", file=sys.stderr)
            return 143
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _one_line_warning(command: str):
    """Warnings as one line each, `lsdm CMD: warning: ...` (not Python's file:line and source echo)."""
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"lsdm {command}: warning: {_one_line(message)}", file=sys.stderr if file is None else file)
    return show


def _note_interpreter(args) -> None:
    """Triton's interpreter (TRITON_INTERPRET=1) runs kernels on the CPU thousands of times slower: say so before a
    long silence (it is for tests, not runs)."""
    backend = getattr(args, "backend", None)
    if os.environ.get("TRITON_INTERPRET") == "1" and backend == "triton":
        warnings.warn("TRITON_INTERPRET=1: the Triton kernels run in Triton's CPU interpreter, thousands of times "
                      "slower than compiled (two stage-2 steps have taken minutes); it is meant for tests: unset it, "
                      "or use --backend auto", UserWarning, stacklevel=2)


if __name__ == "__main__":
    sys.exit(main())
