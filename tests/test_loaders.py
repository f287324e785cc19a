"""load_dataset over every format (.npz, .npy folders, image folders, super-resolution pairs,
MNIST IDX, digits): what is read, how values are normalised and recorded, and every bad input."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from lsdm_fast.data import (DataError, Dataset, average_pool, check_dataset, detect_format, load_dataset,
                            load_digits_dataset, make_conditions, split_paired_unpaired, stratified_holdout)

from test_data import make_mnist_folder, write_idx


def images_u8(rng, n, *shape):
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8)


def labels_for(n, k):
    return np.arange(n) % k


def save_png(path, arr, mode=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path) if mode else Image.fromarray(arr).save(path)
    return path


def image_folder(root, rng, classes=("cat", "dog", "emu"), per_class=5, size=(6, 4)):
    """Grey 8-bit PNGs, per_class of each class; returns {path: pixel array}."""
    pixels = {}
    for c in classes:
        for i in range(per_class):
            a = rng.integers(0, 256, size, dtype=np.uint8)
            pixels[save_png(os.path.join(root, c, f"{i}.png"), a)] = a
    return pixels


# ----------------------------------------------------------------------------- .npz and .npy

def test_npz_keras_names_uint8_scaled_once_and_recorded(tmp_path, rng):
    x, y = images_u8(rng, 30, 5, 7), labels_for(30, 3)
    xt, yt = images_u8(rng, 9, 5, 7), labels_for(9, 3)
    path = str(tmp_path / "mnist.npz")
    np.savez(path, x_train=x, y_train=y, x_test=xt, y_test=yt)
    tr, te = load_dataset(path), load_dataset(path, "test")
    assert detect_format(path) == "npz"
    assert tr.images.dtype == np.float32 and tr.labels.dtype == np.int64
    np.testing.assert_array_equal(tr.images, x.astype(np.float32) / 255)
    np.testing.assert_array_equal(te.images, xt.astype(np.float32) / 255)
    assert tr.labels.tolist() == y.tolist() and te.labels.tolist() == yt.tolist()
    assert tr.num_classes == te.num_classes == 3 and tr.image_shape == (5, 7)
    p = tr.provenance
    assert p["format"] == "npz" and p["read_from"] == ["x_train", "y_train"] and p["original_dtype"] == "uint8"
    assert p["scaling"] == "divided by 255" and p["original_range"] == [int(x.min()), int(x.max())]
    assert "own" in p["split_origin"] and p["class_counts"] == [10, 10, 10]
    json.dumps(p)  # the run's report stores it as JSON
    assert "uint8" in tr.describe() and "divided by 255" in tr.describe()


def test_single_set_gets_a_seeded_stratified_split(tmp_path, rng):
    x, y = images_u8(rng, 100, 4, 4), np.repeat(np.arange(4), [10, 20, 30, 40])
    path = str(tmp_path / "d.npz")
    np.savez(path, images=x, labels=y)
    tr, te = load_dataset(path, seed=3), load_dataset(path, "test", seed=3)
    assert len(tr) + len(te) == 100
    assert np.bincount(te.labels).tolist() == [2, 4, 6, 8]  # 20 % of each class
    both = np.concatenate([tr.images, te.images]).reshape(100, -1)
    assert len(np.unique(both, axis=0)) == len(np.unique(x.reshape(100, -1), axis=0))  # disjoint, all used
    again = load_dataset(path, "test", seed=3)
    np.testing.assert_array_equal(again.images, te.images)
    other = load_dataset(path, "test", seed=4)
    assert not np.array_equal(other.images, te.images)
    assert "seeded split" in tr.provenance["split_origin"] and "default_rng(3)" in tr.provenance["split_origin"]


def test_train_arrays_alone_are_split_too(tmp_path, rng):
    path = str(tmp_path / "t.npz")
    np.savez(path, x_train=images_u8(rng, 20, 3, 3), y_train=labels_for(20, 2))
    tr, te = load_dataset(path), load_dataset(path, "test")
    assert (len(tr), len(te)) == (16, 4) and "x_train/y_train" in te.provenance["split_origin"]


def test_stratified_holdout_rounds_per_class():
    labels = np.array([0] * 7 + [1] * 3 + [2])
    tr, te = stratified_holdout(labels, 0.2, seed=0)
    assert np.bincount(labels[te], minlength=3).tolist() == [1, 1, 0]
    assert sorted(np.concatenate([tr, te]).tolist()) == list(range(11))


def test_float_images_kept_channels_first_and_single_channel_squeezed(tmp_path, rng):
    rgb = rng.random((12, 3, 4, 6))
    path = str(tmp_path / "rgb.npz")
    np.savez(path, x_train=rgb, y_train=labels_for(12, 2), x_test=rgb[:4], y_test=labels_for(4, 2))
    ds = load_dataset(path)
    assert ds.image_shape == (3, 4, 6) and ds.channels == 3
    np.testing.assert_array_equal(ds.images, rgb.astype(np.float32))
    assert ds.provenance["channels"].startswith("3 channels")
    one = str(tmp_path / "one.npz")
    np.savez(one, x_train=rgb[:, :1], y_train=labels_for(12, 2), x_test=rgb[:4, :1], y_test=labels_for(4, 2))
    assert load_dataset(one).image_shape == (4, 6)


def test_bool_and_uint16_images(tmp_path, rng):
    b = rng.random((10, 3, 3)) > 0.5
    np.savez(tmp_path / "b.npz", images=b, labels=labels_for(10, 1))
    ds = load_dataset(str(tmp_path / "b.npz"))
    assert set(np.unique(ds.images)) <= {0.0, 1.0} and ds.provenance["scaling"] == "bool as 0/1"
    w = rng.integers(0, 65536, (10, 3, 3), dtype=np.uint16)
    np.savez(tmp_path / "w.npz", images=w, labels=labels_for(10, 1))
    ds = load_dataset(str(tmp_path / "w.npz"))
    assert ds.provenance["scaling"] == "divided by 65535" and ds.images.max() <= 1


def test_rescale_uses_the_training_range_for_both_splits(tmp_path):
    x = np.linspace(10, 210, 5 * 4).reshape(5, 2, 2)
    xt = np.full((2, 2, 2), 260.0)
    xt[0] = 110.0
    path = str(tmp_path / "f.npz")
    np.savez(path, x_train=x, y_train=np.zeros(5, int), x_test=xt, y_test=np.zeros(2, int))
    with pytest.raises(DataError, match=r"f.npz\['x_train'\]: float pixel values must be in \[0, 1\], got \[10, 210\]"
                                        r".*rescale=True"):
        load_dataset(path)
    tr, te = load_dataset(path, rescale=True), load_dataset(path, "test", rescale=True)
    np.testing.assert_allclose(tr.images, (x - 10) / 200, rtol=1e-6)
    np.testing.assert_allclose(te.images[0], 0.5)  # (110 - 10) / 200 with the TRAINING range
    assert (te.images[1] == 1).all() and te.provenance["clipped_values"] == 4
    assert te.provenance["rescale_range"] == [10.0, 210.0] and "training split" in te.provenance["scaling"]
    np.savez(tmp_path / "u.npz", images=np.zeros((5, 2, 2), np.uint8), labels=np.zeros(5, int))
    ds = load_dataset(str(tmp_path / "u.npz"), rescale=True)
    assert "not applied" in ds.provenance["rescale"]


def test_npy_folder(tmp_path, rng):
    x, y = images_u8(rng, 20, 4, 4), labels_for(20, 2)
    for name, arr in dict(x_train=x, y_train=y, x_test=x[:6], y_test=y[:6]).items():
        np.save(tmp_path / f"{name}.npy", arr)
    (tmp_path / "README.txt").write_text("other files are ignored")
    assert detect_format(str(tmp_path)) == "npy"
    ds = load_dataset(str(tmp_path), "test")
    np.testing.assert_array_equal(ds.images, x[:6] / np.float32(255))
    assert ds.provenance["format"] == "npy"
    with pytest.raises(DataError, match=r"x_train.npy: give the folder that holds the .npy files"):
        load_dataset(str(tmp_path / "x_train.npy"))


def test_fortran_order_npy(tmp_path, rng):
    x = np.asfortranarray(images_u8(rng, 10, 3, 5))
    np.save(tmp_path / "images.npy", x)
    np.save(tmp_path / "labels.npy", labels_for(10, 1))
    ds = load_dataset(str(tmp_path))
    te = load_dataset(str(tmp_path), "test")
    got = sorted(i.tobytes() for i in np.concatenate([ds.images, te.images]))
    assert got == sorted(np.ascontiguousarray(i).tobytes() for i in x / np.float32(255))


# ----------------------------------------------------------------------------- super-resolution pairs

def test_pairs_npz_single_set_with_unpaired(tmp_path, rng):
    high = rng.random((20, 3, 8, 8))
    low = average_pool(high, 4)
    path = str(tmp_path / "sr.npz")
    np.savez(path, low=low, high=high, unpaired_high=rng.random((7, 3, 8, 8)))
    tr, te = load_dataset(path), load_dataset(path, "test")
    assert (len(tr), len(te)) == (16, 4) and tr.labels is None and tr.num_classes is None
    assert tr.superres_factor == 4 and tr.low.shape == (16, 3, 2, 2) and tr.unpaired.shape == (7, 3, 8, 8)
    assert te.unpaired is None  # unpaired images serve training only
    i = int(np.flatnonzero((high.astype(np.float32) == tr.images[0]).all((1, 2, 3)))[0])
    np.testing.assert_allclose(tr.low[0], low[i], rtol=1e-6)  # pairs stay paired through the split
    assert tr.provenance["factor"] == 4 and tr.provenance["unpaired"] == 7
    x = make_conditions(tr, "superres", None)
    assert x.shape == (16, 12)
    np.testing.assert_array_equal(make_conditions(tr, "superres", 4), x)
    with pytest.raises(DataError, match="1/4 of the high ones; factor 2 does not match"):
        make_conditions(tr, "superres", 2)
    with pytest.raises(DataError, match="task 'class' needs labels"):
        make_conditions(tr, "class")
    with pytest.raises(DataError, match="needs class labels; a data set of super-resolution pairs"):
        split_paired_unpaired(tr.labels, n_pairs=4)
    one_class = split_paired_unpaired(np.zeros(len(tr), int), n_pairs=4, seed=0)  # the documented way
    assert len(one_class.paired) == 4 and len(one_class.unpaired) == 12


def test_pairs_npz_split_arrays(tmp_path, rng):
    hi, hit = rng.random((6, 6, 6)), rng.random((3, 6, 6))
    path = str(tmp_path / "sr.npz")
    np.savez(path, low_train=average_pool(hi, 3), high_train=hi, low_test=average_pool(hit, 3), high_test=hit)
    te = load_dataset(path, "test")
    assert te.superres_factor == 3 and len(te) == 3 and te.image_shape == (6, 6)
    np.testing.assert_allclose(te.low, average_pool(hit, 3), rtol=1e-6)


@pytest.mark.parametrize("low_shape,match", [((5, 3, 3), "count mismatch"), ((6, 4, 3), "one whole factor"),
                                             ((6, 3, 2, 2), "one whole factor")])
def test_bad_pairs(tmp_path, low_shape, match):
    path = str(tmp_path / "sr.npz")
    np.savez(path, low=np.zeros(low_shape), high=np.zeros((6, 6, 6)))
    with pytest.raises(DataError, match=match):
        load_dataset(path)


def test_unpaired_of_another_shape(tmp_path):
    path = str(tmp_path / "sr.npz")
    np.savez(path, low=np.zeros((6, 3, 3)), high=np.zeros((6, 6, 6)), unpaired_high=np.zeros((2, 5, 5)))
    with pytest.raises(DataError, match=r"'unpaired_high'\]: images are \(5, 5\) but"):
        load_dataset(path)


# ----------------------------------------------------------------------------- image folders

def test_grey_image_folder_exact_pixels_and_class_ids(tmp_path, rng):
    pixels = image_folder(str(tmp_path / "f"), rng)
    (tmp_path / "f" / "dog" / "notes.txt").write_text("not an image")
    (tmp_path / "f" / ".DS_Store").write_bytes(b"\0")
    root = str(tmp_path / "f")
    assert detect_format(root) == "image-folder"
    tr, te = load_dataset(root), load_dataset(root, "test")
    assert (len(tr), len(te)) == (12, 3) and tr.image_shape == (6, 4) and tr.class_names == ["cat", "dog", "emu"]
    assert tr.provenance["class_ids"] == {"cat": 0, "dog": 1, "emu": 2}
    assert np.bincount(te.labels).tolist() == [1, 1, 1]
    by_content = {a.astype(np.float32).tobytes(): p for p, a in pixels.items()}
    for img, lab in zip(tr.images, tr.labels):
        path = by_content[(img * 255).round().astype(np.float32).tobytes()]
        assert os.path.basename(os.path.dirname(path)) == tr.class_names[lab]
    skipped = tr.provenance["skipped_files"]
    assert skipped["count"] == 2 and "dog/notes.txt" in skipped["first"]


def test_colour_folder_replicates_grey_and_drops_alpha(tmp_path, rng):
    root = str(tmp_path / "f")
    rgba = rng.integers(0, 256, (4, 5, 4), dtype=np.uint8)
    grey = rng.integers(0, 256, (4, 5), dtype=np.uint8)
    save_png(os.path.join(root, "a", "rgba.png"), rgba)
    save_png(os.path.join(root, "a", "grey.png"), grey)
    for i in range(4):
        save_png(os.path.join(root, "b", f"{i}.png"), grey)
    ds = load_dataset(root)  # 5 of 6 images train: the grey 'a' or the rgba one sits in test
    te = load_dataset(root, "test")
    assert ds.image_shape == te.image_shape == (3, 4, 5)
    imgs = np.concatenate([ds.images, te.images])
    want_rgb = rgba[..., :3].transpose(2, 0, 1) / np.float32(255)
    assert any(np.array_equal(i, want_rgb) for i in imgs)
    assert any(np.array_equal(i, np.broadcast_to(grey / np.float32(255), (3, 4, 5))) for i in imgs)
    assert "replicated" in ds.provenance["colour"]


def test_sixteen_bit_png(tmp_path, rng):
    root = str(tmp_path / "f")
    a = rng.integers(0, 65536, (3, 3), dtype=np.uint16)
    for i in range(5):
        save_png(os.path.join(root, "c", f"{i}.png"), a)
    ds = load_dataset(root)
    np.testing.assert_allclose(ds.images[0], a / 65535, rtol=1e-6)
    assert "65535" in ds.provenance["scaling"]


def test_train_test_folders(tmp_path, rng):
    root = str(tmp_path / "f")
    image_folder(os.path.join(root, "train"), rng, per_class=3)
    image_folder(os.path.join(root, "test"), rng, classes=("dog",), per_class=2)
    tr, te = load_dataset(root), load_dataset(root, "test")
    assert len(tr) == 9 and te.labels.tolist() == [1, 1] and "own train/ and test/" in te.provenance["split_origin"]


def test_nested_folders_are_searched(tmp_path, rng):
    root = str(tmp_path / "f")
    image_folder(root, rng, classes=("a", "b"), per_class=5)
    save_png(os.path.join(root, "a", "deeper", "x.png"), rng.integers(0, 256, (6, 4), dtype=np.uint8))
    save_png(os.path.join(root, "a", ".ipynb_checkpoints", "x.png"), np.zeros((9, 9), np.uint8))  # hidden: ignored
    assert load_dataset(root).provenance["class_counts"][0] + load_dataset(root, "test").provenance[
        "class_counts"][0] == 6


# ----------------------------------------------------------------------------- image folder errors

def test_images_of_different_sizes_name_the_first_odd_file(tmp_path, rng):
    root = str(tmp_path / "f")
    image_folder(root, rng)
    save_png(os.path.join(root, "dog", "big.png"), np.zeros((7, 4), np.uint8))
    with pytest.raises(DataError, match=r"dog/big.png: image is 4 wide x 7 high but .*cat/0.png is 4 x 6"):
        load_dataset(root)


def test_empty_class_folder(tmp_path, rng):
    root = str(tmp_path / "f")
    image_folder(root, rng)
    os.makedirs(os.path.join(root, "fox"))
    (tmp_path / "f" / "fox" / "readme.md").write_text("x")
    with pytest.raises(DataError, match=r"f/fox: class folder has no image files"):
        load_dataset(root)


def test_damaged_image_is_named(tmp_path, rng):
    root = str(tmp_path / "f")
    image_folder(root, rng)
    (tmp_path / "f" / "emu" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(DataError, match=r"emu/broken.png: not a readable image"):
        load_dataset(root)
    good = (tmp_path / "f" / "cat" / "0.png").read_bytes()
    (tmp_path / "f" / "emu" / "broken.png").write_bytes(good[: len(good) - 30])  # truncated: fails in decode
    with pytest.raises(DataError, match=r"emu/broken.png: (cannot decode|not a readable)"):
        load_dataset(root)
        load_dataset(root, "test")


@pytest.mark.parametrize("layout,match", [
    ("image_in_root", r"an image outside the class folders"),
    ("no_classes", r"no class sub-folders"),
    ("train_only", r"has a 'train' folder but not both"),
    ("unknown_test_class", r"test/yak: class 'yak' has no folder in"),
    ("too_few", r"too few images \(3\)"),
    ("float_mode", r"floating-point images \(mode F\)"),
])
def test_image_folder_layout_errors(tmp_path, rng, layout, match):
    root = tmp_path / "f"
    if layout == "image_in_root":
        image_folder(str(root), rng)
        save_png(str(root / "stray.png"), np.zeros((6, 4), np.uint8))
    elif layout == "no_classes":
        root.mkdir()
        (root / "x.txt").write_text("x")
    elif layout == "train_only":
        image_folder(str(root / "train"), rng)
    elif layout == "unknown_test_class":
        image_folder(str(root / "train"), rng)
        image_folder(str(root / "test"), rng, classes=("yak",))
    elif layout == "too_few":
        image_folder(str(root), rng, classes=("a", "b", "c"), per_class=1)
    else:
        image_folder(str(root), rng)
        Image.fromarray(np.zeros((6, 4), np.float32), mode="F").save(str(root / "cat" / "f.tif"))
    with pytest.raises(DataError, match=match):
        load_dataset(str(root), format="image-folder")
        load_dataset(str(root), "test", format="image-folder")


# ----------------------------------------------------------------------------- array errors

def npz(tmp_path, **arrays):
    path = str(tmp_path / "d.npz")
    np.savez(path, **arrays)
    return path


X, Y = np.zeros((10, 4, 4), np.uint8), np.arange(10) % 2


@pytest.mark.parametrize("arrays,match", [
    (dict(x_train=X, y_train=Y, x_tset=X, y_test=Y), r"unexpected array name\(s\) \['x_tset'\]"),
    (dict(x_train=X, y_train=Y, images=X, labels=Y), r"mix or miss the layouts"),
    (dict(x_train=X, y_train=Y, x_test=X), r"missing array\(s\) \['y_test'\]"),
    (dict(images=X), r"missing array\(s\) \['labels'\]"),
    (dict(unpaired_high=X), r"mix or miss the layouts"),
    (dict(images=X, labels=Y[:9]), r"d.npz\['images'\] has 10 images but .*\['labels'\] has 9 labels: count mismatch"),
    (dict(images=X, labels=Y.astype(float)), r"\['labels'\]: labels must be integers, got dtype float64 \(convert"),
    (dict(images=X, labels=Y[:, None]), r"labels must be 1-D \(N,\), got shape \(10, 1\)"),
    (dict(images=X, labels=Y - 3), r"label -3 at index 0 is negative"),
    (dict(images=X, labels=Y + 1), r"\['labels'\]: label 1 at index 0 leaves class 0 without examples: labels must "
                                   r"be 0..K-1 with every class present \(the labels here are .*starting at 1: "
                                   r"1-based labels\? subtract 1\)"),
    (dict(images=X, labels=np.where(np.arange(10) == 7, 1000, Y)),
     r"\['labels'\]: label 1000 at index 7 leaves classes 2..999 without examples: labels must be 0..K-1 with every "
     r"class present \(the labels here are 0..1 and 1000\)"),
    (dict(images=X.astype(complex), labels=Y), r"got dtype complex128"),
    (dict(images=np.full((10, 4, 4), "a"), labels=Y), r"got dtype <U1"),
    (dict(images=X.astype(np.int16) - 1, labels=Y), r"integer pixel values must be in \[0, 255\] \(int16\), got \[-1"),
    (dict(images=X.astype(np.int32) + 256, labels=Y), r"must be in \[0, 255\] \(int32\), got \[256, 256\]"),
    (dict(images=np.zeros((10, 16)), labels=Y), r"images must be \(N, H, W\) or \(N, C, H, W\), got shape \(10, 16\)"),
    (dict(images=np.zeros((10, 8, 8, 3)), labels=Y), r"looks channels-last .* x.transpose\(0, 3, 1, 2\)"),
    (dict(images=np.zeros((0, 4, 4)), labels=Y[:0]), r"no images or an empty image dimension"),
    (dict(images=X[:3], labels=Y[:3]), r"too few images \(3\)"),
    (dict(x_train=X, y_train=Y, x_test=np.zeros((4, 5, 5), np.uint8), y_test=Y[:4]),
     r"\['x_test'\]: test images are \(5, 5\) but training images are \(4, 4\)"),
])
def test_bad_arrays_name_the_file_and_problem(tmp_path, arrays, match):
    path = npz(tmp_path, **arrays)
    with pytest.raises(DataError, match=match) as info:
        load_dataset(path)
        load_dataset(path, "test")
    assert path in str(info.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf(tmp_path, bad):
    x = np.zeros((10, 4, 4))
    x[6, 1, 2] = bad
    path = npz(tmp_path, x_train=x, y_train=Y, x_test=x, y_test=Y)
    with pytest.raises(DataError, match=r"\['x_train'\]: 1 NaN/Inf pixel values \(first in image 6\)"):
        load_dataset(path, rescale=True)


def test_test_split_of_another_dtype(tmp_path):
    path = npz(tmp_path, x_train=X, y_train=Y, x_test=X.astype(float), y_test=Y)
    with pytest.raises(DataError, match=r"\['x_test'\]: dtype float64 \(none: floats already in \[0, 1\]\) differs "
                                        r"from the training images' \(divided by 255\)"):
        load_dataset(path, "test")


def test_test_label_beyond_training_classes(tmp_path):
    path = npz(tmp_path, x_train=X, y_train=Y, x_test=X, y_test=Y * 2)
    with pytest.raises(DataError, match=r"\['y_test'\]: label 2 at index 1 has no training examples \(the training "
                                        r"labels in .*\['y_train'\] are 0..1\)"):
        load_dataset(path, "test")


def test_object_arrays_are_refused_without_unpickling(tmp_path):
    path = str(tmp_path / "d.npz")
    np.savez(path, images=np.array([object()] * 10), labels=Y)
    with pytest.raises(DataError, match=r"\['images'\]: holds Python objects"):
        load_dataset(path)


def test_missing_and_unknown_sources(tmp_path):
    with pytest.raises(DataError, match=r"nope.npz: data file not found"):
        load_dataset(str(tmp_path / "nope.npz"))
    with pytest.raises(DataError, match=r"nope.npz: file not found"):
        load_dataset(str(tmp_path / "nope.npz"), format="npz")
    (tmp_path / "a.csv").write_text("1,2")
    with pytest.raises(DataError, match=r"a.csv: cannot tell the data format from this file"):
        load_dataset(str(tmp_path / "a.csv"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: cannot tell the data format"):
        load_dataset(str(tmp_path / "empty"))
    with pytest.raises(DataError, match=r"nope: data folder not found"):
        load_dataset(str(tmp_path / "nope"))
    with pytest.raises(DataError, match=r"unknown data format 'csv'; choose from digits, mnist-idx"):
        load_dataset(str(tmp_path), format="csv")
    with pytest.raises(DataError, match=r"split must be 'train' or 'test', got 'val'"):
        load_dataset("digits", "val")
    with pytest.raises(DataError, match=r"no .npy files"):
        load_dataset(str(tmp_path / "empty"), format="npy")


def test_not_a_zip(tmp_path):
    path = tmp_path / "d.npz"
    path.write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(DataError, match=r"d.npz: not a readable .npz \(zip\) file"):
        load_dataset(str(path))


def test_truncated_npy(tmp_path):
    np.save(tmp_path / "images.npy", X)
    np.save(tmp_path / "labels.npy", Y)
    raw = (tmp_path / "images.npy").read_bytes()
    (tmp_path / "images.npy").write_bytes(raw[:-5])
    with pytest.raises(DataError, match=r"images.npy: header says uint8 \(10, 4, 4\) \(160 bytes of data\) but 155"):
        load_dataset(str(tmp_path))


# ----------------------------------------------------------------------------- IDX, digits, shared checks

def test_float_idx_must_be_in_unit_range_or_rescaled_from_train(tmp_path):
    tr = np.linspace(0, 2, 20 * 4).reshape(20, 2, 2)
    te = np.full((10, 2, 2), 1.0)
    write_idx(str(tmp_path / "train-images-idx3-ubyte"), tr, code=0x0E)
    write_idx(str(tmp_path / "train-labels-idx1-ubyte"), np.arange(20) % 10)
    write_idx(str(tmp_path / "t10k-images-idx3-ubyte"), te, code=0x0E)
    write_idx(str(tmp_path / "t10k-labels-idx1-ubyte"), np.arange(10))
    assert detect_format(str(tmp_path)) == "mnist-idx"
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: float pixel values must be in \[0, 1\], "
                                        r"got \[0, 2\]"):
        load_dataset(str(tmp_path))
    test = load_dataset(str(tmp_path), "test", rescale=True)
    np.testing.assert_allclose(test.images, 0.5)  # 1.0 on the training scale [0, 2]: no per-file stretch
    assert test.provenance["rescale_range"] == [0.0, 2.0]


def test_idx_through_load_dataset_records_provenance(tmp_path):
    make_mnist_folder(str(tmp_path), n=20)
    ds = load_dataset(str(tmp_path), "test")
    assert ds.provenance["format"] == "mnist-idx" and ds.provenance["scaling"] == "divided by 255"
    assert ds.provenance["read_from"] == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    assert ds.name.startswith("mnist-test:") and str(tmp_path) in ds.name


def test_digits_unchanged_through_load_dataset():
    for split in ("train", "test"):
        a, b = load_dataset("digits", split, seed=2), load_digits_dataset(split, seed=2)
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.labels, b.labels)
    assert a.provenance["scaling"] == "divided by 16"
    with pytest.raises(DataError, match="format 'digits' is the embedded data set"):
        load_dataset("elsewhere", format="digits")


def test_check_dataset_rejects_broken_invariants():
    good = Dataset(np.zeros((3, 2, 2), np.float32), np.array([0, 1, 0]), 2, "mine")
    check_dataset(good)
    for images, labels, k, match in [
        (np.zeros((3, 2, 2)), np.array([0, 1, 0]), 2, "float32"),
        (np.full((3, 2, 2), 2, np.float32), np.array([0, 1, 0]), 2, r"finite float32 values in \[0, 1\]"),
        (np.zeros((3, 2, 2), np.float32), np.array([0, 1, 2]), 2, r"labels must lie in \[0, num_classes=2\)"),
        (np.zeros((3, 2, 2), np.float32), np.array([0, 1]), 2, r"int64 of shape \(3,\)"),
        (np.zeros((3, 1, 2, 2), np.float32), np.array([0, 1, 0]), 2, "single-channel"),
        (np.zeros((3, 2, 2), np.float32), None, None, "labels are missing"),
    ]:
        with pytest.raises(DataError, match=match):
            check_dataset(Dataset(images, labels, k, "mine"))


def test_average_pool_with_channels():
    x = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    p = average_pool(x, 2)
    assert p.shape == (2, 3, 2, 2)
    np.testing.assert_allclose(p[1, 2, 0, 1], x[1, 2, :2, 2:].mean())


def test_image_folder_without_pillow_says_so(tmp_path, rng, monkeypatch):
    import importlib.util

    image_folder(str(tmp_path / "f"), rng)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "PIL" else real(name, *a))
    with pytest.raises(DataError, match="the image-folder format needs Pillow: pip install pillow"):
        load_dataset(str(tmp_path / "f"))
