"""Parity of the fused WGAN-GP critic step: every compiled backend against the pure-PyTorch
autograd reference (create_graph=True) computed in float64; the reference itself against an
independent finite-difference computation; the torch.library custom op, eager and compiled.

Relative error ||out - ref|| / ||ref|| per output: float64 inputs < 1e-10, float32 inputs < 1e-4
(against the float64 reference on the same, float32-rounded, inputs). Where the reference is
exactly zero (the last bias's gradient: mean over real minus mean over fake of 1) the absolute
error is bounded instead.
"""
from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lsdm_fast
from lsdm_fast import _ext
from lsdm_fast.ops import MLPParams, available_backends, critic_gradient_penalty, critic_score_grad, mlp_forward_reference
from critic_gp_library import critic_loss  # tests/critic_gp_library.py

pytestmark = pytest.mark.parity

GP_BACKENDS = [b for b in available_backends("critic_gradient_penalty", "cpu") if b != "torch"]
SCORE_BACKENDS = [b for b in available_backends("critic_score_grad", "cpu") if b != "torch"]
TOL = {torch.float64: 1e-10, torch.float32: 1e-4}


# ------------------------------------------------------------------------------- helpers

def make_critic(rng: np.random.Generator, widths, dtype=torch.float64, slope=0.2) -> MLPParams:
    ws, bs = [], []
    for i, o in zip(widths[:-1], widths[1:]):
        ws.append(torch.tensor(rng.standard_normal((o, i)) / math.sqrt(i), dtype=dtype))
        bs.append(torch.tensor(rng.standard_normal(o) * 0.1, dtype=dtype))
    return MLPParams(ws, bs, "relu" if slope == 0 else "leaky_relu", slope if slope else 0.2)


def make_batch(rng: np.random.Generator, B, dx, dz, dtype=torch.float64):
    t = lambda *s: torch.tensor(rng.standard_normal(s), dtype=dtype)  # noqa: E731
    return t(B, dx), t(B, dz), t(B, dz) * 0.5 + 0.3, torch.tensor(rng.random(B), dtype=dtype)


def cast(critic: MLPParams, dtype) -> MLPParams:
    return critic._replace(weights=[w.to(dtype) for w in critic.weights], biases=[b.to(dtype) for b in critic.biases])


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().double(), ref.detach().double()
    assert out.shape == ref.shape, (out.shape, ref.shape)
    den = ref.norm().item()
    num = (out - ref).norm().item()
    return num / den if den > 1e-9 else num  # absolute where the reference is (numerically) zero


def scalar_err(out: torch.Tensor, ref: torch.Tensor, scale: float = 0.0) -> float:
    """Error of a scalar that is a difference of larger terms (the W estimate is mean f(real) -
    mean f(fake)), relative to the size of those terms: relative to |ref| alone it is
    ill-conditioned and made this test flaky in float32 whenever the two means nearly cancel."""
    out, ref = out.detach().double(), ref.detach().double()
    den = max(ref.abs().item(), scale)
    return (out - ref).abs().item() / den if den > 1e-9 else (out - ref).abs().item()


def assert_step_close(out, ref, tol, what="", terms: float = 0.0):
    """terms: mean |f(real)| + mean |f(fake)| (the size of what the W estimate subtracts)."""
    pen_terms = terms + abs(float(ref.loss + ref.wasserstein))  # loss = -W + gp_weight * penalty
    errs = {"loss": scalar_err(out.loss, ref.loss, pen_terms),
            "wasserstein": scalar_err(out.wasserstein, ref.wasserstein, terms),
            "penalty": rel_err(out.penalty, ref.penalty)}
    for l, (a, b) in enumerate(zip(out.weight_grads, ref.weight_grads)):
        errs[f"dW{l}"] = rel_err(a, b)
    for l, (a, b) in enumerate(zip(out.bias_grads, ref.bias_grads)):
        errs[f"db{l}"] = rel_err(a, b)
    assert len(out.weight_grads) == len(ref.weight_grads) and len(out.bias_grads) == len(ref.bias_grads)
    bad = {k: v for k, v in errs.items() if not (v < tol)}
    assert not bad, f"{what}: relative errors above {tol}: {bad}"


