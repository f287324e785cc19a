"""The stage-2 step (lsdm_fast.matching_step): sync mode is bit-identical on CPU to the plain loop
written out below (the method as it states it, computed in the same test run); graph mode tracks it, never synchronises with the host inside a step, and
catches NaN/Inf on the device without applying the bad update.

Graph mode's tolerance against sync mode (measured on CPU, 20 generator steps of 5 critic updates,
widths 16): the loss history within 2.4e-7 (absolute) and the weights within 6e-9 (relative
norm); asserted at 1e-5 and 1e-6. The only difference is fused Adam against the default one.
"""
import copy

import pytest
import torch

from lsdm_fast import ops
from lsdm_fast.config import MatchingConfig
from lsdm_fast.guards import DeviceGuard, TrainingError, out_of_memory_as_training_error
from lsdm_fast.matching_step import MatchingStep
from lsdm_fast.models import Critic, Generator

# the Triton interpreter (tests/conftest.py) is too slow for whole training steps; the kernels'
# parity is tested on their own, and on a GPU the CUDA tests below run every backend
BACKENDS = [b for b in ops.available_backends("critic_gradient_penalty", "cpu") if b != "triton"]
HIST_ATOL, WEIGHT_RTOL = 1e-5, 1e-6
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def setup(seed=0, device="cpu", dx=5, dz=3, noise=4):
    torch.manual_seed(seed)
    g, c = Generator(noise, dx, dz, (16, 16)).to(device), Critic(dx, dz, (16, 16)).to(device)
    x = torch.eye(dx)[torch.arange(60) % dx].to(device)
    z = (torch.randn(60, dz) + x.cpu()[:, :dz]).to(device)
    return g, c, x, z


def config(backend="torch", **kw):
    base = dict(generator_hidden=(16, 16), critic_hidden=(16, 16), batch_size=24, critic_steps=3, backend=backend)
    return MatchingConfig(**{**base, **kw})


def rng(device="cpu"):
    return torch.Generator(device=device).manual_seed(7)


def weights(*modules):
    return torch.cat([p.detach().flatten() for m in modules for p in m.parameters()])


