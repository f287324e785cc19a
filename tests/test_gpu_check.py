"""bench/gpu_check.sh: the dry run skips the GPU steps cleanly and says so; the runner records every
step's exit code, goes on after a failure, interrupts a step past its cap (SIGINT first, so pytest
can write its reports) and skips what the time budget no longer allows; bench/report.py turns a
pytest-benchmark JSON file into the markdown table."""
import importlib.util
import json
import os
import subprocess
import sys

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


def test_dry_run_skips_the_gpu_steps_and_says_so(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(["bash", os.path.join(ROOT, "bench", "gpu_check.sh"), "--dry-run", str(out)],
                          env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    steps = {s["name"]: s for s in summary["steps"]}
    assert summary["gpu_skipped"] == "--dry-run given"
    assert steps["environment"]["status"] == "ok" and "torch" in (out / "environment.log").read_text()
    benches = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "bench")) if f.startswith("bench_") and f.endswith(".py"))
    assert "bench_stage2_step" in benches
    for name in ["build", "info", "tests-cuda", "tests-parity", *benches]:
        assert steps[name]["status"] == "skipped" and steps[name]["note"] == "--dry-run given"
    for b in benches:
        assert f"--benchmark-json={out}/{b}.json" in steps[b]["command"]
        assert steps[f"{b}-report"]["status"] == "skipped" and "not written" in steps[f"{b}-report"]["note"]
    assert "LSDM_CUDA_ARCH=90" in steps["build"]["command"] and "--no-deps" in steps["build"]["command"]
    assert "-m gpu" in steps["tests-cuda"]["command"] and "--junitxml" in steps["tests-parity"]["command"]
    md = (out / "summary.md").read_text()
    assert "GPU steps skipped: --dry-run given." in md and "| tests-parity | skipped |" in md
    assert not [f for f in os.listdir(out) if f.endswith((".json", ".xml")) and f != "summary.json"]


def test_runner_records_failures_timeouts_and_the_budget(gpu_check, tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "GRACE_S", 2.0)
    monkeypatch.setattr(gpu_check, "MIN_STEP_S", 1.0)
    flag = tmp_path / "interrupted"
    S = gpu_check.Step
    steps = [
        S("fails", "echo boom; exit 3", 10, gpu=False),
        S("hangs", f"trap 'echo sigint > {flag}; exit 130' INT; sleep 30 & wait", 1, gpu=False),
        S("passes", "echo fine", 10, gpu=False),
        S("needs-gpu", "echo never", 10, gpu=True),
        S("needs-file", "echo never", 10, gpu=False, needs=[str(tmp_path / "absent.json")]),
        S("too-late", "echo never", 10, gpu=False),
    ]
    real_monotonic = gpu_check.time.monotonic
    # the clock jumps 100 s once "passes" has run: the budget is then spent
    monkeypatch.setattr(gpu_check.time, "monotonic",
                        lambda: real_monotonic() + (100 if (tmp_path / "passes.log").exists() else 0))
    results = gpu_check.run_steps(steps, str(tmp_path), budget_s=60, skip_gpu="no CUDA device")
    by = {r.name: r for r in results}
    assert (by["fails"].status, by["fails"].rc) == ("failed", 3) and "boom" in (tmp_path / "fails.log").read_text()
    assert (by["hangs"].status, by["hangs"].rc) == ("timed out", 124) and flag.read_text() == "sigint\n"
    assert by["hangs"].seconds < 10
    assert (by["passes"].status, by["passes"].rc) == ("ok", 0)
    assert by["needs-gpu"].note == "no CUDA device"
    assert by["needs-file"].status == "skipped" and "absent.json not written" in by["needs-file"].note
    assert by["too-late"].status == "skipped" and by["too-late"].note.startswith("out of time")
    md = (tmp_path / "summary.md").read_text()
    assert "| fails | failed | 3 |" in md and "| hangs | timed out | 124 |" in md


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
    """The optional real stage-2 timing, on CPU and tiny (the GPU run uses the defaults)."""
    out = tmp_path / "t.json"
    assert gpu_check.main(["stage2-timing", "--data", "digits", "--out", str(out), "--steps", "2", "--ae-steps", "2",
                           "--device", "cpu", "--n-per-class", "5", "--m-unpaired", "50"]) == 0
    rows = json.loads(out.read_text())
    assert [r["backend"] for r in rows] == ["torch", "auto"] and all(r["stage2_seconds"] > 0 for r in rows)