def run_or_skip_dtype(backend, fn, dtype):
    """A backend may refuse float64 (e.g. a GPU-only dtype limit); that is a skip, not a failure."""
    try:
        return fn()
    except (TypeError, NotImplementedError, ValueError, RuntimeError) as exc:
        msg = str(exc).lower()
        if dtype == torch.float64 and ("float64" in msg or "double" in msg or "dtype" in msg):
            pytest.skip(f"{backend} does not take float64: {exc}")
        raise


def check_backend(backend, critic64, x, zr, zf, t, dtype, penalty_over, gp_weight=10.0):
    ref = critic_gradient_penalty(critic64, x, zr, zf, t, gp_weight=gp_weight, penalty_over=penalty_over,
                                  backend="torch")
    c, args = cast(critic64, dtype), [a.to(dtype) for a in (x, zr, zf, t)]
    out = run_or_skip_dtype(backend, lambda: critic_gradient_penalty(
        c, *args, gp_weight=gp_weight, penalty_over=penalty_over, backend=backend), dtype)
    assert out.backend == backend
    assert out.loss.dtype == dtype and all(g.dtype == dtype for g in out.weight_grads + out.bias_grads)
    f = lambda z: mlp_forward_reference(critic64, torch.cat([x, z], 1))  # noqa: E731
    terms = float(f(zr).abs().mean() + f(zf).abs().mean())
    assert_step_close(out, ref, TOL[dtype], f"{backend} {dtype} {penalty_over} widths={critic64.widths}", terms)


def round_to(critic, x, zr, zf, t, dtype):
    """Inputs rounded to `dtype` and back to float64, so the reference sees what the backend sees."""
    r = lambda a: a.to(dtype).to(torch.float64)  # noqa: E731
    return (critic._replace(weights=[r(w) for w in critic.weights], biases=[r(b) for b in critic.biases]),
            r(x), r(zr), r(zf), r(t))


# (batch, x width, critic widths): batch 1, odd batches, 2/3/4 layers, widths not multiples of 16, no x
SHAPES = [
    (1, 10, [26, 37, 1]),
    (7, 10, [26, 5, 130, 1]),
    (33, 10, [26, 130, 37, 5, 1]),
    (7, 3, [5, 37, 1]),
    (5, 0, [7, 37, 1]),  # no condition: stage 2's marginal critic h(z)
]


# ------------------------------------------------------------------------------- backends

def test_cpp_available_when_extension_built():
    if importlib.util.find_spec("lsdm_fast._C") is None:
        pytest.skip("the C++ extension lsdm_fast._C is not built")
    ext = _ext.cpu_extension()
    assert ext is not None, f"lsdm_fast._C exists but does not import: {_ext.load_error('_C')}"
    for fn in ("critic_gp_cpu", "critic_score_grad_cpu"):
        assert hasattr(ext, fn), f"lsdm_fast._C is built but lacks {fn}: rebuild the extension"
    assert "cpp" in available_backends("critic_gradient_penalty", "cpu")
    assert "cpp" in available_backends("critic_score_grad", "cpu")
    assert "cpp" not in available_backends("critic_gradient_penalty", "meta")


