"""Failure handling: NaN/Inf stops the run with a clear message and keeps the last good
checkpoint; out of memory names the batch size and a smaller one; bad input is rejected before
training starts."""
import os

import numpy as np
import pytest
import torch

import lsdm_fast.ops as ops
from lsdm_fast import LSDM
from lsdm_fast.checkpoint import CHECKPOINT_FILE, read_checkpoint
from lsdm_fast.cli import main
from lsdm_fast.data import load_digits_dataset
from lsdm_fast.stages import TrainingError
from test_models_api import tiny_config


NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="these are valid where CUDA is available")


@pytest.fixture(scope="module")
def pairs():
    ds = load_digits_dataset("train")
    return ds.labels[:60], ds.images[:60]


def small_config(**kw):
    cfg = tiny_config(**kw)
    cfg.autoencoder.steps, cfg.matching.steps = 12, 10
    cfg.autoencoder.checkpoint_every, cfg.matching.checkpoint_every = 5, 2
    return cfg


def nan_after(n_calls, monkeypatch, op="critic_gradient_penalty"):
    real, calls = getattr(ops, op), [0]

    def patched(*a, **kw):
        calls[0] += 1
        out = real(*a, **kw)
        if calls[0] > n_calls:
            if op == "critic_gradient_penalty":
                out.loss = torch.tensor(float("nan"))
            else:
                out = (torch.tensor(float("inf")), out[1])
        return out

    monkeypatch.setattr(ops, op, patched)


def test_nan_in_stage2_stops_and_keeps_the_last_good_checkpoint(pairs, tmp_path, monkeypatch):
    d = str(tmp_path / "ck")
    nan_after(5 * 5 + 2, monkeypatch)  # 5 critic steps per generator step: NaN in generator step 5, critic step 2
    with pytest.raises(TrainingError) as exc:
        LSDM(small_config()).fit(*pairs, num_classes=10, progress=False, checkpoint_dir=d)
    msg = str(exc.value)
    assert "stage 2 (joint matching) diverged at generator step 5, critic step 2: the critic loss is nan" in msg
    assert "the last good checkpoint (stage 2, step 4) is kept in" in msg and "lower learning rate" in msg
    blob = read_checkpoint(os.path.join(d, CHECKPOINT_FILE))
    assert (blob["stage"], blob["step"]) == (2, 4)
    for mod in blob["models"].values():
        assert all(torch.isfinite(v).all() for v in mod.values())
    monkeypatch.undo()  # the kept checkpoint is usable: resuming from it finishes the run
    m = LSDM(small_config()).fit(*pairs, num_classes=10, progress=False, checkpoint_dir=d, resume=True)
    assert m.history["resumed_from"] == {"stage": 2, "step": 4} and np.isfinite(m.history["critic_loss"]).all()


def test_inf_generator_score_is_caught(pairs, monkeypatch):
    nan_after(3, monkeypatch, op="critic_score_grad")
    with pytest.raises(TrainingError, match="generator step 3: the critic score of the generated latents is inf.*"
                                            "no checkpoint is kept"):
        LSDM(small_config()).fit(*pairs, num_classes=10, progress=False)


def test_huge_learning_rate_in_stage1_stops_with_a_clear_message(pairs, tmp_path):
    cfg = small_config()
    cfg.autoencoder.lr, cfg.autoencoder.loss = 1e30, "mse"
    with pytest.raises(TrainingError, match=r"stage 1 \(autoencoder\) diverged at step \d+: the (loss|gradient norm) "
                                            r"is (nan|inf).*lower learning rate \(autoencoder lr is 1e\+30\)"):
        LSDM(cfg).fit(*pairs, num_classes=10, progress=False, checkpoint_dir=str(tmp_path / "ck"))
    assert not os.path.exists(tmp_path / "ck" / CHECKPOINT_FILE)  # never checkpointed a bad state


