"""IDX reading, the embedded default, the paired/unpaired split, the tasks, and every bad input."""
import gzip
import os
import struct

import numpy as np
import pytest

from lsdm_fast.data import (DataError, average_pool, load_dataset, load_digits_dataset, load_mnist, make_conditions,
                            read_idx, split_paired_unpaired)

# the real files: shared/ beside the clone (CI lays a copy there), or $LSDM_MNIST_DIR
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST = os.environ.get("LSDM_MNIST_DIR") or os.path.join(ROOT, "..", "shared", "data", "mnist")
NO_MNIST = (f"real MNIST absent: no folder {os.path.normpath(MNIST)} (the repository's parent has no "
            "shared/data/mnist, as in a clone without shared/ beside it); set LSDM_MNIST_DIR to a folder of the "
            "four MNIST IDX files to run this test")


def write_idx(path, arr, code=0x08, gz=False, magic=None, extra=b"", cut=0):
    arr = np.asarray(arr)
    head = magic if magic is not None else struct.pack(">BBBB", 0, 0, code, arr.ndim)
    head += b"".join(struct.pack(">I", d) for d in arr.shape)
    dt = {0x08: ">u1", 0x0D: ">f4", 0x0E: ">f8"}[code]
    raw = head + arr.astype(dt).tobytes() + extra
    raw = raw[: len(raw) - cut] if cut else raw
    if gz:
        with gzip.open(path, "wb") as fh:
            fh.write(raw)
    else:
        with open(path, "wb") as fh:
            fh.write(raw)
    return path


