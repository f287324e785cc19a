"""Nothing a user made is lost, and every mistake gets one clear message: finished runs are not
overwritten, unwritable outputs fail before training, damaged model folders and configs of the wrong
type name the file and field, and the README's Python snippet runs as written."""
import json
import os
import re
import shutil

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lsdm_fast import LSDM, LSDMConfig
from lsdm_fast.api import ModelFolderError
from lsdm_fast.checkpoint import CHECKPOINT_FILE, CheckpointError, read_checkpoint
from lsdm_fast.cli import build_parser, main
from test_models_api import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--latent-dim", "3", "--ae-steps", "10", "--steps", "2", "--batch-size", "16", "--classifier-steps", "5",
        "--eval-per-class", "2", "--n-per-class", "3", "--quiet"]


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    torch.set_num_threads(1)
    from lsdm_fast.data import load_digits_dataset
    ds = load_digits_dataset("train")
    folder = str(tmp_path_factory.mktemp("m") / "model")
    LSDM(tiny_config()).fit(ds.labels[:40], ds.images[:40], num_classes=10, progress=False).save(folder)
    return folder


def test_train_refuses_a_finished_run_unless_told(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", "--data", "digits", "--out", out, *TINY]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {os.path.join(out, 'model')}" in printed and "metrics.json" in printed  # says what it wrote
    before = open(os.path.join(out, "metrics.json")).read()
    assert main(["train", "--data", "digits", "--out", out, *TINY, "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "holds a finished run" in err and "--overwrite" in err
    assert open(os.path.join(out, "metrics.json")).read() == before  # nothing lost
    assert main(["train", "--data", "digits", "--out", out, *TINY, "--seed", "1", "--overwrite"]) == 0
    assert json.load(open(os.path.join(out, "metrics.json")))["seed"] == 1


def test_unwritable_out_fails_before_training(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")

    def no_training(*a, **kw):
        raise AssertionError("training started")

    monkeypatch.setattr(LSDM, "fit", no_training)
    assert main(["train", "--data", "digits", "--out", str(blocker / "run"), *TINY]) == 2
    err = capsys.readouterr().err
    assert "cannot write the run's output there" in err and "Traceback" not in err


def test_no_eval_trains_and_saves_only(tmp_path):
    out = str(tmp_path / "run")
    assert main(["train", "--data", "digits", "--out", out, *TINY, "--no-eval"]) == 0
    m = json.load(open(os.path.join(out, "metrics.json")))
    assert "conditional_accuracy" not in m and os.path.exists(os.path.join(out, "model", "model.safetensors"))
    assert not os.path.exists(os.path.join(out, "samples.png"))


def test_sample_serves_super_resolution_models(tmp_path, capsys):
    out = str(tmp_path / "sr")
    assert main(["train", "--data", "digits", "--task", "superres", "--factor", "2", "--out", out, *TINY]) == 0
    model = os.path.join(out, "model")
    assert main(["sample", "--model", model, "--data", "digits", "--n-inputs", "3", "--n-per-class", "2",
                 "--out", str(tmp_path / "g.png")]) == 0
    assert os.path.getsize(tmp_path / "g.png") > 0
    low = np.random.default_rng(0).random((4, 4, 4)).astype(np.float32)
    np.save(tmp_path / "low.npy", low)
    assert main(["sample", "--model", model, "--input", str(tmp_path / "low.npy"), "--n-per-class", "3",
                 "--out", str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (12, 64)
    capsys.readouterr()
    assert main(["sample", "--model", model, "--out", str(tmp_path / "x.png")]) == 2
    assert "needs its low-resolution inputs" in capsys.readouterr().err
    np.save(tmp_path / "bad.npy", np.zeros((2, 5, 5), np.float32))
    assert main(["sample", "--model", model, "--input", str(tmp_path / "bad.npy"), "--out", str(tmp_path / "y.png")]) == 2
    assert "expected (N, h, w) or (N, 16)" in capsys.readouterr().err
    assert main(["sample", "--model", model, "--input", str(tmp_path / "low.npy"), "--out", str(tmp_path / "s.npy")]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err  # an existing sample file is not replaced


def _damage_json(path, edit):
    blob = json.load(open(path))
    edit(blob)
    json.dump(blob, open(path, "w"))


@pytest.mark.parametrize("edit, message", [
    (lambda b: b["meta"].pop("data_dim"), "the field 'meta.data_dim' is missing"),
    (lambda b: b["meta"].update(cond_dim="10"), "'meta.cond_dim' has an invalid value '10'"),
    (lambda b: b.pop("meta"), "the field 'meta' is missing"),
    (lambda b: b["config"]["autoencoder"].update(latent_dim="4"), "autoencoder.latent_dim must be an integer"),
    (lambda b: b["config"].update(bogus=1), r"unknown config keys \['bogus'\]"),
])
def test_damaged_model_folder_names_file_and_field(saved_model, tmp_path, edit, message, capsys):
    folder = str(tmp_path / "m")
    shutil.copytree(saved_model, folder)
    _damage_json(os.path.join(folder, "config.json"), edit)
    with pytest.raises(ModelFolderError, match=message) as err:
        LSDM.load(folder)
    assert "config.json" in str(err.value)
    assert main(["sample", "--model", folder, "--out", str(tmp_path / "s.png")]) == 2
    assert message.replace("\\", "") in capsys.readouterr().err.replace("\\", "")


def test_damaged_weights_and_history(saved_model, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = str(tmp_path / "m")
    shutil.copytree(saved_model, folder)
    with open(os.path.join(folder, "history.json"), "w") as fh:
        fh.write("{not json")
    with pytest.raises(ModelFolderError, match=r"history.json: not valid JSON"):
        LSDM.load(folder)
    shutil.copy(os.path.join(saved_model, "history.json"), os.path.join(folder, "history.json"))
    w = os.path.join(folder, "model.safetensors")
    tensors = load_file(w)
    tensors.pop("latent_std")
    save_file(tensors, w)
    with pytest.raises(ModelFolderError, match=r"model.safetensors: damaged: 'latent_std' is missing"):
        LSDM.load(folder)


def test_save_never_silently_overwrites(saved_model, tmp_path):
    m = LSDM.load(saved_model)
    with pytest.raises(FileExistsError, match="already holds a saved model"):
        m.save(saved_model)
    m.save(saved_model, overwrite=True)


@pytest.mark.parametrize("field, value, message", [
    ("autoencoder.latent_dim", "16", r"autoencoder.latent_dim must be an integer or None, got '16' \(str\)"),
    ("matching.lr", "3e-4", "matching.lr must be a number"),
    ("matching.critic_hidden", (256, "256"), "matching.critic_hidden must be a tuple of integers"),
    ("seed", 1.5, "seed must be an integer"),
    ("autoencoder.steps", True, "autoencoder.steps must be an integer, got True"),
    ("matching.betas", (0.5,), "matching.betas must be a pair of numbers"),
])
def test_config_fields_of_the_wrong_type_are_named(field, value, message):
    cfg = LSDMConfig()
    section, _, name = field.rpartition(".")
    setattr(getattr(cfg, section) if section else cfg, name, value)
    with pytest.raises(ValueError, match=message):
        LSDM(cfg)


def test_every_config_field_has_a_type_check():
    from dataclasses import fields

    from lsdm_fast.config import _TYPE_CHECKS, AutoencoderConfig, MatchingConfig
    for klass in (LSDMConfig, AutoencoderConfig, MatchingConfig):
        for f in fields(klass):
            assert f.type in _TYPE_CHECKS or f.type in ("AutoencoderConfig", "MatchingConfig"), (klass, f.name)


def test_help_shows_defaults():
    text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert "(default: 20000)" in text and "(default: auto)" in text and "(default: None)" not in text
    assert "(default: sized to the latent: 4000 per 64 dimensions, at most 16000" in " ".join(text.split())


def test_threads_default_and_override(monkeypatch, tmp_path):
    from lsdm_fast.cli import _set_threads
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("LSDM_THREADS", raising=False)
        _set_threads(None)
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("LSDM_THREADS", "2")
        _set_threads(None)
        assert torch.get_num_threads() == 2
        _set_threads(3)
        assert torch.get_num_threads() == 3
        monkeypatch.setenv("LSDM_THREADS", "zero")
        with pytest.raises(ValueError, match="LSDM_THREADS must be a positive integer"):
            _set_threads(None)
    finally:
        torch.set_num_threads(before)


def test_readme_python_snippet_runs_as_written(monkeypatch, tmp_path):
    text = open(os.path.join(ROOT, "README.md")).read()
    snippets = re.findall(r"```python\n(.*?)```", text, re.S)
    assert snippets, "README has no Python snippet"
    import lsdm_fast

    real = lsdm_fast.LSDMConfig

    def small(*a, **kw):  # the snippet's config with tiny budgets, so the test stays fast
        cfg = real(*a, **kw)
        cfg.autoencoder.steps, cfg.matching.steps = 20, 3
        return cfg

    monkeypatch.setattr(lsdm_fast, "LSDMConfig", small)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(snippets[0], "README.md", "exec"), namespace)  # noqa: S102 - the README's own code


CKPT_FIELDS = ["format", "stage", "step", "config", "meta", "data", "models", "rng", "history", "latent_mean",
               "latent_std", "optim"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(drop=st.lists(st.sampled_from(CKPT_FIELDS), max_size=3),
       junk=st.dictionaries(st.sampled_from(CKPT_FIELDS), st.one_of(st.none(), st.integers(), st.text(max_size=3),
                                                                   st.lists(st.integers(), max_size=2)), max_size=2),
       cut=st.one_of(st.none(), st.integers(0, 4000)))
def test_fuzzed_checkpoints_are_refused_cleanly(good_checkpoint, tmp_path_factory, drop, junk, cut):
    path, blob = good_checkpoint
    bad = dict(blob)
    for k in drop:
        bad.pop(k, None)
    bad.update(junk)
    d = tmp_path_factory.mktemp("ck")
    p = str(d / CHECKPOINT_FILE)
    torch.save(bad, p)
    if cut is not None:
        data = open(p, "rb").read()
        open(p, "wb").write(data[:cut])
    try:
        read_checkpoint(p)
    except CheckpointError as exc:
        assert p in str(exc)


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    from lsdm_fast.data import load_digits_dataset
    ds = load_digits_dataset("train")
    cfg = tiny_config()
    cfg.autoencoder.steps, cfg.matching.steps = 5, 2
    d = str(tmp_path_factory.mktemp("good"))
    LSDM(cfg).fit(ds.labels[:30], ds.images[:30], num_classes=10, progress=False, checkpoint_dir=d)
    p = os.path.join(d, CHECKPOINT_FILE)
    return p, torch.load(p, weights_only=True)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(max_size=40), st.sampled_from(['{"config": {}, "meta": {}}', '{"config": 1}', "[]",
                                                             '{"config": {"seed": "x"}, "meta": {"format_version": 1}}'])))
def test_fuzzed_model_configs_are_refused_cleanly(saved_model, tmp_path_factory, text):
    folder = str(tmp_path_factory.mktemp("m") / "model")
    shutil.copytree(saved_model, folder)
    with open(os.path.join(folder, "config.json"), "w") as fh:
        fh.write(text)
    with pytest.raises(ModelFolderError, match="config.json"):
        LSDM.load(folder)


def test_train_superres_with_pseudo_conditions(tmp_path):
    """--task superres: every unpaired image gets a predicted low-resolution view (the pooled view is linear in
    the pixels; 160 training pairs for 64 pixels) and stage 2 twice the steps; --pseudo-condition 0 turns it off."""
    i = TINY.index("--n-per-class")
    argv = ["train", "--data", "digits", "--task", "superres", "--factor", "2", "--n-pairs", "200", "--no-eval",
            *TINY[:i], *TINY[i + 2:]]
    assert main([*argv, "--out", str(tmp_path / "on")]) == 0
    history = json.load(open(os.path.join(str(tmp_path / "on"), "model", "history.json")))
    pseudo = history["pseudo_pairs"]
    assert pseudo["regressor"] == "pixels" and pseudo["heldout_r2"] > 0.99
    assert pseudo["fraction"] == 1.0 and pseudo["kept"] == history["counts"]["unpaired"] > 0
    assert main([*argv, "--pseudo-condition", "0", "--out", str(tmp_path / "off")]) == 0
    assert "pseudo_pairs" not in json.load(open(os.path.join(str(tmp_path / "off"), "model", "history.json")))


def test_train_on_colour_images_and_on_superres_pairs(tmp_path, capsys):
    rng = np.random.default_rng(0)
    labels = np.arange(120) % 4
    colour = (rng.random((120, 3, 8, 8)) * 255).astype(np.uint8)
    np.savez(tmp_path / "rgb.npz", images=colour, labels=labels)
    out = str(tmp_path / "rgb")
    assert main(["train", "--data", str(tmp_path / "rgb.npz"), "--out", out, *TINY]) == 0
    m = json.load(open(os.path.join(out, "metrics.json")))
    assert m["provenance"]["train"]["format"] == "npz" and "3x8x8" in m["data"]
    assert os.path.getsize(os.path.join(out, "samples.png")) > 0
    high = rng.random((100, 8, 8)).astype(np.float32)
    low = high.reshape(100, 4, 2, 4, 2).mean((2, 4))
    np.savez(tmp_path / "pairs.npz", low=low, high=high, unpaired_high=rng.random((30, 8, 8)).astype(np.float32))
    out = str(tmp_path / "pairs")
    i = TINY.index("--n-per-class")
    argv = TINY[:i] + TINY[i + 2:]
    assert main(["train", "--data", str(tmp_path / "pairs.npz"), "--task", "superres", "--n-pairs", "20",
                 "--out", out, *argv]) == 0
    m = json.load(open(os.path.join(out, "metrics.json")))
    assert m["paired"] == 20 and m["unpaired"] == 80 - 20 + 30  # 80 training pairs (20 % held out) + 30 unpaired
    assert "psnr_db" in m
    # pseudo-conditions (on by default): 16 training pairs for 64 pixels and the latent's 3 values are too few to
    # predict the 4x4 view to R^2 0.99 held out, so none, and the model's history says so
    pseudo = json.load(open(os.path.join(out, "model", "history.json")))["pseudo_pairs"]
    assert pseudo["kept"] == 0 and pseudo["heldout_r2"] < 0.99 and pseudo["regressor"] in ("pixels", "latent")
    capsys.readouterr()
    assert main(["train", "--data", str(tmp_path / "pairs.npz"), "--out", str(tmp_path / "x"), *TINY]) == 2
    assert "use --task superres" in capsys.readouterr().err


def test_any_critic_depth_trains_and_a_backend_limit_is_said_before_training():
    from lsdm_fast.data import load_digits_dataset
    ds = load_digits_dataset("train")
    cfg = tiny_config()
    cfg.matching.critic_hidden = (16, 16, 16, 16)  # 5 linear layers: more than the Triton kernels take
    cfg.autoencoder.steps, cfg.matching.steps = 5, 2
    m = LSDM(cfg).fit(ds.labels[:30], ds.images[:30], num_classes=10, progress=False)
    assert len(m.critic.mlp.layers) == 5 and m.history["backend"] in ("cpp", "torch")
    cfg.matching.backend = "triton"
    with pytest.raises(ValueError, match="matching.backend='triton': .*handles critics of 2 to 4 linear layers, not 5"):
        LSDM(cfg).fit(ds.labels[:30], ds.images[:30], num_classes=10, progress=False)