def tensors(obj):
    """Every tensor and plain value of a nested state dict, in a fixed order."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [v for k in sorted(obj, key=str) for v in tensors(obj[k])]
    if isinstance(obj, (list, tuple)):
        return [v for u in obj for v in tensors(u)]
    return [obj]


def assert_same_state(a, b):
    ta, tb = tensors(a), tensors(b)
    assert len(ta) == len(tb)
    for u, v in zip(ta, tb):
        if isinstance(u, torch.Tensor):
            assert u.dtype == v.dtype and u.device == v.device
            torch.testing.assert_close(u, v, rtol=0, atol=0, equal_nan=True)
        else:
            assert u == v


def reference_loop(g, c, x, z, cfg, gen, steps, precision, fused=None, z_marginal=None):
    """Stage 2 as the method states it, one process, no guards: the loop MatchingStep's sync mode
    must reproduce bit for bit, and its graph mode run eagerly with fused=True (its one difference:
    fused Adam). With z_marginal, the marginal critic h(z) too: each critic update is followed by one of h
    on drawn z_marginal rows against the same generated latents, and the generator descends
    -mean f - cfg.marginal_weight * mean h. A step draws everything first: the joint draws, then h's."""
    gen_opt = torch.optim.Adam(g.parameters(), lr=cfg.lr, betas=cfg.betas, fused=fused)
    critic_opt = torch.optim.Adam(c.parameters(), lr=cfg.lr, betas=cfg.betas, fused=fused)
    critic_params = list(c.mlp.params().weights) + list(c.mlp.params().biases)
    scaler = torch.amp.GradScaler("cpu") if precision == "fp16" else None
    cast = (lambda: torch.autocast("cpu", dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[precision])) \
        if precision != "fp32" else torch.enable_grad
    ema = [p.detach().clone() for p in g.parameters()] if cfg.generator_ema > 0 else None
    B, hist = cfg.batch_size, []
    if z_marginal is None or cfg.marginal_weight == 0:
        z_marginal = None
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(gen.initial_seed() + 1)
            h = Critic(0, z.shape[1], cfg.critic_hidden, cfg.negative_slope)
        h_opt = torch.optim.Adam(h.parameters(), lr=cfg.lr, betas=cfg.betas, fused=fused)
        h_params = list(h.mlp.params().weights) + list(h.mlp.params().biases)

    def batch():
        idx = torch.randint(len(x), (B,), generator=gen)
        return x[idx], z[idx], torch.randn(B, g.noise_dim, generator=gen)

    for _ in range(steps):
        critic_draws = [(*batch(), torch.rand(B, generator=gen)) for _ in range(cfg.critic_steps)]
        xb, _, eta = batch()
        marginal_draws = [] if z_marginal is None else [
            (z_marginal[torch.randint(len(z_marginal), (B,), generator=gen)], torch.rand(B, generator=gen))
            for _ in range(cfg.critic_steps)]
        for i, (xc, zb, eta_c, t) in enumerate(critic_draws):
            with torch.no_grad(), cast():
                z_fake = g(eta_c, xc)
            out = ops.critic_gradient_penalty(c.mlp.params(), xc, zb, z_fake.float(), t, gp_weight=cfg.gp_weight,
                                              penalty_over=cfg.penalty_over, backend=cfg.backend)
            for p, grad in zip(critic_params, out.weight_grads + out.bias_grads):
                p.grad = grad
            critic_opt.step()
            if marginal_draws:
                z_real, t_m = marginal_draws[i]
                out_h = ops.critic_gradient_penalty(h.mlp.params(), torch.zeros(B, 0), z_real, z_fake.float(), t_m,
                                                    gp_weight=cfg.gp_weight, backend=cfg.backend)
                for p, grad in zip(h_params, out_h.weight_grads + out_h.bias_grads):
                    p.grad = grad
                h_opt.step()
        with cast():
            z32 = g(eta, xb).float()
        score, grad_z = ops.critic_score_grad(c.mlp.params(), xb, z32.detach(), backend=cfg.backend)
        if marginal_draws:
            grad_z = grad_z + cfg.marginal_weight * ops.critic_score_grad(h.mlp.params(), torch.zeros(B, 0), z32.detach(),
                                                                      backend=cfg.backend)[1]
        gen_opt.zero_grad(set_to_none=True)
        z32.backward(-grad_z if scaler is None else scaler.scale(-grad_z))
        if scaler is None:
            gen_opt.step()
        else:
            scaler.unscale_(gen_opt)
            scaler.step(gen_opt)
            scaler.update()
        if ema is not None:
            with torch.no_grad():
                torch._foreach_lerp_(ema, [p.detach() for p in g.parameters()], 1 - cfg.generator_ema)
        hist.append([float(out.loss), float(out.wasserstein), float(out.penalty), -float(score)])
    state = {"gen_opt": gen_opt.state_dict(), "critic_opt": critic_opt.state_dict(),
             "scaler": scaler.state_dict() if scaler is not None else None, "gen_ema": ema}
    if z_marginal is not None:
        state.update(marginal=h.state_dict(), marginal_opt=h_opt.state_dict())
    return hist, state


def run(mode, cfg, steps, precision="fp32", device="cpu", **kw):
    g, c, x, z = setup(device=device)
    step = MatchingStep(g, c, x, z, cfg, rng(device), precision=precision, mode=mode, **kw)
    hist = torch.stack([step(i) for i in range(steps)])
    step.check()
    return step, g, c, hist


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("precision, ema, penalty_over", [("fp32", 0.0, "joint"), ("bf16", 0.9, "latent"),
                                                          ("fp16", 0.9, "joint")])
def test_sync_mode_is_bit_identical_to_the_plain_loop(backend, precision, ema, penalty_over):
    cfg = config(backend, generator_ema=ema, penalty_over=penalty_over)
    g, c, x, z = setup()
    ref_hist, ref_state = reference_loop(g, c, x, z, cfg, rng(), 6, precision)
    step, g2, c2, hist = run("sync", cfg, 6, precision)
    assert hist.tolist() == ref_hist
    assert torch.equal(weights(g, c), weights(g2, c2))
    assert_same_state(step.state_dict(), ref_state)
    assert step.backend == backend
    step.finish()
    assert torch.equal(weights(g2), torch.cat([t.flatten() for t in ref_state["gen_ema"]]) if ema else weights(g))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("precision, ema, penalty_over", [("fp32", 0.0, "joint"), ("bf16", 0.9, "latent")])
