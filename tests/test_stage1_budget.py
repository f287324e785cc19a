"""Stage 1's budget: a fixed number of steps, a number of epochs, or to convergence (the plateau rule on
held-out images), with exact resume in every mode."""
import copy

import pytest
import torch

from lsdm_fast import LSDM, AutoencoderConfig, LSDMConfig, MatchingConfig
from lsdm_fast.data import load_digits_dataset
from lsdm_fast.models import build_autoencoder
from lsdm_fast.stages import AutoencoderStep, train_autoencoder
from lsdm_fast.state import TrainingState


@pytest.fixture(scope="module")
def y():
    torch.set_num_threads(1)
    return torch.from_numpy(load_digits_dataset("train").images[:400].reshape(400, -1))


def _state(seed=0):
    torch.manual_seed(seed)
    enc, dec = build_autoencoder("mlp", 64, 4, (32,))
    return TrainingState(enc, dec, None, None, torch.Generator().manual_seed(seed))


def plateau_cfg(**kw):
    base = dict(kind="mlp", latent_dim=4, hidden=(32,), stop="plateau", steps=5000, batch_size=64, check_every=10,
                plateau_patience=2, plateau_decays=2, plateau_tol=0.01)
    return AutoencoderConfig(**{**base, **kw})


def test_plateau_rule_stops_stage1_at_convergence(y):
    st = _state()
    train_autoencoder(st, y, plateau_cfg(), progress=False)
    steps = st.history["stage1_steps"]
    assert 0 < steps < 5000, steps  # stopped by the rule, not the cap
    assert st.optim["plateau"]["done"] and st.optim["plateau"]["drops"] == 2
    checks = st.history["reconstruction_heldout"]
    assert [c[0] for c in checks] == list(range(10, steps + 1, 10))  # every check_every steps (>= one epoch here)
    assert len(st.history["reconstruction"]) == steps
    lr = st.optim["opt"]["param_groups"][0]["lr"]
    assert lr == pytest.approx(1e-3 * 0.2 ** 2)  # two drops of 5x before the last plateau


def test_heldout_images_are_never_trained_on(y):
    enc, dec = build_autoencoder("mlp", 64, 4, (32,))
    step = AutoencoderStep(enc, dec, y, plateau_cfg(holdout=0.25), torch.Generator().manual_seed(0), seed=3)
    assert len(step.heldout) == 100 and len(step.train_idx) == 300
    seen = []
    enc.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach().clone()))
    for i in range(30):
        step(i)
    trained = {tuple(r.tolist()) for batch in seen for r in batch}
    held = {tuple(r.tolist()) for r in step.heldout}
    assert len(trained) > 250 and not (held & trained)  # the encoder saw most training images, no held-out one
    again = AutoencoderStep(*build_autoencoder("mlp", 64, 4, (32,)), y, plateau_cfg(holdout=0.25),
                            torch.Generator().manual_seed(5), seed=3)
    assert torch.equal(again.heldout, step.heldout)  # the choice depends on the seed only (same on resume)


def test_epoch_budget_and_step_budget(y):
    st = _state()
    train_autoencoder(st, y, AutoencoderConfig(kind="mlp", latent_dim=4, hidden=(32,), stop="steps", epochs=2.0,
                                               batch_size=64), progress=False)
    assert st.history["stage1_steps"] == round(2.0 * 400 / 64)  # 2 passes over the 400 images
    st = _state()
    train_autoencoder(st, y, AutoencoderConfig(kind="mlp", latent_dim=4, hidden=(32,), stop="steps", steps=17,
                                               batch_size=64), progress=False)
    assert st.history["stage1_steps"] == 17 and "reconstruction_heldout" not in st.history


