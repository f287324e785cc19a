"""The CUDA sources compile for an H100 (sm_90) on a machine without a GPU or a CUDA torch, into
kernels that spill nothing and keep no stack frame, with the tensor-core kernels on the tensor
cores (HMMA/HGMMA in their SASS). And the torch glue in csrc/cuda parses as C++ against torch's
headers, the only check it gets without a CUDA build.

kernels/*.cu are kept free of torch headers so that nvcc needs only the CUDA toolkit. One nvcc
(-cubin -Xptxas -v, tests/sm90.py) per .cu file and one g++ -fsyntax-only per glue file, all
started together from one module-scoped fixture."""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sm90  # noqa: E402

ROOT = sm90.ROOT
CU_FILES = sm90.cuda_sources()
GLUE_FILES = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cpp")))

# Every kernel meant for the tensor cores, by demangled name: (file, pattern, how many kernels
# it names). The critic GEMMs in TF32 (mode 1) and 3xTF32 (mode 2), three operand layouts each;
# the fused MLP in bf16 / fp16 (mode 3) and TF32 (mode 1), four row-tile sizes each.
TENSOR_CORE_KERNELS = [
    ("critic_gp.cu", r"critic_gemm_kernel<float, \(lsdm::cuda::MathMode\)1, (true|false), (true|false)>", 3),
    ("critic_gp.cu", r"critic_gemm_kernel<float, \(lsdm::cuda::MathMode\)2, (true|false), (true|false)>", 3),
    ("mlp_fused.cu", r"fused_mlp_kernel<__nv_bfloat16, \(lsdm::cuda::MathMode\)3, \d+>", 4),
    ("mlp_fused.cu", r"fused_mlp_kernel<__half, \(lsdm::cuda::MathMode\)3, \d+>", 4),
    ("mlp_fused.cu", r"fused_mlp_kernel<float, \(lsdm::cuda::MathMode\)1, \d+>", 4),
]

needs_nvcc = pytest.mark.skipif(sm90.tool("nvcc") is None or sm90.tool("cuobjdump") is None,
                                reason="nvcc / cuobjdump not installed (CI and dev machines have them)")


def _glue_check(path: str) -> str | None:
    """g++ -fsyntax-only of a glue file against the installed torch's headers; error text or None."""
    from torch.utils.cpp_extension import include_paths

    incs = [*include_paths(), sysconfig.get_paths()["include"],
            os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "include"),
            os.path.join(ROOT, "csrc"), os.path.join(ROOT, "kernels")]
    # A CPU torch lacks the one generated c10/cuda header (export macros only).
    cmd = ["g++", "-fsyntax-only", "-std=c++20", "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE",
           "-DTORCH_EXTENSION_NAME=_C_cuda", "-DTORCH_API_INCLUDE_EXTENSION_H", *(f"-I{i}" for i in incs), path]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    return None if proc.returncode == 0 else proc.stderr[-4000:]


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """{basename: list of KernelReport} for every .cu file, {basename: error or None} for the glue."""
    tmp = str(tmp_path_factory.mktemp("sm90_cuda"))
    with ThreadPoolExecutor(max_workers=4) as pool:
        cu = {os.path.basename(p): pool.submit(sm90.compile_cuda, p, tmp) for p in CU_FILES}
        glue = {os.path.basename(p): pool.submit(_glue_check, p) for p in GLUE_FILES} if shutil.which("g++") else {}
        return {k: f.result() for k, f in cu.items()}, {k: f.result() for k, f in glue.items()}


def test_there_are_cuda_sources():
    assert CU_FILES, "kernels/ holds no .cu files"
    assert GLUE_FILES, "csrc/cuda holds no glue"
    assert {f for f, _, _ in TENSOR_CORE_KERNELS} <= {os.path.basename(p) for p in CU_FILES}


@needs_nvcc
@pytest.mark.parametrize("name", [os.path.basename(p) for p in CU_FILES])
def test_compiles_without_spills_or_stack(builds, name):
    reports = builds[0][name]
    errors = [r.error for r in reports if r.error]
    assert not errors, f"nvcc failed on {name}:\n{errors[0]}"
    assert reports, f"{name} holds no kernels"
    bad = [(r.name, r.registers, r.spill_stores, r.spill_loads, r.stack, r.local) for r in reports
           if r.spill_stores or r.spill_loads or r.stack or r.local or r.registers <= 0]
    assert not bad, f"kernels with spills or a stack frame (name, regs, spill st, spill ld, stack, local): {bad}"


@needs_nvcc
@pytest.mark.parametrize("name", sorted({f for f, _, _ in TENSOR_CORE_KERNELS}))
def test_tensor_core_kernels_use_tensor_cores(builds, name):
    reports = builds[0][name]
    assert reports and not reports[0].error, f"{name} did not compile"
    listed = set()
    for file, pattern, count in (k for k in TENSOR_CORE_KERNELS if k[0] == name):
        hits = [r for r in reports if re.search(pattern, r.name)]
        assert len(hits) == count, f"{pattern!r} names {len(hits)} kernels of {name}, expected {count}"
        no_tc = [r.name for r in hits if not {"HMMA", "HGMMA"} & set(r.sass_tensor_core)]
        assert not no_tc, f"tensor-core kernels without HMMA/HGMMA in their SASS: {no_tc}"
        listed.update(r.name for r in hits)
    unlisted = [r.name for r in reports if r.sass_tensor_core and r.name not in listed]
    assert not unlisted, f"kernels on the tensor cores missing from TENSOR_CORE_KERNELS: {unlisted}"


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not installed")
@pytest.mark.parametrize("name", [os.path.basename(p) for p in GLUE_FILES])
def test_glue_parses_against_torch_headers(builds, name):
    err = builds[1][name]
    assert err is None, f"{name} does not parse as C++ against torch's headers:\n{err}"


def test_python_side_knows_the_kernels_layer_limit():
    """MAX_LAYERS in lsdm_fast/ops/critic_gp_cuda.py is the registry limit; kCriticMaxLayers sizes the kernels'
    per-layer arrays. They must agree (checked without a GPU: the header is plain text)."""
    import re

    from lsdm_fast.ops.critic_gp_cuda import MAX_LAYERS
    header = open(os.path.join(ROOT, "kernels", "critic_gp.cuh")).read()
    assert int(re.search(r"constexpr int kCriticMaxLayers = (\d+);", header).group(1)) == MAX_LAYERS