def test_graph_mode_body_run_eagerly_is_bit_identical_to_the_plain_loop_with_fused_adam(backend, precision, ema,
                                                                                        penalty_over):
    cfg = config(backend, generator_ema=ema, penalty_over=penalty_over)
    g, c, x, z = setup()
    ref_hist, ref_state = reference_loop(g, c, x, z, cfg, rng(), 6, precision, fused=True)
    step, g2, c2, hist = run("graph", cfg, 6, precision)
    assert step.mode == "graph" and not step.capture
    assert hist.tolist() == ref_hist
    assert torch.equal(weights(g, c), weights(g2, c2))
    assert_same_state(step.state_dict()["gen_ema"], ref_state["gen_ema"])
    for key in ("gen_opt", "critic_opt"):  # the moments and step counts (the flags are fused Adam's either way)
        assert_same_state(step.state_dict()[key]["state"], ref_state[key]["state"])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_graph_mode_tracks_sync_mode(backend, precision):
    cfg = config(backend, critic_steps=5, generator_ema=0.9)
    s1, g1, c1, h1 = run("sync", cfg, 20, precision)
    s2, g2, c2, h2 = run("graph", cfg, 20, precision)
    assert s2.mode == "graph" and not s2.capture and s2.backend == backend
    assert (h1 - h2).abs().max() <= HIST_ATOL * max(1.0, h1.abs().max())
    w1, w2 = weights(g1, c1), weights(g2, c2)
    assert (w1 - w2).norm() <= WEIGHT_RTOL * w1.norm()
    torch.testing.assert_close(torch.cat([t.flatten() for t in s2.ema]), torch.cat([t.flatten() for t in s1.ema]),
                               rtol=WEIGHT_RTOL, atol=WEIGHT_RTOL)
    assert s2.gen_opt.state[g2.mlp.layers[0].weight]["step"] == 20
    assert s2.critic_opt.state[c2.mlp.layers[0].weight]["step"] == 20 * 5


class SyncCalled(AssertionError):
    pass


@pytest.fixture
def no_host_reads(monkeypatch):
    """Make every Python-level host read of a tensor raise (on CPU, where nothing else would notice)."""
    def forbid(name):
        def read(*a, **kw):
            raise SyncCalled(f"Tensor.{name} called inside the step")
        return read

    def patch():
        for name in ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__"):
            monkeypatch.setattr(torch.Tensor, name, forbid(name))
    return patch


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_graph_mode_never_reads_the_host_inside_a_step(backend, precision, no_host_reads, monkeypatch):
    g, c, x, z = setup()
    graph = MatchingStep(g, c, x, z, config(backend, generator_ema=0.5), rng(), mode="graph", precision=precision)
    sync = MatchingStep(*setup(), config(backend), rng(), mode="sync", precision=precision)
    no_host_reads()
    rows = [graph(i) for i in range(3)]
    with pytest.raises(SyncCalled):  # the patch does catch the host reads the sync mode makes
        sync(0)
    monkeypatch.undo()
    graph.check()
    assert torch.isfinite(torch.stack(rows)).all()


def poison_batch(step_obj, at_call, critic_step):
    """A NaN in the noise of one critic update's batch of generator step `at_call`."""
    draw, calls = step_obj._draw, [0]

    def poisoned():
        draw()
        if calls[0] == at_call:
            step_obj._eta[critic_step, 0, 0] = float("nan")
        calls[0] += 1
    step_obj._draw = poisoned


def snapshot(step, g, c):
    return copy.deepcopy({"w": [p.detach() for p in list(g.parameters()) + list(c.parameters())],
                          "opt": step.state_dict()})


