"""Fuzz (hypothesis): malformed IDX files, random or damaged .npz/.npy files, random image folders
and random command lines get a clear error (DataError naming the file for data), never a traceback
from deep inside. Few examples each, so the whole file stays well under a minute.

Deterministic in CI (tests/conftest.py: derandomized, no example database). The long mode,
    LSDM_FUZZ_EXAMPLES=2000 python -m pytest tests/test_fuzz.py
draws that many fresh random examples per test; a failure it finds becomes a fixed regression test here."""
import gzip
import io
import json
import os
import string
import struct
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from PIL import Image

from conftest import FUZZ_EXAMPLES
from lsdm_fast.data import (ARRAY_NAMES, CLASS_SINGLE, CLASS_SPLIT, PAIRS_SINGLE, PAIRS_SPLIT, UNPAIRED, DataError,
                            check_dataset, load_dataset, load_mnist, read_idx)

def examples(n: int) -> int:
    """n examples in CI; LSDM_FUZZ_EXAMPLES in the long mode."""
    return FUZZ_EXAMPLES or n


FUZZ = settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


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
    return kind, data, good


def assert_clear(exc: BaseException, path: str):
    assert isinstance(exc, DataError), f"{type(exc).__name__}: {exc}"
    assert path in str(exc) and len(str(exc)) > len(path) + 10


# found by the long mode: a flipped bit the inflater never reads (the padding after the last deflate block)
HARMLESS_FLIP = ("gzip_corrupt", b"\x1f\x8b\x08\x00\xa3\xa5\x0fk\x02\xffc`\xe0`b``\x00a\x06@}\xfd4<\x0c\x00\x00\x00",
                 valid_idx(np.ones((2, 0)), 0x08))


@FUZZ
@given(case=malformed_idx())
@example(case=HARMLESS_FLIP)
def test_read_idx_never_fails_deep_inside(case):
    kind, data, good = case
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
            # damaged gzip data reads only if the damage is in bits the inflater ignores: the same bytes come out
            harmless = kind == "gzip_corrupt" and gzip.decompress(data) == good
            assert kind in ("valid", "dims", "magic", "truncated", "random", "gzip_cut") or harmless


def test_read_idx_folder_and_missing_file(tmp_path):
    with pytest.raises(DataError, match="is a folder"):
        read_idx(str(tmp_path))
    with pytest.raises(DataError, match="file not found"):
        read_idx(str(tmp_path / "nope"))


@FUZZ
@given(which=st.sampled_from(["images", "labels"]), case=malformed_idx(), gz=st.booleans())
def test_load_mnist_with_one_malformed_file(which, case, gz):
    _, data, _ = case
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


# ------------------------------------------------------------------------------ the other loaders

LOADER_FUZZ = settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                                 HealthCheck.too_slow])
LAYOUTS = {"class-split": CLASS_SPLIT, "class-single": CLASS_SINGLE, "pairs-split": PAIRS_SPLIT + (UNPAIRED,),
           "pairs-single": PAIRS_SINGLE + (UNPAIRED,)}
DTYPES = ["uint8", "uint16", "int16", "int64", "float16", "float32", "float64", "bool", "complex64", "<U1"]
VALID_TOP = {"uint8": 255, "uint16": 65535, "int16": 255, "int64": 255, "bool": 1}