def make_mnist_folder(folder, n=20, gz=True, labels=None, images=None, n_labels=None):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    imgs = images if images is not None else rng.integers(0, 256, (n, 28, 28))
    n = len(imgs)
    labs = labels if labels is not None else np.arange(n_labels or n) % 10
    for split, (ni, nl) in {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                            "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}.items():
        sfx = ".gz" if gz else ""
        write_idx(os.path.join(folder, ni + sfx), imgs, gz=gz)
        write_idx(os.path.join(folder, nl + sfx), labs, gz=gz)
    return folder


# ----------------------------------------------------------------------------- good input

@pytest.mark.skipif(not os.path.isdir(MNIST), reason=NO_MNIST)
def test_real_mnist_matches_its_source_notes():
    train, test = load_dataset(MNIST, "train"), load_dataset(MNIST, "test")  # format detected: mnist-idx
    assert train.images.shape == (60000, 28, 28) and test.images.shape == (10000, 28, 28)
    assert train.image_shape == (28, 28) and train.num_classes == test.num_classes == 10
    for ds in (train, test):
        assert ds.images.dtype == np.float32 and ds.labels.dtype == np.int64
        assert ds.images.min() == 0.0 and ds.images.max() == 1.0
        assert ds.provenance["format"] == "mnist-idx" and ds.provenance["original_dtype"] == "uint8"
        assert ds.provenance["original_range"] == [0, 255] and ds.provenance["scaling"] == "divided by 255"
    np.testing.assert_array_equal(load_mnist(MNIST, "test").images, test.images)
    # class counts and mean pixel value from shared/data/mnist/SOURCE.md
    assert np.bincount(train.labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert abs(train.images.mean() * 255 - 33.32) < 0.01


@pytest.mark.parametrize("gz", [True, False])
def test_raw_and_gzip_idx_read_the_same(tmp_path, gz):
    arr = np.random.default_rng(1).integers(0, 256, (5, 3, 4))
    p = write_idx(str(tmp_path / ("a.gz" if gz else "a")), arr, gz=gz)
    np.testing.assert_array_equal(read_idx(p), arr)


def test_float_idx_and_folder_loading(tmp_path):
    make_mnist_folder(str(tmp_path), n=30, gz=False)
    ds = load_mnist(str(tmp_path), "train")
    assert ds.images.shape == (30, 28, 28) and ds.labels.tolist() == (np.arange(30) % 10).tolist()
    arr = np.random.default_rng(2).random((4, 2, 2))
    np.testing.assert_allclose(read_idx(write_idx(str(tmp_path / "f"), arr, code=0x0E)), arr)


def test_embedded_digits_default():
    tr, te = load_digits_dataset("train"), load_digits_dataset("test")
    assert tr.images.shape[1:] == (8, 8) and len(tr) + len(te) == 1797
    assert 0 <= tr.images.min() and tr.images.max() <= 1
    assert set(np.unique(tr.labels)) == set(range(10))


def test_split_is_stratified_seeded_and_disjoint():
    labels = np.repeat(np.arange(10), 50)
    s = split_paired_unpaired(labels, n_per_class=7, m_unpaired=100, seed=3)
    assert np.bincount(labels[s.paired], minlength=10).tolist() == [7] * 10
    assert len(s.unpaired) == 100 and not set(s.paired) & set(s.unpaired)
    s2 = split_paired_unpaired(labels, n_per_class=7, m_unpaired=100, seed=3)
    assert (s.paired == s2.paired).all() and (s.unpaired == s2.unpaired).all()
    s3 = split_paired_unpaired(labels, n_per_class=7, m_unpaired=100, seed=4)
    assert not (s.paired == s3.paired).all()
    everything = split_paired_unpaired(labels, n_pairs=33, seed=0)
    assert len(everything.paired) == 33 and len(everything.unpaired) == 500 - 33


def test_tasks_class_and_superres():
    ds = load_digits_dataset("train")
    onehot = make_conditions(ds, "class")
    assert onehot.shape == (len(ds), 10) and (onehot.argmax(1) == ds.labels).all()
    low = make_conditions(ds, "superres", factor=2)
    assert low.shape == (len(ds), 16)
    np.testing.assert_allclose(low[0, 0], ds.images[0, :2, :2].mean(), rtol=1e-6)
    np.testing.assert_allclose(average_pool(np.ones((1, 8, 8)), 4), np.ones((1, 2, 2)))


# ----------------------------------------------------------------------------- bad input

def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*not found"):
        load_mnist(str(tmp_path), "train")
    with pytest.raises(DataError, match="data folder not found"):
        load_mnist(str(tmp_path / "nope"))


def test_wrong_magic_number(tmp_path):
    p = write_idx(str(tmp_path / "x"), np.zeros((2, 2), np.uint8), magic=b"\x50\x4b\x03\x04")
    with pytest.raises(DataError, match=r"x: wrong magic number 0x504b0304"):
        read_idx(p)


def test_truncated_file(tmp_path):
    p = write_idx(str(tmp_path / "t"), np.zeros((10, 28, 28), np.uint8), cut=100)
    with pytest.raises(DataError, match=r"t: truncated: header says \[10, 28, 28\]"):
        read_idx(p)
    p2 = str(tmp_path / "h")
    with open(p2, "wb") as fh:
        fh.write(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(DataError, match="truncated header"):
        read_idx(p2)


def test_truncated_gzip_stream(tmp_path):
    p = write_idx(str(tmp_path / "g.gz"), np.zeros((100, 28, 28), np.uint8), gz=True)
    with open(p, "rb") as fh:
        data = fh.read()
    with open(p, "wb") as fh:
        fh.write(data[: len(data) // 2])
    with pytest.raises(DataError, match="g.gz: cannot decompress"):
        read_idx(p)


def test_trailing_bytes(tmp_path):
    p = write_idx(str(tmp_path / "e"), np.zeros((2, 2), np.uint8), extra=b"junk")
    with pytest.raises(DataError, match="4 unexpected bytes"):
        read_idx(p)


def test_count_mismatch(tmp_path):
    make_mnist_folder(str(tmp_path), n=20, n_labels=19)
    with pytest.raises(DataError, match="20 images but .*19 labels: count mismatch"):
        load_mnist(str(tmp_path))


def test_label_out_of_range(tmp_path):
    labels = np.arange(20) % 10
    labels[13] = 11
    make_mnist_folder(str(tmp_path), n=20, labels=labels)
    with pytest.raises(DataError, match=r"label 11 at index 13 is out of range \[0, 10\)"):
        load_mnist(str(tmp_path))


def test_nan_and_inf_pixels(tmp_path):
    imgs = np.random.default_rng(0).random((5, 28, 28))
    imgs[3, 1, 1] = np.nan
    imgs[4, 2, 2] = np.inf
    write_idx(str(tmp_path / "train-images-idx3-ubyte"), imgs, code=0x0D)
    write_idx(str(tmp_path / "train-labels-idx1-ubyte"), np.arange(5))
    with pytest.raises(DataError, match=r"2 NaN/Inf pixel values \(first in image 3\)"):
        load_mnist(str(tmp_path))


def test_split_errors():
    labels = np.repeat(np.arange(10), 5)
    with pytest.raises(DataError, match="n_per_class must be positive, got 0"):
        split_paired_unpaired(labels, n_per_class=0)
    with pytest.raises(DataError, match="n_pairs must be positive"):
        split_paired_unpaired(labels, n_pairs=0)
    with pytest.raises(DataError, match="n_per_class=6 but some classes have fewer"):
        split_paired_unpaired(labels, n_per_class=6)
    with pytest.raises(DataError, match="n_pairs=51 is larger than the 50"):
        split_paired_unpaired(labels, n_pairs=51)
    with pytest.raises(DataError, match="m_unpaired=41 but only 40 examples remain"):
        split_paired_unpaired(labels, n_per_class=1, m_unpaired=41)
    with pytest.raises(DataError, match="exactly one"):
        split_paired_unpaired(labels)


def test_bad_superres_factor():
    with pytest.raises(DataError, match="factor 3 must divide the image size 8x8"):
        average_pool(np.zeros((1, 8, 8)), 3)
