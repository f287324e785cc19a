"""One stage-2 generator step: cfg.critic_steps WGAN-GP critic updates, then one generator update.

The body of the step is the method (see the notes at the top of stages.py):

    for each critic update:   (x, z) pairs and eta ~ N(0, I) drawn, z~ = G(eta, x) without grad,
                              t ~ U(0, 1), loss = -W + gp_weight * penalty (ops.critic_gradient_penalty),
                              gradients averaged over ranks, guard, Adam
    generator update:         (x, eta) drawn, z~ = G(eta, x), d(-mean f(x, z~))/dz~ (ops.critic_score_grad)
                              back through G, averaged, guard, Adam, EMA of G's weights

Two ways to run it (`mode`):

- "sync": the reference. The guard reads the loss terms and the gradient norm on the host before
  each optimiser step and raises at once (a synchronisation per update); the configured Adam;
  fp16 with a GradScaler. Bit-identical on CPU to the loop it replaced.
- "graph": the same maths with no host synchronisation. All random draws of a step are made first,
  from `rng` in the reference order, into static buffers; the updates read them. Non-finite values
  are caught on the device (guards.DeviceGuard): the update is skipped by fused Adam's found_inf,
  every later one too, and `check()` (one host read) raises naming the first bad step. On CUDA
  the body is captured once in a CUDA graph and replayed, one launch per generator step. With
  capture off (CPU, or capture=False) the same body runs eagerly, which is how it is tested
  without a GPU.

"auto" picks "graph" on CUDA where capture is supported (one process or NCCL; fp32 or bf16) and
"sync" otherwise.
"""
from __future__ import annotations

from typing import Callable

import torch

from . import distributed as D
from . import ops
from ._ext import warn_once
from .config import MatchingConfig
from .guards import DeviceGuard, TrainingError, finite_or_raise, grad_norm, is_oom, out_of_memory_as_training_error
from .models import Critic, Generator
from .ops._registry import resolve
from .precision import autocast, make_scaler

STAGE = "stage 2 (joint matching)"
MODES = ("auto", "sync", "graph")
CRITIC_TERMS = ("the critic loss", "the critic gradient norm")
GENERATOR_TERMS = ("the critic score of the generated latents", "the generator gradient norm")
WARMUP_STEPS = 3  # eager runs on a side stream before capture: lazy state, autotuning, caches


def no_checkpoint() -> str:
    return "no checkpoint is kept (pass checkpoint_dir to keep one)"


def graph_unsupported(device: torch.device, precision: str) -> str | None:
    """Why the step cannot be captured in a CUDA graph here (None: it can)."""
    if precision == "fp16":
        return "fp16 needs a GradScaler, whose dynamic loss scale is a host-side decision"
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device (tensors are on {device})"
    if D.rank_world()[1] > 1 and torch.distributed.get_backend() != "nccl":
        return f"multi-process capture needs the NCCL backend (running {torch.distributed.get_backend()})"
    return None


