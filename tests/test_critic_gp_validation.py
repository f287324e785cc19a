"""One behaviour per input across every backend of the critic ops (issue 15): the entry points
check their arguments once, before dispatch, so a bad call raises the same exception with the
same message whichever backend was asked for, and inputs one backend accepts (half precision,
"auto" on any device) every backend accepts.

Parametrised over every registered backend; a backend that cannot run on this machine is
skipped with the registry's own reason."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from lsdm_fast.ops import IMPORT_ERRORS, MLPParams, available_backends, critic_gradient_penalty, critic_score_grad
from lsdm_fast.ops._registry import _IMPLS, resolve

pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim:DeprecationWarning")  # interpreter

OPS = ("critic_gradient_penalty", "critic_score_grad")
BACKENDS = sorted({b for op in OPS for b in _IMPLS[op]})


def _runnable(backend: str) -> str:
    """'' if `backend` runs both critic ops on CPU tensors here, else why not."""
    for op in OPS:
        try:
            resolve(op, backend, torch.device("cpu"))
        except RuntimeError as exc:
            return str(exc)
    return ""


@pytest.fixture(params=BACKENDS)
def backend(request):
    why = _runnable(request.param)
    if why:
        pytest.skip(why)
    return request.param


def critic(dtype=torch.float32, widths=(5, 8, 1), **kw):
    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(o, i, generator=g, dtype=torch.float64).to(dtype) / i ** 0.5 for i, o in zip(widths, widths[1:])]
    bs = [torch.randn(o, generator=g, dtype=torch.float64).to(dtype) * 0.1 for o in widths[1:]]
    return MLPParams(ws, bs, **kw)


def batch(B=4, dx=2, dz=3, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    x, zr, zf = (torch.randn(B, d, generator=g, dtype=torch.float64).to(dtype) for d in (dx, dz, dz))
    return x, zr, zf, torch.rand(B, generator=g, dtype=torch.float64).to(dtype)


def gp_call(c=None, x=None, zr=None, zf=None, t=None, **kw):
    x0, zr0, zf0, t0 = batch()
    return dict(critic=c if c is not None else critic(), x=x0 if x is None else x, z_real=zr0 if zr is None else zr,
                z_fake=zf0 if zf is None else zf, t=t0 if t is None else t, **kw)


x0, zr0, zf0, t0 = batch()
c64 = critic(torch.float64)
mixed = critic()._replace(biases=[b.double() for b in critic().biases])
# (id, keyword arguments of critic_gradient_penalty, exception type, the exact message)
BAD_STEP = [
    ("float64-critic-float32-inputs", gp_call(c64), ValueError,
     "critic parameters are torch.float64 but the inputs are torch.float32: float64 runs need both in float64 "
     "(cast the critic or the inputs)"),
    ("float32-critic-float64-inputs", gp_call(x=x0.double(), zr=zr0.double(), zf=zf0.double()), ValueError,
     "critic parameters are torch.float32 but the inputs are torch.float64: float64 runs need both in float64 "
     "(cast the critic or the inputs)"),
    ("gp-weight-nan", gp_call(gp_weight=float("nan")), ValueError, "gp_weight must be a finite number >= 0, got nan"),
    ("gp-weight-inf", gp_call(gp_weight=float("inf")), ValueError, "gp_weight must be a finite number >= 0, got inf"),
    ("gp-weight-negative", gp_call(gp_weight=-1.0), ValueError, "gp_weight must be a finite number >= 0, got -1.0"),
    ("gp-weight-tensor", gp_call(gp_weight=torch.tensor(10.0)), TypeError,
     "gp_weight must be a Python number, got Tensor"),
    ("devices", gp_call(zr=zr0.to("meta")), ValueError,
     "all tensors must be on one device, got x on cpu, z_real on meta"),
    ("critic-device", gp_call(critic()._replace(weights=[w.to("meta") for w in critic().weights])), ValueError,
     "all tensors must be on one device, got x on cpu, the critic on meta"),
    ("empty-batch", gp_call(x=x0[:0], zr=zr0[:0], zf=zf0[:0], t=t0[:0]), ValueError, "empty batch: x has 0 rows"),
    ("z-dtype", gp_call(zf=zf0.double()), ValueError, "z_fake is torch.float64 but x is torch.float32"),
    ("integer-x", gp_call(x=x0.long()), ValueError, "x must be a floating-point tensor, got torch.int64"),
    ("integer-t", gp_call(t=(t0 > 0.5).long()), ValueError, "t must be a floating-point tensor, got torch.int64"),
    ("t-shape", gp_call(t=torch.rand(5)), ValueError,
     "t must have one value per sample, shape (4,) or (4, 1), got (5,)"),
    ("x-not-a-tensor", gp_call(x=x0.numpy()), TypeError, "x must be a torch.Tensor, got ndarray"),
    ("x-1d", gp_call(x=x0[:, 0]), ValueError, "x must be 2-D (batch, cond_dim), got shape (4,)"),
    ("z-batch", gp_call(zr=zr0[:3]), ValueError, "z_real must be (batch=4, latent_dim), got (3, 3)"),
    ("z-widths", gp_call(zf=torch.randn(4, 2)), ValueError, "z_real and z_fake differ in width: 3 vs 2"),
    ("critic-width", gp_call(critic(widths=(6, 8, 1))), ValueError, "critic takes 6 inputs but x (2) + z (3) give 5"),
    ("penalty-over", gp_call(penalty_over="x"), ValueError, "penalty_over must be one of ('joint', 'latent'), got 'x'"),
    ("two-outputs", gp_call(critic(widths=(5, 8, 2))), ValueError, "critic: last layer must have 1 output, has 2"),
    ("negative-slope", gp_call(critic(negative_slope=-0.1)), ValueError,
     "critic: negative_slope must be a finite number >= 0, got -0.1"),
    ("smooth-activation", gp_call(critic(activation="silu")), ValueError,
     "critic: the fused penalty needs a piecewise-linear activation, got 'silu'"),
    ("mixed-parameter-dtypes", gp_call(mixed), ValueError,
     "critic: weights and biases must share one floating-point dtype, got torch.float32, torch.float64"),
]
# (id, (critic, x, z), exception type, message) for critic_score_grad
BAD_SCORE = [
    ("float64-critic-float32-inputs", (c64, x0, zr0), ValueError,
     "critic parameters are torch.float64 but the inputs are torch.float32: float64 runs need both in float64 "
     "(cast the critic or the inputs)"),
    ("devices", (critic(), x0, zr0.to("meta")), ValueError,
     "all tensors must be on one device, got x on cpu, z on meta"),
    ("empty-batch", (critic(), x0[:0], zr0[:0]), ValueError, "empty batch: x has 0 rows"),
    ("z-dtype", (critic(), x0, zr0.double()), ValueError, "z is torch.float64 but x is torch.float32"),
    ("z-batch", (critic(), x0, zr0[:2]), ValueError, "z must be (batch=4, latent_dim), got (2, 3)"),
]


@pytest.mark.parametrize("kwargs,exc,message", [r[1:] for r in BAD_STEP], ids=[r[0] for r in BAD_STEP])
def test_bad_step_input_same_error_from_every_backend(backend, kwargs, exc, message):
    with pytest.raises(exc, match=f"^{re.escape(message)}$"):
        critic_gradient_penalty(**kwargs, backend=backend)


@pytest.mark.parametrize("args,exc,message", [r[1:] for r in BAD_SCORE], ids=[r[0] for r in BAD_SCORE])
def test_bad_score_input_same_error_from_every_backend(backend, args, exc, message):
    with pytest.raises(exc, match=f"^{re.escape(message)}$"):
        critic_score_grad(*args, backend=backend)


def test_bad_input_is_refused_before_dispatch():
    """Even a backend that cannot run here answers a bad call with the input's error."""
    for kwargs, exc, message in [r[1:] for r in BAD_STEP]:
        with pytest.raises(exc, match=f"^{re.escape(message)}$"):
            critic_gradient_penalty(**kwargs, backend="cuda")