def test_cli_reports_divergence_in_one_line(tmp_path, monkeypatch, capsys):
    nan_after(0, monkeypatch)
    rc = main(["train", "--data", "digits", "--n-per-class", "2", "--m-unpaired", "10", "--latent-dim", "2",
               "--ae-steps", "3", "--steps", "2", "--batch-size", "8", "--out", str(tmp_path / "o"), "--quiet",
               "--checkpoint-every", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "diverged at generator step 0, critic step 0: the critic loss is nan" in err
    assert "the last good checkpoint (the start of stage 2)" in err


def oom(*a, **kw):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


def test_out_of_memory_names_the_batch_and_a_smaller_one(pairs, monkeypatch):
    monkeypatch.setattr(ops, "critic_gradient_penalty", oom)
    with pytest.raises(TrainingError, match=r"stage 2 \(joint matching\): out of memory at step 0 on a batch of 32; "
                                            r"try a smaller batch, e.g. --batch-size 16 "
                                            r"\(MatchingConfig.batch_size=16\)"):
        LSDM(small_config()).fit(*pairs, num_classes=10, progress=False)
    monkeypatch.undo()

    def bce_oom(*a, **kw):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 1 bytes. Error code 12 (out of memory)")

    monkeypatch.setattr(torch.nn.functional, "binary_cross_entropy", bce_oom)
    with pytest.raises(TrainingError, match=r"stage 1 \(autoencoder\): out of memory at step 0 on a batch of 64; "
                                            r"try a smaller batch, e.g. --batch-size 32"):
        LSDM(small_config()).fit(*pairs, num_classes=10, progress=False)


def test_other_runtime_errors_are_not_reported_as_out_of_memory(pairs, monkeypatch):
    def boom(*a, **kw):
        raise RuntimeError("something else")

    monkeypatch.setattr(ops, "critic_gradient_penalty", boom)
    with pytest.raises(RuntimeError, match="^something else$"):
        LSDM(small_config()).fit(*pairs, num_classes=10, progress=False)


@pytest.mark.parametrize("argv, message", [
    (["--precision", "fp8"], "invalid choice: 'fp8'"),
    (["--checkpoint-every", "-3"], "must be >= 0"),
    (["--n-per-class", "500"], "n_per_class=500 but some classes have fewer examples"),
    (["--n-pairs", "99999"], "n_pairs=99999 is larger than the"),
    pytest.param(["--backend", "cuda"], "matching.backend='cuda': backend 'cuda'", marks=NO_GPU),
    pytest.param(["--device", "cuda:0"], "CUDA is not available", marks=NO_GPU),
])
def test_bad_train_arguments_rejected_before_training(argv, message, tmp_path, capsys, monkeypatch):
    def no_training(*a, **kw):
        raise AssertionError("training started")

    monkeypatch.setattr("lsdm_fast.stages.train_autoencoder", no_training)
    base = ["train", "--data", "digits", "--out", str(tmp_path / "o"), "--quiet"]
    try:
        rc = main(base + argv)
    except SystemExit as exc:
        rc = exc.code
    assert rc == 2
    assert message in capsys.readouterr().err


def test_existing_checkpoint_is_not_overwritten_by_a_new_run(tmp_path, capsys):
    ck = tmp_path / "o" / "checkpoint"
    ck.mkdir(parents=True)
    (ck / CHECKPOINT_FILE).write_bytes(b"precious")
    assert main(["train", "--data", "digits", "--out", str(tmp_path / "o"), "--checkpoint-every", "5"]) == 2
    assert "already holds a checkpoint; continue it with `lsdm train --resume" in capsys.readouterr().err
    assert (ck / CHECKPOINT_FILE).read_bytes() == b"precious"


def test_batch_not_divisible_by_world_size_is_rejected():
    from lsdm_fast import distributed as D

    D.check_batch(32, "x")  # one process: anything goes
    with pytest.raises(ValueError, match="must be divisible by the number of processes"):
        orig = D.rank_world
        D.rank_world = lambda: (0, 3)
        try:
            D.check_batch(32, "matching batch_size")
        finally:
            D.rank_world = orig
