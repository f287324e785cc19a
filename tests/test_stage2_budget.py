"""Stage 2's budget: explicit generator steps, or (steps=None, the default) sized to the latent the fit ended with."""
import pytest
import torch

import lsdm_fast.baselines as baselines
import lsdm_fast.config as config
from lsdm_fast import LSDM, AutoencoderConfig, LSDMConfig, MatchingConfig
from lsdm_fast.data import load_digits_dataset, split_paired_unpaired


def test_generator_steps_by_latent_and_fields():
    from lsdm_fast.config import MATCH_STEPS, MATCH_STEPS_MAX, MATCH_STEPS_WIDTH
    assert MatchingConfig().steps is None
    # the budgets measured (docs/design.md §1, "Stage 2's budget")
    assert (MATCH_STEPS, MATCH_STEPS_WIDTH, MATCH_STEPS_MAX) == (4000, 64, 16000)
    want = {1: 4000, 8: 4000, 32: 4000, 64: 4000, 127: 4000, 128: 8000, 191: 8000, 192: 12000, 256: 16000,
            512: 16000, 4096: 16000}
    assert {d: MatchingConfig().generator_steps(d) for d in want} == want
    # the cap: 8,000 is the rule before steps_max existed (4,000 below 128, 8,000 from 128 up)
    assert [MatchingConfig(steps_max=8000).generator_steps(d) for d in (32, 127, 128, 256, 512)] == \
        [4000, 4000, 8000, 8000, 8000]
    assert MatchingConfig(steps_max=100).generator_steps(32) == 100
    for steps in (0, 7, 12345, 40000):  # explicit steps always win, over the cap too
        assert MatchingConfig(steps=steps).generator_steps(256) == steps
        assert MatchingConfig(steps=steps).generator_steps(32, pseudo_conditions=True) == steps
    # with pseudo-conditions (every unpaired image a pair) twice the latent's steps, within the cap
    doubled = {32: 8000, 64: 8000, 127: 8000, 128: 16000, 256: 16000, 512: 16000}
    assert {d: MatchingConfig().generator_steps(d, pseudo_conditions=True) for d in doubled} == doubled
    assert MatchingConfig(steps_max=8000).generator_steps(128, pseudo_conditions=True) == 8000
    assert LSDMConfig.from_knobs().matching.steps is None
    assert LSDMConfig.from_knobs().matching.steps_max == MATCH_STEPS_MAX
    assert LSDMConfig.from_knobs(steps=9).matching.steps == 9
    assert LSDMConfig.from_knobs(steps_max=8000).matching.steps_max == 8000
    # stage 2's rate: 6e-4 (3e-4 before issue25_stage2_rate); a knob for experiment budgets that resume older ones
    assert MatchingConfig().lr == LSDMConfig.from_knobs().matching.lr == 6e-4
    assert LSDMConfig.from_knobs(match_lr=3e-4).matching.lr == 3e-4
    with pytest.raises(ValueError, match="steps must be >= 0"):
        LSDMConfig(matching=MatchingConfig(steps=-1)).validate()
    with pytest.raises(ValueError, match="matching.steps must be an integer or None"):
        LSDMConfig(matching=MatchingConfig(steps="8000")).validate()
    with pytest.raises(ValueError, match="matching.steps_max must be >= 1, got 0"):
        LSDMConfig(matching=MatchingConfig(steps_max=0)).validate()


def test_saved_configs_keep_their_stage2_budget():
    """A config saved before steps_max existed sized stage 2 at most 8,000 steps: resumed, it still does."""
    old = LSDMConfig().to_dict()
    old["matching"].pop("steps_max")
    assert LSDMConfig.from_dict(old, saved=True).matching.steps_max == 8000
    assert LSDMConfig.from_dict(old).matching.steps_max == MatchingConfig().steps_max == 16000
    # a saved config carries its stage-2 rate: one written at 3e-4 resumes at 3e-4
    old["matching"]["lr"] = 3e-4
    assert LSDMConfig.from_dict(old, saved=True).matching.lr == 3e-4


@pytest.fixture(scope="module")
def digits():
    torch.set_num_threads(1)
    ds = load_digits_dataset("train")
    return ds, split_paired_unpaired(ds.labels, n_per_class=5, m_unpaired=200, seed=0)


def _fit(digits, latent_dim, steps=None, steps_max=16000):
    ds, s = digits
    cfg = LSDMConfig(autoencoder=AutoencoderConfig(kind="mlp", latent_dim=latent_dim, hidden=(32,), stop="steps",
                                                   steps=10, batch_size=64),
                     matching=MatchingConfig(generator_hidden=(32,), critic_hidden=(32,), steps=steps, batch_size=32,
                                                     steps_max=steps_max))
    return LSDM(cfg).fit(ds.labels[s.paired], ds.images[s.paired], ds.images[s.unpaired], num_classes=10,
                         progress=False)


@pytest.mark.parametrize("latent_dim, want", [(4, 2), (8, 4), (16, 7)])
def test_fit_sizes_stage2_to_its_latent(digits, monkeypatch, latent_dim, want):
    """A fit's stage 2 takes the budget of the latent stage 1 handed on (here scaled down: 2 steps per 4
    latent dimensions, at most 7), and records it."""
    monkeypatch.setattr(config, "MATCH_STEPS", 2)
    monkeypatch.setattr(config, "MATCH_STEPS_WIDTH", 4)
    model = _fit(digits, latent_dim, steps_max=7)
    assert model.history["stage2_steps"] == want
    assert len(model.history["wasserstein"]) == want  # one loss per generator step taken
    explicit = _fit(digits, latent_dim, steps=2)
    assert explicit.history["stage2_steps"] == 2 and len(explicit.history["wasserstein"]) == 2


def test_pixel_matching_keeps_the_narrow_budget(monkeypatch):
    """Pixels are no latent: the pixel-space baseline trains MATCH_STEPS whatever the image size."""
    monkeypatch.setattr(baselines, "MATCH_STEPS", 3)
    ds = load_digits_dataset("train")
    y = torch.from_numpy(ds.images[:64].reshape(64, -1))  # 64 pixels
    cond = baselines.one_hot(torch.from_numpy(ds.labels[:64]), 10)
    monkeypatch.setattr(config, "MATCH_STEPS_WIDTH", 4)  # 64 pixels would count as a 16-step latent
    pm = baselines.PixelMatching(MatchingConfig(batch_size=16), generator_hidden=(16,), critic_hidden=(16,),
                                 noise_dim=4).fit(cond, y)
    assert pm.history["stage2_steps"] == 3 and len(pm.history["wasserstein"]) == 3
