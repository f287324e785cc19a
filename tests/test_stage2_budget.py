"""Stage 2's budget: explicit generator steps, or (steps=None, the default) sized to the latent the fit ended with."""
import pytest
import torch

import lsdm_fast.baselines as baselines
import lsdm_fast.config as config
from lsdm_fast import LSDM, AutoencoderConfig, LSDMConfig, MatchingConfig
from lsdm_fast.data import load_digits_dataset, split_paired_unpaired


def test_generator_steps_by_latent_and_fields():
    from lsdm_fast.config import MATCH_STEPS, WIDE_LATENT, WIDE_MATCH_STEPS
    assert MatchingConfig().steps is None
    assert (MATCH_STEPS, WIDE_MATCH_STEPS) == (4000, 8000)  # the budgets measured (docs/design.md §1, "Stage 2's budget")
    for d in (1, 32, WIDE_LATENT - 1):
        assert MatchingConfig().generator_steps(d) == MATCH_STEPS
    for d in (WIDE_LATENT, 2 * WIDE_LATENT):
        assert MatchingConfig().generator_steps(d) == WIDE_MATCH_STEPS
    for steps in (0, 7, 12345):  # explicit steps always win
        assert MatchingConfig(steps=steps).generator_steps(WIDE_LATENT) == steps
    assert LSDMConfig.from_knobs().matching.steps is None
    assert LSDMConfig.from_knobs(steps=9).matching.steps == 9
    with pytest.raises(ValueError, match="steps must be >= 0"):
        LSDMConfig(matching=MatchingConfig(steps=-1)).validate()
    with pytest.raises(ValueError, match="matching.steps must be an integer or None"):
        LSDMConfig(matching=MatchingConfig(steps="8000")).validate()


@pytest.fixture(scope="module")
def digits():
    torch.set_num_threads(1)
    ds = load_digits_dataset("train")
    return ds, split_paired_unpaired(ds.labels, n_per_class=5, m_unpaired=200, seed=0)


def _fit(digits, latent_dim, steps=None):
    ds, s = digits
    cfg = LSDMConfig(autoencoder=AutoencoderConfig(kind="mlp", latent_dim=latent_dim, hidden=(32,), stop="steps",
                                                   steps=10, batch_size=64),
                     matching=MatchingConfig(generator_hidden=(32,), critic_hidden=(32,), steps=steps, batch_size=32))
    return LSDM(cfg).fit(ds.labels[s.paired], ds.images[s.paired], ds.images[s.unpaired], num_classes=10,
                         progress=False)


@pytest.mark.parametrize("latent_dim, want", [(4, 3), (8, 5), (16, 5)])
def test_fit_sizes_stage2_to_its_latent(digits, monkeypatch, latent_dim, want):
    """A fit's stage 2 takes the budget of the latent stage 1 handed on (here scaled down: 3 steps below a
    latent of 8, 5 from 8 up), and records it."""
    monkeypatch.setattr(config, "MATCH_STEPS", 3)
    monkeypatch.setattr(config, "WIDE_MATCH_STEPS", 5)
    monkeypatch.setattr(config, "WIDE_LATENT", 8)
    model = _fit(digits, latent_dim)
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
    monkeypatch.setattr(config, "WIDE_LATENT", 8)  # 64 pixels would count as a wide latent
    pm = baselines.PixelMatching(MatchingConfig(batch_size=16), generator_hidden=(16,), critic_hidden=(16,),
                                 noise_dim=4).fit(cond, y)
    assert pm.history["stage2_steps"] == 3 and len(pm.history["wasserstein"]) == 3
