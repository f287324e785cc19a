"""Tuning aid (not part of the package): LSDM at the class_n100 budget for one seed, then stage 2
retrained with MatchingConfig overrides on the same frozen autoencoder.

Run from the repository root:  python scripts/tuning/stage2_variants.py SEED "steps=8000;critic_steps=3" [BUDGET]
BUDGET overrides experiments.Budget, e.g. "latent_dim=32,ae_hidden=(1024,512)"; the fitted model is kept in
/tmp/lsdm_tuning for later variants.
"recon FD": reconstructions of 2000 random test images (logs made before this line changed used the first 2000,
an easier-looking, biased subset)."""
import sys, time, json, copy
from dataclasses import replace
import numpy as np, torch
from lsdm_fast import experiments as E, metrics as M
from lsdm_fast.api import LSDM
from lsdm_fast.models import Generator, Critic
from lsdm_fast.stages import train_joint_matching
from lsdm_fast.state import Stage, TrainingState
from lsdm_fast.data import load_dataset, split_paired_unpaired
seed = int(sys.argv[1]); variants = sys.argv[2].split(";")
b = E.Budget(**eval(f"dict({sys.argv[3] if len(sys.argv) > 3 else ''})")); data = '../shared/data/mnist'
train = load_dataset(data, 'train', seed=seed); test = load_dataset(data, 'test', seed=seed)
feat = M.feature_net(train.images, train.labels, 10, steps=b.feature_steps)
judge = M.judge_net(train.images, train.labels, 10, steps=b.judge_steps)
split = split_paired_unpaired(train.labels, n_per_class=100, seed=seed, num_classes=10)
ev = E.evaluate.Evaluator('class', train, test, feat, judge, b, 4, seed, split.paired)
py = torch.from_numpy(train.images[split.paired]); uy = torch.from_numpy(train.images[split.unpaired])
px = torch.from_numpy(train.labels[split.paired])
ae_path = f"/tmp/lsdm_tuning/ae_s{seed}_d{b.latent_dim}_h{'x'.join(map(str, b.ae_hidden))}"
import os
cfg = E.lsdm_config(b, seed, 'auto')
if os.path.exists(ae_path):
    model = LSDM.load(ae_path)
else:
    t = time.time(); model = LSDM(cfg).fit(px, py, uy, num_classes=10, progress=False); print("fit", time.time() - t, flush=True)
    model.save(ae_path)
    res, _ = ev(lambda c: model.sample(c.argmax(1), 1, seed=seed + 1000), model)
    print("base", json.dumps({k: round(v, 4) for k, v in res.items()}), flush=True)
    sub = np.random.default_rng(1234).permutation(len(test))[:2000]  # the subset ae_recon_fd.py uses
    rec = model.decode(model.encode(torch.from_numpy(test.images[sub]))).numpy()
    fr = M.extract_features(feat, rec)
    print("recon FD", M.frechet_distance(*M.gaussian_stats(fr), *M.gaussian_stats(ev.test_feats)), flush=True)
    tr = model.decode(model.encode(py.flatten(1))).numpy()
    ft = M.extract_features(feat, tr)
    print("paired recon FD", M.frechet_distance(*M.gaussian_stats(ft), *M.gaussian_stats(ev.test_feats)), flush=True)
    fp = M.extract_features(feat, py.flatten(1).numpy())
    print("paired raw FD", M.frechet_distance(*M.gaussian_stats(fp), *M.gaussian_stats(ev.test_feats)), flush=True)
x = model._conditions(px, "x")
z_all = model.encode(py.flatten(1))
z_pairs = (z_all - model.latent_mean) / model.latent_std
for v in variants:
    if not v: continue
    kw = eval(f"dict({v})")
    m = replace(cfg.matching, **kw)
    mm = copy.copy(model)
    torch.manual_seed(seed)
    k = m.noise_dim or z_pairs.shape[1]
    mm.generator = Generator(k, 10, z_pairs.shape[1], m.generator_hidden, m.negative_slope)
    mm.critic = Critic(10, z_pairs.shape[1], m.critic_hidden, m.negative_slope)
    mm.config = replace(cfg, matching=m)
    rng = torch.Generator().manual_seed(seed)
    t = time.time()
    train_joint_matching(TrainingState(None, None, mm.generator, mm.critic, rng, stage=Stage.MATCHING), x, z_pairs, m,
                         progress=False)
    dt = time.time() - t
    res, _ = ev(lambda c: mm.sample(c.argmax(1), 1, seed=seed + 1000), model)
    print(v, f"{dt:.0f}s", json.dumps({k: round(val, 4) for k, val in res.items() if k in ('conditional_accuracy','classifier_fd','precision','recall','coverage','train_nn_ratio')}), flush=True)