@st.composite
def image_array(draw, n, shape):
    """Images of `shape`: mostly valid for their dtype, sometimes out of range, NaN or of a bad dtype."""
    valid = draw(st.integers(0, 9)) > 0
    dtype = draw(st.sampled_from(["uint8", "float32", "float64", "uint16", "bool"] if valid else DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if valid:
        return (rng.random((n, *shape)) * VALID_TOP.get(dtype, 1)).round(0 if dtype in VALID_TOP else 6).astype(dtype)
    arr = rng.random((n, *shape)) * draw(st.sampled_from([1, 255, 256, 65536, 2])) - draw(st.sampled_from([0, 1]))
    if draw(st.booleans()) and arr.size:
        arr.flat[draw(st.integers(0, arr.size - 1))] = draw(st.sampled_from([np.nan, np.inf, 0.5]))
    with np.errstate(invalid="ignore", over="ignore"):
        return arr.astype(dtype) if dtype != "<U1" else arr.astype(str).astype("<U1")


@st.composite
def array_set(draw):
    """Arrays for .npz/.npy files: a layout filled with mostly valid arrays, sometimes a broken one,
    a wrong count, a wrong shape or a wrong name."""
    layout = draw(st.sampled_from(sorted(LAYOUTS)))
    n = draw(st.sampled_from([10, 12, 10, 7, 3, 0]))
    high = draw(st.sampled_from([(4, 4), (8, 8), (3, 4, 4), (1, 8, 8), (4, 4), (8, 8), (4, 4, 3), (0, 4), (4,)]))
    factor = draw(st.sampled_from([1, 2, 4, 3]))
    low = (*high[:-2], max(high[-2] // factor, 1), max(high[-1] // factor, 1)) if len(high) >= 2 else high
    k = draw(st.integers(1, 4))
    arrays = {}
    for name in LAYOUTS[layout]:
        if name == UNPAIRED and draw(st.booleans()):
            continue
        count = n + (1 if draw(st.integers(0, 9)) == 0 else 0)
        if name.startswith(("y_", "labels")):
            labs = np.arange(count) % k - (1 if draw(st.integers(0, 9)) == 0 else 0)
            arrays[name] = labs.astype(draw(st.sampled_from(["int64", "uint8", "int8", "int64", "float64"])))
        else:
            arrays[name] = draw(image_array(count, low if name.startswith("low") else high))
    if draw(st.integers(0, 5)) == 0:  # an extra or replaced array, perhaps of an unknown name
        arrays[draw(st.sampled_from(list(ARRAY_NAMES) + ["junk"]))] = draw(image_array(n, high))
    return arrays


def corrupt(draw, raw: bytes) -> bytes:
    how = draw(st.sampled_from(["none"] * 6 + ["truncate", "flip", "garbage"]))
    if how == "truncate" and raw:
        return raw[: draw(st.integers(0, len(raw) - 1))]
    if how == "flip" and raw:
        b = bytearray(raw)
        i = draw(st.integers(0, len(b) - 1))
        b[i] ^= draw(st.integers(1, 255))
        return bytes(b)
    if how == "garbage":
        return draw(st.binary(max_size=200))
    return raw


def assert_loads_or_names(source: str, root: str, seed: int):
    for split in ("train", "test"):
        try:
            ds = load_dataset(source, split, seed=seed, rescale=seed % 2 == 1)
        except Exception as exc:  # noqa: BLE001 - the point: which exception, with which message
            assert isinstance(exc, DataError), f"{type(exc).__name__}: {exc}"
            assert root in str(exc), str(exc)
        else:
            check_dataset(ds)
            json.dumps(ds.provenance)
            assert ds.describe()


@LOADER_FUZZ
@given(arrays=array_set(), compressed=st.booleans(), seed=st.integers(0, 3), data=st.data())
def test_random_npz_loads_or_names_the_file(arrays, compressed, seed, data):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "data.npz")
        (np.savez_compressed if compressed else np.savez)(path, **arrays)
        with open(path, "rb") as fh:
            raw = fh.read()
        with open(path, "wb") as fh:
            fh.write(corrupt(data.draw, raw))
        assert_loads_or_names(path, path, seed)


@LOADER_FUZZ
@given(arrays=array_set(), seed=st.integers(0, 3), data=st.data())
def test_random_npy_folder_loads_or_names_the_file(arrays, seed, data):
    with tempfile.TemporaryDirectory() as d:
        for name, arr in arrays.items():
            p = os.path.join(d, name + ".npy")
            np.save(p, arr)
            with open(p, "rb") as fh:
                raw = fh.read()
            with open(p, "wb") as fh:
                fh.write(corrupt(data.draw, raw))
        assert_loads_or_names(d, d, seed)


def test_flipped_npy_header_length_is_a_data_error(tmp_path):
    """The case that failed a fresh-clone CI run: a flipped bit in the header length makes numpy's header parser
    raise tokenize.TokenError (not ValueError); it must be a DataError naming the file, like every damaged file."""
    good = tmp_path / "good"
    good.mkdir()
    np.save(good / "images.npy", np.zeros((10, 4, 4), np.uint8))
    np.save(good / "labels.npy", np.arange(10) % 2)
    raw = bytearray((good / "images.npy").read_bytes())
    raw[8] ^= 64  # header length 118 -> 54: the parser reads a cut dictionary
    (good / "images.npy").write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"images.npy: not a readable .npy array \(TokenError: "):
        load_dataset(str(good))


def test_damaged_npz_members_are_data_errors(tmp_path):
    """Damage inside an .npz (a member's compressed bytes, its local header) is a DataError naming the file."""
    path = tmp_path / "d.npz"
    np.savez_compressed(path, images=np.arange(640, dtype=np.uint8).reshape(10, 8, 8), labels=np.arange(10) % 2)
    raw = path.read_bytes()
    for i in range(30, len(raw) - 30, 7):  # every 7th byte of the members and the directory, one at a time
        b = bytearray(raw)
        b[i] ^= 0xFF
        path.write_bytes(bytes(b))
        try:
            load_dataset(str(path))
        except DataError as exc:
            assert str(path) in str(exc)


IMAGE_KINDS = ["L", "RGB", "RGBA", "I;16", "P", "1", "LA", "F", "garbage", "cut", "text"]


def image_bytes(draw, kind: str, size: tuple[int, int]) -> tuple[str, bytes]:
    """(file name suffix, content): a small image of `kind` (a mode) and `size`, or something that is not one."""
    if kind == "garbage":
        return ".png", draw(st.binary(max_size=100))
    if kind == "text":
        return ".txt", b"notes"
    rng = np.random.default_rng(draw(st.integers(0, 99)))
    if kind == "I;16":
        im = Image.fromarray(rng.integers(0, 65536, (size[1], size[0]), dtype=np.uint16))
    elif kind == "F":
        im = Image.fromarray(rng.random((size[1], size[0])).astype(np.float32), mode="F")
    else:
        im = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        im = im.convert("L" if kind == "cut" else kind)
    formats = {"F": [".tif"], "L": [".png", ".bmp", ".gif", ".jpg"], "RGB": [".png", ".bmp", ".jpg"],
               "P": [".png", ".gif"]}
    ext = draw(st.sampled_from(formats.get(kind, [".png"])))
    buf = io.BytesIO()
    im.save(buf, format={".png": "PNG", ".bmp": "BMP", ".gif": "GIF", ".jpg": "JPEG", ".tif": "TIFF"}[ext])
    raw = buf.getvalue()
    return ext, raw[: len(raw) // 2] if kind == "cut" else raw


@LOADER_FUZZ
@given(split_layout=st.booleans(), seed=st.integers(0, 3), data=st.data())
def test_random_image_folders_load_or_name_the_file(split_layout, seed, data):
    """Folders of one mode and size mostly, with an odd file now and then: another mode or size,
    a damaged or non-image file, an empty class, an image outside the classes."""
    base = data.draw(st.sampled_from(["L", "RGB", "P", "I;16"]))
    size = data.draw(st.sampled_from([(4, 4), (3, 5)]))
    with tempfile.TemporaryDirectory() as d:
        root = os.path.join(d, "images")
        os.makedirs(root)
        for part in ["train", "test"] if split_layout else [""]:
            for c in range(data.draw(st.integers(1, 3))):
                folder = os.path.join(root, part, f"class{c}")
                os.makedirs(folder)
                for i in range(data.draw(st.sampled_from([5, 6, 5, 6, 2, 0]))):
                    odd = data.draw(st.integers(0, 14)) == 0
                    kind = data.draw(st.sampled_from(IMAGE_KINDS)) if odd else base
                    ext, raw = image_bytes(data.draw, kind, (4, 5) if odd and kind == base else size)
                    with open(os.path.join(folder, f"{i}{ext}"), "wb") as fh:
                        fh.write(raw)
        if data.draw(st.integers(0, 9)) == 0:
            ext, raw = image_bytes(data.draw, base, size)
            with open(os.path.join(root, "stray" + ext), "wb") as fh:
                fh.write(raw)
        assert_loads_or_names(root, root, seed)