@pytest.mark.skipif(not GP_BACKENDS, reason="no compiled backend for critic_gradient_penalty on CPU")
@pytest.mark.parametrize("backend", GP_BACKENDS)
@pytest.mark.parametrize("B,dx,widths", SHAPES, ids=lambda v: str(v).replace(" ", ""))
@pytest.mark.parametrize("penalty_over", ["joint", "latent"])
@pytest.mark.parametrize("slope", [0.2, 0.0], ids=["leaky0.2", "relu"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_critic_gp_parity(rng, backend, B, dx, widths, penalty_over, slope, dtype):
    critic = make_critic(rng, widths, slope=slope)
    x, zr, zf, t = make_batch(rng, B, dx, widths[0] - dx)
    critic, x, zr, zf, t = round_to(critic, x, zr, zf, t, dtype)
    check_backend(backend, critic, x, zr, zf, t, dtype, penalty_over, gp_weight=float(rng.uniform(0.5, 20)))


@pytest.mark.skipif(not SCORE_BACKENDS, reason="no compiled backend for critic_score_grad on CPU")
@pytest.mark.parametrize("backend", SCORE_BACKENDS)
@pytest.mark.parametrize("B,dx,widths", SHAPES, ids=lambda v: str(v).replace(" ", ""))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_score_grad_parity(rng, backend, B, dx, widths, dtype):
    critic = make_critic(rng, widths, slope=float(rng.choice([0.0, 0.2])))
    x, z, _, _ = make_batch(rng, B, dx, widths[0] - dx)
    critic, x, z, _, _ = round_to(critic, x, z, z, z[:, 0], dtype)
    s_ref, g_ref = critic_score_grad(critic, x, z, backend="torch")
    s, g = run_or_skip_dtype(backend, lambda: critic_score_grad(cast(critic, dtype), x.to(dtype), z.to(dtype),
                                                                backend=backend), dtype)
    assert s.dtype == dtype and g.dtype == dtype and g.shape == z.shape
    # the score is a mean of outputs of both signs: judged against their size, as the W estimate is
    terms = float(mlp_forward_reference(critic, torch.cat([x, z], 1)).abs().mean())
    assert scalar_err(s, s_ref, terms) < TOL[dtype] and rel_err(g, g_ref) < TOL[dtype]


@pytest.mark.skipif(not GP_BACKENDS, reason="no compiled backend for critic_gradient_penalty on CPU")
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(B=st.integers(1, 9), dx=st.integers(1, 6), dz=st.integers(1, 6),
       hidden=st.lists(st.integers(1, 40), min_size=1, max_size=3),
       penalty_over=st.sampled_from(["joint", "latent"]), slope=st.sampled_from([0.0, 0.01, 0.2]),
       seed=st.integers(0, 2**32 - 1))
def test_critic_gp_parity_hypothesis(B, dx, dz, hidden, penalty_over, slope, seed):
    rng = np.random.default_rng(seed)
    widths = [dx + dz, *hidden, 1]
    critic = make_critic(rng, widths, slope=slope)
    x, zr, zf, t = make_batch(rng, B, dx, dz)
    for backend in GP_BACKENDS:
        check_backend(backend, critic, x, zr, zf, t, torch.float64, penalty_over)


@pytest.mark.skipif("cpp" not in GP_BACKENDS, reason="cpp backend not available")
def test_cpp_noncontiguous_and_zero_gradient_guard(rng):
    critic = make_critic(rng, [9, 13, 11, 1])
    x, zr, zf, t = make_batch(rng, 6, 4, 5)
    # non-contiguous inputs and weights
    xt = x.t().contiguous().t()
    crit_nc = critic._replace(weights=[w.t().contiguous().t() for w in critic.weights])
    assert not xt.is_contiguous() and not crit_nc.weights[0].is_contiguous()
    ref = critic_gradient_penalty(critic, x, zr, zf, t, backend="torch")
    assert_step_close(critic_gradient_penalty(crit_nc, xt, zr[:, :], zf, t.reshape(-1, 1), backend="cpp"), ref,
                      1e-10, "non-contiguous")
    # ||g|| = 0 for every sample (last layer zero): the penalty is 1 and adds no gradient, as torch's norm
    zero = critic._replace(weights=[*critic.weights[:-1], torch.zeros_like(critic.weights[-1])])
    for po in ("joint", "latent"):
        out = critic_gradient_penalty(zero, x, zr, zf, t, penalty_over=po, backend="cpp")
        ref = critic_gradient_penalty(zero, x, zr, zf, t, penalty_over=po, backend="torch")
        assert out.penalty.item() == pytest.approx(1.0)
        assert all(torch.isfinite(g).all() for g in out.weight_grads + out.bias_grads)
        assert_step_close(out, ref, 1e-10, f"zero gradient {po}")


@pytest.mark.skipif("cpp" not in GP_BACKENDS, reason="cpp backend not available")
def test_cpp_checks_inputs_in_cpp():
    ext = _ext.cpu_extension()
    w = [torch.randn(4, 5), torch.randn(1, 4)]
    b = [torch.randn(4), torch.randn(1)]
    x, z, t = torch.randn(3, 2), torch.randn(3, 3), torch.rand(3)
    ext.critic_gp_cpu(w, b, x, z, z, t, 10.0, "joint", 0.2)  # fine
    with pytest.raises(RuntimeError, match="penalty_over"):
        ext.critic_gp_cpu(w, b, x, z, z, t, 10.0, "x", 0.2)
    with pytest.raises(RuntimeError, match="takes 5 inputs"):
        ext.critic_gp_cpu(w, b, x, torch.randn(3, 2), torch.randn(3, 2), t, 10.0, "joint", 0.2)
    with pytest.raises(RuntimeError, match="1 output"):
        ext.critic_gp_cpu([w[0]], [b[0]], x, z, z, t, 10.0, "joint", 0.2)
    with pytest.raises(RuntimeError, match="Double|Float|float"):
        ext.critic_gp_cpu(w, b, x.double(), z.double(), z.double(), t, 10.0, "joint", 0.2)
    with pytest.raises(RuntimeError, match="one value per sample"):
        ext.critic_gp_cpu(w, b, x, z, z, torch.rand(4), 10.0, "joint", 0.2)


# ------------------------------------------------------------------------------- the reference itself

def _manual_loss(ws, bs, x, zr, zf, t, gp_weight, penalty_over, slope):
    """The WGAN-GP loss with the input gradient written out by hand (no autograd)."""
    def forward(u):
        pre = []
        for l, (w, b) in enumerate(zip(ws, bs)):
            a = u @ w.T + b
            if l < len(ws) - 1:
                pre.append(a)
                u = torch.where(a > 0, a, slope * a)
            else:
                u = a
        return u[:, 0], pre

    tt = t.reshape(-1, 1)
    f_r, _ = forward(torch.cat([x, zr], 1))
    f_f, _ = forward(torch.cat([x, zf], 1))
    _, pre = forward(torch.cat([x, tt * zr + (1 - tt) * zf], 1))
    g = ws[-1].expand(x.shape[0], -1)
    for l in range(len(ws) - 2, -1, -1):
        a = pre[l]
        g = (g * torch.where(a > 0, torch.ones_like(a), torch.full_like(a, slope))) @ ws[l]
    if penalty_over == "latent":
        g = g[:, x.shape[1]:]
    pen = ((g.norm(dim=1) - 1) ** 2).mean()
    wass = f_r.mean() - f_f.mean()
    return -wass + gp_weight * pen, wass, pen


@pytest.mark.parametrize("penalty_over", ["joint", "latent"])
@pytest.mark.parametrize("slope", [0.2, 0.0])
def test_reference_against_finite_differences(rng, penalty_over, slope):
    widths, dx = [5, 6, 4, 1], 2
    critic = make_critic(rng, widths, slope=slope)
    x, zr, zf, t = make_batch(rng, 4, dx, widths[0] - dx)
    ref = critic_gradient_penalty(critic, x, zr, zf, t, gp_weight=3.0, penalty_over=penalty_over, backend="torch")
    ws, bs = [w.clone() for w in critic.weights], [b.clone() for b in critic.biases]
    loss, wass, pen = _manual_loss(ws, bs, x, zr, zf, t, 3.0, penalty_over, slope)
    assert rel_err(ref.loss, loss) < 1e-12 and rel_err(ref.wasserstein, wass) < 1e-12
    assert rel_err(ref.penalty, pen) < 1e-12
    eps = 1e-6
    for params, grads in ((ws, ref.weight_grads), (bs, ref.bias_grads)):
        for p, g in zip(params, grads):
            fd = torch.zeros_like(p)
            flat, fdf = p.view(-1), fd.view(-1)
            for k in range(flat.numel()):
                old = flat[k].item()
                flat[k] = old + eps
                lp = _manual_loss(ws, bs, x, zr, zf, t, 3.0, penalty_over, slope)[0].item()
                flat[k] = old - eps
                lm = _manual_loss(ws, bs, x, zr, zf, t, 3.0, penalty_over, slope)[0].item()
                flat[k] = old
                fdf[k] = (lp - lm) / (2 * eps)
            # piecewise linear critic: central differences are exact up to rounding unless a kink is crossed
            assert (fd - g).norm().item() <= 1e-6 * max(1.0, g.norm().item()), (fd, g)


# ------------------------------------------------------------------------------- torch.library op

@pytest.mark.parametrize("backend", ["torch", *GP_BACKENDS])
def test_custom_op_eager_backward(rng, backend):
    critic = make_critic(rng, [7, 11, 9, 1])
    x, zr, zf, t = make_batch(rng, 5, 3, 4)
    ref = critic_gradient_penalty(critic, x, zr, zf, t, gp_weight=5.0, penalty_over="latent", backend="torch")
    ws = [w.clone().requires_grad_(True) for w in critic.weights]
    bs = [b.clone().requires_grad_(True) for b in critic.biases]
    loss, wass, pen = critic_loss(critic._replace(weights=ws, biases=bs), x, zr, zf, t, gp_weight=5.0,
                                  penalty_over="latent", backend=backend)
    assert not wass.requires_grad and not pen.requires_grad
    (2.0 * loss).backward()
    assert rel_err(loss, ref.loss) < 1e-10 and rel_err(wass, ref.wasserstein) < 1e-10
    assert rel_err(pen, ref.penalty) < 1e-10
    for p, g in zip(ws + bs, ref.weight_grads + ref.bias_grads):
        assert rel_err(p.grad, 2.0 * g) < 1e-10


def test_custom_op_opcheck(rng):
    critic = make_critic(rng, [5, 6, 1])
    x, zr, zf, t = make_batch(rng, 3, 2, 3)
    ws = [w.requires_grad_(True) for w in critic.weights]
    bs = [b.requires_grad_(True) for b in critic.biases]
    torch.library.opcheck(torch.ops.lsdm_fast.critic_gp_fused.default,
                          (x, zr, zf, t, ws, bs, 10.0, "joint", 0.2, "auto"),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


def test_compiled_critic_step_fullgraph(rng):
    """A whole critic step (fused loss op + loss.backward() + Adam update) in one torch.compile
    graph (fullgraph=True, inductor), against eager reference gradients and the same Adam update."""
    import torch._dynamo
    import torch._dynamo.config as dynamo_config

    widths, dx = [7, 12, 10, 1], 3
    critic = make_critic(rng, widths)
    x, zr, zf, t = make_batch(rng, 6, dx, widths[0] - dx)
    params = [torch.nn.Parameter(p.clone()) for p in [*critic.weights, *critic.biases]]
    n = len(critic.weights)
    exp_avgs = [torch.zeros_like(p) for p in params]
    exp_avg_sqs = [torch.zeros_like(p) for p in params]
    lr, betas, eps = 1e-2, (0.5, 0.9), 1e-8

    def step(x, zr, zf, t):
        loss, wass, pen = critic_loss(MLPParams(params[:n], params[n:]), x, zr, zf, t, backend="auto")
        loss.backward()
        with torch.no_grad():  # torch.optim.Adam.step() graph-breaks by design: its foreach update by hand
            grads = [p.grad for p in params]
            torch._foreach_lerp_(exp_avgs, grads, 1 - betas[0])
            torch._foreach_mul_(exp_avg_sqs, betas[1])
            torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - betas[1])
            denom = torch._foreach_sqrt(exp_avg_sqs)
            torch._foreach_div_(denom, math.sqrt(1 - betas[1]))
            torch._foreach_add_(denom, eps)
            torch._foreach_addcdiv_(params, exp_avgs, denom, -lr / (1 - betas[0]))
        return loss.detach(), wass, pen

    torch._dynamo.reset()
    with dynamo_config.patch(trace_autograd_ops=True):
        compiled = torch.compile(step, fullgraph=True)
        loss, wass, pen = compiled(x, zr, zf, t)

    ref = critic_gradient_penalty(critic, x, zr, zf, t, backend="torch")
    assert rel_err(loss, ref.loss) < 1e-10 and rel_err(wass, ref.wasserstein) < 1e-10
    for p, g in zip(params, [*ref.weight_grads, *ref.bias_grads]):
        assert rel_err(p.grad, g) < 1e-10
    # the same Adam step in eager PyTorch from the reference gradients
    p0 = [*critic.weights, *critic.biases]
    eager = [torch.nn.Parameter(p.clone()) for p in p0]
    for p, g in zip(eager, [*ref.weight_grads, *ref.bias_grads]):
        p.grad = g.clone()
    opt = torch.optim.Adam(eager, lr=lr, betas=betas, eps=eps)
    opt.step()
    for p, q in zip(params, eager):  # Adam's first step is ~lr*sign(g): noise-level gradient entries
        assert rel_err(p.detach(), q.detach()) < 1e-6  # (~1e-17) may differ by ~lr*|g|/eps; looser here
    assert lsdm_fast is not None
