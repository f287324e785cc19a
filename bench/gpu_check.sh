#!/usr/bin/env bash
# One-shot check for a bare GPU machine (H100/H200: python3 with a CUDA torch, triton, nvcc; no
# network, no POT): builds the extension for sm_90, measures the GPU's ceilings, times the hot paths
# that carry the issue-22 targets, a short stage 2 (given DATA), then the parity tests, in at most
# 9 minutes; OUTDIR ends with gpu_check.tar.gz (every log and result) and summary.txt.
#
#   bench/gpu_check.sh OUTDIR [DATA]        DATA: MNIST IDX folder or 'digits' (adds a stage-2 timing)
#   bench/gpu_check.sh --dry-run OUTDIR     skip the GPU steps (also what happens without CUDA)
#
# Steps, caps and the time budget (GPU_CHECK_BUDGET_S, default 510 s) are in bench/gpu_check.py.
# python3 first: on the GPU machines it is the interpreter that holds torch (PYTHON overrides).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3 || command -v python)}
exec "$PY" bench/gpu_check.py "$@"
