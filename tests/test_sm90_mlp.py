"""The Triton encode/generate kernel compiled for an H100 (sm_90) without a GPU (tests/sm90.py).

tests/sm90_cases.encode_generate_cases makes the launches of every dtype/precision configuration
and constexpr branch the host code of lsdm_fast/ops/encode_generate_triton.py can pick; all of
them are compiled in one subprocess (Triton's real JIT path with a stand-in driver). Each must
compile, keep every value in registers (no spill stores or loads, no local memory; the 32-byte
stack frame of the in-kernel noise is cosf's argument-reduction array, not a spill), and the
bf16, fp16 and TF32 variants must run their dots on the tensor cores (wgmma in the PTX, HGMMA in
the SASS); no block may ask for more shared memory than an H100 gives one.

Compile time: about 70 s of CPU for the 20 kernels (Triton's cache makes reruns fast)."""
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
    reps = sm90.run_triton_subprocess(["sm90_cases:encode_generate_cases"])
    assert reps, "no kernel was compiled"
    return reps


def _label(r: sm90.KernelReport) -> str:
    c = r.config
    return f"{r.name}[DOT={c.get('DOT')},PRECISION={c.get('PRECISION')},MODE={c.get('MODE')},DIMS={c.get('DIMS')}]"


def test_every_configuration_compiles(reports):
    failed = [f"{_label(r)}: {r.error}" for r in reports if r.error]
    assert not failed, "\n".join(failed)


def test_every_kernel_gets_a_launcher(reports):
    """The host launch code Triton builds at a kernel's first launch on a GPU (tests/sm90.py _launcher_error):
    a kernel that compiles can still fail there (a tuple of TensorDescriptors as one argument, which triton
    3.6's launcher does not expand, failed so on an H200 on 2026-12-04)."""
    failed = [f"{r.name} {r.config}: {r.launcher_error}" for r in reports if r.launcher_error]
    assert not failed, "\n".join(failed)


def _past_the_descriptor_slots(r) -> bool:
    """A half-precision chain longer than encode_generate_triton.DESC_SLOTS: its weights come by pointer, which
    costs address registers (measured: 4 bytes spilled at 9 layers of 128)."""
    return r.config["NL"] > 8 and not r.config["W_TMA"] and r.config["DOT"] in ("bf16", "fp16")


def test_no_spills_and_no_local_memory(reports):
    spilled = [f"{_label(r)}: {r.registers} registers, spill stores {r.spill_stores} B, spill loads "
               f"{r.spill_loads} B, local {r.local} B" for r in reports
               if r.spill_stores or r.spill_loads or r.local]
    allowed = [r for r in reports if _past_the_descriptor_slots(r) and r.spill_stores <= 16 and r.spill_loads <= 16
               and not r.local]
    spilled = [line for line, r in zip(spilled, [r for r in reports if r.spill_stores or r.spill_loads or r.local])
               if r not in allowed]
    assert not spilled, "\n".join(spilled)


def test_shared_memory_fits_an_sm90_block(reports):
    too_big = [f"{_label(r)}: {r.shared} B" for r in reports if r.shared > SM90_MAX_SHARED]
    assert not too_big, "\n".join(too_big)


def test_bf16_fp16_and_tf32_use_tensor_cores(reports):
    tensor_core = [r for r in reports if r.config["DOT"] in ("bf16", "fp16") or r.config["PRECISION"] == "tf32"]
    missing = [f"{_label(r)}: PTX {r.ptx_tensor_core}, SASS {r.sass_tensor_core}" for r in tensor_core
               if "wgmma.mma_async" not in r.ptx_tensor_core or "HGMMA" not in r.sass_tensor_core]
    assert not missing, "\n".join(missing)


def test_cases_cover_every_configuration_and_branch(reports):
    cfgs = [r.config for r in reports]
    assert {(c["DOT"], c["PRECISION"]) for c in cfgs} == {("bf16", "ieee"), ("fp16", "ieee"), ("fp32", "tf32"),
                                                          ("fp32", "ieee")}
    assert {(c["MODE"], c["LABELS"]) for c in cfgs} == {(0, False), (1, True), (1, False), (2, True), (2, False)}
    acts = {a for c in cfgs for a in _tuple(c["ACTS"])}
    assert acts == {0, 1, 2, 3, 4}  # none, leaky_relu, relu, silu, sigmoid
    assert {True, False} <= {c["TO_UINT8"] for c in cfgs}
    assert {b for c in cfgs for b in _tuple(c["BNS"])} == {16, 32, 64, 128, 256}
    assert {b for c in cfgs for b in _tuple(c["BKS"])} == {16, 32, 64}
    n_tails = {(n % bn, t) for c in cfgs for n, bn, t in zip(_tuple(c["DIMS"])[1:], _tuple(c["BNS"]), _tuple(c["BN_TAILS"]))}
    assert (0, 0) in n_tails and any(0 < rest == t for rest, t in n_tails) and any(0 < rest < t for rest, t in n_tails)
    # K steps past the width (784 in steps of 64: the last reads zero weights, masked activations)
    assert any(k % bk for c in cfgs for k, bk in zip(_tuple(c["DIMS"])[:-1], _tuple(c["BKS"])))
    assert {True, False} == {c["W_TMA"] for c in cfgs}
    assert any(c["NL"] > 8 and c["DOT"] == "bf16" and not c["W_TMA"] for c in cfgs)  # past DESC_SLOTS


def test_tensor_core_variants_take_their_weights_by_tma(reports):
    """The weights reach shared memory by the bulk tensor copy (UTMALDG in the SASS), so the
    kernels hold no address registers for them."""
    tma = [r for r in reports if r.config["W_TMA"]]
    assert tma and all(r.config["DOT"] in ("bf16", "fp16") or r.config["PRECISION"] == "tf32" for r in tma)
    missing = [_label(r) for r in tma if not r.global_loads.get("UTMALDG")]
    assert not missing, "\n".join(missing)


def _tuple(text) -> tuple:
    """A tuple constexpr as the report stores it: '(1, 2, 3)'."""
    return tuple(int(v) for v in str(text).strip("()").split(",") if v.strip())
