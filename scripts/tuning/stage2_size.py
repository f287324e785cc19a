"""Stage-2 variants against quality, one stage 1 shared by every variant: its size
(results/experiments/issue24_stage2_size), jittered pair latents, the marginal critic, the generator's weight
average (issue 25's recall and super-resolution FD; docs/design.md §7).

    python scripts/tuning/stage2_size.py SEED [data=digits|MNIST_FOLDER] [npc=20] [m=all] [split=0] [width=512]
                                         [steps=4000] [jitter=0] [marginal=0] [pseudo=0] [pcond=0] [ae=K=V,...]
                                         [match=K=V,...] [ema_checks=average|raw] [task=class|superres]
                                         [pairs=1000] [lr_decay=-1] [cache=FOLDER] [tag=]
                                         [log=runs.jsonl]

Fits LSDM with the package defaults on `npc` pairs per class of `data` (split seed `split`, `m` of the rest
unpaired, default all), except stage 2's generator and critic widths (`width`), generator steps (`steps`), the
marginal critic's weight (`marginal`, 0: off) and `jitter` (> 0: each critic update sees the pair latents plus
N(0, jitter^2), standardised units, drawn from a generator of its own so the method's draws are unchanged);
`lr_decay` (>= 0: stage 2's learning rate decays linearly to zero from that fraction of its steps on, a prototype);
prints and appends one JSON line: per-stage seconds (wall), thread CPU time of the fit, stage-1 steps, the
judge's conditional accuracy, the feature-CNN FD of 200 samples per class against the test split and k-NN
precision / recall / density / coverage against 2,000 test images (lsdm_fast.metrics, nets cached in `cache`;
neither is used in training). Stage 1 is deterministic given the seed, data and RNG states, so its result (weights,
history, the training RNG's state after it) is cached under `cache`/stage1 and reused by the next variant: each
variant then costs only its stage 2, exactly as in a fit of its own (`tag` keeps the stage 1 of code that
changed apart). `ae` overrides AutoencoderConfig fields and
`match` MatchingConfig fields (Python keyword lists, e.g. match=generator_ema=0.999); the row adds the
reconstruction FD and the FD of test latents moved by 0.25 standardised units before decoding (how much the
decoder amplifies stage 2's misses).

task=superres: superres_x4's setting instead (`pairs` random pairs, 7x7 -> 28x28 conditions, the rest unpaired;
npc and marginal do not apply, pseudo must stay 0: pseudo-pairs need class labels; pcond=R2 is
MatchingConfig.pseudo_condition, default 0 here, 0.99 in the package), scored by the experiments' own Evaluator, so
with split=SEED pcond=0.99 the row equals the LSDM row of `lsdm experiment superres_x4 --seeds SEED`."""
import hashlib
import json
import os
import sys
import time
from dataclasses import replace

import numpy as np
import torch

import lsdm_fast.stages as stages
from lsdm_fast import LSDM, LSDMConfig
from lsdm_fast import metrics as M
from lsdm_fast.data import load_dataset, make_conditions, split_paired_unpaired
from lsdm_fast.experiments.evaluate import Evaluator
from lsdm_fast.experiments.registry import Budget


def cache_stage1(folder: str, tag: str) -> None:
    """Make LSDM.fit's stage 1 load its result from `folder` when the same (tag, seed, config, data) ran before."""
    train_autoencoder = stages.train_autoencoder
    os.makedirs(folder, exist_ok=True)

    def cached(state, all_y, cfg, *, seed, **kw):
        # the training RNG's state at entry is part of the key: a grown fit's 256-d attempt starts where its 128-d
        # one left it, a fit asked for 256 from the start does not, and the two must not share a result. torch's
        # global RNG is not: stage 1 never draws from it, and torch 2.13 seeds it differently in every process
        # (keyed on it, every run missed; the weights of two such runs were equal to the bit)
        entry = hashlib.sha1(state.rng.get_state().numpy().tobytes())
        key = hashlib.sha1(json.dumps([tag, seed, repr(cfg), len(all_y), float(all_y.sum()),
                                       entry.hexdigest()]).encode()).hexdigest()
        path = os.path.join(folder, key[:16] + ".pt")
        if os.path.exists(path):
            d = torch.load(path, weights_only=False)
            state.encoder.load_state_dict(d["enc"])
            state.decoder.load_state_dict(d["dec"])
            state.history.update(d["hist"])
            state.rng.set_state(d["rng"])
            torch.set_rng_state(d["torch_rng"])
            state.step = d["step"]
            return
        train_autoencoder(state, all_y, cfg, seed=seed, **kw)
        torch.save(dict(enc=state.encoder.state_dict(), dec=state.decoder.state_dict(), hist=dict(state.history),
                        rng=state.rng.get_state(), torch_rng=torch.get_rng_state(), step=state.step), path + ".tmp")
        os.replace(path + ".tmp", path)

    stages.train_autoencoder = cached


