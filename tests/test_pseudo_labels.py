"""Pseudo-pairs (MatchingConfig.pseudo_label): the classifier labels separable latents right, keeps only what it
is sure of, is deterministic without moving any other random stream, refuses bad input, and reaches stage 2."""
import numpy as np
import pytest
import torch

from lsdm_fast import LSDM, MatchingConfig
from lsdm_fast.config import PSEUDO_LABEL_AUTO
from lsdm_fast.pseudo_labels import pseudo_label
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
    """None (the default) is PSEUDO_LABEL_AUTO with class labels and off with float conditions; 0 is off; a
    confidence given with float conditions is refused before any training."""
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
    ds, s = digits
    for bad in (-0.1, 1.01, float("nan")):
        with pytest.raises(ValueError, match="matching.pseudo_label must be None \\(auto\\), 0 \\(off\\) or a"):
            fit(digits, 0, pseudo_label=bad)
    x = np.random.default_rng(0).random((len(s.paired), 3)).astype(np.float32)
    floats = LSDM(tiny_config()).fit(x, ds.images[s.paired], ds.images[s.unpaired], progress=False)
    assert "pseudo_pairs" not in floats.history  # auto: off for float conditions
    with pytest.raises(ValueError, match="needs integer class labels as paired_x, got float conditions"):
        LSDM(tiny_config(pseudo_label=0.9)).fit(x, ds.images[s.paired], ds.images[s.unpaired], progress=False)
