""""auto" passes a GPU backend over where it was measured slower (its auto_skip): float32 encode / generate at
"ieee" runs the Triton and CUDA kernels on FMA units, slower than eager PyTorch on an H200 (bench/RESULTS.md), so
"auto" hands those calls to the next backend, silently; bf16 and TF32 keep the kernels, and a backend named
explicitly always runs. Checked on the CPU by putting the Triton backend (interpreted here) first in the order."""
import warnings

import pytest
import torch

from lsdm_fast.ops import _registry, available_backends
from lsdm_fast.ops.encode_generate import _auto_problem, fp32_ieee_is_slower
from lsdm_fast.ops.mlp import MLPParams

pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim:DeprecationWarning")
needs_triton = pytest.mark.skipif("triton" not in available_backends("generate", "cpu"),
                                  reason="needs the Triton interpreter (TRITON_INTERPRET=1)")


def _mlp(dtype):
    return MLPParams([torch.zeros(4, 3, dtype=dtype)], [torch.zeros(4, dtype=dtype)])


def test_the_rule():
    assert fp32_ieee_is_slower({"dtype": torch.float32, "precision": "ieee"})
    assert fp32_ieee_is_slower({"dtype": torch.float32, "precision": "tf32"}) is None
    assert fp32_ieee_is_slower({"dtype": torch.bfloat16, "precision": "ieee"}) is None
    assert fp32_ieee_is_slower({"dtype": torch.float16, "precision": "ieee"}) is None
    for op in ("encode", "generate"):
        for b in ("triton", "cuda"):
            if b in _registry._IMPLS[op]:
                assert _registry._IMPLS[op][b].auto_skip is fp32_ieee_is_slower
        assert all(_registry._IMPLS[op][b].auto_skip is None for b in ("torch", "cpp") if b in _registry._IMPLS[op])


def test_the_problem_reads_the_precision_asked_for(monkeypatch):
    for v in ("LSDM_MATMUL_PRECISION", "LSDM_TRITON_FP32_PRECISION", "LSDM_CUDA_FP32_PRECISION"):
        monkeypatch.delenv(v, raising=False)
    assert _auto_problem(_mlp(torch.float32), None) == {"dtype": torch.float32, "precision": "ieee"}
    assert _auto_problem(_mlp(torch.float32), "tf32")["precision"] == "tf32"
    monkeypatch.setenv("LSDM_MATMUL_PRECISION", "tf32")
    assert _auto_problem(_mlp(torch.float32), None)["precision"] == "tf32"
    assert _auto_problem(_mlp(torch.bfloat16), "ieee") == {"dtype": torch.bfloat16, "precision": "ieee"}


@needs_triton
def test_auto_passes_over_a_slower_backend_silently_and_a_named_one_runs(monkeypatch):
    monkeypatch.setitem(_registry.AUTO_ORDER, "cpu", ("triton", "torch"))
    cpu = torch.device("cpu")
    slow = {"dtype": torch.float32, "precision": "ieee"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a measured choice, not a fallback: no warning
        assert _registry.resolve("generate", "auto", cpu, slow)[0] == "torch"
        assert _registry.resolve("encode", "auto", cpu, slow)[0] == "torch"
    for fast in ({"dtype": torch.bfloat16, "precision": "ieee"}, {"dtype": torch.float32, "precision": "tf32"}):
        assert _registry.resolve("generate", "auto", cpu, fast)[0] == "triton"
    assert _registry.resolve("generate", "auto", cpu, None)[0] == "triton"  # no problem given: nothing to weigh
    assert _registry.resolve("generate", "triton", cpu, slow)[0] == "triton"


@needs_triton
def test_the_entry_points_weigh_their_weights_and_precision(monkeypatch):
    from lsdm_fast.ops import encode, generate

    monkeypatch.setitem(_registry.AUTO_ORDER, "cpu", ("triton", "torch"))
    for v in ("LSDM_MATMUL_PRECISION", "LSDM_TRITON_FP32_PRECISION", "LSDM_CUDA_FP32_PRECISION"):
        monkeypatch.delenv(v, raising=False)
    seen = []
    real = _registry.resolve

    def spy(op, backend, device, problem=None):
        name, fn = real(op, backend, device, problem)
        seen.append((op, name))
        return name, fn

    monkeypatch.setattr("lsdm_fast.ops.encode_generate.resolve", spy)
    g = MLPParams([torch.randn(8, 6), torch.randn(4, 8)], [torch.zeros(8), torch.zeros(4)])
    d = MLPParams([torch.randn(5, 4)], [torch.zeros(5)], output_activation="sigmoid")
    labels = torch.tensor([0, 1, 2])
    generate(g, d, labels, noise_dim=3, num_classes=3)
    encode(g, torch.randn(3, 6))
    assert seen == [("generate", "torch"), ("encode", "torch")]
    seen.clear()
    generate(g, d, labels, noise_dim=3, num_classes=3, precision="tf32")
    assert seen == [("generate", "triton")]
