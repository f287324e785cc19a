"""Pseudo-pairs (MatchingConfig.pseudo_label): the classifier labels separable latents right, keeps only what it
is sure of, is deterministic without moving any other random stream, refuses bad input, and reaches stage 2.
Pseudo-conditions (MatchingConfig.pseudo_condition, float conditions) likewise, with their held-out R^2 gate."""
from dataclasses import replace

import numpy as np
import pytest
import torch

import lsdm_fast.config as config_module
from lsdm_fast import LSDM, MatchingConfig
from lsdm_fast.config import PSEUDO_CONDITION_AUTO, PSEUDO_CONDITION_STEPS, PSEUDO_LABEL_AUTO
from lsdm_fast.data import split_paired_unpaired
from lsdm_fast.pseudo_labels import pseudo_condition, pseudo_label
from test_models_api import digits, fit, tiny_config  # noqa: F401 (digits: a fixture)


def clusters(n_per_class, k=4, d=6, spread=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = 3.0 * torch.randn(k, d, generator=g)
    labels = torch.arange(k).repeat_interleave(n_per_class)
    return centres[labels] + spread * torch.randn(len(labels), d, generator=g), labels


def test_separable_latents_are_labelled_right_and_ambiguous_ones_dropped():
    zp, yp = clusters(10, seed=1)
    zu, yu = clusters(200, seed=1)  # the same centres, other draws
    zu, yu = zu[40:], yu[40:]
    midpoints = 0.5 * (zu[:50] + zu[-50:])  # between two classes' clouds: no confident label
    out = pseudo_label(zp, yp, torch.cat([zu, midpoints]), 4, 0.99, seed=0)
    assert out.kept_fraction > 0.75
    kept_real = out.index < len(zu)
    assert bool(kept_real.all() | (out.confidence >= 0.99).all())
    assert torch.equal(out.labels[kept_real], yu[out.index[kept_real]])  # every kept real latent labelled right
    assert int((~kept_real).sum()) < 10  # the midpoints are (nearly all) dropped
    assert (out.confidence >= 0.99).all()


def test_deterministic_and_leaves_the_global_stream_alone():
    zp, yp = clusters(5, seed=2)
    zu, _ = clusters(50, seed=3)
    before = torch.get_rng_state()
    a = pseudo_label(zp, yp, zu, 4, 0.9, seed=5)
    assert torch.equal(torch.get_rng_state(), before)
    b = pseudo_label(zp, yp, zu, 4, 0.9, seed=5)
    assert torch.equal(a.index, b.index) and torch.equal(a.labels, b.labels)
    assert torch.equal(a.confidence, b.confidence)
    higher = pseudo_label(zp, yp, zu, 4, 0.999, seed=5)
    assert set(higher.index.tolist()) <= set(a.index.tolist())  # a higher threshold keeps a subset


def test_runs_on_one_thread_and_gives_the_caller_its_threads_back(monkeypatch):
    import lsdm_fast.pseudo_labels as pl
    zp, yp = clusters(5, seed=2)
    zu, _ = clusters(50, seed=3)
    seen = []
    real = pl._classifier
    monkeypatch.setattr(pl, "_classifier", lambda *a: seen.append(torch.get_num_threads()) or real(*a))
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        a = pseudo_label(zp, yp, zu, 4, 0.9, seed=5)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(n)
    assert seen == [1] * pl.ENSEMBLE
    b = pseudo_label(zp, yp, zu, 4, 0.9, seed=5)
    assert torch.equal(a.index, b.index) and torch.equal(a.confidence, b.confidence)


def test_bad_input_is_refused_with_its_name():
    zp, yp = clusters(5)
    for q in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="confidence must be in"):
            pseudo_label(zp, yp, zp, 4, q, seed=0)
    with pytest.raises(ValueError, match="one integer label per pair"):
        pseudo_label(zp, yp.float(), zp, 4, 0.9, seed=0)
    with pytest.raises(ValueError, match=r"\(N, d\) and \(M, d\) latents"):
        pseudo_label(zp, yp, zp[:, :3], 4, 0.9, seed=0)
    empty = pseudo_label(zp, yp, zp[:0], 4, 0.9, seed=0)
    assert len(empty.index) == 0 and empty.kept_fraction == 0.0


