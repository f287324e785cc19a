"""One stage-2 generator step: cfg.critic_steps WGAN-GP critic updates, then one generator update.

The method is `_draw` and `_body` (with `_critic_terms`, `_generator_grads`, `_update_ema`):

    for each critic update:   (x, z) pairs and eta ~ N(0, I) drawn, z~ = G(eta, x) without grad,
                              t ~ U(0, 1), loss = -W + gp_weight * penalty (ops.critic_gradient_penalty),
                              gradients averaged over ranks, guard, Adam
      and, with a marginal weight w > 0, after each: z' drawn from every image's latent (pairs and unpaired),
                              the marginal critic h(z) updated the same way on z' against the same z~
    generator update:         (x, eta) drawn, z~ = G(eta, x), d(-mean f(x, z~) - w mean h(z~))/dz~
                              (ops.critic_score_grad) back through G, averaged, guard, Adam, EMA of G's weights

Every draw of a step is made first, from `rng` in that order, into static buffers; the body reads
them. Two modes run the same draw and the same body and differ in the guard and the optimisers:

- "sync": the reference. guards.HostGuard reads the loss terms and the gradient norm on the host
  before each optimiser step and raises at once (a synchronisation per update); the configured
  Adam; fp16 with a GradScaler.
- "graph": no host synchronisation. guards.DeviceGuard catches non-finite values on the device: the
  update is skipped by fused Adam's found_inf, every later one too, and `check()` (one host read)
  raises naming the first bad step. On CUDA the body is captured once in a CUDA graph and replayed,
  one launch per generator step (lsdm_fast.graph_capture: the choice of mode, capture, fallback).
  With capture off (CPU, or capture=False) the same body runs eagerly, which is how it is tested
  without a GPU.
"""
from __future__ import annotations

from typing import Callable

import torch

from . import distributed as D
from . import ops
from .config import MatchingConfig
from .graph_capture import MODES, capture_graph, pick_mode
from .guards import DeviceGuard, HostGuard, TrainingError, grad_norm, out_of_memory_as_training_error
from .models import Critic, Generator, copy_weights
from .ops._backend_util import cpu_env_precision
from .ops._registry import resolve
from .precision import autocast, make_scaler, step_optimizer

STAGE = "stage 2 (joint matching)"
OPS = ("critic_gradient_penalty", "critic_score_grad")
CRITIC_TERMS = ("the critic loss", "the critic gradient norm")
GENERATOR_TERMS = ("the critic score of the generated latents", "the generator gradient norm")
MARGINAL_TERMS = ("the marginal critic loss", "the marginal critic gradient norm")


def no_checkpoint() -> str:
    return "no checkpoint is kept (pass checkpoint_dir to keep one)"


def resolve_backends(backend: str, device: torch.device, layers: int) -> dict[str, str]:
    """The backend each stage-2 op runs on (`backend` may be "auto"): resolved once per stage, with the
    cpp ops' matmul precision from the environment checked here too (before any training)."""
    names = {op: resolve(op, backend, device, {"layers": layers})[0] for op in OPS}
    if "cpp" in names.values():
        cpu_env_precision()
    return names


def is_one_hot(x: torch.Tensor) -> bool:
    """Conditions that are class labels: every row one-hot (MatchingConfig.penalty_for's question)."""
    return x.dim() == 2 and x.shape[1] > 0 and bool(((x == 0) | (x == 1)).all()) and bool((x.sum(1) == 1).all())


def _op_order(critic: Critic) -> list[torch.Tensor]:
    """The critic's parameters in the order the critic ops return their gradients."""
    mlp = critic.mlp.params()
    return list(mlp.weights) + list(mlp.biases)


def _averaged(out) -> tuple[list[torch.Tensor], torch.Tensor]:
    """A critic step's gradients and [loss, wasserstein, penalty], averaged over ranks."""
    *grads, terms = D.average(list(out.weight_grads) + list(out.bias_grads)
                              + [torch.stack([out.loss, out.wasserstein, out.penalty]).float()])
    return grads, terms