def jitter_pair_latents(sigma: float) -> None:
    """Make each critic update see the pair latents plus N(0, sigma^2)."""
    from lsdm_fast.matching_step import MatchingStep
    critic_terms, g = MatchingStep._critic_terms, torch.Generator().manual_seed(4242)

    def jittered(self, c):
        z = self.z
        self.z = z + sigma * torch.randn(z.shape, generator=g).to(z)
        try:
            return critic_terms(self, c)
        finally:
            self.z = z

    MatchingStep._critic_terms = jittered


def decay_stage2_lr(start: float) -> None:
    """Stage 2's learning rate (generator and critics alike) held at MatchingConfig.lr for the first `start`
    of the generator steps, then brought linearly to zero at the last step (a prototype: sync mode only)."""
    from lsdm_fast.matching_step import MatchingStep
    step_once = MatchingStep.__call__

    def decayed(self, step):
        total = self.cfg.generator_steps(self.z.shape[1])
        frac = step / total
        lr = self.cfg.lr * (1.0 if frac < start else (1.0 - frac) / (1.0 - start))
        for opt in (self.gen_opt, self.critic_opt) + ((self.marginal_opt,) if self.marginal is not None else ()):
            for group in opt.param_groups:
                group["lr"] = lr
        return step_once(self, step)

    MatchingStep.__call__ = decayed


def ema_checks_on_raw_weights() -> None:
    """With AutoencoderConfig.ema: the plateau checks measure the raw weights (the stop of a run without the EMA)
    while the run still ends on the average (at the lowest raw check, with the best-weights rule)."""
    average_checks = stages.AutoencoderStep.heldout_loss

    def raw_checks(self):
        ema, self.ema = self.ema, None  # the package's own held-out loss, without its swap to the average
        try:
            return average_checks(self)
        finally:
            self.ema = ema

    stages.AutoencoderStep.heldout_loss = raw_checks


def score_superres(model, train, test, feat, judge, seed: int, paired, budget: Budget | None = None) -> dict:
    """The metrics `lsdm experiment superres_x4` gives a model's row (its Evaluator, its sampling seed)."""
    ev = Evaluator("superres", train, test, feat, judge, budget or Budget(), 4, seed, paired)
    return ev(lambda c: model.sample(c, 1, seed=seed + 1000), model, model)[0]


def with_match(cfg: LSDMConfig, kv: dict) -> tuple[LSDMConfig, dict]:
    """`cfg` with the MatchingConfig overrides of the `match` argument (e.g. match="generator_ema=0.999"), and
    those overrides (for the row)."""
    match = eval(f"dict({kv.get('match', '')})")
    return replace(cfg, matching=replace(cfg.matching, **match)), match


def emit(row: dict, log: str | None) -> None:
    """Print the row as one JSON line and append it to `log` (if given)."""
    print(json.dumps(row))
    if log:
        with open(log, "a") as fh:
            fh.write(json.dumps(row) + "\n")