def test_fit_uses_pseudo_pairs_by_default_with_class_labels_only(digits):
    """pseudo_label None (the default) is PSEUDO_LABEL_AUTO with class labels; 0 is off; a confidence given with
    float conditions is refused before any training (they get pseudo_condition), and pseudo_condition given with
    class labels likewise."""
    assert MatchingConfig().pseudo_label is None
    auto = fit(digits, 0)
    off = fit(digits, 0, pseudo_label=0.0)
    pp = auto.history["pseudo_pairs"]  # (the tiny 4-d autoencoder leaves few latents labelled that surely)
    assert "pseudo_pairs" not in off.history
    assert fit(digits, 0, pseudo_label=PSEUDO_LABEL_AUTO).history["pseudo_pairs"] == pp
    loose = fit(digits, 0, pseudo_label=0.5)
    kept = loose.history["pseudo_pairs"]["kept"]
    assert kept == sum(loose.history["pseudo_pairs"]["per_class"]) and kept >= pp["kept"]
    assert 0 < kept <= loose.history["counts"]["unpaired"]
    assert not torch.equal(loose.generator.mlp.layers[0].weight, off.generator.mlp.layers[0].weight)
    for a, b in zip(loose.decoder.state_dict().values(), off.decoder.state_dict().values()):
        assert torch.equal(a, b)  # stage 1 is untouched
    again = fit(digits, 0, pseudo_label=0.5)
    assert again.history["pseudo_pairs"] == loose.history["pseudo_pairs"]
    assert torch.equal(again.generator.mlp.layers[0].weight, loose.generator.mlp.layers[0].weight)
    assert loose.history["stage2_steps"] == off.history["stage2_steps"]  # pseudo-labels do not lengthen stage 2
    ds, s = digits
    for bad in (-0.1, 1.01, float("nan")):
        with pytest.raises(ValueError, match="matching.pseudo_label must be None \\(auto\\), 0 \\(off\\) or a"):
            fit(digits, 0, pseudo_label=bad)
        with pytest.raises(ValueError, match="matching.pseudo_condition must be None \\(auto\\), 0 \\(off\\) or"):
            fit(digits, 0, pseudo_condition=bad)
    x = np.random.default_rng(0).random((len(s.paired), 3)).astype(np.float32)
    with pytest.raises(ValueError, match="needs integer class labels as paired_x, got float conditions"):
        LSDM(tiny_config(pseudo_label=0.9)).fit(x, ds.images[s.paired], ds.images[s.unpaired], progress=False)
    with pytest.raises(ValueError, match="pseudo_condition predicts float conditions .* integer class labels"):
        fit(digits, 0, pseudo_condition=0.9)


def sr_digits(digits, n_per_class=20):
    """The digits with a 4x4 view (2x2 means) as float conditions, 200 pairs (more than the 64 pixels)."""
    ds, _ = digits
    s = split_paired_unpaired(ds.labels, n_per_class=n_per_class, m_unpaired=200, seed=0)
    low = ds.images[s.paired].reshape(-1, 4, 2, 4, 2).mean((2, 4)).reshape(-1, 16).astype(np.float32)
    return low, ds.images[s.paired], ds.images[s.unpaired]