def test_nan_in_a_batch_is_caught_on_the_device_and_not_applied():
    cfg = config(generator_ema=0.9)
    g, c, x, z = setup()
    step = MatchingStep(g, c, x, z, cfg, rng(), mode="graph", describe=lambda: "the last good checkpoint is X")
    poison_batch(step, at_call=3, critic_step=0)
    for i in range(3):
        step(i)
    before = snapshot(step, g, c)
    for i in range(3, 6):  # the bad update and every later one are skipped on the device
        step(i)
    assert_same_state(snapshot(step, g, c), before)
    with pytest.raises(TrainingError) as exc:
        step.check()
    assert str(exc.value) == ("stage 2 (joint matching) diverged at generator step 3, critic step 0: the critic loss "
                              "is nan; the update was not applied (nor any after it) and the last good checkpoint "
                              "is X; try a lower learning rate (matching lr is 0.0006)")


def test_nan_in_a_later_critic_update_matches_where_sync_mode_stops():
    """Poisoned at critic update 2 of generator step 2: sync mode raises there, having applied updates 0
    and 1; graph mode records the same place and ends in the same state."""
    cfg = config()
    runs = {}
    for mode in ("sync", "graph"):
        g, c, x, z = setup()
        step = MatchingStep(g, c, x, z, cfg, rng(), mode=mode)
        poison_batch(step, at_call=2, critic_step=2)  # both modes draw into the same buffers
        with pytest.raises(TrainingError, match="generator step 2, critic step 2: the critic loss is nan") as exc:
            for i in range(4):
                step(i)
            step.check()
        runs[mode] = (weights(g, c), step.state_dict(), str(exc.value))
    assert (runs["sync"][0] - runs["graph"][0]).norm() <= WEIGHT_RTOL * runs["sync"][0].norm()
    for key in ("gen_opt", "critic_opt"):
        steps = [[float(s["step"]) for s in runs[m][1][key]["state"].values()] for m in ("sync", "graph")]
        assert steps[0] == steps[1]


def test_nan_weights_and_an_infinite_generator_score_are_caught(monkeypatch):
    g, c, x, z = setup()
    step = MatchingStep(g, c, x, z, config(), rng(), mode="graph")
    step(0)
    with torch.no_grad():
        c.mlp.layers[1].weight[0, 0] = float("inf")
    before = snapshot(step, g, c)
    step(1)
    assert_same_state(snapshot(step, g, c), before)
    with pytest.raises(TrainingError, match=r"generator step 1, critic step 0: the critic loss is (nan|inf)"):
        step.check()

    g, c, x, z = setup()
    step = MatchingStep(g, c, x, z, config(), rng(), mode="graph")
    step(0)
    real = ops.critic_score_grad

    def infinite_score(*a, **kw):
        score, grad_z = real(*a, **kw)
        return score * float("inf"), grad_z
    monkeypatch.setattr(ops, "critic_score_grad", infinite_score)
    gen_before, critic_before = copy.deepcopy([[p.detach() for p in g.parameters()], step.gen_opt.state_dict()]), weights(c)
    step(1)
    assert_same_state([[p.detach() for p in g.parameters()], step.gen_opt.state_dict()], gen_before)
    assert not torch.equal(weights(c), critic_before)  # the critic updates before it were applied
    with pytest.raises(TrainingError, match=r"at generator step 1: the critic score of the generated latents is "
                                            r"-?inf; the update was not applied"):
        step.check()


def test_sync_mode_raises_before_the_update():
    g, c, x, z = setup()
    step = MatchingStep(g, c, x, z, config(), rng(), mode="sync")
    step(0)
    with torch.no_grad():
        c.mlp.layers[0].bias[0] = float("nan")
    before = snapshot(step, g, c)
    with pytest.raises(TrainingError, match=r"^stage 2 \(joint matching\) diverged at generator step 1, critic step 0: "
                                            r"the critic loss is nan; the update was not applied and no checkpoint "
                                            r"is kept \(pass checkpoint_dir to keep one\); try a lower learning rate"):
        step(1)
    assert_same_state(snapshot(step, g, c), before)
    step.check()  # sync mode has nothing left to report


