"""Backends named in one place (ops.BACKENDS) and everything derived from it; the one matmul-precision
setting of the entry points (precision=, $LSDM_MATMUL_PRECISION, the former variables)."""
import importlib
import pkgutil
import sys
import warnings

import pytest
import torch

import lsdm_fast.ops as ops
from lsdm_fast import _ext
from lsdm_fast.cli import build_parser
from lsdm_fast.ops import _backend_util, _registry
from lsdm_fast.ops.mlp import MLPParams

FORMER = ("LSDM_TRITON_PRECISION", "LSDM_CUDA_PRECISION", "LSDM_TRITON_FP32_PRECISION", "LSDM_CUDA_FP32_PRECISION")


@pytest.fixture(autouse=True)
def no_precision_env(monkeypatch):
    for var in (_backend_util.PRECISION_ENV, *FORMER):
        monkeypatch.delenv(var, raising=False)


def test_cli_backend_choices_are_the_registry_names():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name in ("demo", "train", "sample", "experiment"):
        (action,) = [a for a in commands[name]._actions if "--backend" in a.option_strings]
        # sample runs one op, generate: only the backends that implement it are offered
        names = _registry.implemented_backends("generate") if name == "sample" else ops.BACKENDS
        assert list(action.choices) == ["auto", *names], name
    assert set(_registry.implemented_backends("generate")) <= set(ops.BACKENDS)
    if ops.available_backends("generate", "cpu") != ["torch"]:  # the extension is built: its fused patch tail
        assert "cpp" in _registry.implemented_backends("generate")


def test_every_module_of_ops_is_imported():
    """A backend module whose suffix is not a registered backend name (a `*_mps.py`, say) would be
    skipped by the auto-import without a word: every module of the package must be loaded or have
    its import error recorded. roofline (estimates, run as `python -m lsdm_fast.ops.roofline`) is no
    backend, and importing it with the package would make that -m run warn."""
    for m in pkgutil.iter_modules(ops.__path__):
        if m.name == "roofline":
            continue
        name = f"{ops.__name__}.{m.name}"
        assert name in sys.modules or m.name in ops.IMPORT_ERRORS, f"{name} is never imported"


def test_backend_modules_register_their_backend():
    for m in pkgutil.iter_modules(ops.__path__):
        backend = m.name.rsplit("_", 1)[-1]
        if backend in ops.BACKENDS and backend != "torch" and m.name not in ops.IMPORT_ERRORS:
            mod = importlib.import_module(f"{ops.__name__}.{m.name}")
            registered = [op for op, impls in _registry._IMPLS.items()
                          if backend in impls and impls[backend].fn.__module__ == mod.__name__]
            assert registered, f"{m.name} registers nothing under {backend!r}"


def test_auto_order_names_registered_backends():
    for device, order in _registry.AUTO_ORDER.items():
        assert set(order) <= set(ops.BACKENDS), device
        assert order[-1] == "torch", device  # the reference is always the last resort


def _critic():
    g = torch.Generator().manual_seed(0)
    p = MLPParams([torch.randn(8, 5, generator=g), torch.randn(1, 8, generator=g)], [torch.zeros(8), torch.zeros(1)],
                  "leaky_relu", 0.2)
    x, z = torch.randn(4, 2, generator=g), torch.randn(4, 3, generator=g)
    return p, x, z, z.flip(0), torch.rand(4, generator=g)


@pytest.mark.parametrize("backend", ops.available_backends("critic_gradient_penalty", "cpu"))
def test_a_precision_no_backend_knows_is_refused_the_same_by_every_backend(backend):
    with pytest.raises(ValueError, match=r"^precision must be None or one of \('ieee', 'tf32', 'tf32x3', 'bf16'\), "
                                         r"got 'fp8'$"):
        ops.critic_gradient_penalty(*_critic(), backend=backend, precision="fp8")
    with pytest.raises(ValueError, match=r"^precision must be None or one of"):
        ops.encode(MLPParams([torch.randn(3, 5)], [torch.zeros(3)]), torch.rand(4, 5), backend="torch", precision="x")