def test_fit_gives_float_conditions_pseudo_conditions_by_default(digits, monkeypatch):
    """pseudo_condition None (the default) predicts a low-resolution view (linear in the pixels) for every unpaired
    image, and stage 2 trains on them for PSEUDO_CONDITION_STEPS times the latent's generator steps; 0 is off;
    stage 1 is untouched."""
    monkeypatch.setattr(config_module, "MATCH_STEPS", 10)  # the latent's steps (steps=None): 10 at d = 4
    x, py, uy = sr_digits(digits)
    sized = lambda **kw: replace(tiny_config(**kw), matching=replace(tiny_config(**kw).matching, steps=None))  # noqa: E731
    auto = LSDM(sized()).fit(x, py, uy, progress=False)
    pp = auto.history["pseudo_pairs"]
    assert pp["regressor"] == "pixels" and pp["heldout_r2"] > 0.99
    assert pp["kept"] == auto.history["counts"]["unpaired"] and pp["fraction"] == 1.0
    off = LSDM(sized(pseudo_condition=0.0)).fit(x, py, uy, progress=False)
    assert "pseudo_pairs" not in off.history
    assert (auto.history["stage2_steps"], off.history["stage2_steps"]) == (10 * PSEUDO_CONDITION_STEPS, 10)
    assert not torch.equal(auto.generator.mlp.layers[0].weight, off.generator.mlp.layers[0].weight)
    for a, b in zip(auto.decoder.state_dict().values(), off.decoder.state_dict().values()):
        assert torch.equal(a, b)
    again = LSDM(sized(pseudo_condition=PSEUDO_CONDITION_AUTO)).fit(x, py, uy, progress=False)
    assert again.history["pseudo_pairs"] == pp
    assert torch.equal(again.generator.mlp.layers[0].weight, auto.generator.mlp.layers[0].weight)


def test_float_conditions_the_images_do_not_determine_get_none_with_a_warning_when_asked(digits):
    x, py, uy = sr_digits(digits)
    noise = np.random.default_rng(0).random(x.shape).astype(np.float32)  # unrelated to the images
    quiet = LSDM(tiny_config()).fit(noise, py, uy, progress=False)  # auto: recorded, no warning
    assert quiet.history["pseudo_pairs"]["kept"] == 0 and quiet.history["pseudo_pairs"]["heldout_r2"] < 0.5
    with pytest.warns(UserWarning, match=r"pseudo_condition=0.5: no pseudo-conditions .* R\^2 = "):
        asked = LSDM(tiny_config(pseudo_condition=0.5)).fit(noise, py, uy, progress=False)
    assert asked.history["pseudo_pairs"]["kept"] == 0
    assert asked.history["stage2_steps"] == quiet.history["stage2_steps"] == tiny_config().matching.steps


# float conditions: pseudo_condition

