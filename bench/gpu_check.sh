#!/usr/bin/env bash
# One-shot check for a bare GPU machine (H100: torch cu130, triton, nvcc; no network, no POT):
# builds the extension for sm_90, runs the CUDA and parity tests and every bench/bench_*.py, and
# writes logs, JUnit XML, benchmark JSON + markdown and summary.md into OUTDIR, in under 8 minutes.
#
#   bench/gpu_check.sh OUTDIR [DATA]        DATA: MNIST IDX folder or 'digits' (adds a short stage-2 timing)
#   bench/gpu_check.sh --dry-run OUTDIR     skip the GPU steps (also what happens without CUDA)
#
# Steps, caps and the time budget (GPU_CHECK_BUDGET_S, default 450 s) are in bench/gpu_check.py.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python || command -v python3)}
exec "$PY" bench/gpu_check.py "$@"
