"""Tuning aid (not part of the package): the classifier-feature FD of autoencoder reconstructions
of 2000 random MNIST test images (the floor any latent-space sampler inherits), per stage-1 config.

Run from the repository root:  python scripts/tuning/ae_recon_fd.py "latent_dim=16;latent_dim=32"
"""
import sys, time
from dataclasses import replace
import numpy as np, torch
from lsdm_fast import experiments as E, metrics as M
from lsdm_fast.config import AutoencoderConfig
from lsdm_fast.models import build_autoencoder
from lsdm_fast.stages import train_autoencoder
from lsdm_fast.state import TrainingState
from lsdm_fast.data import load_dataset
b = E.Budget(); data = '../shared/data/mnist'
train = load_dataset(data, 'train', seed=0); test = load_dataset(data, 'test', seed=0)
feat = M.feature_net(train.images, train.labels, 10, steps=b.feature_steps)
rng0 = np.random.default_rng(1234)
tf = M.extract_features(feat, test.images)
sub = rng0.permutation(len(test))[:2000]
y = torch.from_numpy(train.images.reshape(len(train.images), -1))
for v in sys.argv[1].split(";"):
    kw = eval(f"dict({v})")
    cfg = replace(AutoencoderConfig(latent_dim=16, hidden=(512, 256), steps=4000), **kw)
    torch.manual_seed(0)
    enc, dec = build_autoencoder(cfg.kind, 784, cfg.latent_dim, cfg.hidden, (28, 28))
    t = time.time()
    state = TrainingState(enc, dec, None, None, torch.Generator().manual_seed(0))
    train_autoencoder(state, y, cfg, progress=False)
    losses = state.history["reconstruction"]
    dt = time.time() - t
    enc.eval(); dec.eval()
    with torch.no_grad():
        rec = dec(enc(torch.from_numpy(test.images[sub].reshape(2000, -1)))).numpy()
    fr = M.extract_features(feat, rec)
    fd = M.frechet_distance(*M.gaussian_stats(fr), *M.gaussian_stats(tf))
    fd_real = M.frechet_distance(*M.gaussian_stats(tf[sub]), *M.gaussian_stats(tf))
    print(v, f"{dt:.0f}s loss {np.mean(losses[-100:]):.4f} reconFD(random 2000 test) {fd:.2f} realFD {fd_real:.2f}", flush=True)