def main(argv):
    torch.set_num_threads(1)
    seed, kv = int(argv[0]), dict(a.split("=", 1) for a in argv[1:])
    data, npc, split_seed = kv.get("data", "digits"), int(kv.get("npc", 20)), int(kv.get("split", 0))
    cache = kv.get("cache", os.path.expanduser("~/.cache/lsdm_fast"))
    train, test = load_dataset(data, "train"), load_dataset(data, "test")
    m = int(kv["m"]) if "m" in kv else None  # unpaired images (None: all the rest)
    superres = kv.get("task", "class") == "superres"
    if superres:  # superres_x4's setting: `pairs` random pairs (default 1,000), 7x7 -> 28x28, the rest unpaired
        split = split_paired_unpaired(train.labels, n_pairs=int(kv.get("pairs", 1000)), m_unpaired=m, seed=split_seed,
                                      num_classes=train.num_classes)
        npc = f"sr{len(split.paired)}"  # the stage-1 cache's tag
    else:
        split = split_paired_unpaired(train.labels, n_per_class=npc, m_unpaired=m, seed=split_seed)
    cfg = LSDMConfig(seed=seed)
    width = int(kv.get("width", 512))
    cfg = replace(cfg, matching=replace(cfg.matching, generator_hidden=(width, width), critic_hidden=(width, width),
                                        steps=int(kv["steps"]) if "steps" in kv else None))  # None: sized to the latent
    jitter = float(kv.get("jitter", 0))
    if jitter > 0:
        jitter_pair_latents(jitter)
    marginal = float(kv.get("marginal", 0))
    pseudo = float(kv.get("pseudo", 0))
    pcond = float(kv.get("pcond", 0))  # superres: MatchingConfig.pseudo_condition
    cfg = replace(cfg, matching=replace(cfg.matching, marginal_weight=marginal, pseudo_label=pseudo,
                                        pseudo_condition=pcond))
    cfg, match = with_match(cfg, kv)
    ae = eval(f"dict({kv.get('ae', '')})")  # AutoencoderConfig overrides, e.g. ae="conv_design='patch',patch_depth=2"
    cfg = replace(cfg, autoencoder=replace(cfg.autoencoder, **ae))
    lr_decay = float(kv.get("lr_decay", -1))  # >= 0: linear decay to zero from that fraction of the steps on
    if lr_decay >= 0:
        decay_stage2_lr(lr_decay)
    raw_checks = kv.get("ema_checks", "average") == "raw"
    if raw_checks:
        ema_checks_on_raw_weights()
    cache_stage1(os.path.join(cache, "stage1"), f"{os.path.basename(os.path.normpath(data))}_n{npc}_split{split_seed}"
                 + ("_rawchecks" if raw_checks else "") + kv.get("tag", ""))
    t0, c0 = time.perf_counter(), time.thread_time()
    px = make_conditions(train, "superres", 4)[split.paired] if superres else train.labels[split.paired]
    model = LSDM(cfg).fit(px, train.images[split.paired], train.images[split.unpaired],
                          num_classes=train.num_classes, progress=False)
    wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
    feat = M.feature_net(train.images, train.labels, train.num_classes, cache_dir=cache)
    judge = M.judge_net(train.images, train.labels, train.num_classes, cache_dir=cache)
    if superres:  # scored exactly as `lsdm experiment superres_x4` scores its LSDM row
        res = score_superres(model, train, test, feat, judge, seed, split.paired)
        emit(dict(data=os.path.basename(os.path.normpath(data)), task="superres", pairs=len(split.paired), m=m,
                  seed=seed, split=split_seed, ae=ae, match=match, width=width, steps=model.history["stage2_steps"],
                  wall_s=wall, cpu_s=cpu, stage_s=model.history["seconds"], stage1_steps=model.history["stage1_steps"],
                  latent_dim=model.config.autoencoder.latent_dim, pcond=pcond,
                  pseudo_pairs=model.history.get("pseudo_pairs"), **res), kv.get("log"))
        return
    labels = np.repeat(np.arange(train.num_classes), 200)
    y = model.sample(torch.from_numpy(labels), 1, seed=seed + 1000).numpy()
    images = y.reshape(len(y), *train.images.shape[1:])
    test_feats = M.extract_features(feat, test.images[:2000])  # the k-NN reference of every prdc below
    prdc = M.prdc(test_feats, M.extract_features(feat, images))
    # the decoder's floor (evaluate.Evaluator.reconstruction_fd's protocol) and its sensitivity: the same test
    # images' latents moved by sigma standardised units of N(0, I) before decoding
    pick = np.random.default_rng(4321).permutation(len(test))[:len(labels)]
    z = model.encode(torch.from_numpy(test.images[pick]))
    eps = torch.randn(z.shape, generator=torch.Generator().manual_seed(99))
    decoded_fd = {sigma: M.classifier_fd(feat, model.decode(z + sigma * model.latent_std * eps).numpy(), test.images)
                  for sigma in (0.0, 0.25)}
    # recall's ceilings in the same protocol: 2,000 real training images, and the same images through E then D
    real = train.images[np.random.default_rng(4321).permutation(len(train))[:len(labels)]]
    real_prdc = M.prdc(test_feats, M.extract_features(feat, real))
    recon = model.decode(model.encode(torch.from_numpy(real))).numpy().reshape(len(real), -1)
    recon_prdc = M.prdc(test_feats, M.extract_features(feat, recon))
    row = dict(data=os.path.basename(os.path.normpath(data)), pairs=len(split.paired), m=m, seed=seed, split=split_seed,
               ema_checks="raw" if raw_checks else "average", lr_decay=lr_decay,
               ae=ae, match=match, width=width, steps=model.history["stage2_steps"], jitter=jitter, marginal=marginal, pseudo=pseudo,
               pseudo_pairs=model.history.get("pseudo_pairs"), prdc=prdc, real_prdc=real_prdc, recon_prdc=recon_prdc,
               recon_fd=decoded_fd[0.0], perturbed_fd=decoded_fd[0.25], wall_s=wall, cpu_s=cpu,
               stage_s=model.history["seconds"], stage1_steps=model.history["stage1_steps"],
               latent_dim=model.config.autoencoder.latent_dim, latent_search=model.history.get("latent_search"),
               unexplained=model.history.get("stage1_unexplained"),
               accuracy=M.conditional_accuracy(judge, y, labels), fd=M.classifier_fd(feat, images, test.images))
    emit(row, kv.get("log"))


if __name__ == "__main__":
    main(sys.argv[1:])
