"""Data: MNIST-format IDX files from any folder, scikit-learn's 8x8 digits as the embedded
default, the seeded class-stratified paired/unpaired split, and the two tasks."""
from __future__ import annotations

import gzip
import math
import os
import zlib
from dataclasses import dataclass

import numpy as np

IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
TASKS = ("class", "superres")


class DataError(ValueError):
    """Bad data: the message names the file (or array) and the problem."""


@dataclass
class Dataset:
    images: np.ndarray  # (N, H, W) float32 in [0, 1]
    labels: np.ndarray  # (N,) int64 in [0, num_classes)
    num_classes: int
    name: str

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, int]:
        return tuple(self.images.shape[1:])


# ------------------------------------------------------------------------------ IDX files

def read_idx(path: str) -> np.ndarray:
    """Read one IDX file (raw or gzip, detected by content) into a numpy array."""
    if not os.path.exists(path):
        raise DataError(f"{path}: file not found")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a folder, expected an IDX file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        if head == b"\x1f\x8b":
            with gzip.open(path, "rb") as fh:
                raw = fh.read()
        else:
            with open(path, "rb") as fh:
                raw = fh.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot decompress ({exc}); the gzip stream is corrupt or truncated") from None
    if len(raw) < 4:
        raise DataError(f"{path}: truncated: {len(raw)} bytes, an IDX header needs at least 4")
    zero0, zero1, code, ndim = raw[0], raw[1], raw[2], raw[3]
    magic = int.from_bytes(raw[:4], "big")
    if zero0 != 0 or zero1 != 0 or code not in IDX_DTYPES or ndim == 0:
        raise DataError(f"{path}: wrong magic number 0x{magic:08x} ({magic}); expected an IDX file "
                        "(images 2051 = 0x00000803, labels 2049 = 0x00000801)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated header: {len(raw)} bytes, need {header} for {ndim} dimensions")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(IDX_DTYPES[code])
    count = math.prod(dims)  # exact: np.prod would wrap around for absurd dims
    need = header + count * dtype.itemsize
    if len(raw) < need:
        raise DataError(f"{path}: truncated: header says {dims} ({need} bytes) but the file has {len(raw)} bytes")
    if len(raw) > need:
        raise DataError(f"{path}: {len(raw) - need} unexpected bytes after the {dims} array")
    arr = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def _find(folder: str, stem: str) -> str:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        p = os.path.join(folder, name)
        if os.path.exists(p):
            return p
    raise DataError(f"{os.path.join(folder, stem)}[.gz]: file not found (looked in {folder!r} for the "
                    f"standard MNIST file names)")


def load_mnist(folder: str, split: str = "train", num_classes: int = 10) -> Dataset:
    """MNIST-format images and labels (the four standard file names, raw or .gz) from `folder`."""
    if split not in MNIST_FILES:
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: data folder not found")
    img_path, lab_path = (_find(folder, s) for s in MNIST_FILES[split])
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3:
        raise DataError(f"{img_path}: expected a 3-D image array (N, H, W), got shape {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{lab_path}: expected a 1-D label array, got shape {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{img_path} has {len(images)} images but {lab_path} has {len(labels)} labels: count mismatch")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{lab_path}: labels must be integers, got IDX type {labels.dtype}")
    if np.issubdtype(images.dtype, np.floating):
        bad = ~np.isfinite(images)
        if bad.any():
            i = int(np.argwhere(bad.reshape(len(images), -1).any(1))[0, 0])
            raise DataError(f"{img_path}: {int(bad.sum())} NaN/Inf pixel values (first in image {i})")
        x = images.astype(np.float32)
        if x.size and (x.min() < 0 or x.max() > 1):
            x = (x - x.min()) / max(float(x.max() - x.min()), 1e-12)
    else:
        if images.size and (images.min() < 0 or images.max() > 255):
            raise DataError(f"{img_path}: integer pixel values must be in [0, 255], got [{images.min()}, {images.max()}]")
        x = images.astype(np.float32) / 255.0
    lab = labels.astype(np.int64)
    if lab.size and (lab.min() < 0 or lab.max() >= num_classes):
        i = int(np.argmax((lab < 0) | (lab >= num_classes)))
        raise DataError(f"{lab_path}: label {int(lab[i])} at index {i} is out of range [0, {num_classes})")
    # the folder as given: reports must not carry a machine-specific absolute path
    return Dataset(x, lab, num_classes, f"mnist-{split}:{os.path.normpath(folder)}")


