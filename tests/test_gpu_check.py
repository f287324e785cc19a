"""bench/gpu_check.sh: the dry run skips the GPU steps cleanly, says so and leaves OUTDIR with the
tarball and summary.txt only (the GPU machine returns at most 8 files); the parity tests come right after
the build and the benchmarks that carry the targets still fit the budget when both take their whole caps;
the runner records every step's exit code, goes on after a failure, interrupts a step past its cap
(SIGINT first, so pytest can write its reports), skips what the time budget no longer allows and
repacks after every step; the summary reads the benchmark JSON against the estimates;
bench/report.py turns a pytest-benchmark JSON file into the markdown table."""
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", os.path.join(ROOT, "bench", "gpu_check.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    yield mod
    del sys.modules["gpu_check"]


def _members(tarball) -> dict[str, str]:
    with tarfile.open(tarball) as tar:
        return {os.path.basename(m.name): tar.extractfile(m).read().decode() for m in tar.getmembers() if m.isfile()}


def test_dry_run_skips_the_gpu_steps_and_returns_two_files(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(["bash", os.path.join(ROOT, "bench", "gpu_check.sh"), "--dry-run", str(out), "digits"],
                          env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(os.listdir(out)) == ["gpu_check.tar.gz", "summary.txt"]
    files = _members(out / "gpu_check.tar.gz")
    assert {"environment.log", "summary.json", "summary.txt"} <= set(files)
    summary = json.loads(files["summary.json"])
    steps = {s["name"]: s for s in summary["steps"]}
    assert summary["gpu_skipped"] == "--dry-run given"
    assert steps["environment"]["status"] == "ok" and "torch" in files["environment.log"]
    gpu_steps = ["build", "ceilings", "bench-critic", "bench-mlp", "bench-patch", "training-timing", "parity"]
    for name in gpu_steps:
        assert steps[name]["status"] == "skipped" and steps[name]["note"] == "--dry-run given", name
    for b in ("bench-critic", "bench-mlp", "bench-patch"):
        assert f"--benchmark-json=" in steps[b]["command"] and b + ".json" in steps[b]["command"]
        assert steps[f"{b}-report"]["status"] == "skipped" and "not written" in steps[f"{b}-report"]["note"]
    assert "LSDM_CUDA_ARCH=90" in steps["build"]["command"] and "--no-deps" in steps["build"]["command"]
    assert "--no-build-isolation" in steps["build"]["command"]
    assert "LSDM_BENCH_WIDTHS=512" in steps["bench-critic"]["command"]
    assert "LSDM_BENCH_ROWS=1048576" in steps["bench-mlp"]["command"]
    assert "--junitxml" in steps["parity"]["command"] and "gpu or parity" in steps["parity"]["command"]
    text = (out / "summary.txt").read_text()
    assert text == files["summary.txt"]
    assert "GPU steps skipped: --dry-run given." in text and "parity" in text
    assert "critic step B=65536 w512 | <= 2.5 |" in text  # the hot-path table, with its estimates


def test_the_targets_run_first_and_fit_the_budget(gpu_check, tmp_path):
    """The build, then the kernels' parity, then the default model's hot paths, the critic, a real training run and
    the MLP model last; even with the build and parity at their whole caps, the default model's and the critic's
    benchmarks still have their whole caps inside the budget; python3 comes first in the shell wrapper."""
    steps = gpu_check.build_steps(str(tmp_path), "data", "python3")
    names = [s.name for s in steps]
    assert names.index("build") < names.index("parity") < names.index("bench-patch") < names.index("bench-critic")
    assert names.index("bench-critic") < names.index("training-timing") < names.index("bench-mlp")
    through_benches = sum(s.cap_s for s in steps[:names.index("bench-critic") + 1])
    assert through_benches + gpu_check.GRACE_S <= gpu_check.BUDGET_S <= 9 * 60 - 20
    sh = open(os.path.join(ROOT, "bench", "gpu_check.sh")).read()
    assert "command -v python3 || command -v python" in sh


def test_runner_records_failures_timeouts_the_budget_and_repacks(gpu_check, tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "GRACE_S", 2.0)
    monkeypatch.setattr(gpu_check, "MIN_STEP_S", 1.0)
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    flag = tmp_path / "interrupted"
    S = gpu_check.Step
    steps = [
        S("fails", "echo boom; exit 3", 10, gpu=False),
        # a 5 s cap: bash must have installed its trap before the interrupt, even on a loaded machine
        S("hangs", f"trap 'echo sigint > {flag}; exit 130' INT; sleep 30 & wait", 5, gpu=False),
        S("passes", "echo fine", 10, gpu=False),
        S("needs-gpu", "echo never", 10, gpu=True),
        S("needs-file", "echo never", 10, gpu=False, needs=[str(tmp_path / "absent.json")]),
        S("too-late", "echo never", 10, gpu=False),
    ]
    real_monotonic = gpu_check.time.monotonic
    # the clock jumps 100 s once "passes" has run: the budget is then spent
    monkeypatch.setattr(gpu_check.time, "monotonic",
                        lambda: real_monotonic() + (100 if (work / "passes.log").exists() else 0))
    # SIGINT ignored here, as in a check started in the background or under nohup: the steps must still get it
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        results = gpu_check.run_steps(steps, str(work), str(out), budget_s=60, skip_gpu="no CUDA device")
    finally:
        signal.signal(signal.SIGINT, previous)
    by = {r.name: r for r in results}
    assert (by["fails"].status, by["fails"].rc) == ("failed", 3) and "boom" in (work / "fails.log").read_text()
    assert (by["hangs"].status, by["hangs"].rc) == ("timed out", 124) and flag.read_text() == "sigint\n"
    assert by["hangs"].seconds < 15
    assert (by["passes"].status, by["passes"].rc) == ("ok", 0)
    assert by["needs-gpu"].note == "no CUDA device"
    assert by["needs-file"].status == "skipped" and "absent.json not written" in by["needs-file"].note
    assert by["too-late"].status == "skipped" and by["too-late"].note.startswith("out of time")
    text = (out / "summary.txt").read_text()
    assert "fails" in text and "failed" in text and "rc=3" in text and "timed out" in text
    files = _members(out / "gpu_check.tar.gz")
    assert {"fails.log", "hangs.log", "passes.log", "summary.json"} <= set(files)
    assert sorted(os.listdir(out)) == ["gpu_check.tar.gz", "summary.txt"]


def _bench_json(path, group, rows):
    path.write_text(json.dumps({"benchmarks": [
        {"name": f"t[{v}]", "group": group, "params": {"variant": v}, "extra_info": extra,
         "stats": {"median": ms / 1e3, "iqr": 0.0, "rounds": 3}} for v, ms, extra in rows],
        "machine_info": {}, "datetime": "now"}))


def test_summary_reads_the_benchmarks_against_estimates_and_targets(gpu_check, tmp_path):
    _bench_json(tmp_path / "bench-critic.json", "critic step cuda batch=65536 width=512",
                [("eager", 20.0, {}), ("eager_tf32", 9.0, {}), ("eager_cuda_graph", 18.0, {}),
                 ("op:triton", 2.2, {}), ("graph:triton", 2.1, {}), ("op:cuda", 4.0, {})])
    _bench_json(tmp_path / "bench-patch.json", "patch-model-generate-1048576",
                [("eager-fp32", 80.0, {"peak_extra_gb": 85.0}), ("lsdm-triton", 7.5, {"peak_extra_gb": 3.5})])
    lines = gpu_check.hot_path_lines(str(tmp_path))
    critic = next(line for line in lines if line.startswith("critic step B=65536"))
    cells = critic.split(" | ")
    assert cells[1] == "<= 2.5" and cells[2] == "2.100 (graph:triton)"
    assert cells[4:7] == ["20.000", "9.000", "18.000"]
    lo, hi = (float(v) for v in cells[3].split("-"))
    assert 0 < lo < hi
    gen = next(line for line in lines if line.startswith("generate 2^20 patch model (default, W 96)"))
    assert "7.500 (lsdm-triton)" in gen and gen.endswith("3.50")
    lo, hi = (float(v) for v in gen.split(" | ")[3].split("-"))  # the fused patch kernel's roofline estimate
    assert 0 < lo < hi
    assert next(line for line in lines if line.startswith("critic step B=256")).split(" | ")[2] == "-"


def test_report_turns_benchmark_json_into_markdown(tmp_path, capsys):
    def bench(variant, median):
        return {"name": f"test_stage2_step[{variant}-256-256]", "group": "stage-2 step cuda batch=256 width=256",
                "params": {"variant": variant, "batch": 256, "width": 256}, "extra_info": {"device": "H100"},
                "stats": {"median": median, "iqr": median / 10, "rounds": 30}}
    path = tmp_path / "b.json"
    path.write_text(json.dumps({"benchmarks": [bench("sync:torch", 4e-3), bench("graph:torch", 1e-3)],
                                "machine_info": {}, "datetime": "now"}))
    spec = importlib.util.spec_from_file_location("report", os.path.join(ROOT, "bench", "report.py"))
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    report.main([str(path), "--baseline", "sync:torch"])
    out = capsys.readouterr().out
    assert "device: H100" in out
    assert "| stage-2 step cuda batch=256 width=256 | graph:torch | 1.000 | 0.100 | 30 | 4.00x |" in out
    assert "| stage-2 step cuda batch=256 width=256 | sync:torch | 4.000 | 0.400 | 30 | 1.00x |" in out


def test_stage2_timing_runs(gpu_check, tmp_path, capsys):
    """The optional real stage-2 timing, on CPU and tiny (the GPU run uses the defaults: 2,000 steps)."""
    assert gpu_check.STAGE2_STEPS == 2000
    out = tmp_path / "t.json"
    assert gpu_check.main(["stage2-timing", "--data", "digits", "--out", str(out), "--steps", "2", "--ae-steps", "2",
                           "--device", "cpu", "--n-per-class", "5", "--m-unpaired", "50"]) == 0
    rows = json.loads(out.read_text())
    assert [r["backend"] for r in rows] == ["torch", "auto"] and all(r["stage2_seconds"] > 0 for r in rows)
    # the step loop is timed apart from the rest of stage 2 (encoding every image, the pseudo-labels)
    assert all(0 < r["stage2_loop_seconds"] < r["stage2_seconds"] for r in rows)
    assert all(abs(r["stage2_loop_seconds"] + r["stage2_other_seconds"] - r["stage2_seconds"]) < 1e-9 for r in rows)
    assert all(r["ms_per_generator_step"] == 1e3 * r["stage2_loop_seconds"] / 2 for r in rows)