class MatchingStep:
    """One stage-2 generator step: cfg.critic_steps WGAN-GP critic updates, then one generator update."""

    stage = STAGE

    def __init__(self, generator: Generator, critic: Critic, x: torch.Tensor, z: torch.Tensor,
                 cfg: MatchingConfig, rng: torch.Generator, *, precision: str = "fp32", mode: str = "auto",
                 describe: Callable[[], str] = no_checkpoint, capture: bool | None = None):
        """`capture` (graph mode only): replay from a CUDA graph (default: on CUDA) or run the
        same body eagerly (the only choice on CPU)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        D.check_batch(cfg.batch_size, "matching batch_size")
        self.generator, self.critic, self.x, self.z, self.cfg, self.rng = generator, critic, x, z, cfg, rng
        self.precision, self.describe = precision, describe
        self.device = x.device
        self.hint = f"try a lower learning rate (matching lr is {cfg.lr})"
        self.gen_params = list(generator.parameters())
        mlp = critic.mlp.params()
        self.critic_params = list(mlp.weights) + list(mlp.biases)
        self.backend = resolve("critic_gradient_penalty", cfg.backend, self.device, {"layers": len(mlp.weights)})[0]

        why_not = graph_unsupported(self.device, precision)
        if mode == "auto":
            mode = "graph" if why_not is None else "sync"
            if why_not is not None and self.device.type == "cuda":
                warn_once(f"matching-step:{why_not}", f"lsdm_fast: stage 2 runs in sync mode: {why_not}")
            capture = mode == "graph"
        elif mode == "graph":
            if precision == "fp16":
                raise ValueError(f"mode='graph' does not support precision 'fp16': {graph_unsupported(self.device, 'fp16')}")
            capture = self.device.type == "cuda" if capture is None else capture
            if capture and why_not is not None:
                raise ValueError(f"mode='graph' with capture: {why_not}")
        self.mode, self.capture = mode, bool(capture) and mode == "graph"
        self.scaler = make_scaler(precision, self.device) if mode == "sync" else None  # generator only
        # the critic's optimiser over its parameters in module order (the checkpoint's order); its
        # gradients are set in the op's order (weights, then biases)
        self.gen_opt, self.critic_opt = self._adam(self.gen_params), self._adam(list(critic.parameters()))
        # exponential moving average of the generator's weights, swapped in at the end (0: off)
        self.ema = [p.detach().clone() for p in self.gen_params] if cfg.generator_ema > 0 else None
        self._graph: torch.cuda.CUDAGraph | None = None
        if self.mode == "graph":
            self._setup_graph_mode()

    # ------------------------------------------------------------------ state
    def _adam(self, params: list[torch.Tensor]) -> torch.optim.Adam:
        graph = dict(fused=True, capturable=self.device.type == "cuda") if self.mode == "graph" else {}
        return torch.optim.Adam(params, lr=self.cfg.lr, betas=self.cfg.betas, **graph)

    def _adopt(self, opt: torch.optim.Adam) -> None:
        """After a load: `opt` back to this mode's Adam (see _adam; graph mode keeps the step count on
        the device). A loaded state dict carries the flags of the mode that saved it."""
        graph, cuda = self.mode == "graph", self.device.type == "cuda"
        for group in opt.param_groups:
            group.update(fused=True if graph else None, foreach=None, capturable=graph and cuda)
        for p, st in opt.state.items():
            if "step" in st:
                st["step"] = st["step"].to(device=p.device if graph else "cpu", dtype=torch.float32)

    def state_dict(self) -> dict:
        """The optimisers, the GradScaler and the generator EMA (a stage-2 checkpoint's stage state
        without the history and the step)."""
        return {"gen_opt": self.gen_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "gen_ema": [t.clone() for t in self.ema] if self.ema is not None else None}

    def load_state_dict(self, d: dict) -> None:
        if self.ema is not None:
            if d.get("gen_ema") is None:
                raise ValueError(f"{STAGE}: the saved state has no generator EMA but generator_ema="
                                 f"{self.cfg.generator_ema}")
            with torch.no_grad():
                for e, t in zip(self.ema, d["gen_ema"]):
                    e.copy_(t)
        self.gen_opt.load_state_dict(d["gen_opt"])
        self.critic_opt.load_state_dict(d["critic_opt"])
        self._adopt(self.gen_opt)
        self._adopt(self.critic_opt)
        if self.scaler is not None and d.get("scaler"):
            self.scaler.load_state_dict(d["scaler"])
        self._graph = None  # the optimiser state tensors were replaced: capture again

    def finish(self) -> None:
        """End of the stage: the generator takes the EMA weights (when the EMA is on)."""
        if self.ema is not None:
            with torch.no_grad():
                for p, e in zip(self.gen_params, self.ema):
                    p.copy_(e)

    # ------------------------------------------------------------------ one step
    def __call__(self, step: int) -> torch.Tensor:
        """Run generator step `step`; returns [critic_loss, wasserstein, penalty, generator_loss] on the
        device (the last critic update's terms and -mean f of the generator update's batch)."""
        with out_of_memory_as_training_error(STAGE, step, self.cfg.batch_size, "MatchingConfig.batch_size"):
            if self.mode == "sync":
                return self._sync_step(step)
            if self.capture and self._graph is None:
                self._capture()
                if self.mode == "sync":  # the capture failed and fell back
                    return self._sync_step(step)
            self._draw_into_buffers()
            self._guard.set_step(step)
            if self.capture:
                self._graph.replay()
            else:
                self._graph_body()
            return self._out.clone()  # the buffer is overwritten by the next step

    def check(self) -> None:
        """Raise the TrainingError for the first non-finite value since the start (graph mode: one
        host read; sync mode raised already, so this does nothing)."""
        if self.mode == "sync":
            return
        fault = self._guard.read()
        if fault is None:
            return
        step, code, value = fault
        C = self.cfg.critic_steps
        if code < 2 * C:
            where, name = f"generator step {step}, critic step {code // 2}", CRITIC_TERMS[code % 2]
        else:
            where, name = f"generator step {step}", GENERATOR_TERMS[code - 2 * C]
        raise TrainingError(f"{STAGE} diverged at {where}: {name} is {value}; the update was not applied "
                            f"(nor any after it) and {self.describe()}; {self.hint}")

    # ------------------------------------------------------------------ the method, shared by both modes
    def _critic_terms(self, idx: torch.Tensor, eta: torch.Tensor, t: torch.Tensor, *, cache_casts: bool):
        """Gradients (averaged over ranks) and [loss, wasserstein, penalty] of one critic update."""
        xb, zb = self.x[idx], self.z[idx]
        with torch.no_grad(), autocast(self.precision, self.device, cache_enabled=cache_casts):
            z_fake = self.generator(eta, xb)
        out = ops.critic_gradient_penalty(self.critic.mlp.params(), xb, zb, z_fake.float(), t,
                                          gp_weight=self.cfg.gp_weight, penalty_over=self.cfg.penalty_over,
                                          backend=self.cfg.backend)
        self.backend = out.backend
        *grads, terms = D.average(list(out.weight_grads) + list(out.bias_grads)
                                  + [torch.stack([out.loss, out.wasserstein, out.penalty]).float()])
        return grads, terms

    def _generator_grads(self, idx: torch.Tensor, eta: torch.Tensor, *, cache_casts: bool):
        """The generator's gradients of -mean f(x, G(eta, x)) (in .grad, averaged over ranks; scaled
        under fp16) and mean f averaged over ranks."""
        xb = self.x[idx]
        with autocast(self.precision, self.device, cache_enabled=cache_casts):
            z_fake = self.generator(eta, xb)
        z32 = z_fake.float()
        score, grad_z = ops.critic_score_grad(self.critic.mlp.params(), xb, z32.detach(), backend=self.cfg.backend)
        self.gen_opt.zero_grad(set_to_none=True)
        # d(-mean f)/dz, then through G by autograd (scaled under fp16, unscaled before the step)
        z32.backward(self.scaler.scale(-grad_z) if self.scaler is not None else -grad_z)
        if self.scaler is not None:
            self.scaler.unscale_(self.gen_opt)
        grads = [p.grad for p in self.gen_params if p.grad is not None]
        (score_avg,) = D.average_into(grads, score)
        return grads, score_avg

    def _set_critic_grads(self, grads: list[torch.Tensor]) -> None:
        for p, g in zip(self.critic_params, grads):
            p.grad = g

    # ------------------------------------------------------------------ sync mode
    def _draw(self):
        B, dev = self.cfg.batch_size, self.device
        idx = torch.randint(len(self.x), (B,), generator=self.rng, device=dev)
        eta = torch.randn(B, self.generator.noise_dim, generator=self.rng, device=dev, dtype=self.x.dtype)
        return D.shard(idx), D.shard(eta)

    def _sync_step(self, step: int) -> torch.Tensor:
        B, dev = self.cfg.batch_size, self.device
        for c in range(self.cfg.critic_steps):
            idx, eta = self._draw()
            t = D.shard(torch.rand(B, generator=self.rng, device=dev, dtype=self.x.dtype))
            grads, terms = self._critic_terms(idx, eta, t, cache_casts=True)
            closs, gnorm = torch.stack([terms[0], grad_norm(grads)]).tolist()
            finite_or_raise(STAGE, f"generator step {step}, critic step {c}",
                            {CRITIC_TERMS[0]: closs, CRITIC_TERMS[1]: gnorm}, self.describe, self.hint)
            self._set_critic_grads(grads)
            self.critic_opt.step()

        grads, score_avg = self._generator_grads(*self._draw(), cache_casts=True)
        checks = {GENERATOR_TERMS[0]: float(score_avg)}
        if self.scaler is None:  # under fp16 the scaler skips steps with overflowing gradients by design
            checks[GENERATOR_TERMS[1]] = float(grad_norm(grads))
        finite_or_raise(STAGE, f"generator step {step}", checks, self.describe, self.hint)
        if self.scaler is None:
            self.gen_opt.step()
        else:
            self.scaler.step(self.gen_opt)
            self.scaler.update()
        if self.ema is not None:
            with torch.no_grad():
                torch._foreach_lerp_(self.ema, [p.detach() for p in self.gen_params], 1.0 - self.cfg.generator_ema)
        return torch.cat([terms, -score_avg.float().to(terms.device)])

    # ------------------------------------------------------------------ graph mode
    def _setup_graph_mode(self) -> None:
        C, B, dev = self.cfg.critic_steps, self.cfg.batch_size, self.device
        # static inputs of the step (valid values before the first draw: warm-up reads them)
        self._idx = torch.zeros(C + 1, B, dtype=torch.long, device=dev)
        self._eta = torch.zeros(C + 1, B, self.generator.noise_dim, dtype=self.x.dtype, device=dev)
        self._t = torch.zeros(C, B, dtype=self.x.dtype, device=dev)
        self._out = torch.zeros(4, device=dev)
        self._guard = DeviceGuard(dev)
        self._guard.attach(self.gen_opt, self.critic_opt)

    def _draw_into_buffers(self) -> None:
        """Every draw of one generator step, in the order the sync mode makes them."""
        n, B = len(self.x), self.cfg.batch_size
        for c in range(self.cfg.critic_steps + 1):
            torch.randint(n, (B,), generator=self.rng, out=self._idx[c])
            torch.randn(B, self.generator.noise_dim, generator=self.rng, out=self._eta[c])
            if c < self.cfg.critic_steps:
                torch.rand(B, generator=self.rng, out=self._t[c])

    def _graph_body(self) -> None:
        """One generator step from the static buffers; no host read. Bad values raise the guard's halt
        flag, which fused Adam reads as found_inf (the update is skipped on the device)."""
        C, guard = self.cfg.critic_steps, self._guard
        for c in range(C):
            grads, terms = self._critic_terms(D.shard(self._idx[c]), D.shard(self._eta[c]), D.shard(self._t[c]),
                                              cache_casts=False)
            guard.watch(2 * c, [terms[0], grad_norm(grads)])
            self._set_critic_grads(grads)
            self.critic_opt.step()

        grads, score_avg = self._generator_grads(D.shard(self._idx[C]), D.shard(self._eta[C]), cache_casts=False)
        ok = guard.watch(2 * C, [score_avg, grad_norm(grads)])
        self.gen_opt.step()
        if self.ema is not None:
            with torch.no_grad():
                w = 1.0 - self.cfg.generator_ema
                for e, p in zip(self.ema, self.gen_params):  # a masked lerp: 0 * NaN would poison the average
                    e.copy_(torch.where(ok, e.lerp(p.detach(), w), e))
        self._out.copy_(torch.cat([terms, -score_avg.float()]))

    def _capture(self) -> None:
        """Warm up on a side stream (lazy optimiser state, autotuning, weight-derived caches) with the
        guard halted so no update is applied, then capture the body in a CUDA graph (private pool).
        A backend that cannot be captured (it synchronises, say) falls back to sync mode, with a warning."""
        side = torch.cuda.Stream(self.device)
        graph = torch.cuda.CUDAGraph()
        with self._guard.paused():
            side.wait_stream(torch.cuda.current_stream(self.device))  # after the pause's write of the halt flag
            with torch.cuda.stream(side):
                for _ in range(WARMUP_STEPS):
                    self._graph_body()
            torch.cuda.current_stream(self.device).wait_stream(side)
            with torch.no_grad():  # bump the weights' versions: caches keyed on them are rebuilt inside the graph
                for p in self.critic_params:
                    p.mul_(1.0)
            try:
                with torch.cuda.graph(graph):
                    self._graph_body()
            except Exception as exc:  # noqa: BLE001 - whatever stops the capture, the sync step can run
                if is_oom(exc):
                    raise
                torch.cuda.synchronize(self.device)
                warn_once(f"matching-step-capture:{self.backend}",
                          f"lsdm_fast: stage 2 runs in sync mode: the step could not be captured in a CUDA graph "
                          f"with backend {self.backend!r} ({type(exc).__name__}: {str(exc).splitlines()[0]})")
                graph = None
        if graph is None:
            self._fall_back_to_sync()
        self._graph = graph

    def _fall_back_to_sync(self) -> None:
        state = self.state_dict()  # graph mode never runs fp16, so there is no scaler to make
        self.mode, self.capture = "sync", False
        self.gen_opt, self.critic_opt = self._adam(self.gen_params), self._adam(list(self.critic.parameters()))
        self.load_state_dict(state)
