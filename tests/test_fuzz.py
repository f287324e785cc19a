"""Fuzz (hypothesis): malformed IDX files and random command lines get a clear error, never a
traceback from deep inside. Few examples each, so the whole file stays well under 30 s."""
import gzip
import os
import string
import struct
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lsdm_fast.data import DataError, load_mnist, read_idx

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def valid_idx(arr, code=0x08):
    dt = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    head = struct.pack(">BBBB", 0, 0, code, arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return head + np.asarray(arr).astype(dt).tobytes()


@st.composite
def malformed_idx(draw):
    """Bytes that are an IDX file, a damaged one, or not one at all (raw or gzip)."""
    kind = draw(st.sampled_from(["random", "truncated", "magic", "dims", "extra", "gzip_garbage", "gzip_cut",
                                 "gzip_corrupt", "valid"]))
    shape = draw(st.lists(st.integers(0, 4), min_size=1, max_size=3))
    code = draw(st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E]))
    good = valid_idx(np.ones(shape), code)
    if kind == "random":
        data = draw(st.binary(max_size=64))
    elif kind == "truncated":
        data = good[: draw(st.integers(0, max(len(good) - 1, 0)))]
    elif kind == "magic":
        data = draw(st.binary(min_size=4, max_size=4)) + good[4:]
    elif kind == "dims":
        n = len(shape)
        dims = draw(st.lists(st.integers(0, 2**32 - 1), min_size=n, max_size=n))
        data = good[:4] + b"".join(struct.pack(">I", d) for d in dims) + good[4 + 4 * n:]
    elif kind == "extra":
        data = good + draw(st.binary(min_size=1, max_size=8))
    elif kind == "gzip_garbage":
        data = b"\x1f\x8b" + draw(st.binary(max_size=64))
    elif kind == "gzip_cut":
        z = gzip.compress(good)
        data = z[: draw(st.integers(2, len(z) - 1))]
    elif kind == "gzip_corrupt":  # a valid gzip header, then damaged deflate data or CRC
        z = bytearray(gzip.compress(good))
        i = draw(st.integers(10, len(z) - 1))
        z[i] ^= draw(st.integers(1, 255))
        data = bytes(z)
    else:
        data = good
    return kind, data


def assert_clear(exc: BaseException, path: str):
    assert isinstance(exc, DataError), f"{type(exc).__name__}: {exc}"
    assert path in str(exc) and len(str(exc)) > len(path) + 10


@FUZZ
@given(case=malformed_idx())
def test_read_idx_never_fails_deep_inside(case):
    kind, data = case
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "f.idx")
        with open(path, "wb") as fh:
            fh.write(data)
        try:
            arr = read_idx(path)
        except Exception as exc:  # noqa: BLE001 - the point: which exception, with which message
            assert_clear(exc, path)
        else:
            assert isinstance(arr, np.ndarray)
            assert kind in ("valid", "dims", "magic", "truncated", "random", "gzip_cut")


def test_read_idx_folder_and_missing_file(tmp_path):
    with pytest.raises(DataError, match="is a folder"):
        read_idx(str(tmp_path))
    with pytest.raises(DataError, match="file not found"):
        read_idx(str(tmp_path / "nope"))


@FUZZ
@given(which=st.sampled_from(["images", "labels"]), case=malformed_idx(), gz=st.booleans())
def test_load_mnist_with_one_malformed_file(which, case, gz):
    _, data = case
    with tempfile.TemporaryDirectory() as d:
        n = 3
        imgs, labs = valid_idx(np.zeros((n, 4, 4))), valid_idx(np.arange(n))
        files = {"train-images-idx3-ubyte": imgs, "train-labels-idx1-ubyte": labs}
        files["train-" + ("images-idx3-ubyte" if which == "images" else "labels-idx1-ubyte")] = data
        for name, raw in files.items():
            with open(os.path.join(d, name + (".gz" if gz and name.startswith("train-" + which) else "")), "wb") as fh:
                fh.write(raw)
        try:
            ds = load_mnist(d, "train")
        except Exception as exc:  # noqa: BLE001
            assert isinstance(exc, DataError), f"{type(exc).__name__}: {exc}"
            assert d in str(exc)
        else:
            assert ds.images.ndim == 3 and len(ds.images) == len(ds.labels)
            assert ds.images.dtype == np.float32 and 0 <= ds.images.min() and ds.images.max() <= 1


OPTIONS = ["--data", "--task", "--factor", "--n-per-class", "--n-pairs", "--m-unpaired", "--ae-kind",
           "--classifier-steps", "--eval-per-class", "--out", "--seed", "--device", "--latent-dim", "--ae-steps",
           "--steps", "--batch-size", "--backend", "--quiet", "--precision", "--checkpoint-every",
           "--checkpoint-dir", "--resume", "--model", "--labels", "--bogus", "-x"]
VALUES = st.one_of(st.sampled_from(["digits", "0", "-1", "3", "1e9", "nan", "", "class", "superres", "cpu",
                                    "cuda:7", "torch", "bf16", "1,2", "a,b", "..", "/nonexistent"]),
                   st.integers(-5, 99).map(str),
                   st.text(alphabet=string.ascii_letters + string.digits + "-_.,:", max_size=6))


class WouldTrain(Exception):
    pass


@FUZZ
@given(command=st.sampled_from(["train", "demo", "sample", "info", "nope", "--help-me"]),
       rest=st.lists(st.one_of(st.sampled_from(OPTIONS), VALUES), max_size=8))
def test_random_command_lines_get_a_clear_error(command, rest, tmp_path, monkeypatch, capsys):
    from lsdm_fast import LSDM
    from lsdm_fast.cli import main

    def would_train(*a, **kw):
        raise WouldTrain  # the arguments passed every check: fine, but do not actually train

    monkeypatch.setattr(LSDM, "fit", would_train)
    monkeypatch.chdir(tmp_path)
    argv = [command, *rest]
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    except WouldTrain:
        return
    err = capsys.readouterr().err
    if rc == 0:
        assert command == "info" or "--help" in argv or "-h" in argv
        return
    assert rc == 2, (argv, rc, err)
    assert "error:" in err and "Traceback" not in err, (argv, err)
