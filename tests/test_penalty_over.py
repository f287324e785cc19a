"""Stage 2's gradient penalty (MatchingConfig.penalty_over): None picks "latent" for class labels in a latent of
WIDE_LATENT or more and "joint" otherwise, the choice reaches the critic op and the history, an explicit value wins,
bad values are named, and the pixel-space baseline keeps the joint penalty its tables were made with."""
import pytest
import torch

from lsdm_fast import LSDM, AutoencoderConfig, LSDMConfig, MatchingConfig
from lsdm_fast.config import WIDE_LATENT
from lsdm_fast.baselines import PixelMatching
from lsdm_fast.matching_step import MatchingStep, is_one_hot
from lsdm_fast.models import Critic, Generator
from test_models_api import digits, fit, tiny_config  # noqa: F401 (digits: a fixture)


def test_default_is_by_the_conditions_and_an_explicit_value_wins():
    m = MatchingConfig()
    assert m.penalty_over is None
    assert m.penalty_for(True, WIDE_LATENT) == "latent" and m.penalty_for(True, 2 * WIDE_LATENT) == "latent"
    assert m.penalty_for(True, WIDE_LATENT - 1) == "joint" and m.penalty_for(True, 32) == "joint"
    assert m.penalty_for(False, WIDE_LATENT) == "joint" and m.penalty_for(False, 8) == "joint"
    for v in ("joint", "latent"):
        for args in ((True, 8), (True, WIDE_LATENT), (False, 8), (False, WIDE_LATENT)):
            assert MatchingConfig(penalty_over=v).penalty_for(*args) == v


def test_one_hot_detection():
    eye = torch.eye(4)[torch.tensor([0, 3, 1, 1])]
    assert is_one_hot(eye)
    assert not is_one_hot(0.5 * eye)  # scaled
    assert not is_one_hot(torch.rand(4, 4))  # float conditions
    assert not is_one_hot(torch.zeros(4, 4))  # no class set
    assert not is_one_hot(torch.ones(4, 4))  # several classes set
    assert not is_one_hot(torch.zeros(4, 0))


def step_for(x, dz=WIDE_LATENT, **kw):
    gen, critic = Generator(3, x.shape[1], dz, (8,)), Critic(x.shape[1], dz, (8,))
    cfg = MatchingConfig(generator_hidden=(8,), critic_hidden=(8,), batch_size=4, critic_steps=1, backend="torch",
                         **kw)
    return MatchingStep(gen, critic, x, torch.randn(len(x), dz), cfg, torch.Generator().manual_seed(0))


def test_matching_step_resolves_none_from_its_conditions_and_the_op_sees_it(monkeypatch):
    labels = torch.eye(5)[torch.arange(8) % 5]
    assert step_for(labels).penalty_over == "latent"
    assert step_for(labels, dz=WIDE_LATENT // 2).penalty_over == "joint"  # a narrow latent keeps the joint penalty
    assert step_for(torch.rand(8, 5)).penalty_over == "joint"
    assert step_for(labels, penalty_over="joint").penalty_over == "joint"
    assert step_for(torch.rand(8, 5), penalty_over="latent").penalty_over == "latent"
    import lsdm_fast.matching_step as ms
    seen = []
    real = ms.ops.critic_gradient_penalty

    def spy(*a, **kw):
        seen.append(kw.get("penalty_over"))
        return real(*a, **kw)

    monkeypatch.setattr(ms.ops, "critic_gradient_penalty", spy)
    step_for(labels)(0)
    step_for(torch.rand(8, 5))(0)
    assert seen == ["latent", "joint"]


def test_the_two_penalties_train_differently_from_the_same_start():
    x = torch.eye(5)[torch.arange(16) % 5]
    out = {}
    for v in ("joint", "latent"):
        torch.manual_seed(0)
        step = step_for(x, penalty_over=v)
        step(0)
        out[v] = step.critic.mlp.layers[0].weight.detach().clone()
    assert not torch.equal(out["joint"], out["latent"])


def wide_fit(digits, **kw):
    ds, s = digits
    cfg = LSDMConfig(autoencoder=AutoencoderConfig(kind="mlp", latent_dim=WIDE_LATENT, hidden=(32,), steps=20,
                                                   batch_size=64),
                     matching=MatchingConfig(generator_hidden=(16,), critic_hidden=(16,), steps=3, batch_size=32, **kw))
    return LSDM(cfg).fit(ds.labels[s.paired], ds.images[s.paired], ds.images[s.unpaired], num_classes=10,
                         progress=False)


def test_fit_records_the_penalty_it_used(digits):
    assert fit(digits, 0).history["penalty_over"] == "joint"  # a 4-d latent
    auto = wide_fit(digits)
    assert auto.history["penalty_over"] == "latent" and auto.config.matching.penalty_over is None
    joint = wide_fit(digits, penalty_over="joint")
    assert joint.history["penalty_over"] == "joint"
    assert not torch.equal(auto.generator.mlp.layers[0].weight, joint.generator.mlp.layers[0].weight)
    for a, b in zip(auto.decoder.state_dict().values(), joint.decoder.state_dict().values()):
        assert torch.equal(a, b)  # stage 1 is untouched
    ds, s = digits
    y = ds.images[s.paired]
    cond = y.reshape(len(y), 8, 8)[:, ::2, ::2].reshape(len(y), -1)  # float conditions (a 4x4 low-resolution view)
    sr = LSDM(tiny_config(0)).fit(cond, y, ds.images[s.unpaired], progress=False)
    assert sr.history["penalty_over"] == "joint"
    assert LSDM(tiny_config(0, penalty_over="latent")).fit(cond, y, progress=False).history["penalty_over"] == "latent"


@pytest.mark.parametrize("bad, msg", [("both", "must be None (auto), 'joint' or 'latent', got 'both'"),
                                      (3, "matching.penalty_over must be a string or None, got 3 (int)")])
def test_bad_values_are_named(bad, msg):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        LSDMConfig(matching=MatchingConfig(penalty_over=bad)).validate()


def test_pixel_matching_keeps_the_joint_penalty():
    assert PixelMatching(MatchingConfig()).cfg.penalty_over == "joint"
    assert PixelMatching(MatchingConfig(penalty_over="latent")).cfg.penalty_over == "latent"