@pytest.mark.parametrize("stop_at", [25, 40])
def test_plateau_stage1_resumes_exactly(y, stop_at):
    cfg = plateau_cfg(checkpoint_every=5)
    ref = _state()
    train_autoencoder(ref, y, cfg, progress=False)
    assert ref.history["stage1_steps"] > stop_at

    class Keep:
        saved = None

        def save(self, st):
            if st.step == stop_at:
                Keep.saved = (copy.deepcopy(st.optim), copy.deepcopy(st.history), st.rng.get_state(),
                              copy.deepcopy(st.encoder.state_dict()), copy.deepcopy(st.decoder.state_dict()))

        def describe(self):
            return "test"

    first = _state()
    train_autoencoder(first, y, cfg, progress=False, checkpoint=Keep())
    optim, hist, rng, e, d = Keep.saved
    resumed = _state(seed=9)  # other weights, overwritten below
    resumed.encoder.load_state_dict(e), resumed.decoder.load_state_dict(d)
    resumed.rng.set_state(rng)
    resumed.step, resumed.optim, resumed.history = stop_at, optim, hist
    train_autoencoder(resumed, y, cfg, progress=False)
    assert resumed.history == ref.history
    for a, b in zip(resumed.encoder.parameters(), ref.encoder.parameters()):
        assert torch.equal(a, b)


def test_package_default_is_a_conv_autoencoder_to_convergence():
    cfg = LSDMConfig()
    assert cfg.autoencoder.kind == "auto" and cfg.autoencoder.stop == "plateau" and cfg.autoencoder.latent_dim is None
    ds = load_digits_dataset("train")
    small = LSDMConfig(autoencoder=AutoencoderConfig(steps=30, batch_size=32, check_every=10),
                       matching=MatchingConfig(steps=2, batch_size=32, generator_hidden=(16,), critic_hidden=(16,)))
    m = LSDM(small).fit(ds.labels[:60], ds.images[:60], ds.images[60:200], num_classes=10, progress=False)
    assert m.meta["autoencoder_kind"] == "conv"  # 8x8 images: two stride-2 stages fit
    flat = LSDM(small).fit(ds.labels[:60], ds.images[:60].reshape(60, -1), num_classes=10, progress=False)
    assert flat.meta["autoencoder_kind"] == "mlp"  # flat rows: no image shape to convolve


def test_old_configs_keep_their_meaning():
    """A config saved before `stop` existed trained for exactly `steps` steps: it loads (and resumes) so."""
    old = LSDMConfig().to_dict()
    for key in ("stop", "epochs", "conv_channels", "res_blocks"):
        old["autoencoder"].pop(key)
    cfg = LSDMConfig.from_dict(old, saved=True)
    assert cfg.autoencoder.stop == "steps" and cfg.autoencoder.conv_channels == (32, 64)
    # a user's dict that leaves fields out means today's defaults, not a saved config's
    assert LSDMConfig.from_dict(old) == LSDMConfig()


def test_weight_average_is_what_stage1_checks_and_ends_with(y):
    torch.manual_seed(0)
    enc, dec = build_autoencoder("mlp", 64, 4, (32,))
    step = AutoencoderStep(enc, dec, y, plateau_cfg(ema=0.9, warmup_steps=5), torch.Generator().manual_seed(0))
    for s in range(20):
        step(s)
    live = [p.detach().clone() for p in step.params]
    average = [e.clone() for e in step.ema]
    assert any(not torch.equal(a, b) for a, b in zip(live, average))
    before = step.heldout_loss()  # measured on the average, then the live weights are back
    assert all(torch.equal(p, t) for p, t in zip(step.params, live))
    step.finish()
    assert all(torch.equal(p, e) for p, e in zip(step.params, average))
    assert step.heldout_loss() == before