def smooth_conditions(n, d=6, c=3, seed=0):
    """Latents and a condition that is a smooth function of them (as a low-resolution view is of its image)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g)
    w = torch.randn(d, c, generator=g) / d ** 0.5
    return z, torch.tanh(z @ w) + 0.1 * (z[:, :c] ** 2)


def test_a_condition_the_latent_determines_is_predicted_for_every_unpaired_latent():
    z, x = smooth_conditions(1200, seed=1)
    zp, xp, zu, xu = z[:200], x[:200], z[200:], x[200:]
    out = pseudo_condition(zp, xp, zu, 0.9, seed=0)
    assert out.heldout_r2 > 0.9 and out.kept_fraction == 1.0 and out.regressor == "latent"
    assert torch.equal(out.index, torch.arange(len(zu)))
    rel = float((out.conditions - xu).norm() / (xu - xu.mean(0)).norm())
    assert rel < 0.3, rel  # the unpaired conditions predicted, not just the held-out pairs'
    lo, hi = xp.min(0).values, xp.max(0).values
    assert bool(((out.conditions >= lo) & (out.conditions <= hi)).all())  # within the pairs' range


def test_a_linear_view_of_the_image_is_learnt_from_the_pixels():
    """Super-resolution's condition (a pooled view) is linear in the pixels: the ridge regressor gets it all but
    exactly, where the latent cannot (here the latent is a coarse summary of the image)."""
    g = torch.Generator().manual_seed(5)
    y = torch.rand(900, 8, 8, generator=g)
    x = torch.nn.functional.avg_pool2d(y[:, None], 2).flatten(1)  # (900, 16)
    z = y.flatten(1)[:, :6] + 0.01 * torch.randn(900, 6, generator=g)  # latents that miss most of the image
    flat = y.flatten(1)
    out = pseudo_condition(z[:300], x[:300], z[300:], 0.99, seed=0, y_pairs=flat[:300], y_unpaired=flat[300:])
    assert out.regressor == "pixels" and out.heldout_r2 > 0.999 and out.kept_fraction == 1.0
    rel = float((out.conditions - x[300:]).norm() / x[300:].norm())
    assert rel < 1e-2, rel
    latent_only = pseudo_condition(z[:300], x[:300], z[300:], 0.99, seed=0)
    assert latent_only.regressor == "latent" and latent_only.heldout_r2 < 0.99 and latent_only.kept_fraction == 0.0


def test_a_condition_the_latent_does_not_determine_keeps_nothing():
    z, _ = smooth_conditions(600, seed=2)
    x = torch.randn(600, 3, generator=torch.Generator().manual_seed(9))  # independent of the latents
    out = pseudo_condition(z[:200], x[:200], z[200:], 0.5, seed=0)
    assert out.heldout_r2 < 0.2 and out.kept_fraction == 0.0
    assert len(out.index) == 0 and out.conditions.shape == (0, 3)


def test_pseudo_conditions_are_deterministic_and_leave_the_global_stream_alone():
    z, x = smooth_conditions(300, seed=3)
    before = torch.get_rng_state()
    a = pseudo_condition(z[:100], x[:100], z[100:], 0.5, seed=4)
    assert torch.equal(torch.get_rng_state(), before)
    b = pseudo_condition(z[:100], x[:100], z[100:], 0.5, seed=4)
    assert a.heldout_r2 == b.heldout_r2 and torch.equal(a.conditions, b.conditions)
    strict = pseudo_condition(z[:100], x[:100], z[100:], 1.0, seed=4)  # the same check, a gate it cannot pass
    assert strict.heldout_r2 == a.heldout_r2 and strict.kept_fraction == 0.0


def test_pseudo_condition_refuses_bad_input_with_its_name():
    z, x = smooth_conditions(50)
    for q in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="R\\^2 threshold must be in"):
            pseudo_condition(z, x, z, q, seed=0)
    with pytest.raises(ValueError, match="one float condition row per pair"):
        pseudo_condition(z, x[:10], z, 0.9, seed=0)
    with pytest.raises(ValueError, match="one float condition row per pair"):
        pseudo_condition(z, x.long(), z, 0.9, seed=0)
    with pytest.raises(ValueError, match=r"\(N, d\) and \(M, d\) latents"):
        pseudo_condition(z, x, z[:, :3], 0.9, seed=0)
    with pytest.raises(ValueError, match="both y_pairs and y_unpaired"):
        pseudo_condition(z, x, z, 0.9, seed=0, y_pairs=z)
    with pytest.raises(ValueError, match="flat images matching the latents"):
        pseudo_condition(z, x, z, 0.9, seed=0, y_pairs=z, y_unpaired=z[:10])
    few = pseudo_condition(z[:5], x[:5], z, 0.1, seed=0)  # too few pairs to check a regressor on
    assert few.kept_fraction == 0.0 and few.heldout_r2 != few.heldout_r2  # nan
    assert pseudo_condition(z, x, z[:0], 0.1, seed=0).kept_fraction == 0.0


def test_the_pixel_regressor_solves_either_side_alike(monkeypatch):
    """Up to PIXEL_SOLVE_MAX pairs through their Gram matrix, beyond it over the pixels: the same ridge solution;
    with both sides too large, a seeded subset of the pairs."""
    import lsdm_fast.pseudo_labels as pl
    g = torch.Generator().manual_seed(3)
    y = torch.rand(300, 64, generator=g)
    x = torch.nn.functional.avg_pool2d(y.view(-1, 1, 8, 8), 2).flatten(1)
    dual = pl._pixel_regressor(y, x, torch.Generator().manual_seed(0))(y)
    monkeypatch.setattr(pl, "PIXEL_SOLVE_MAX", 100)  # 300 pairs > 100 >= 64 pixels: the primal form
    primal = pl._pixel_regressor(y, x, torch.Generator().manual_seed(0))(y)
    assert float((primal - dual).norm() / dual.norm()) < 1e-6
    assert float((primal - x).norm() / x.norm()) < 1e-3  # a linear view: all but exact
    monkeypatch.setattr(pl, "PIXEL_SOLVE_MAX", 50)  # both sides above: 50 of the pairs, seeded
    a = pl._pixel_regressor(y, x, torch.Generator().manual_seed(0))(y)
    b = pl._pixel_regressor(y, x, torch.Generator().manual_seed(0))(y)
    assert torch.equal(a, b) and float((a - x).norm() / x.norm()) < 0.5
