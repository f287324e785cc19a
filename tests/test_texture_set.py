"""scripts/make_texture_set.py: same arguments, byte-identical files; the files load as MNIST IDX."""
import importlib.util
import os

import numpy as np
import pytest

from lsdm_fast.data import load_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tex():
    spec = importlib.util.spec_from_file_location("make_texture_set", os.path.join(ROOT, "scripts", "make_texture_set.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _bytes(folder):
    return {f: open(os.path.join(folder, f), "rb").read() for f in sorted(os.listdir(folder))}


def test_deterministic_and_loadable(tex, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert tex.main(["--out", str(a), "--n-train", "40", "--n-test", "20", "--seed", "3"]) == 0
    assert tex.main(["--out", str(b), "--n-train", "40", "--n-test", "20", "--seed", "3"]) == 0
    assert _bytes(a) == _bytes(b) and len(_bytes(a)) == 5
    assert "with seed 3" in (a / "SOURCE.md").read_text()
    train = load_dataset(str(a), "train")  # format detected from the file names, as `lsdm train --data` does
    test = load_dataset(str(a), "test")
    assert train.provenance["format"] == "mnist-idx"
    assert train.images.shape == (40, 28, 28) and test.images.shape == (20, 28, 28)
    assert train.images.dtype == np.float32 and 0 <= train.images.min() and train.images.max() <= 1
    assert np.bincount(train.labels).tolist() == [4] * 10 and np.bincount(test.labels).tolist() == [2] * 10
    assert len({im.tobytes() for im in train.images}) == 40  # no repeated image
    assert train.images.std() > 0.1  # objects on a background, not blank


def test_seed_and_split_change_images(tex):
    x0, y0 = tex.make_split("train", 20, seed=0)
    x1, _ = tex.make_split("train", 20, seed=1)
    xt, _ = tex.make_split("test", 20, seed=0)
    assert not np.array_equal(x0, x1) and not np.array_equal(x0, xt)
    # each class's images are drawn from their own stream: a bigger set starts with the same images per class
    xb, yb = tex.make_split("train", 40, seed=0)
    for c in range(10):
        assert {im.tobytes() for im in x0[y0 == c]} <= {im.tobytes() for im in xb[yb == c]}


def test_refuses_to_overwrite(tex, tmp_path, capsys):
    out = str(tmp_path / "t")
    assert tex.main(["--out", out, "--n-train", "10", "--n-test", "10"]) == 0
    before = _bytes(out)
    assert tex.main(["--out", out, "--n-train", "20", "--n-test", "10"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert _bytes(out) == before
    assert tex.main(["--out", out, "--n-train", "20", "--n-test", "10", "--overwrite"]) == 0
    assert len(load_dataset(out, "train")) == 20


def test_patch_set_deterministic_with_checked_sources(tmp_path, monkeypatch):
    """scripts/make_patch_set.py on 10 stand-in source images (the real ones are scikit-image's): same
    output twice, loadable IDX, a changed source file refused by its SHA-256."""
    import hashlib

    from PIL import Image

    spec = importlib.util.spec_from_file_location("make_patch_set", os.path.join(ROOT, "scripts", "make_patch_set.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    src = tmp_path / "src"
    src.mkdir()
    g = np.random.default_rng(0)
    sources = []
    for c in range(10):
        name = f"img{c}.png"
        Image.fromarray(g.integers(0, 256, size=(90, 160), dtype=np.uint8)).save(src / name)
        sources.append((name, hashlib.sha256((src / name).read_bytes()).hexdigest()))
    monkeypatch.setattr(mod, "SOURCES", tuple(sources))
    args = ["--images", str(src), "--n-train", "30", "--n-test", "20", "--seed", "1"]
    assert mod.main(args + ["--out", str(tmp_path / "a")]) == 0
    assert mod.main(args + ["--out", str(tmp_path / "b")]) == 0
    assert _bytes(tmp_path / "a") == _bytes(tmp_path / "b")
    train = load_dataset(str(tmp_path / "a"), "train")
    assert train.images.shape == (30, 28, 28) and np.bincount(train.labels).tolist() == [3] * 10
    Image.fromarray(np.zeros((90, 160), np.uint8)).save(src / "img3.png")
    assert mod.main(args + ["--out", str(tmp_path / "c")]) == 2
    assert not (tmp_path / "c").exists()