def test_schedule_by_model_and_fields():
    """None fields take the schedule measured for the model; explicit fields always win."""
    from lsdm_fast.config import PATCH_LR, PATCH_PATIENCE, WIDE_LATENT, WIDE_PATCH_LR, WIDE_PATCH_PATIENCE
    cfg = AutoencoderConfig()
    assert cfg.schedule(patch=True) == (PATCH_LR, 100, PATCH_PATIENCE)
    assert cfg.schedule(patch=False) == (1e-3, 0, 2)
    # the patch model's wide latents (a grown attempt, or a size asked for) train at their own rate and patience
    for d in (WIDE_LATENT, 2 * WIDE_LATENT):
        assert AutoencoderConfig(latent_dim=d).schedule(patch=True) == (WIDE_PATCH_LR, 100, WIDE_PATCH_PATIENCE)
        assert AutoencoderConfig(latent_dim=d).schedule(patch=False) == (1e-3, 0, 2)
    assert AutoencoderConfig(latent_dim=WIDE_LATENT // 2).schedule(patch=True) == (PATCH_LR, 100, PATCH_PATIENCE)
    assert AutoencoderConfig(latent_dim=2 * WIDE_LATENT, lr=1e-3).schedule(patch=True)[0] == 1e-3
    mine = AutoencoderConfig(lr=2e-4, warmup_steps=7, plateau_patience=3)
    assert mine.schedule(patch=True) == mine.schedule(patch=False) == (2e-4, 7, 3)
    with pytest.raises(ValueError, match="plateau_patience"):
        LSDMConfig(autoencoder=AutoencoderConfig(plateau_patience=0)).validate()


def _patch_step(y, **kw):
    torch.manual_seed(0)
    enc, dec = build_autoencoder("conv", 64, 4, (32,), (8, 8), conv_design="patch", patch_width=8, patch_stride=2)
    cfg = AutoencoderConfig(kind="conv", latent_dim=4, conv_design="patch", patch_width=8, patch_stride=2,
                            batch_size=32, check_every=5, **kw)
    return AutoencoderStep(enc, dec, y, cfg, torch.Generator().manual_seed(0))


def test_resume_keeps_the_schedule_the_run_started_with(y):
    """A checkpoint records the resolved learning rate and patience; one written before they were recorded
    (a patch model whose fields were None then trained at LEGACY_PATCH_LR, patience 2) resumes with those."""
    from lsdm_fast.config import LEGACY_PATCH_LR, PATCH_LR, PATCH_PATIENCE
    step = _patch_step(y)
    assert (step.lr, step.patience) == (PATCH_LR, PATCH_PATIENCE)
    for s in range(3):
        step(s)
    saved = step.state_dict()
    again = _patch_step(y)
    again.load_state_dict(copy.deepcopy(saved))
    assert (again.lr, again.patience) == (PATCH_LR, PATCH_PATIENCE)
    old = {k: v for k, v in saved.items() if k not in ("lr", "patience")}
    legacy = _patch_step(y)
    legacy.load_state_dict(copy.deepcopy(old))
    assert (legacy.lr, legacy.patience) == (LEGACY_PATCH_LR, 2)
    legacy(1)  # inside the warm-up: the ramp climbs to the rate the run started with
    assert legacy.opt.param_groups[0]["lr"] == pytest.approx(LEGACY_PATCH_LR * 2 / 100)
    mine = _patch_step(y, lr=1e-4, plateau_patience=4)
    mine.load_state_dict(copy.deepcopy(old))
    assert (mine.lr, mine.patience) == (1e-4, 4)  # explicit fields meant the same then


def test_patch_stage1_ends_with_its_best_heldout_weights(y):
    """A loss spike after the lowest held-out check is not what the patch model's stage 1 hands on."""
    step = _patch_step(y)
    for s in range(step.period):
        step(s)
    low = step.check(step.period)
    best = [p.detach().clone() for p in step.params]
    with torch.no_grad():
        for p in step.params:
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))  # the spike
    assert step.check(2 * step.period) > low
    saved = step.state_dict()
    step.finish()
    assert all(torch.equal(p, b) for p, b in zip(step.params, best))
    assert step.heldout_loss() == low
    again = _patch_step(y)
    again.load_state_dict(copy.deepcopy(saved))  # the best weights travel with a checkpoint
    again.finish()
    assert all(torch.equal(p, b) for p, b in zip(again.params, best))
    old = {k: v for k, v in saved.items() if k not in ("keep_best", "best")}
    legacy = _patch_step(y)
    legacy.load_state_dict(copy.deepcopy(old))  # written before: ends with its last weights, as it did then
    assert not legacy.keep_best
    mlp = AutoencoderStep(*build_autoencoder("mlp", 64, 4, (32,)), y, plateau_cfg(), torch.Generator().manual_seed(0))
    assert not mlp.keep_best  # other models keep their last weights
