"""Every Triton critic kernel configuration the package can launch compiles for an H100 (sm_90)
through Triton's real JIT path, spills nothing, and runs its TF32 GEMMs on tensor cores.

The interpreter that the parity tests use checks numerics only; type errors and register
spills show up only here. The configurations are tests/sm90_cases.py:critic_cases (calls of the
package's own host functions, so the constexprs and argument specialisations are the ones a
launch would use); tests/sm90.py compiles them in a subprocess without a GPU and reads ptxas -v
and the SASS. The expected set below is derived from the backend's tile tables, so a new tile
set or kernel mode that critic_cases does not reach fails here."""
from __future__ import annotations

import pytest

import sm90
from lsdm_fast.ops import critic_gp_triton as ct

pytestmark = pytest.mark.skipif(sm90.tool("ptxas") is None or sm90.tool("cuobjdump") is None,
                                reason="ptxas / cuobjdump not found (Triton's wheel bundles both)")

TC_TILES = [ct.TILES_TC_SMALL, ct.TILES_TC_LARGE]
KERNELS = ("_layer_kernel", "_input_grad_kernel", "_wgrad_kernel", "_finish_kernel")


@pytest.fixture(scope="module")
def reports():
    return sm90.run_triton_subprocess(["sm90_cases:critic_cases"])


def _key(r):
    c = r.config
    return r.name, c.get("MODE"), c.get("PREC"), c.get("BM")


def _expected():
    """(kernel, mode, precision, rows per tile) of every configuration the host code can pick."""
    tiles = [("tf32", t.BM) for t in TC_TILES] + [("ieee", ct.TILES_FMA.BM)]
    keys = {("_layer_kernel", mode, p, bm) for mode in (ct.MODE_FWD, ct.MODE_BWD, ct.MODE_RSWEEP) for p, bm in tiles}
    keys |= {("_input_grad_kernel", None, p, bm) for p, bm in tiles}
    keys |= {("_wgrad_kernel", None, p, None) for p in ("tf32", "ieee")}
    keys.add(("_finish_kernel", None, None, None))
    return keys


def test_every_configuration_is_compiled(reports):
    assert {r.name for r in reports} == set(KERNELS)
    missing = _expected() - {_key(r) for r in reports}
    assert not missing, f"critic_cases does not reach these configurations: {sorted(missing, key=str)}"
    # ieee kernels are compiled for float32 and float64 (the dtype is in the specialisation, not the config)
    for mode in (ct.MODE_FWD, ct.MODE_BWD, ct.MODE_RSWEEP):
        n = sum(_key(r) == ("_layer_kernel", mode, "ieee", ct.TILES_FMA.BM) for r in reports)
        assert n >= 2, f"_layer_kernel MODE={mode} ieee compiled {n} times; expected float32 and float64"


def test_every_kernel_gets_a_launcher(reports):
    """The host launch code Triton builds at a kernel's first launch on a GPU (tests/sm90.py _launcher_error):
    a kernel that compiles can still fail there (a tuple of TensorDescriptors as one argument, which triton
    3.6's launcher does not expand, failed so on an H200 on 2026-12-04)."""
    failed = [f"{r.name} {r.config}: {r.launcher_error}" for r in reports if r.launcher_error]
    assert not failed, "\n".join(failed)


def test_compiles_without_spills(reports):
    bad = [f"{r.name} {r.config}: {r.error.splitlines()[0] if r.error else ''} regs={r.registers} "
           f"spill={r.spill_stores}/{r.spill_loads} local={r.local}"
           for r in reports if r.error or r.spill_stores or r.spill_loads or r.local or r.registers <= 0]
    assert not bad, "kernels that failed to compile or spill:\n" + "\n".join(bad)


def test_tf32_kernels_use_tensor_cores(reports):
    tf32 = [r for r in reports if r.config.get("PREC") == "tf32"]
    assert tf32
    bad = [f"{r.name} {r.config}: PTX {r.ptx_tensor_core} SASS {r.sass_tensor_core}" for r in tf32
           if not (r.ptx_tensor_core and set(r.sass_tensor_core) & {"HGMMA", "HMMA"})]
    assert not bad, "TF32 kernels without tensor-core instructions:\n" + "\n".join(bad)
    # the norm path (backward of the interpolated rows, g_0) runs 3xTF32, also on tensor cores
    assert any(r.config.get("PREC_I") == "tf32x3" for r in tf32)
    assert any(r.config.get("PREC_G") == "tf32x3" for r in tf32)


# the width arguments of each kernel whose GEMM operands they lay out (the weight-gradient kernel
# states its alignment in ALIGN)
_WIDTHS = {"_layer_kernel": ("K", "N"), "_input_grad_kernel": ("N0", "N1"), "_wgrad_kernel": ()}


def _gemm_copies(r):
    return r.global_loads.get("LDGSTS.16", 0), r.global_loads.get("LDGSTS.4", 0) + r.global_loads.get("LDGSTS.8", 0)


def test_tf32_gemm_operands_load_16_bytes_at_a_time(reports):
    """With every width a multiple of 16 (the default critics), the backward, r-sweep, input-gradient
    and weight-gradient GEMMs fill shared memory with 16-byte cp.async only (LDGSTS.128): their
    operands are K-major in memory or go through registers (see the critic_gp_triton module). The
    forward's first layer is excluded: its operand is built from x and z, whose widths (10, 16) are not.
    Before the layouts were specialised the weight-gradient kernel used only 4-byte copies."""
    checked = []
    for r in reports:
        c = r.config
        if c.get("PREC") != "tf32" or r.name not in _WIDTHS or c.get("MODE") == ct.MODE_FWD:
            continue
        aligned = set(c.get("div16", "").split(","))
        if not set(_WIDTHS[r.name]) <= aligned or c.get("ALIGN", 16) != 16:
            continue
        wide, narrow = _gemm_copies(r)
        checked.append(f"{r.name} {c.get('MODE')}")
        assert wide > 0 and narrow == 0, f"{r.name} {c}: {r.global_loads}"
    kinds = {k.split()[0] for k in checked}
    assert kinds == {"_layer_kernel", "_input_grad_kernel", "_wgrad_kernel"}, checked