def _rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / max(b.norm().item(), 1e-3)).item()


@pytest.mark.parametrize("in_dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("critic_dtype", [torch.float32, torch.float16])
def test_half_inputs_run_in_float32_on_every_backend(backend, in_dtype, critic_dtype):
    """Half-precision inputs (or critic) are computed in float32 by every backend: gradients in
    the critic's dtype, the loss terms in the inputs' dtype, values as the float64 reference on
    the same (rounded) numbers."""
    c = critic(critic_dtype, widths=(5, 16, 8, 1))
    x, zr, zf, t = batch(dtype=in_dtype)
    out = critic_gradient_penalty(c, x, zr, zf, t, gp_weight=5.0, backend=backend)
    assert out.backend == backend and out.loss.dtype == in_dtype
    assert all(g.dtype == critic_dtype for g in out.weight_grads + out.bias_grads)
    up = lambda v: v.double()  # noqa: E731
    ref = critic_gradient_penalty(c._replace(weights=[up(w) for w in c.weights], biases=[up(b) for b in c.biases]),
                                  up(x), up(zr), up(zf), up(t), gp_weight=5.0, backend="torch")
    tol = 1e-2 if critic_dtype == torch.float16 else 1e-4  # float16 gradients are rounded on the way out
    for a, b in zip(out.weight_grads + out.bias_grads, ref.weight_grads + ref.bias_grads):
        assert _rel(a, b) < tol
    assert _rel(out.loss, ref.loss) < 1e-2  # rounded to the inputs' half dtype
    s, gz = critic_score_grad(c, x, zr, backend=backend)
    assert s.dtype == in_dtype and gz.dtype == in_dtype and gz.shape == zr.shape


def test_auto_on_cpu_takes_half_inputs():
    x, zr, zf, t = batch(dtype=torch.float16)
    out = critic_gradient_penalty(critic(), x, zr, zf, t, backend="auto")
    assert np.isfinite(out.loss.item()) and out.weight_grads[0].dtype == torch.float32
    s, gz = critic_score_grad(critic(), x, zr, backend="auto")
    assert gz.dtype == torch.float16


def test_zero_gp_weight_is_allowed(backend):
    out = critic_gradient_penalty(critic(), x0, zr0, zf0, t0, gp_weight=0, backend=backend)
    assert out.loss.item() == pytest.approx(-out.wasserstein.item(), rel=1e-6)


def test_depth_is_a_backend_limit_not_a_model_limit(monkeypatch):
    """Any depth runs on the backends that implement it; the Triton kernels take 2 to 4 layers: named
    explicitly they say so, and "auto" falls back past them (with one warning)."""
    from lsdm_fast.ops import _registry
    deep = critic(widths=(5, 6, 6, 6, 6, 1))  # 5 linear layers
    ref = critic_gradient_penalty(**gp_call(deep), backend="torch")
    for name in ("cpp",):
        if name in available_backends("critic_gradient_penalty", "cpu"):
            got = critic_gradient_penalty(**gp_call(deep), backend=name)
            assert _rel(got.loss, ref.loss) < 1e-5 and all(_rel(a, b) < 1e-4 for a, b in
                                                           zip(got.weight_grads, ref.weight_grads))
    if "triton" not in available_backends("critic_gradient_penalty", "cpu"):
        pytest.skip(f"the triton backend is not available here ({IMPORT_ERRORS})")
    with pytest.raises(ValueError, match=r"^backend 'triton' for 'critic_gradient_penalty' handles critics of 2 to 4 "
                                         r"linear layers, not 5; use backend='auto'"):
        critic_gradient_penalty(**gp_call(deep), backend="triton")
    monkeypatch.setitem(_registry.AUTO_ORDER, "cpu", ("triton", "torch"))
    monkeypatch.setattr("lsdm_fast._ext._warned", set())  # the fallback warns once per process
    assert critic_gradient_penalty(**gp_call(critic()), backend="auto").backend == "triton"
    with pytest.warns(RuntimeWarning, match="runs on the pure-PyTorch reference: 'triton' handles critics of 2 to 4"):
        out = critic_gradient_penalty(**gp_call(deep), backend="auto")
    assert out.backend == "torch"
