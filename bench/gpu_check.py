"""The one-shot GPU check (run it through bench/gpu_check.sh): on a bare CUDA machine, build the
extension for sm_90, run the parity tests, measure the machine's ceilings, time the hot paths that carry
the issue-22 targets (the default model first), then a short real training run (given a data folder); pack
everything into OUTDIR/gpu_check.tar.gz and write a short OUTDIR/summary.txt (measured against
the roofline estimates of lsdm_fast/ops/roofline.py). OUTDIR ends with those two files only: the
machine that runs this returns at most 8.

    bench/gpu_check.sh OUTDIR [DATA]             # DATA: a folder of MNIST IDX files, or 'digits'
    bench/gpu_check.sh --dry-run OUTDIR          # what would run; only the CPU-side records

Steps, in order, each with its own cap (seconds; a step gets the smaller of its cap and what is
left of GPU_CHECK_BUDGET_S, default 510: a run of at most 9 minutes with the start-up):

  environment      15   nvidia-smi, nvcc, package versions, the commit
  build           190   pip install --no-build-isolation --no-deps -e . (CUDA_HOME, LSDM_CUDA_ARCH=90)
  parity          100   pytest -m "gpu or parity" (8 xdist workers where installed: the JIT compiles are CPU work)
  ceilings         20   HBM copy, L2 read, bf16 and TF32 matrix rates on this GPU
  bench-patch      90   generate / encode 2^20 rows of the default model (the patch autoencoder, W 96): the
                        fused backends first, then eager fp32 / bf16, CUDA graph, torch.compile; peak memory
  bench-critic     60   critic step B = 256 / 4096 / 65536, width 512: eager fp32, eager TF32, the CUDA
                        graph of eager, the Triton and CUDA ops eager and graph-captured
  training-timing  75   (given DATA) a real fit, stage 1 (200 steps) and stage 2 (2,000 generator steps),
                        backend torch vs auto
  bench-mlp        75   generate / encode 2^20 rows, MLP model: eager fp32 / bf16, CUDA graph, torch.compile,
                        the fused backends

A step that fails or runs out of time does not stop the next; a step no time is left for is
skipped and says so. A step past its cap gets SIGINT first, so pytest still writes its JUnit XML
and pytest-benchmark its JSON for what finished. The tarball and summary are rewritten after every
step, so a run cut short still returns what it did. Without CUDA (or with --dry-run) the GPU steps
are skipped and the summary says why.

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
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUDGET_S = float(os.environ.get("GPU_CHECK_BUDGET_S", "510"))
GRACE_S = 15.0  # after SIGINT, before SIGKILL: pytest writes its reports
MIN_STEP_S = 10.0  # a step with less time than this left is skipped
TARBALL, SUMMARY = "gpu_check.tar.gz", "summary.txt"
STAGE2_STEPS = 2000
# pytest-benchmark on the GPU: few, short rounds (the budget), no calibration warm-up
BENCH_OPTS = ("--benchmark-only -q -p no:cacheprovider --benchmark-min-rounds=3 --benchmark-max-time=0.1 "
              "--benchmark-warmup=off")
BASELINES = {"bench-critic": "eager", "bench-mlp": "eager-fp32", "bench-patch": "eager-fp32"}


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


def build_steps(work: str, data: str | None, python: str) -> list[Step]:
    py, w = shlex.quote(python), shlex.quote(work)
    bench = f"{py} -m pytest {BENCH_OPTS}"
    # order = priority (a run cut short keeps what matters most): the build, the kernels' parity on this GPU, then
    # the default model's hot paths, the critic, a real training run, the MLP model last
    steps = [
        Step("environment", f"(nvidia-smi || echo 'nvidia-smi: not available'); "
                            f"(nvcc --version || $CUDA_HOME/bin/nvcc --version || echo 'nvcc: not found'); "
                            # the C++ compiler the build will use, and the C++ runtime: on the H200 image an
                            # extension built with /opt/gcc's g++ crashed formatting error messages (bench/RESULTS.md)
                            f"(which c++ g++; ${{CXX:-c++}} --version | head -1; g++ --version | head -1; "
                            f"ldconfig -p | grep libstdc++) 2>&1 || true; "
                            f"{py} bench/gpu_check.py versions; git log -1 --oneline 2>/dev/null || true", 15, gpu=False),
        Step("build", f"CUDA_HOME=${{CUDA_HOME:-/usr/local/cuda}} LSDM_CUDA_ARCH=90 MAX_JOBS=${{MAX_JOBS:-16}} "
                      f"{py} -m pip install --no-build-isolation --no-deps -v -e . && {py} -m lsdm_fast.cli info", 190),
        # xdist when the machine has it: the Triton JIT compiles are CPU work
        Step("parity", f"{py} -m pytest tests -m 'gpu or parity' -q -rfEs -p no:cacheprovider "
                       f"$({py} -c 'import xdist' 2>/dev/null && echo '-n 8') "
                       f"--continue-on-collection-errors --junitxml={w}/parity.xml", 100),
        Step("ceilings", f"{py} bench/gpu_check.py ceilings --out {w}/ceilings.json", 20),
        Step("bench-patch", f"LSDM_BENCH_ROWS=1048576 {bench} bench/bench_encode_generate.py "
                            f"-k 'patch_model and not torch' --benchmark-json={w}/bench-patch.json", 90),
        Step("bench-critic", f"LSDM_BENCH_WIDTHS=512 {bench} bench/bench_critic_step.py -k 'not torch' "
                             f"--benchmark-json={w}/bench-critic.json", 60),
    ]
    if data:
        steps.append(Step("training-timing", f"{py} bench/gpu_check.py stage2-timing --data {shlex.quote(data)} "
                                             f"--out {w}/stage2_timing.json", 75))
    steps.append(Step("bench-mlp", f"LSDM_BENCH_ROWS=1048576 {bench} bench/bench_encode_generate.py "
                                   f"-k '(bench_generate or bench_encode) and not torch' "
                                   f"--benchmark-json={w}/bench-mlp.json", 75))
    for b in ("bench-critic", "bench-mlp", "bench-patch"):
        steps.append(Step(f"{b}-report", f"{py} bench/report.py {w}/{b}.json --baseline {BASELINES[b]} > {w}/{b}.md",
                          15, gpu=False, needs=[os.path.join(work, f"{b}.json")]))
    return steps


def _run(command: str, cap_s: float, log_path: str) -> tuple[int, bool]:
    """(exit code, timed out); past cap_s: SIGINT to the process group, SIGKILL after GRACE_S."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p),
           "PYTHONUNBUFFERED": "1"}
    with open(log_path, "w") as log:
        log.write(f"$ {command}\n")
        log.flush()
        # SIGINT back to its default in the step: a check started in the background or under nohup inherits it
        # ignored, and then neither bash's traps nor pytest's report-on-interrupt would ever see it
        proc = subprocess.Popen(["bash", "-c", command], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
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


def run_steps(steps: list[Step], work: str, out: str | None = None, *, budget_s: float,
              skip_gpu: str | None) -> list[Result]:
    """Run the steps in order within budget_s; `skip_gpu`: why the GPU steps are skipped (None: run
    them). Logs and results go to `work`; after every step the summary is rewritten and, given
    `out`, everything is packed there (pack)."""
    start, results = time.monotonic(), []
    for s in steps:
        left = budget_s - (time.monotonic() - start)
        missing = [f for f in s.needs if not os.path.exists(f)]
        log = f"{s.name}.log"
        if s.gpu and skip_gpu:
            results.append(Result(s.name, "skipped", None, 0.0, None, skip_gpu, s.command))
        elif missing:
            results.append(Result(s.name, "skipped", None, 0.0, None,
                                  f"{', '.join(os.path.basename(m) for m in missing)} not written", s.command))
        elif left - GRACE_S < MIN_STEP_S:
            results.append(Result(s.name, "skipped", None, 0.0, None,
                                  f"out of time ({left:.0f} s of the {budget_s:.0f} s budget left)", s.command))
        else:
            cap = min(s.cap_s, left - GRACE_S)
            t0 = time.monotonic()
            rc, timed_out = _run(s.command, cap, os.path.join(work, log))
            status = "timed out" if timed_out else "ok" if rc == 0 else "failed"
            note = f"stopped after its {cap:.0f} s cap" if timed_out else ""
            results.append(Result(s.name, status, rc, time.monotonic() - t0, log, note, s.command))
        write_summary(results, work, time.monotonic() - start, budget_s, skip_gpu)
        if out is not None:
            pack(work, out)
    return results


def write_summary(results: list[Result], work: str, elapsed: float, budget_s: float, skip_gpu: str | None) -> str:
    """summary.json (everything) and summary.txt (short: steps, then the hot paths against their
    estimates and targets) in `work`; returns the text."""
    lines = [f"GPU check: {elapsed:.0f} s of a {budget_s:.0f} s budget; "
             + (f"GPU steps skipped: {skip_gpu}." if skip_gpu else "GPU steps run."), ""]
    for r in results:
        rc = "" if r.rc is None else f" rc={r.rc}"
        lines.append(f"  {r.name:<22} {r.status:<9}{rc:<7} {r.seconds:6.1f} s  {r.note}")
    try:
        lines += ["", *hot_path_lines(work)]
    except Exception as exc:  # noqa: BLE001 - the step table must be written whatever the results hold
        lines += ["", f"(hot paths not summarised: {type(exc).__name__}: {exc})"]
    text = "\n".join(lines) + "\n"
    _write(os.path.join(work, SUMMARY), text)
    _write(os.path.join(work, "summary.json"),
           json.dumps({"elapsed_s": elapsed, "budget_s": budget_s, "gpu_skipped": skip_gpu,
                       "steps": [asdict(r) for r in results]}, indent=1))
    return text


def _write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def pack(work: str, out: str) -> None:
    """OUTDIR/gpu_check.tar.gz (every file of `work`) and OUTDIR/summary.txt, each written atomically."""
    tmp = os.path.join(out, TARBALL + ".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for name in sorted(os.listdir(work)):
            tar.add(os.path.join(work, name), arcname=os.path.join("gpu_check", name))
    os.replace(tmp, os.path.join(out, TARBALL))
    with open(os.path.join(work, SUMMARY)) as f:
        _write(os.path.join(out, SUMMARY), f.read())


# ------------------------------------------------------------------------------ the hot paths

def _medians(path: str) -> dict[tuple[str, str], dict]:
    """{(group, variant): {"ms": median ms, **extra_info}} of a pytest-benchmark JSON file."""
    if not os.path.exists(path):
        return {}
    out = {}
    for b in json.load(open(path)).get("benchmarks", []):
        variant = (b.get("params") or {}).get("variant", b["name"])
        out[(b.get("group") or "", variant)] = {"ms": b["stats"]["median"] * 1e3, **(b.get("extra_info") or {})}
    return out


def _fmt(row: dict | None, key: str = "ms") -> str:
    if not row or row.get(key) is None:
        return "-"
    return f"{row[key]:.3f}" if key == "ms" else f"{row[key]:.2f}"


def hot_path_lines(work: str) -> list[str]:
    """The issue-22 hot paths: the best fused variant against the target, the roofline estimate and
    the eager / graph / compile competitors measured in the same run (ms, medians)."""
    sys.path.insert(0, ROOT)
    from lsdm_fast.ops import roofline  # noqa: PLC0415 - only where the package imports

    est = {name: roofline.total(costs, graph=True) for name, _, costs in roofline.hot_paths()}
    critic, mlp, default = (_medians(os.path.join(work, f"{b}.json"))
                            for b in ("bench-critic", "bench-mlp", "bench-patch"))
    lines = ["hot path | target | best fused (ms) | estimate (ms) | eager fp32 | eager TF32/bf16 | eager graph | "
             "compile | peak extra GB"]

    def best(rows, group, prefixes):
        cands = {v: r for (g, v), r in rows.items() if g == group and v.startswith(prefixes)}
        return min(cands.items(), key=lambda kv: kv[1]["ms"], default=(None, None))

    def line(name, target, rows, group, fused, eager, half, graph, compile_, estimate):
        v, r = best(rows, group, fused)
        e = est.get(estimate)
        peak = rows.get((group, v), {}).get("peak_extra_gb") if v else None
        lines.append(" | ".join([name, target, f"{_fmt(r)} ({v})" if v else "-",
                                 f"{e[0] * 1e3:.2f}-{e[1] * 1e3:.2f}" if e else "-",
                                 _fmt(rows.get((group, eager))), _fmt(rows.get((group, half))),
                                 _fmt(rows.get((group, graph))), _fmt(rows.get((group, compile_))),
                                 f"{peak:.2f}" if peak is not None else "-"]))

    for B, target in ((256, "<= 0.15"), (4096, "-"), (65536, "<= 2.5")):
        line(f"critic step B={B} w512", target, critic, f"critic step cuda batch={B} width=512", ("op:", "graph:"),
             "eager", "eager_tf32", "eager_cuda_graph", "-", f"critic step B={B}, 26-512-512-1, Triton")
    for op, target, key in (("generate", "<= 3", "generate 2^20 MLP bf16, Triton"),
                            ("encode", "<= 3.5", "encode 2^20 MLP bf16, Triton")):
        line(f"{op} 2^20 MLP", target, mlp, f"{op}-1048576", ("lsdm-",), "eager-fp32", "eager-bf16",
             "cudagraph-bf16", "compile-bf16", key)
    # the default model: the patch autoencoder at W 96 (the bench builds it from the package defaults)
    for op, target, key in (("generate", "<= 8, <= 4 GB", "generate 2^20 patch model, W 96 (BM 64)"),
                            ("encode", "<= 8", "encode 2^20 patch model, W 96")):
        line(f"{op} 2^20 patch model (default, W 96)", target, default, f"patch-model-{op}-1048576", ("lsdm-",),
             "eager-fp32", "eager-bf16", "cudagraph-bf16", "compile-bf16", key)
    ceil = os.path.join(work, "ceilings.json")
    if os.path.exists(ceil):
        c = json.load(open(ceil))
        lines += ["", "ceilings measured here: " + ", ".join(f"{k} {v:.3g}" for k, v in c.items()
                                                            if isinstance(v, (int, float)))]
    s2 = os.path.join(work, "stage2_timing.json")
    if os.path.exists(s2):
        lines += ["", "training (stage 1 includes its first-call start-up): " + "; ".join(
            f"stage 2 {r['backend']} ({r.get('backend_ran')}) {r['ms_per_generator_step']:.2f} ms/step "
            f"(+ {r.get('stage2_other_seconds', float('nan')):.1f} s outside the steps), stage 1 "
            f"{r.get('ms_per_stage1_step', float('nan')):.2f} ms/step" for r in json.load(open(s2)))]
    return lines


# ------------------------------------------------------------------------------ subcommands

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
        p = torch.cuda.get_device_properties(i)
        print("device", i, p.name, "capability", (p.major, p.minor), "SMs", p.multi_processor_count,
              "L2", getattr(p, "L2_cache_size", "?"), "memory", p.total_memory)
    return 0


def ceilings(out: str) -> int:
    """HBM copy (bytes read + written), L2-resident reads (a Triton kernel re-reading a 24 MB buffer),
    bf16 and TF32 matrix products 8192^3, on this GPU: the ceilings to read the timings against."""
    import torch
    import triton
    import triton.language as tl

    def timed(fn, reps=10):
        fn()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3 / reps

    res = {"device": torch.cuda.get_device_name()}
    x = torch.empty(2**29, dtype=torch.float32, device="cuda")  # 2 GiB
    y = torch.empty_like(x)
    res["hbm_copy_TBps"] = 2 * x.numel() * 4 / timed(lambda: y.copy_(x)) / 1e12
    del x, y

    @triton.jit
    def l2_read(X, OUT, N, REPS, BLOCK: tl.constexpr):
        pid, nprog = tl.program_id(0), tl.num_programs(0)
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for _ in range(REPS):
            for b in range(pid, N // BLOCK, nprog):
                acc += tl.load(X + b * BLOCK + tl.arange(0, BLOCK))
        tl.store(OUT + pid * BLOCK + tl.arange(0, BLOCK), acc)

    n, reps = 6 * 2**20, 20  # 24 MB: stays in the L2
    buf = torch.rand(n, device="cuda")
    grid = 4 * torch.cuda.get_device_properties(0).multi_processor_count
    sink = torch.empty(grid * 2048, device="cuda")
    res["l2_read_TBps"] = reps * n * 4 / timed(lambda: l2_read[(grid,)](buf, sink, n, reps, BLOCK=2048)) / 1e12
    for name, dtype, tf32 in (("bf16_TFLOPs", torch.bfloat16, False), ("tf32_TFLOPs", torch.float32, True)):
        a = torch.randn(8192, 8192, device="cuda", dtype=dtype)
        b = torch.randn(8192, 8192, device="cuda", dtype=dtype)
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            res[name] = 2 * 8192**3 / timed(lambda: a @ b) / 1e12
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old
    print(json.dumps(res))
    _write(out, json.dumps(res, indent=1))
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
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from stage2_profile import timing_the_step_loop  # bench/, this script's folder

    rows = []
    for backend in ("torch", "auto"):
        # grow_latent 0: the default architecture at its starting latent (32), as a full MNIST fit ends; a
        # 200-step stage 1 would otherwise grow it
        cfg = LSDMConfig(AutoencoderConfig(stop="steps", steps=ae_steps, grow_latent=0.0),
                         MatchingConfig(steps=steps, backend=backend),
                         device=device)
        with timing_the_step_loop(device) as loop:
            model = LSDM(cfg).fit(torch.from_numpy(train.labels[split.paired]),
                                  torch.from_numpy(train.images[split.paired]),
                                  torch.from_numpy(train.images[split.unpaired]), num_classes=train.num_classes,
                                  progress=False)
        sec = model.history["seconds"]["stage2"]
        sec1 = model.history["seconds"]["stage1"]
        # the generator-step loop apart from the rest of stage 2 (encoding every image, the pseudo-label
        # classifier): the first GPU session divided all of stage 2 by the steps (7.7 ms "per step", 1.7 ms real)
        rows.append({"backend": backend, "backend_ran": model.history.get("backend"), "steps": steps,
                     "stage1_steps": ae_steps, "stage1_seconds": sec1, "ms_per_stage1_step": 1e3 * sec1 / ae_steps,
                     "latent_dim": model.generator.latent_dim,
                     "stage2_seconds": sec, "stage2_loop_seconds": loop["seconds"],
                     "stage2_other_seconds": sec - loop["seconds"],
                     "ms_per_generator_step": 1e3 * loop["seconds"] / steps,
                     "final_wasserstein": model.history["wasserstein"][-1],
                     "device": torch.cuda.get_device_name() if device == "cuda" else device})
        print(json.dumps(rows[-1]))
    _write(out, json.dumps(rows, indent=1))
    return 0


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "versions":
        return versions()
    if argv and argv[0] == "ceilings":
        ap = argparse.ArgumentParser(prog="gpu_check.py ceilings")
        ap.add_argument("--out", required=True)
        return ceilings(ap.parse_args(argv[1:]).out)
    if argv and argv[0] == "stage2-timing":
        ap = argparse.ArgumentParser(prog="gpu_check.py stage2-timing")
        ap.add_argument("--data", required=True)
        ap.add_argument("--out", required=True)
        ap.add_argument("--steps", type=int, default=STAGE2_STEPS, help="stage-2 generator steps")
        ap.add_argument("--ae-steps", type=int, default=200, help="stage-1 steps (not timed)")
        ap.add_argument("--device", default="cuda")
        ap.add_argument("--n-per-class", type=int, default=100, help="pairs per class")
        ap.add_argument("--m-unpaired", type=int, default=5000, help="unpaired images for stage 1")
        a = ap.parse_args(argv[1:])
        return stage2_timing(a.data, a.out, a.steps, a.ae_steps, a.device, a.n_per_class, a.m_unpaired)
    ap = argparse.ArgumentParser(prog="bench/gpu_check.sh", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="skip every GPU step; record what would run")
    ap.add_argument("out", help="output folder: gpu_check.tar.gz and summary.txt land there")
    ap.add_argument("data", nargs="?", default=None, help="data folder (MNIST IDX files) or 'digits': time stage 2")
    a = ap.parse_args(argv)
    out = os.path.abspath(a.out)
    os.makedirs(out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="gpu_check_")  # packed into out after every step
    python = sys.executable
    skip = ("--dry-run given" if a.dry_run else None if cuda_available(python)
            else "no CUDA device (torch.cuda.is_available() is False)")
    results = run_steps(build_steps(work, a.data, python), work, out, budget_s=BUDGET_S, skip_gpu=skip)
    print(open(os.path.join(out, SUMMARY)).read())
    return 0 if all(r.status in ("ok", "skipped") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
