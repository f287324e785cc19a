"""Wrote tests/data/v1_*.pt: format-1 checkpoints from the code before the typed TrainingState (commit ddc6dad;
run there as `python make_v1_checkpoints.py tests/data`). Kept to show how the fixtures were made; it does not run
against the current code (format 1 is only read now)."""
import shutil, sys, os
import torch
torch.set_num_threads(1)
from lsdm_fast import LSDM, LSDMConfig, AutoencoderConfig, MatchingConfig
from lsdm_fast.checkpoint import Checkpointer
from lsdm_fast.data import load_digits_dataset

def config():
    return LSDMConfig(autoencoder=AutoencoderConfig(latent_dim=4, hidden=(32,), steps=30, batch_size=32, checkpoint_every=10),
                      matching=MatchingConfig(generator_hidden=(32,), critic_hidden=(32, 32), steps=8, batch_size=16,
                                              backend="torch", generator_ema=0.5, checkpoint_every=4), seed=7)
ds = load_digits_dataset("train")
x, y, u = ds.labels[:40], ds.images[:40], ds.images[40:100]

class Stop(Exception): pass
orig = Checkpointer.save
for stage, step, name in ((1, 20, "v1_stage1_step20.pt"), (2, 4, "v1_stage2_step4.pt")):
    d = f"/tmp/v1/ck_{stage}"
    shutil.rmtree(d, ignore_errors=True)
    def spy(self, **kw):
        orig(self, **kw)
        if kw["stage"] == stage and kw["step"] == step:
            raise Stop()
    Checkpointer.save = spy
    try:
        LSDM(config()).fit(x, y, u, num_classes=10, progress=False, checkpoint_dir=d)
    except Stop:
        pass
    shutil.copy(os.path.join(d, "checkpoint.pt"), os.path.join(sys.argv[1], name))
    print(name, os.path.getsize(os.path.join(sys.argv[1], name)))
