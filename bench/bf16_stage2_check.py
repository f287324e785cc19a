"""Does stage 2 train the same with the cpp critic's bf16 GEMMs? One short real run per precision from
one stage-1 state: MNIST, 100 pairs per class (stage 1 on every training image: an MLP autoencoder,
a fixed step budget), then stage 2 (default MatchingConfig, cpp backend) for --steps generator steps,
seed 0, ONE seed, one torch thread. Reports the loss curves (Wasserstein estimate, penalty; means over
windows) and the conditional accuracy of 10,000 samples under the package's judge (metrics.judge_net),
and the process CPU time of stage 2.

    python bench/bf16_stage2_check.py --data ../shared/data/mnist [--steps 2000] [--out DIR]

Variants: "ieee" (float32 GEMMs), "bf16" (precision="bf16": ops/critic_gp_cpp.py PLANS), and
"bf16-all" (every GEMM group in plain bf16, for comparison only); NAME@S runs NAME with stage 2's
generator (its draws of batches, noise and interpolation weights) seeded S instead of the config's
seed: the spread between seeds is the yardstick for the differences between precisions. --out keeps
each run's curves (JSON) and trained critic (critic_<variant>.pt, for bf16_critic_error.py --critic).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import time

import numpy as np
import torch

from lsdm_fast import LSDM
from lsdm_fast.config import AutoencoderConfig, LSDMConfig, MatchingConfig
from lsdm_fast.data import load_mnist
from lsdm_fast.metrics import conditional_accuracy, judge_net
from lsdm_fast.ops import critic_gp_cpp
from lsdm_fast.stages import train_autoencoder, train_joint_matching
from lsdm_fast.state import Stage

VARIANTS = {"ieee": ("ieee", None), "bf16": ("bf16", None), "bf16-all": ("bf16", (1, 1, 1, 1, 1, 1))}


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def grad_check(st, x, z, cfg, seed=123):
    """Errors of the trained state's gradients against float64 on two fresh batches of cfg.batch_size: the
    critic step's (largest over every weight and bias) and the generator's (its parameters' gradient through
    d mean f / dz), for ieee and bf16; beside them the difference between the two batches' float64 gradients
    (minibatch noise)."""
    from lsdm_fast.ops import critic_gradient_penalty, critic_score_grad

    g = torch.Generator().manual_seed(seed)
    crit = st.critic.mlp.params()
    c64 = crit._replace(weights=[w.detach().double() for w in crit.weights], biases=[b.detach().double() for b in crit.biases])
    out = {}
    for k in range(2):
        idx = torch.randint(len(x), (cfg.batch_size,), generator=g)
        eta = torch.randn(cfg.batch_size, st.generator.noise_dim, generator=g)
        t = torch.rand(cfg.batch_size, generator=g)
        xb, zb = x[idx], z[idx]
        with torch.no_grad():
            zf = st.generator(eta, xb).float()
        args = (xb, zb, zf, t)
        ref = critic_gradient_penalty(c64, *(a.double() for a in args), gp_weight=cfg.gp_weight, backend="torch")
        ref_g = ref.weight_grads + ref.bias_grads[:-1]

        def gen_grad(**kw):
            z_fake = st.generator(eta, xb)
            _, gz = critic_score_grad(c64 if not kw else crit, xb.double() if not kw else xb,
                                      z_fake.detach().double() if not kw else z_fake.detach(), **kw)
            params = [p for p in st.generator.parameters()]
            return torch.autograd.grad(z_fake, params, -gz.float())

        gref = gen_grad()
        for p in ("ieee", "bf16"):
            o = critic_gradient_penalty(crit, *args, gp_weight=cfg.gp_weight, backend="cpp", precision=p)
            gg = gen_grad(backend="cpp", precision=p)
            out.setdefault(p, []).append({"critic": max(_rel(a, b) for a, b in zip(o.weight_grads + o.bias_grads[:-1], ref_g)),
                                          "penalty": _rel(o.penalty, ref.penalty),
                                          "generator": max(_rel(a, b) for a, b in zip(gg, gref))})
        out.setdefault("batches", []).append((ref_g, gref))
    (c0, g0), (c1, g1) = out.pop("batches")
    noise = {"critic": max(_rel(a, b) for a, b in zip(c1, c0)), "generator": max(_rel(a, b) for a, b in zip(g1, g0))}
    return {p: {k: max(r[k] for r in rows) for k in rows[0]} for p, rows in out.items()} | {"batch-to-batch": noise}


def _window_means(v, windows):
    v = np.asarray(v)
    return [float(v[a:b].mean()) for a, b in windows]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--ae-steps", type=int, default=3000)
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS))
    ap.add_argument("--out", default=None)
    ap.add_argument("--grad-check", action="store_true", help="gradient errors of each trained state (grad_check)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    train, test = load_mnist(args.data, "train"), load_mnist(args.data, "test")
    rng = np.random.default_rng(0)
    pairs = np.concatenate([rng.choice(np.flatnonzero(train.labels == c), 100, replace=False) for c in range(10)])
    rest = np.setdiff1d(np.arange(len(train.labels)), pairs)
    cfg = LSDMConfig(autoencoder=AutoencoderConfig(kind="mlp", stop="steps", steps=args.ae_steps),
                     matching=MatchingConfig(steps=args.steps, backend="cpp"), seed=0)
    model = LSDM(cfg)
    x, all_y, n_pairs = model._fit_data(torch.as_tensor(train.labels[pairs]), torch.as_tensor(train.images[pairs]),
                                        torch.as_tensor(train.images[rest]), 10)
    state = model._new_state()
    t0 = time.process_time()
    train_autoencoder(state, all_y, cfg.autoencoder, seed=cfg.seed, progress=False)
    print(f"stage 1: {args.ae_steps} steps, {time.process_time() - t0:.0f} CPU-s, final loss "
          f"{state.history['reconstruction'][-1]:.4f}", flush=True)
    for mod in (model.encoder, model.decoder):
        mod.eval().requires_grad_(False)
    z_all = model.encode(all_y)
    state.latent_mean, state.latent_std = z_all.mean(0), z_all.std(0).clamp_min(1e-6)
    model.latent_mean, model.latent_std = state.latent_mean, state.latent_std
    state.enter(Stage.MATCHING)
    z_pairs = (z_all[:n_pairs] - state.latent_mean) / state.latent_std
    start = copy.deepcopy(state)
    judge = judge_net(train.images, train.labels, 10)
    print(f"judge on the MNIST test set: {conditional_accuracy(judge, test.images, test.labels):.4f}", flush=True)
    wanted = np.repeat(np.arange(10), 1000)
    n = args.steps
    windows = [(0, n // 10), (n // 10, n // 2), (n // 2, n - n // 10), (n - n // 10, n)]
    backends = {"critic_gradient_penalty": "cpp", "critic_score_grad": "cpp"}
    rows, plans = {}, dict(critic_gp_cpp.PLANS)
    for name in args.variants:
        base, _, seed = name.partition("@")
        precision, plan = VARIANTS[base]
        os.environ["LSDM_CPU_MATMUL_PRECISION"] = precision
        critic_gp_cpp.PLANS["bf16"] = plan or plans["bf16"]
        st = copy.deepcopy(start)
        if seed:
            st.rng.manual_seed(int(seed))
        t0 = time.process_time()
        train_joint_matching(st, x, z_pairs, cfg.matching, progress=False, backends=backends)
        secs = time.process_time() - t0
        model.generator, model.critic = st.generator, st.critic
        model._folded.clear()
        acc = conditional_accuracy(judge, model.sample(torch.as_tensor(wanted), seed=1).numpy(), wanted)
        h = st.history
        rows[name] = {"stage2_cpu_s": secs, "accuracy": acc,
                      "wasserstein": _window_means(h["wasserstein"], windows),
                      "penalty": _window_means(h["penalty"], windows),
                      "critic_loss": _window_means(h["critic_loss"], windows)}
        print(name, json.dumps(rows[name]), flush=True)
        if args.grad_check:
            print(name, "gradient errors against float64 at the end:", json.dumps(grad_check(st, x, z_pairs, cfg.matching)),
                  flush=True)
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            with open(os.path.join(args.out, f"curves_{name}.json"), "w") as f:
                json.dump({k: h[k] for k in ("wasserstein", "penalty", "critic_loss", "generator_loss")}, f)
            p = st.critic.mlp.params()
            torch.save({"weights": [w.detach() for w in p.weights], "biases": [b.detach() for b in p.biases]},
                       os.path.join(args.out, f"critic_{name}.pt"))
    critic_gp_cpp.PLANS["bf16"] = plans["bf16"]
    os.environ.pop("LSDM_CPU_MATMUL_PRECISION", None)
    wl = " | ".join(f"steps {a}-{b}" for a, b in windows)
    print(f"\n| variant | stage-2 CPU s | accuracy | W ({wl}) | penalty (same windows) |")
    print("|---|---:|---:|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['stage2_cpu_s']:.0f} | {100 * r['accuracy']:.2f} % | "
              f"{' / '.join(f'{v:.3f}' for v in r['wasserstein'])} | {' / '.join(f'{v:.4f}' for v in r['penalty'])} |")


if __name__ == "__main__":
    main()
