"""The one-shot GPU check (run it through bench/gpu_check.sh): on a bare CUDA machine, record the
machine, build the extension for sm_90, run the CUDA tests and the parity tests, run every
bench/bench_*.py with JSON + markdown output and, given a data folder, time a short real stage 2.
Everything lands in OUTDIR; OUTDIR/summary.md lists each step's exit code, time and log.

    bench/gpu_check.sh OUTDIR [DATA]             # DATA: a folder of MNIST IDX files, or 'digits'
    bench/gpu_check.sh --dry-run OUTDIR          # what would run; only the CPU-side records

The whole run fits GPU_CHECK_BUDGET_S seconds (default 450: under 8 minutes with the start-up);
each step has its own cap within what is left, a step that fails or runs out of time does not stop
the next, and a step that no time is left for is skipped and says so. A step past its cap gets
SIGINT first, so pytest still writes its JUnit XML and pytest-benchmark its JSON for what finished.
Without CUDA (or with --dry-run) the GPU steps are skipped and the summary says why.

Standard library only at the top level: the runner must work where the package does not import.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUDGET_S = float(os.environ.get("GPU_CHECK_BUDGET_S", "450"))
GRACE_S = 15.0  # after SIGINT, before SIGKILL: pytest writes its reports
MIN_STEP_S = 10.0  # a step with less time than this left is skipped
# the variant each benchmark's speed-ups are taken against (bench/report.py --baseline)
BASELINES = {"bench_critic_step": "eager", "bench_stage2_step": "sync:torch", "bench_encode_generate": "eager-fp32"}
# benchmarks in order of importance: with little time left the first ones still run
BENCH_ORDER = ["bench_critic_step", "bench_stage2_step", "bench_encode_generate"]


@dataclass
class Step:
    name: str
    command: str  # run with bash -c in the repository root
    cap_s: float
    gpu: bool = True  # skipped in a dry run
    needs: list[str] = field(default_factory=list)  # files that must exist (else skipped)


@dataclass
class Result:
    name: str
    status: str  # "ok", "failed", "timed out", "skipped"
    rc: int | None
    seconds: float
    log: str | None
    note: str = ""
    command: str = ""


def build_steps(out: str, data: str | None, python: str) -> list[Step]:
    py, o = shlex.quote(python), shlex.quote(out)
    # a test module that cannot be imported here (a missing optional package) must not stop the others
    pytest_opts = "-q -rfEs -p no:cacheprovider --continue-on-collection-errors"
    steps = [
        Step("environment", f"(nvidia-smi || echo 'nvidia-smi: not available'); "
                            f"(nvcc --version || $CUDA_HOME/bin/nvcc --version || echo 'nvcc: not found'); "
                            f"{py} bench/gpu_check.py versions; git log -1 --oneline 2>/dev/null || true", 60, gpu=False),
        Step("build", f"CUDA_HOME=${{CUDA_HOME:-/usr/local/cuda}} LSDM_CUDA_ARCH=90 MAX_JOBS=${{MAX_JOBS:-16}} "
                      f"{py} -m pip install --no-build-isolation --no-deps -v -e .", 200),
        Step("info", f"{py} -m lsdm_fast.cli info", 60),
        Step("tests-cuda", f"{py} -m pytest tests -m gpu {pytest_opts} --junitxml={o}/tests-cuda.xml", 90),
        Step("tests-parity", f"{py} -m pytest tests -m 'parity and not gpu' {pytest_opts} "
                             f"--junitxml={o}/tests-parity.xml", 150),
    ]
    benches = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "bench")) if f.startswith("bench_") and f.endswith(".py"))
    for b in sorted(benches, key=lambda b: (BENCH_ORDER.index(b) if b in BENCH_ORDER else len(BENCH_ORDER), b)):
        steps.append(Step(b, f"{py} -m pytest bench/{b}.py --benchmark-only -q -p no:cacheprovider "
                             f"--benchmark-json={o}/{b}.json", 100))
        steps.append(Step(f"{b}-report", f"{py} bench/report.py {o}/{b}.json --baseline {BASELINES.get(b, 'eager')} "
                                          f"> {o}/{b}.md", 30, gpu=False, needs=[f"{out}/{b}.json"]))
    if data:
        steps.append(Step("stage2-timing", f"{py} bench/gpu_check.py stage2-timing --data {shlex.quote(data)} "
                                           f"--out {o}/stage2_timing.json", 90))
    return steps


def _run(command: str, cap_s: float, log_path: str) -> tuple[int, bool]:
    """(exit code, timed out); past cap_s: SIGINT to the process group, SIGKILL after GRACE_S."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p),
           "PYTHONUNBUFFERED": "1"}
    with open(log_path, "w") as log:
        log.write(f"$ {command}\n")
        log.flush()
        proc = subprocess.Popen(["bash", "-c", command], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
        try:
            return proc.wait(timeout=cap_s), False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                pass
            try:  # whatever is left of the step (its shell, workers it started)
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            return 124, True


def run_steps(steps: list[Step], out: str, *, budget_s: float, skip_gpu: str | None) -> list[Result]:
    """Run the steps in order within budget_s; `skip_gpu`: why the GPU steps are skipped (None: run them)."""
    start, results = time.monotonic(), []
    for s in steps:
        left = budget_s - (time.monotonic() - start)
        missing = [f for f in s.needs if not os.path.exists(f)]
        log = f"{s.name}.log"
        if s.gpu and skip_gpu:
            results.append(Result(s.name, "skipped", None, 0.0, None, skip_gpu, s.command))
        elif missing:
            results.append(Result(s.name, "skipped", None, 0.0, None, f"{', '.join(missing)} not written", s.command))
        elif left - GRACE_S < MIN_STEP_S:
            results.append(Result(s.name, "skipped", None, 0.0, None,
                                  f"out of time ({left:.0f} s of the {budget_s:.0f} s budget left)", s.command))
        else:
            cap = min(s.cap_s, left - GRACE_S)
            t0 = time.monotonic()
            rc, timed_out = _run(s.command, cap, os.path.join(out, log))
            status = "timed out" if timed_out else "ok" if rc == 0 else "failed"
            note = f"stopped after its {cap:.0f} s cap" if timed_out else ""
            results.append(Result(s.name, status, rc, time.monotonic() - t0, log, note, s.command))
        write_summary(results, out, time.monotonic() - start, budget_s, skip_gpu)
    return results


def write_summary(results: list[Result], out: str, elapsed: float, budget_s: float, skip_gpu: str | None) -> None:
    lines = ["# GPU check", "",
             f"{elapsed:.0f} s of a {budget_s:.0f} s budget. "
             + (f"GPU steps skipped: {skip_gpu}." if skip_gpu else "GPU steps run."), "",
             "| step | status | rc | seconds | log | note |", "|---|---|---:|---:|---|---|"]
    for r in results:
        lines.append(f"| {r.name} | {r.status} | {'' if r.rc is None else r.rc} | {r.seconds:.1f} | "
                     f"{r.log or ''} | {r.note} |")
    lines += ["", "## Commands", ""] + [f"- `{r.name}`: `{r.command}`" for r in results]
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump({"elapsed_s": elapsed, "budget_s": budget_s, "gpu_skipped": skip_gpu,
                   "steps": [r.__dict__ for r in results]}, f, indent=1)


def cuda_available(python: str) -> bool:
    probe = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"
    try:
        return subprocess.run([python, "-c", probe], capture_output=True, timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


# what the package, its tests, benchmarks and build need (distribution names)
DISTRIBUTIONS = ("torch", "triton", "numpy", "pytest", "pytest-benchmark", "hypothesis", "safetensors", "tqdm",
                 "scikit-learn", "scipy", "matplotlib", "POT", "setuptools", "wheel", "pybind11", "ninja")


def versions() -> int:
    """Python, the installed version of each distribution (read from metadata, nothing imported but
    torch) and the CUDA devices torch sees."""
    import platform
    from importlib import metadata

    print("python", platform.python_version(), sys.executable)
    for dist in DISTRIBUTIONS:
        try:
            print(dist, metadata.version(dist))
        except metadata.PackageNotFoundError:
            print(dist, "NOT INSTALLED")
    import torch

    print("torch.version.cuda", torch.version.cuda, "| cuda available", torch.cuda.is_available())
    for i in range(torch.cuda.device_count()):
        print("device", i, torch.cuda.get_device_name(i), "capability", torch.cuda.get_device_capability(i))
    return 0


def stage2_timing(data: str, out: str, steps: int, ae_steps: int, device: str, n_per_class: int,
                  m_unpaired: int) -> int:
    """Stage 2 of a short real run, backend torch against auto (fixed seed and split)."""
    import torch

    from lsdm_fast import LSDM, AutoencoderConfig, LSDMConfig, MatchingConfig
    from lsdm_fast.data import load_dataset, split_paired_unpaired

    train = load_dataset(data, "train")
    split = split_paired_unpaired(train.labels, n_per_class=n_per_class, m_unpaired=m_unpaired, seed=0,
                                  num_classes=train.num_classes)
    rows = []
    for backend in ("torch", "auto"):
        cfg = LSDMConfig(AutoencoderConfig(steps=ae_steps), MatchingConfig(steps=steps, backend=backend), device=device)
        model = LSDM(cfg).fit(torch.from_numpy(train.labels[split.paired]), torch.from_numpy(train.images[split.paired]),
                              torch.from_numpy(train.images[split.unpaired]), num_classes=train.num_classes,
                              progress=False)
        sec = model.history["seconds"]["stage2"]
        rows.append({"backend": backend, "backend_ran": model.history.get("backend"), "steps": steps,
                     "stage2_seconds": sec, "ms_per_generator_step": 1e3 * sec / steps,
                     "final_wasserstein": model.history["wasserstein"][-1],
                     "device": torch.cuda.get_device_name() if device == "cuda" else device})
        print(json.dumps(rows[-1]))
    with open(out, "w") as f:
        json.dump(rows, f, indent=1)
    return 0


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "versions":
        return versions()
    if argv and argv[0] == "stage2-timing":
        ap = argparse.ArgumentParser(prog="gpu_check.py stage2-timing")
        ap.add_argument("--data", required=True)
        ap.add_argument("--out", required=True)
        ap.add_argument("--steps", type=int, default=300, help="stage-2 generator steps")
        ap.add_argument("--ae-steps", type=int, default=200, help="stage-1 steps (not timed)")
        ap.add_argument("--device", default="cuda")
        ap.add_argument("--n-per-class", type=int, default=100, help="pairs per class")
        ap.add_argument("--m-unpaired", type=int, default=5000, help="unpaired images for stage 1")
        a = ap.parse_args(argv[1:])
        return stage2_timing(a.data, a.out, a.steps, a.ae_steps, a.device, a.n_per_class, a.m_unpaired)
    ap = argparse.ArgumentParser(prog="bench/gpu_check.sh", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="skip every GPU step; record what would run")
    ap.add_argument("out", help="output folder")
    ap.add_argument("data", nargs="?", default=None, help="data folder (MNIST IDX files) or 'digits': time a short stage 2")
    a = ap.parse_args(argv)
    out = os.path.abspath(a.out)
    os.makedirs(out, exist_ok=True)
    python = sys.executable
    skip = ("--dry-run given" if a.dry_run else None if cuda_available(python)
            else "no CUDA device (torch.cuda.is_available() is False)")
    results = run_steps(build_steps(out, a.data, python), out, budget_s=BUDGET_S, skip_gpu=skip)
    print(open(os.path.join(out, "summary.md")).read())
    return 0 if all(r.status in ("ok", "skipped") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
