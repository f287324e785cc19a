"""The CUDA sources must compile with nvcc for sm_90 even where no GPU (or CUDA torch) exists.

kernels/*.cu are kept free of torch headers so this check needs only the CUDA toolkit."""
import glob
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CU_FILES = sorted(glob.glob(os.path.join(ROOT, "kernels", "*.cu")))


def _nvcc():
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    cand = os.path.join(home, "bin", "nvcc")
    return cand if os.path.exists(cand) else shutil.which("nvcc")


def test_there_are_cuda_sources():
    assert CU_FILES, "kernels/ holds no .cu files"


@pytest.mark.skipif(_nvcc() is None, reason="nvcc not installed (CI and dev machines have it)")
@pytest.mark.parametrize("path", CU_FILES, ids=[os.path.basename(p) for p in CU_FILES])
def test_cuda_source_compiles_for_sm90(path, tmp_path):
    out = tmp_path / (os.path.basename(path) + ".o")
    proc = subprocess.run([_nvcc(), "-c", "-std=c++17", "-arch=sm_90", "-O2", "-I", os.path.join(ROOT, "kernels"),
                           path, "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"nvcc failed on {path}:\n{proc.stderr[-4000:]}"
    assert out.stat().st_size > 0