def load_digits_dataset(split: str = "train", test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 images), split train/test stratified and seeded."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    tr, te = train_test_split(np.arange(len(y)), test_size=test_fraction, stratify=y, random_state=seed)
    idx = tr if split == "train" else te
    return Dataset(x[idx], y[idx], 10, f"sklearn-digits-{split}")


def check_dataset(ds: Dataset) -> None:
    if ds.images.ndim != 3 or len(ds.images) != len(ds.labels):
        raise DataError(f"{ds.name}: images {ds.images.shape} and labels {ds.labels.shape} do not match")
    if not np.isfinite(ds.images).all():
        raise DataError(f"{ds.name}: images contain NaN or Inf")


# ------------------------------------------------------------------------------ split and tasks

@dataclass
class Split:
    paired: np.ndarray  # indices of (x, y) pairs
    unpaired: np.ndarray  # indices whose y is used without x (disjoint from paired)


def split_paired_unpaired(labels: np.ndarray, *, n_per_class: int | None = None, n_pairs: int | None = None,
                          m_unpaired: int | None = None, seed: int = 0, num_classes: int | None = None) -> Split:
    """Seeded, class-stratified split into n paired and m unpaired indices.

    Give n_per_class (that many pairs from every class) or n_pairs (in total, spread over the
    classes in proportion to their counts). m_unpaired=None takes every remaining index.
    """
    labels = np.asarray(labels)
    if (n_per_class is None) == (n_pairs is None):
        raise DataError("give exactly one of n_per_class and n_pairs")
    classes = np.arange(num_classes) if num_classes else np.unique(labels)
    rng = np.random.default_rng(seed)
    by_class = {c: rng.permutation(np.flatnonzero(labels == c)) for c in classes}
    if n_per_class is not None:
        if n_per_class <= 0:
            raise DataError(f"n_per_class must be positive, got {n_per_class} (LSDM needs some pairs)")
        short = {int(c): len(v) for c, v in by_class.items() if len(v) < n_per_class}
        if short:
            raise DataError(f"n_per_class={n_per_class} but some classes have fewer examples: {short}")
        take = {c: n_per_class for c in classes}
    else:
        if n_pairs <= 0:
            raise DataError(f"n_pairs must be positive, got {n_pairs} (LSDM needs some pairs)")
        if n_pairs > len(labels):
            raise DataError(f"n_pairs={n_pairs} is larger than the {len(labels)} examples available")
        counts = np.array([len(by_class[c]) for c in classes], dtype=float)
        share = counts / counts.sum() * n_pairs
        take_arr = np.floor(share).astype(int)
        for i in np.argsort(-(share - take_arr))[: n_pairs - take_arr.sum()]:
            take_arr[i] += 1
        take = dict(zip(classes, take_arr))
    paired = np.concatenate([by_class[c][: take[c]] for c in classes])
    rest = np.concatenate([by_class[c][take[c]:] for c in classes])
    rest = rng.permutation(rest)
    if m_unpaired is None:
        unpaired = rest
    else:
        if m_unpaired < 0:
            raise DataError(f"m_unpaired must be >= 0, got {m_unpaired}")
        if m_unpaired > len(rest):
            raise DataError(f"m_unpaired={m_unpaired} but only {len(rest)} examples remain after the "
                            f"{len(paired)} pairs")
        unpaired = rest[:m_unpaired]
    return Split(np.sort(paired), np.sort(unpaired))


def average_pool(images: np.ndarray, factor: int) -> np.ndarray:
    n, h, w = images.shape
    if factor < 1 or h % factor or w % factor:
        raise DataError(f"super-resolution factor {factor} must divide the image size {h}x{w}")
    return images.reshape(n, h // factor, factor, w // factor, factor).mean(axis=(2, 4))


def make_conditions(ds: Dataset, task: str, factor: int = 4) -> np.ndarray:
    """x for each example: one-hot labels ("class") or the image average-pooled by `factor` ("superres")."""
    if task == "class":
        return np.eye(ds.num_classes, dtype=np.float32)[ds.labels]
    if task == "superres":
        return average_pool(ds.images, factor).reshape(len(ds), -1).astype(np.float32)
    raise DataError(f"task must be one of {TASKS}, got {task!r}")


def load_dataset(source: str, split: str = "train", seed: int = 0) -> Dataset:
    """'digits' for the embedded default, otherwise a folder of MNIST-format IDX files."""
    if source in ("digits", "sklearn-digits"):
        return load_digits_dataset(split, seed=seed)
    return load_mnist(source, split)