def test_precision_reaches_the_backends_that_take_one(monkeypatch):
    seen = {}
    for op in ("critic_gradient_penalty", "critic_score_grad"):
        for backend, impl in _registry._IMPLS[op].items():
            def spy(*a, _fn=impl.fn, _key=(op, backend), **kw):
                seen[_key] = {k: v for k, v in kw.items() if "precision" in k}
                return _fn(*a, **kw)
            monkeypatch.setattr(impl, "fn", spy)
    p, x, zr, zf, t = _critic()
    for backend in ops.available_backends("critic_gradient_penalty", "cpu"):
        ops.critic_gradient_penalty(p, x, zr, zf, t, backend=backend, precision="ieee")
        ops.critic_score_grad(p, x, zr, backend=backend, precision="ieee")
        ops.critic_score_grad(p, x, zr, backend=backend)
    takes = {b: _registry._IMPLS["critic_gradient_penalty"][b].precision_kw for b in ops.BACKENDS
             if b in _registry._IMPLS["critic_gradient_penalty"]}
    assert takes.get("torch") is None  # no choice: full float32
    if "cpp" in ops.available_backends("critic_gradient_penalty", "cpu"):  # float32 or bf16 (tests/test_cpu_bf16.py)
        assert takes["cpp"] == "precision"
        assert seen[("critic_gradient_penalty", "cpp")] == {"precision": "ieee"}
        assert seen[("critic_score_grad", "cpp")] == {}
    if "triton" in ops.available_backends("critic_gradient_penalty", "cpu"):
        assert takes["triton"] == "input_precision"
        assert seen[("critic_gradient_penalty", "triton")] == {"input_precision": "ieee"}
        assert seen[("critic_score_grad", "triton")] == {}  # the last call named none
        with pytest.raises(ValueError, match="input_precision must be one of"):  # tf32x3: the CUDA kernels only
            ops.critic_gradient_penalty(p, x, zr, zf, t, backend="triton", precision="tf32x3")
    assert seen[("critic_gradient_penalty", "torch")] == {}


def test_environment_default_and_the_former_variables(monkeypatch):
    monkeypatch.setattr(_ext, "_warned", set())  # the deprecation warning is once per process
    env = _backend_util.env_precision
    assert env("LSDM_TRITON_PRECISION", "tf32") == "tf32"  # nothing set: the backend's default
    monkeypatch.setenv("LSDM_TRITON_PRECISION", "ieee")
    with pytest.warns(RuntimeWarning, match="LSDM_TRITON_PRECISION is deprecated .*LSDM_MATMUL_PRECISION"):
        assert env("LSDM_TRITON_PRECISION", "tf32") == "ieee"  # still honoured
    monkeypatch.setenv("LSDM_MATMUL_PRECISION", "tf32")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert env("LSDM_TRITON_PRECISION", "tf32") == "tf32"  # the one variable wins, silently
        assert env("LSDM_CUDA_FP32_PRECISION", "ieee") == "tf32"
    monkeypatch.setenv("LSDM_MATMUL_PRECISION", "tf32x3")
    with pytest.raises(ValueError, match=r"LSDM_MATMUL_PRECISION must be one of \('ieee', 'tf32'\), got 'tf32x3'"):
        env("LSDM_TRITON_PRECISION", "tf32")


def test_the_backends_read_the_one_variable(monkeypatch):
    monkeypatch.setenv("LSDM_MATMUL_PRECISION", "ieee")
    if "triton" in ops.available_backends("critic_gradient_penalty", "cpu"):
        from lsdm_fast.ops import critic_gp_triton, encode_generate_triton
        assert critic_gp_triton._precision(None, torch.float32) == "ieee"  # default tf32
        monkeypatch.setenv("LSDM_MATMUL_PRECISION", "tf32")
        assert encode_generate_triton._precision(torch.float32, None) == "tf32"  # default ieee
    monkeypatch.setenv("LSDM_MATMUL_PRECISION", "tf32")
    from lsdm_fast.ops import critic_gp_cuda
    assert critic_gp_cuda._precision_code(None) == critic_gp_cuda.PRECISIONS.index("tf32")
    monkeypatch.setenv("LSDM_MATMUL_PRECISION", "ieee")
    assert critic_gp_cuda._precision_code(None) == critic_gp_cuda.PRECISIONS.index("ieee")