class MatchingStep:
    """One stage-2 generator step: cfg.critic_steps WGAN-GP critic updates, then one generator update."""

    stage = STAGE

    def __init__(self, generator: Generator, critic: Critic, x: torch.Tensor, z: torch.Tensor,
                 cfg: MatchingConfig, rng: torch.Generator, *, precision: str = "fp32", mode: str = "auto",
                 describe: Callable[[], str] = no_checkpoint, capture: bool | None = None,
                 backends: dict[str, str] | None = None, z_marginal: torch.Tensor | None = None):
        """`capture` (graph mode only): replay from a CUDA graph (default: on CUDA) or run the same body
        eagerly (the only choice on CPU). `backends`: resolve_backends' answer, when the caller has it.
        `z_marginal`: every image's standardised latent, which the marginal critic h(z) matches G's latent law to
        with weight cfg.marginal_weight (off without them or at weight 0)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        D.check_batch(cfg.batch_size, "matching batch_size")
        self.generator, self.critic, self.x, self.z, self.cfg, self.rng = generator, critic, x, z, cfg, rng
        self.precision, self.describe, self.device = precision, describe, x.device
        # None: by the conditions and the latent's width (MatchingConfig.penalty_for); LSDM.fit passes None too
        self.penalty_over = cfg.penalty_for(cfg.penalty_over is None and is_one_hot(x), z.shape[1])
        self.hint = f"try a lower learning rate (matching lr is {cfg.lr})"
        self.gen_params = list(generator.parameters())
        self.critic_params = _op_order(critic)
        self.backends = backends or resolve_backends(cfg.backend, self.device, len(self.critic_params) // 2)
        self.backend = self.backends["critic_gradient_penalty"]
        mode, self.capture = pick_mode(mode, self.device, precision, capture)
        C, B, dev = cfg.critic_steps, cfg.batch_size, self.device
        # the draws of one step (valid values before the first draw: a capture's warm-up reads them)
        self._idx = torch.zeros(C + 1, B, dtype=torch.long, device=dev)
        self._eta = torch.zeros(C + 1, B, generator.noise_dim, dtype=x.dtype, device=dev)
        self._t = torch.zeros(C, B, dtype=x.dtype, device=dev)
        self._out = torch.zeros(4, device=dev)  # a captured step's result
        self.scaler = make_scaler(precision, dev)  # generator only; graph mode never runs fp16
        # exponential moving average of the generator's weights, swapped in at the end (0: off)
        self.ema = [p.detach().clone() for p in self.gen_params] if cfg.generator_ema > 0 else None
        self.marginal_weight = float(cfg.marginal_weight) if z_marginal is not None else 0.0
        self.marginal = self.z_marginal = None
        if self.marginal_weight > 0:
            if z_marginal.dim() != 2 or z_marginal.shape[1] != z.shape[1] or len(z_marginal) == 0:
                raise ValueError(f"z_marginal must be (N > 0, {z.shape[1]}), got {tuple(z_marginal.shape)}")
            self.z_marginal = z_marginal.to(device=dev, dtype=z.dtype)
            # a training aid like the optimisers: its weights live in state_dict(), not in the saved model; its
            # initial weights come from the run's seed without drawing from `rng` (a resumed run draws the same)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(rng.initial_seed() + 1)
                self.marginal = Critic(0, z.shape[1], cfg.critic_hidden, cfg.negative_slope)
            self.marginal.to(device=dev, dtype=z.dtype)
            self.marginal_params = _op_order(self.marginal)
            self._idx_m = torch.zeros(C, B, dtype=torch.long, device=dev)
            self._t_m = torch.zeros(C, B, dtype=x.dtype, device=dev)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._enter(mode)

    # ------------------------------------------------------------------ mode and state
    def _enter(self, mode: str) -> None:
        """Fresh optimisers and the guard of `mode`: the configured Adam and a host check (sync), fused
        Adam reading the device guard's halt flag (graph; capturable on CUDA)."""
        self.mode = mode
        graph = dict(fused=True, capturable=self.device.type == "cuda") if mode == "graph" else {}
        # the critic's optimiser over its parameters in module order (the checkpoint's order)
        self.gen_opt, self.critic_opt = (torch.optim.Adam(params, lr=self.cfg.lr, betas=self.cfg.betas, **graph)
                                         for params in (self.gen_params, list(self.critic.parameters())))
        opts = [self.gen_opt, self.critic_opt]
        if self.marginal is not None:
            self.marginal_opt = torch.optim.Adam(list(self.marginal.parameters()), lr=self.cfg.lr,
                                                 betas=self.cfg.betas, **graph)
            opts.append(self.marginal_opt)
        if mode == "graph":
            self._guard = DeviceGuard(self.device)
            self._guard.attach(*opts)
        else:
            self._guard = HostGuard(STAGE, self._where, self.describe, self.hint)

    def _adopt(self, opt: torch.optim.Adam) -> None:
        """After a load: `opt` back to this mode's Adam (see _enter; graph mode keeps the step count on
        the device). A loaded state dict carries the flags of the mode that saved it."""
        graph, cuda = self.mode == "graph", self.device.type == "cuda"
        for group in opt.param_groups:
            group.update(fused=True if graph else None, foreach=None, capturable=graph and cuda)
        for p, st in opt.state.items():
            if "step" in st:
                st["step"] = st["step"].to(device=p.device if graph else "cpu", dtype=torch.float32)

    def state_dict(self) -> dict:
        """The optimisers, the GradScaler, the generator EMA and the marginal critic with its optimiser (a
        stage-2 checkpoint's stage state without the history and the step)."""
        d = {"gen_opt": self.gen_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(),
             "scaler": self.scaler.state_dict() if self.scaler is not None else None,
             "gen_ema": [t.clone() for t in self.ema] if self.ema is not None else None}
        if self.marginal is not None:
            d["marginal"] = {k: v.detach().clone() for k, v in self.marginal.state_dict().items()}
            d["marginal_opt"] = self.marginal_opt.state_dict()
        return d

    def load_state_dict(self, d: dict) -> None:
        if self.ema is not None:
            if d.get("gen_ema") is None:
                raise ValueError(f"{STAGE}: the saved state has no generator EMA but generator_ema="
                                 f"{self.cfg.generator_ema}")
            with torch.no_grad():
                for e, t in zip(self.ema, d["gen_ema"]):
                    e.copy_(t)
        if (self.marginal is not None) != (d.get("marginal") is not None):
            raise ValueError(f"{STAGE}: the saved state was trained {'with' if d.get('marginal') is not None else 'without'}"
                             f" a marginal critic but marginal_weight is {self.marginal_weight} now")
        self.gen_opt.load_state_dict(d["gen_opt"])
        self.critic_opt.load_state_dict(d["critic_opt"])
        self._adopt(self.gen_opt)
        self._adopt(self.critic_opt)
        if self.marginal is not None:
            self.marginal.load_state_dict(d["marginal"])
            self.marginal_opt.load_state_dict(d["marginal_opt"])
            self._adopt(self.marginal_opt)
        if self.scaler is not None and d.get("scaler"):
            self.scaler.load_state_dict(d["scaler"])
        self._graph = None  # the optimiser state tensors were replaced: capture again

    def _fall_back_to_sync(self) -> None:
        """A capture failed: go on in sync mode from the same optimiser state and EMA."""
        state = self.state_dict()
        self.capture = False
        self._enter("sync")
        self.load_state_dict(state)

    def finish(self) -> None:
        """End of the stage: the generator takes the EMA weights (when the EMA is on)."""
        if self.ema is not None:
            copy_weights(self.gen_params, self.ema)

    # ------------------------------------------------------------------ one step
    def __call__(self, step: int) -> torch.Tensor:
        """Run generator step `step`; returns [critic_loss, wasserstein, penalty, generator_loss] on the
        device (the last critic update's terms and -mean f of the generator update's batch)."""
        with out_of_memory_as_training_error(STAGE, step, self.cfg.batch_size, "MatchingConfig.batch_size"):
            if self.capture and self._graph is None:
                self._graph = capture_graph(lambda: self._out.copy_(self._body()), self.device, self._guard,
                                            self.critic_params, self.backend)
                if self._graph is None:
                    self._fall_back_to_sync()
            self._draw()
            self._guard.set_step(step)
            if self._graph is None:
                return self._body()
            self._graph.replay()
            return self._out.clone()  # the buffer is overwritten by the next step

    def check(self) -> None:
        """Raise the TrainingError for the first non-finite value since the start (graph mode: one
        host read; sync mode raised already, so this does nothing)."""
        fault = self._guard.read()
        if fault is not None:
            step, code, value = fault
            where, name = self._where(step, code)
            raise TrainingError(f"{STAGE} diverged at {where}: {name} is {value}; the update was not applied "
                                f"(nor any after it) and {self.describe()}; {self.hint}")

    def _where(self, step: int, code: int) -> tuple[str, str]:
        """A guard code -> where and what: 2c + i is term i of critic update c, 2C + i of the generator's."""
        C = self.cfg.critic_steps
        if code < 2 * C:
            return f"generator step {step}, critic step {code // 2}", CRITIC_TERMS[code % 2]
        if code < 2 * C + 2:
            return f"generator step {step}", GENERATOR_TERMS[code - 2 * C]
        code -= 2 * C + 2
        return f"generator step {step}, critic step {code // 2}", MARGINAL_TERMS[code % 2]

    # ------------------------------------------------------------------ the method
    def _draw(self) -> None:
        """Every random draw of one generator step, in the method's order, into the step's buffers."""
        n, B, C = len(self.x), self.cfg.batch_size, self.cfg.critic_steps
        for c in range(C + 1):
            torch.randint(n, (B,), generator=self.rng, out=self._idx[c])
            torch.randn(B, self.generator.noise_dim, generator=self.rng, out=self._eta[c])
            if c < C:
                torch.rand(B, generator=self.rng, out=self._t[c])
        if self.marginal is not None:  # after the joint draws: without the marginal critic they are unchanged
            for c in range(C):
                torch.randint(len(self.z_marginal), (B,), generator=self.rng, out=self._idx_m[c])
                torch.rand(B, generator=self.rng, out=self._t_m[c])

    def _body(self) -> torch.Tensor:
        """One generator step from the drawn buffers. The guard checks each update's terms before its
        optimiser step (sync: raises; graph: halts the fused optimisers on the device)."""
        C, guard = self.cfg.critic_steps, self._guard
        for c in range(C):
            grads, terms, z_fake = self._critic_terms(c)
            guard.watch(2 * c, [terms[0], grad_norm(grads)])
            for p, g in zip(self.critic_params, grads):
                p.grad = g
            self.critic_opt.step()
            if self.marginal is not None:
                grads, marginal_terms = self._marginal_terms(c, z_fake)
                guard.watch(2 * C + 2 + 2 * c, [marginal_terms[0], grad_norm(grads)])
                for p, g in zip(self.marginal_params, grads):
                    p.grad = g
                self.marginal_opt.step()

        grads, score = self._generator_grads()
        # under fp16 the scaler skips steps with overflowing gradients by design
        ok = guard.watch(2 * C, [score, grad_norm(grads)] if self.scaler is None else [score])
        step_optimizer(self.gen_opt, self.scaler)
        self._update_ema(ok)
        return torch.cat([terms, -score.float().to(terms.device)])

    def _critic_terms(self, c: int):
        """Gradients (averaged over ranks), [loss, wasserstein, penalty] and the generated latents of critic
        update c."""
        idx, eta, t = D.shard(self._idx[c]), D.shard(self._eta[c]), D.shard(self._t[c])
        xb, zb = self.x[idx], self.z[idx]
        with torch.no_grad(), self._autocast():
            z_fake = self.generator(eta, xb)
        out = ops.critic_gradient_penalty(self.critic.mlp.params(), xb, zb, z_fake.float(), t,
                                          gp_weight=self.cfg.gp_weight, penalty_over=self.penalty_over,
                                          backend=self.backends["critic_gradient_penalty"])
        return (*_averaged(out), z_fake)

    def _marginal_terms(self, c: int, z_fake: torch.Tensor):
        """Gradients (averaged over ranks) and [loss, wasserstein, penalty] of marginal critic update c: h on
        drawn latents of every image against critic update c's generated latents `z_fake`."""
        z_real, t = self.z_marginal[D.shard(self._idx_m[c])], D.shard(self._t_m[c])
        out = ops.critic_gradient_penalty(self.marginal.mlp.params(), z_real.new_zeros(len(z_real), 0), z_real,
                                          z_fake.float(), t, gp_weight=self.cfg.gp_weight,
                                          backend=self.backends["critic_gradient_penalty"])
        return _averaged(out)

    def _generator_grads(self):
        """The generator's gradients of -mean f(x, G(eta, x)) (in .grad, averaged over ranks; unscaled
        under fp16) and mean f averaged over ranks."""
        C = self.cfg.critic_steps
        xb = self.x[D.shard(self._idx[C])]
        with self._autocast():
            z_fake = self.generator(D.shard(self._eta[C]), xb)
        z32 = z_fake.float()
        score, grad_z = ops.critic_score_grad(self.critic.mlp.params(), xb, z32.detach(),
                                              backend=self.backends["critic_score_grad"])
        if self.marginal is not None:
            _, grad_h = ops.critic_score_grad(self.marginal.mlp.params(), xb.new_zeros(len(xb), 0), z32.detach(),
                                              backend=self.backends["critic_score_grad"])
            grad_z = grad_z + self.marginal_weight * grad_h
        self.gen_opt.zero_grad(set_to_none=True)
        # d(-mean f)/dz, then through G by autograd (scaled under fp16, unscaled before the step)
        z32.backward(self.scaler.scale(-grad_z) if self.scaler is not None else -grad_z)
        if self.scaler is not None:
            self.scaler.unscale_(self.gen_opt)
        grads = [p.grad for p in self.gen_params if p.grad is not None]
        (score_avg,) = D.average_into(grads, score)
        return grads, score_avg

    def _update_ema(self, ok: torch.Tensor | None) -> None:
        """The generator EMA; under the device guard towards the weights only where `ok` (a bad update
        leaves it as it was: 0 * NaN would poison the average)."""
        if self.ema is None:
            return
        with torch.no_grad():
            target = [p.detach() if ok is None else torch.where(ok, p.detach(), e)
                      for p, e in zip(self.gen_params, self.ema)]
            torch._foreach_lerp_(self.ema, target, 1.0 - self.cfg.generator_ema)

    def _autocast(self):
        # inside a CUDA graph capture cached casts would outlive the capture they were made in
        return autocast(self.precision, self.device, cache_enabled=self.mode == "sync")