@pytest.mark.parametrize("first, second", [("sync", "sync"), ("graph", "graph"), ("graph", "sync"), ("sync", "graph")])
def test_resume_from_state_dict(first, second):
    """6 steps straight against 3 + save + restore into a fresh step object + 3 (in either mode)."""
    cfg = config(generator_ema=0.8)
    _, g_ref, c_ref, h_ref = run(second, cfg, 6)
    g, c, x, z = setup()
    gen = rng()
    step = MatchingStep(g, c, x, z, cfg, gen, mode=first)
    h = [step(i) for i in range(3)]
    saved = copy.deepcopy({"state": step.state_dict(), "g": g.state_dict(), "c": c.state_dict(), "rng": gen.get_state()})
    g2, c2, _, _ = setup(seed=3)
    g2.load_state_dict(saved["g"]), c2.load_state_dict(saved["c"])
    gen2 = torch.Generator()
    gen2.set_state(saved["rng"])
    step2 = MatchingStep(g2, c2, x, z, cfg, gen2, mode=second)
    step2.load_state_dict(saved["state"])
    for opt in (step2.gen_opt, step2.critic_opt):  # the flags and step counters are this mode's, whoever saved
        assert opt.param_groups[0]["fused"] is (True if second == "graph" else None)
        assert all(s["step"].device.type == "cpu" and s["step"] == 3 * (1 if opt is step2.gen_opt else 3)
                   for s in opt.state.values())
    h += [step2(i) for i in range(3, 6)]
    if first == second:
        assert torch.equal(torch.stack(h), h_ref) and torch.equal(weights(g2, c2), weights(g_ref, c_ref))
    else:
        w, w_ref = weights(g2, c2), weights(g_ref, c_ref)
        assert (w - w_ref).norm() <= WEIGHT_RTOL * w_ref.norm()


def test_falling_back_to_sync_mode_keeps_the_state():
    """What a failed CUDA-graph capture does (the capture itself needs a GPU): the run goes on in
    sync mode from the same optimiser state, EMA and draws."""
    cfg = config(generator_ema=0.8)
    _, g_ref, c_ref, h_ref = run("graph", cfg, 6)
    g, c, x, z = setup()
    step = MatchingStep(g, c, x, z, cfg, rng(), mode="graph")
    h = [step(i) for i in range(3)]
    step._fall_back_to_sync()
    assert step.mode == "sync" and step.gen_opt.param_groups[0]["fused"] is None
    assert not hasattr(step.gen_opt, "found_inf")
    h += [step(i) for i in range(3, 6)]
    assert (torch.stack(h) - h_ref).abs().max() <= HIST_ATOL * max(1.0, h_ref.abs().max())
    w, w_ref = weights(g, c), weights(g_ref, c_ref)
    assert (w - w_ref).norm() <= WEIGHT_RTOL * w_ref.norm()


def test_modes_and_their_limits():
    g, c, x, z = setup()
    assert MatchingStep(g, c, x, z, config(), rng()).mode == "sync"  # auto on CPU
    with pytest.raises(ValueError, match="mode must be one of"):
        MatchingStep(g, c, x, z, config(), rng(), mode="fast")
    with pytest.raises(ValueError, match="mode='graph' does not support precision 'fp16'.*GradScaler"):
        MatchingStep(g, c, x, z, config(), rng(), mode="graph", precision="fp16")
    with pytest.raises(ValueError, match=r"capture: CUDA graphs need a CUDA device \(tensors are on cpu\)"):
        MatchingStep(g, c, x, z, config(), rng(), mode="graph", capture=True)
    step = MatchingStep(g, c, x, z, config(generator_ema=0.5), rng())
    with pytest.raises(ValueError, match="the saved state has no generator EMA but generator_ema=0.5"):
        step.load_state_dict({**step.state_dict(), "gen_ema": None})


@pytest.mark.parametrize("mode", ["sync", "graph"])
def test_out_of_memory_names_the_batch(mode, monkeypatch):
    def oom(*a, **kw):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    monkeypatch.setattr(ops, "critic_gradient_penalty", oom)
    step = MatchingStep(*setup(), config(), rng(), mode=mode)
    with pytest.raises(TrainingError, match=r"^stage 2 \(joint matching\): out of memory at step 4 on a batch of 24; "
                                            r"try a smaller batch, e.g. --batch-size 12 \(MatchingConfig.batch_size=12\)$"):
        with out_of_memory_as_training_error("a loop around the step", 4, 24, "X"):  # passes the report on
            step(4)


