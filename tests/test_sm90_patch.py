"""The fused patch-autoencoder kernels (lsdm_fast/ops/encode_generate_triton_patch.py) compiled for an H100
(sm_90) without a GPU (tests/sm90.py).

tests/sm90_cases.patch_cases makes the launches of every configuration the host code can pick (dtype and
precision, generate's modes and output dtypes, encode's input dtypes, the patch model (W 64) and the shapes that
change the tiles: W 96, colour, stride 2, depth 0 and 2, a latent off the 16 grid); all of them are compiled in
one subprocess (Triton's real JIT path with a stand-in driver). Each must compile, keep every value in
registers (no spill stores or loads, no local memory; the 32-byte stack frame of the in-kernel noise is cosf's
argument-reduction array, not a spill), run its dots on the tensor cores through wgmma (wgmma in the PTX, HGMMA
in the SASS: every configuration here is bf16, fp16 or TF32) and ask for no more shared memory than an H100
gives one block.

Compile time: about 50 s of CPU for the 22 kernels (Triton's cache makes reruns fast)."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sm90  # noqa: E402

SM90_MAX_SHARED = 227 * 1024  # dynamic shared memory one block may use on an H100

pytestmark = pytest.mark.skipif(sm90.tool("ptxas") is None or sm90.tool("cuobjdump") is None,
                                reason="ptxas/cuobjdump not found (Triton's bundled copies are missing)")


@pytest.fixture(scope="module")
def reports():
    reps = sm90.run_triton_subprocess(["sm90_cases:patch_cases"])
    assert reps, "no kernel was compiled"
    return reps


def _label(r: sm90.KernelReport) -> str:
    c = r.config
    keys = ("DOT", "PRECISION", "MODE", "WP", "QW", "LP", "LATP", "KF", "DEPTH", "BM")
    return f"{r.name}[{','.join(f'{k}={c[k]}' for k in keys if k in c)}]"


def test_every_configuration_compiles(reports):
    failed = [f"{_label(r)}: {r.error}" for r in reports if r.error]
    assert not failed, "\n".join(failed)


def test_every_kernel_gets_a_launcher(reports):
    """The host launch code Triton builds at a kernel's first launch on a GPU (tests/sm90.py _launcher_error):
    a kernel that compiles can still fail there (a tuple of TensorDescriptors as one argument, which triton
    3.6's launcher does not expand, failed so on an H200 on 2026-12-04)."""
    failed = [f"{r.name} {r.config}: {r.launcher_error}" for r in reports if r.launcher_error]
    assert not failed, "\n".join(failed)


def test_no_spills_and_no_local_memory(reports):
    spilled = [f"{_label(r)}: {r.registers} registers, spill stores {r.spill_stores} B, spill loads "
               f"{r.spill_loads} B, local {r.local} B" for r in reports if r.spill_stores or r.spill_loads or r.local]
    assert not spilled, "\n".join(spilled)


def test_shared_memory_fits_an_sm90_block(reports):
    too_big = [f"{_label(r)}: {r.shared} B" for r in reports if r.shared > SM90_MAX_SHARED]
    assert not too_big, "\n".join(too_big)


def test_every_kernel_runs_its_dots_on_wgmma(reports):
    missing = [f"{_label(r)}: PTX {r.ptx_tensor_core}, SASS {r.sass_tensor_core}" for r in reports
               if "wgmma.mma_async" not in r.ptx_tensor_core or "HGMMA" not in r.sass_tensor_core
               or "mma.sync" in r.ptx_tensor_core]
    assert not missing, "\n".join(missing)


def _tuple(v):
    return v if isinstance(v, (list, tuple)) else tuple(int(x) for x in str(v).strip("()").split(",") if x.strip())


def test_cases_cover_every_configuration_and_branch(reports):
    gen = [r.config for r in reports if r.name == "_patch_generate_kernel"]
    enc = [r.config for r in reports if r.name == "_patch_encode_kernel"]
    dots = {("bf16", "ieee"), ("fp16", "ieee"), ("fp32", "tf32")}
    assert {(c["DOT"], c["PRECISION"]) for c in gen} == dots and {(c["DOT"], c["PRECISION"]) for c in enc} == dots
    assert {(c["MODE"], c["LABELS"]) for c in gen} == {(1, True), (1, False), (2, True)}
    assert {True, False} == {c["TO_UINT8"] for c in gen}
    # the W 64 patch model's tiles and every padding the host code does: W 64 / 96 -> 128, S*S*C 16 / 48 -> 64 /
    # 4 -> 16, latent 32 / 20 -> 32 / 16, a head after a 64-wide decoder layer; depth 0, 1, 2
    assert {c["WP"] for c in gen} == {32, 64, 128} and {c["QW"] for c in gen} == {16, 64}
    assert {c["LP"] for c in gen} == {16, 32, 64} and {c["DEPTH"] for c in gen} == {0, 1, 2}
    assert {c["KF"] for c in enc} == {16, 64, 192} and {c["WP"] for c in enc} == {32, 64, 128}
    assert {c["BM"] for c in gen + enc} == {64, 128}
    assert {c["TAIL_STAGES"] for c in gen} >= {2} and {c["STAGES"] for c in enc} >= {3}
    assert any(len(_tuple(c["DIMS"])) == 5 for c in gen)  # generator + a decoder layer before the head