def test_device_guard_records_the_first_bad_value_and_stays_halted():
    guard = DeviceGuard(torch.device("cpu"))
    one, nan, inf = torch.tensor(1.0), torch.tensor(float("nan")), torch.tensor(float("inf"))
    guard.set_step(0)
    assert guard.watch(0, [one, one]) and guard.read() is None
    guard.set_step(1)
    assert not guard.watch(2, [one, inf])
    guard.set_step(2)
    assert not guard.watch(0, [nan, one])  # later faults do not overwrite the first
    assert guard.read() == (1, 3, float("inf")) and guard.halt == 1
    guard.reset()
    assert guard.read() is None and guard.halt == 0


# ---------------------------------------------------------------- CUDA only (bench/gpu_check.sh runs these)

CUDA_BACKENDS = ops.available_backends("critic_gradient_penalty", "cuda") if torch.cuda.is_available() else []


@pytest.mark.gpu
@CUDA
@pytest.mark.parametrize("backend", ["auto", *CUDA_BACKENDS])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graph_replay_tracks_eager_and_sync(backend, precision):
    cfg = config(backend, critic_steps=5, generator_ema=0.9)
    s1, g1, c1, h1 = run("sync", cfg, 20, precision, "cuda")
    s2, g2, c2, h2 = run("graph", cfg, 20, precision, "cuda")
    s3, g3, c3, h3 = run("graph", cfg, 20, precision, "cuda", capture=False)
    assert s2.capture and s2._graph is not None, "the capture fell back to sync mode"
    # replay against the same body run eagerly: the same kernels, so the same numbers up to
    # non-deterministic reductions; against sync mode: fused against foreach Adam as well
    for hist, w, tol in ((h3, weights(g3, c3), 1e-5), (h1, weights(g1, c1), 1e-4)):
        assert (hist - h2).abs().max() <= tol * max(1.0, hist.abs().max())
        assert (weights(g2, c2) - w).norm() <= tol * w.norm()


@pytest.mark.gpu
@CUDA
@pytest.mark.parametrize("backend", ["auto", *CUDA_BACKENDS])
def test_cuda_graph_step_does_not_synchronise(backend):
    g, c, x, z = setup(device="cuda")
    step = MatchingStep(g, c, x, z, config(backend, generator_ema=0.9), rng("cuda"))
    assert step.mode == "graph"
    step(0)  # captures (synchronising by design)
    torch.cuda.set_sync_debug_mode("error")
    try:
        rows = [step(i) for i in range(1, 4)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    step.check()
    assert torch.isfinite(torch.stack(rows)).all()


@pytest.mark.gpu
@CUDA
def test_cuda_graph_catches_nan_weights_without_applying_the_update():
    g, c, x, z = setup(device="cuda")
    step = MatchingStep(g, c, x, z, config(generator_ema=0.9), rng("cuda"))
    step(0)
    with torch.no_grad():
        c.mlp.layers[0].weight[0, 0] = float("nan")
    before = snapshot(step, g, c)
    step(1), step(2)
    assert_same_state(snapshot(step, g, c), before)
    with pytest.raises(TrainingError, match="generator step 1, critic step 0: the critic loss is nan"):
        step.check()


@pytest.mark.gpu
@CUDA
def test_cuda_graph_capture_failure_falls_back_to_sync(monkeypatch):
    real = ops.critic_gradient_penalty

    def syncing(*a, **kw):
        out = real(*a, **kw)
        float(out.loss)  # a host read: not allowed while capturing
        return out
    monkeypatch.setattr(ops, "critic_gradient_penalty", syncing)
    cfg = config(generator_ema=0.9)
    with pytest.warns(RuntimeWarning, match="stage 2 runs in sync mode: the step could not be captured"):
        s2, g2, c2, h2 = run("graph", cfg, 5, device="cuda")
    assert s2.mode == "sync"
    # the failed capture leaves the process's default CUDA generator usable (torch leaves it expecting a graph)
    torch.randint(0, 3, (5,), device="cuda"), torch.randn(4, device="cuda")
    _, g1, c1, h1 = run("sync", cfg, 5, device="cuda")
    torch.testing.assert_close(h2, h1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weights(g2, c2), weights(g1, c1), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ the marginal critic h(z)

def marginal_latents(dz=3, n=150):
    """Every image's latent as stage 2 sees them (pairs and unpaired): more rows than the pairs, other values."""
    return torch.randn(n, dz, generator=torch.Generator().manual_seed(11)) * 1.3 + 0.2


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode, precision, penalty_over", [("sync", "fp32", "joint"), ("sync", "bf16", "latent"),
                                                           ("graph", "fp32", "joint")])
def test_marginal_critic_is_bit_identical_to_the_plain_loop(backend, mode, precision, penalty_over):
    cfg = config(backend, penalty_over=penalty_over, marginal_weight=0.7)
    zm = marginal_latents()
    g, c, x, z = setup()
    ref_hist, ref_state = reference_loop(g, c, x, z, cfg, rng(), 6, precision, fused=True if mode == "graph" else None,
                                         z_marginal=zm)
    step, g2, c2, hist = run(mode, cfg, 6, precision, z_marginal=zm)
    assert hist.tolist() == ref_hist
    assert torch.equal(weights(g, c), weights(g2, c2))
    got = step.state_dict()
    assert_same_state(got["marginal"], ref_state["marginal"])
    assert_same_state(got["marginal_opt"]["state"], ref_state["marginal_opt"]["state"])
    assert got["marginal_opt"]["state"][0]["step"] == 6 * cfg.critic_steps


def test_marginal_critic_changes_the_generator_and_is_off_at_weight_0():
    zm = marginal_latents()
    _, g0, c0, h0 = run("sync", config(), 4)
    step, g1, c1, h1 = run("sync", config(marginal_weight=0.0), 4, z_marginal=zm)
    assert step.marginal is None and "marginal" not in step.state_dict()
    assert torch.equal(h0, h1) and torch.equal(weights(g0, c0), weights(g1, c1))
    _, g2, _, _ = run("sync", config(marginal_weight=1.0), 4, z_marginal=zm)
    assert not torch.equal(weights(g0), weights(g2))


@pytest.mark.parametrize("first, second", [("sync", "sync"), ("graph", "graph")])
def test_marginal_critic_resumes_from_state_dict(first, second):
    cfg, zm = config(generator_ema=0.8, marginal_weight=1.0), marginal_latents()
    _, g_ref, c_ref, h_ref = run(second, cfg, 6, z_marginal=zm)
    g, c, x, z = setup()
    gen = rng()
    step = MatchingStep(g, c, x, z, cfg, gen, mode=first, z_marginal=zm)
    h = [step(i) for i in range(3)]
    saved = copy.deepcopy({"state": step.state_dict(), "g": g.state_dict(), "c": c.state_dict(), "rng": gen.get_state()})
    g2, c2, _, _ = setup(seed=3)
    g2.load_state_dict(saved["g"]), c2.load_state_dict(saved["c"])
    gen2 = torch.Generator().manual_seed(99)  # another seed: h's weights must come from the saved state
    gen2.set_state(saved["rng"])
    step2 = MatchingStep(g2, c2, x, z, cfg, gen2, mode=second, z_marginal=zm)
    step2.load_state_dict(saved["state"])
    h += [step2(i) for i in range(3, 6)]
    assert torch.equal(torch.stack(h), h_ref) and torch.equal(weights(g2, c2), weights(g_ref, c_ref))
    with pytest.raises(ValueError, match="trained with a marginal critic but marginal_weight is 0.0 now"):
        MatchingStep(*setup(), cfg, rng(), mode=first).load_state_dict(saved["state"])
    with pytest.raises(ValueError, match=r"z_marginal must be \(N > 0, 3\), got \(10, 2\)"):
        MatchingStep(*setup(), cfg, rng(), z_marginal=torch.zeros(10, 2))


@pytest.mark.parametrize("mode", ["sync", "graph"])
def test_nan_in_the_marginal_critic_is_named(mode):
    g, c, x, z = setup()
    zm = marginal_latents()
    zm[:] = float("nan")  # every drawn row poisons h's loss at the first update
    step = MatchingStep(g, c, x, z, config(marginal_weight=1.0), rng(), mode=mode, z_marginal=zm)
    with pytest.raises(TrainingError, match="generator step 0, critic step 0: the marginal critic loss is nan"):
        step(0)
        step.check()
