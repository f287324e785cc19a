"""Data in: one entry point, `load_dataset(source, split)`, for the places people keep images.

Formats (detected from `source`, or named with `format=`):

- ``"digits"``: scikit-learn's bundled 8x8 digits (1797 images), the embedded default; a seeded
  stratified 80/20 train/test split (sklearn's train_test_split).
- ``"mnist-idx"``: a folder with the four standard MNIST file names (raw or .gz; also
  ``train-images.idx3-ubyte`` spellings). Ten classes.
- ``"npz"``: one ``.npz`` file. Array names decide what it holds:
    * ``x_train``, ``y_train``, ``x_test``, ``y_test`` (Keras' mnist.npz): images and labels per split;
    * ``images``, ``labels`` (or only ``x_train``, ``y_train``): one set, split below;
    * ``low_train``, ``high_train``, ``low_test``, ``high_test`` (+ optional ``unpaired_high``):
      super-resolution pairs per split, no labels; ``low``, ``high`` (+ ``unpaired_high``): one set
      of pairs, split below. ``unpaired_high`` (high-resolution images without a partner) goes to
      the training split only.
  Any other array name is an error (a typo must not silently change the split).
- ``"npy"``: a folder of ``.npy`` files named like the arrays above (``x_train.npy``, ...,
  or ``images.npy`` + ``labels.npy``, or ``low.npy`` + ``high.npy``...). Other files are ignored.
- ``"image-folder"``: a folder with one sub-folder per class (searched recursively, like
  torchvision's ImageFolder), or with ``train/`` and ``test/`` folders laid out that way. Class
  names sorted give the label ids. Files without an image extension (``IMAGE_EXTENSIONS``) are
  skipped and listed in the provenance; a file with an image extension that Pillow cannot read is
  an error. All images must share one size. If every image is grey (modes 1, L, LA, I, I;16) the
  images are (H, W); if any is colour (palette images count as colour), all are converted to RGB,
  (3, H, W), grey ones replicated. Alpha is dropped. 8-bit values are divided by 255, 16-bit values
  by 65535. Hidden files and folders (".name") are ignored; float images (mode F) are refused.

Conventions, whatever the format:

- Images: arrays (N, H, W) or (N, C, H, W) (channels first; a channels-last (N, H, W, C) array is
  refused with a hint rather than guessed). Single-channel images are stored as (H, W), so
  ``Dataset.image_shape`` is (H, W) for grey and (C, H, W) with C >= 2 otherwise; models see the
  flat C*H*W vector.
- Values are normalised once, to float32 in [0, 1], and what was done is recorded in
  ``Dataset.provenance``: integer images (uint8 or any integer type holding 0..255) are divided by
  255, uint16 by 65535, bool becomes 0/1; float images must already lie in [0, 1]. With
  ``rescale=True`` float images are instead mapped by (x - lo) / (hi - lo), lo and hi the min and
  max of the TRAINING split, the same map for both splits (test values outside are clipped and
  counted). Never a per-file rescale.
- Labels: 1-D integer arrays, one per image, in [0, K); K is the largest label + 1 over both
  splits (10 for MNIST) and every class must appear in the training split (1-based labels fail).
- A single set is split with `seed`: 20 % of each class (rounded) is held out for test, drawn with
  numpy's default_rng(seed); pairs without labels are split the same way as one class.
- Errors are `DataError` and name the file (and array) and the problem.
"""
from __future__ import annotations

import contextlib
import gzip
import importlib.util
import math
import os
import zipfile
import zlib
from dataclasses import dataclass, field

import numpy as np

IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
TASKS = ("class", "superres")
FORMATS = ("digits", "mnist-idx", "npz", "npy", "image-folder")
SPLITS = ("train", "test")
TEST_FRACTION = 0.2  # held out for test when a source has one set only
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm",
                    ".pbm", ".pnm")
# the array names of the "npz" and "npy" formats, by layout
CLASS_SPLIT = ("x_train", "y_train", "x_test", "y_test")
CLASS_SINGLE = ("images", "labels")
PAIRS_SPLIT = ("low_train", "high_train", "low_test", "high_test")
PAIRS_SINGLE = ("low", "high")
UNPAIRED = "unpaired_high"
ARRAY_NAMES = CLASS_SPLIT + CLASS_SINGLE + PAIRS_SPLIT + PAIRS_SINGLE + (UNPAIRED,)


class DataError(ValueError):
    """Bad data: the message names the file (or array) and the problem."""


@dataclass
class Dataset:
    """Images in [0, 1] with their labels, or super-resolution pairs.

    images: (N, H, W) or (N, C, H, W) float32 in [0, 1] (the high-resolution side of pairs).
    labels: (N,) int64 in [0, num_classes), or None for unlabelled pairs.
    low: None, or the low-resolution partner of each image, (N, h, w) or (N, C, h, w), with
        H = factor * h and W = factor * w.
    unpaired: None, or high-resolution images without a partner, (M, *image_shape) (training split).
    provenance: JSON-ready record of where the data came from and what was done to it.
    """
    images: np.ndarray
    labels: np.ndarray | None
    num_classes: int | None
    name: str
    provenance: dict = field(default_factory=dict)
    class_names: list[str] | None = None
    low: np.ndarray | None = None
    unpaired: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_shape(self) -> tuple[int, ...]:
        """(H, W) for single-channel images, (C, H, W) with C >= 2 otherwise."""
        return tuple(self.images.shape[1:])

    @property
    def channels(self) -> int:
        return self.images.shape[1] if self.images.ndim == 4 else 1

    @property
    def superres_factor(self) -> int | None:
        """H / h for pair data (H, h the high and low image heights), else None."""
        return None if self.low is None else self.images.shape[-1] // self.low.shape[-1]

    def describe(self) -> str:
        """One line for a run's report: what was read and what was done to it."""
        p = self.provenance
        shape = "x".join(map(str, self.image_shape))
        what = (f"{len(self)} pairs (low {'x'.join(map(str, self.low.shape[1:]))} -> high {shape}, factor "
                f"{self.superres_factor}) + {0 if self.unpaired is None else len(self.unpaired)} unpaired"
                if self.low is not None else f"{len(self)} images {shape}, {self.num_classes} classes")
        span = p.get("original_range")
        span = "[" + ", ".join(f"{v:.4g}" for v in span) + "]" if isinstance(span, list) else ""
        return (f"{self.name}: {what}; {p.get('original_dtype', '?')} {span} "
                f"-> float32 [0, 1] ({p.get('scaling', '?')}); split: {p.get('split_origin', '?')}")


# ------------------------------------------------------------------------------ entry point

def load_dataset(source: str, split: str = "train", *, format: str | None = None, seed: int = 0,
                 rescale: bool = False) -> Dataset:
    """Load the `split` ("train" or "test") of `source`: "digits", a folder or a file (see the
    module docstring for the formats and conventions). `seed` fixes the split of single-set
    sources; `rescale=True` maps float images onto [0, 1] by the training split's min and max.
    The result is validated by `check_dataset` and says in `.provenance` what was done."""
    if split not in SPLITS:
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    fmt = detect_format(source) if format is None else format
    if fmt not in FORMATS:
        raise DataError(f"unknown data format {fmt!r}; choose from {', '.join(FORMATS)}")
    source = str(source)
    if fmt == "digits":
        if source not in ("digits", "sklearn-digits"):
            raise DataError(f"format 'digits' is the embedded data set; got a source {source!r}")
        ds = load_digits_dataset(split, seed=seed)
    elif fmt == "mnist-idx":
        ds = load_mnist(source, split, rescale=rescale)
    elif fmt == "npz":
        ds = _from_arrays(_NpzArrays(source), split, fmt, seed, rescale)
    elif fmt == "npy":
        ds = _from_arrays(_NpyFolderArrays(source), split, fmt, seed, rescale)
    else:
        ds = _load_image_folder(source, split, seed)
    check_dataset(ds)
    return ds


def detect_format(source: str) -> str:
    """The format name for `source` (see FORMATS), from what the path is and holds."""
    source = str(source)
    if source in ("digits", "sklearn-digits"):
        return "digits"
    if not os.path.exists(source):
        kind = "file" if source.lower().endswith((".npz", ".npy")) else "folder"
        raise DataError(f"{source}: data {kind} not found (give 'digits', a data folder or an .npz file)")
    if os.path.isfile(source):
        if source.lower().endswith(".npz"):
            return "npz"
        if source.lower().endswith(".npy"):
            raise DataError(f"{source}: give the folder that holds the .npy files (x_train.npy, y_train.npy, "
                            "x_test.npy, y_test.npy, or images.npy and labels.npy), not one file")
        raise DataError(f"{source}: cannot tell the data format from this file; expected an .npz file, a folder, "
                        "or 'digits'")
    names = _listdir(source)
    if any(set(_mnist_candidates(stem)) & set(names) for pair in MNIST_FILES.values() for stem in pair):
        return "mnist-idx"
    if any(n.endswith(".npy") for n in names):
        return "npy"
    if any(os.path.isdir(os.path.join(source, n)) and not n.startswith(".") for n in names):
        return "image-folder"
    raise DataError(f"{source}: cannot tell the data format: no MNIST IDX files, no .npy files and no class "
                    f"sub-folders; name it with format= (one of {', '.join(FORMATS)})")


def check_dataset(ds: Dataset) -> None:
    """The invariants every loaded Dataset satisfies (each loader normalises, this checks)."""
    where = ds.name
    x = ds.images
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim not in (3, 4):
        raise DataError(f"{where}: images must be a float32 array (N, H, W) or (N, C, H, W), got "
                        f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}")
    if len(x) == 0 or 0 in x.shape[1:] or (x.ndim == 4 and x.shape[1] < 2):
        raise DataError(f"{where}: no images, or an empty or single-channel (N, 1, H, W) shape {x.shape}")
    for what, arr in (("images", x), ("low", ds.low), ("unpaired", ds.unpaired)):
        if arr is None:
            continue
        if arr.dtype != np.float32 or not np.isfinite(arr).all() or (arr.size and (arr.min() < 0 or arr.max() > 1)):
            raise DataError(f"{where}: {what} must be finite float32 values in [0, 1]")
    if ds.labels is None:
        if ds.low is None:
            raise DataError(f"{where}: labels are missing (only super-resolution pairs may come without labels)")
    else:
        lab = ds.labels
        if lab.dtype != np.int64 or lab.shape != (len(x),):
            raise DataError(f"{where}: labels must be int64 of shape ({len(x)},), got {lab.dtype} {lab.shape}")
        if not ds.num_classes or lab.min() < 0 or lab.max() >= ds.num_classes:
            raise DataError(f"{where}: labels must lie in [0, num_classes={ds.num_classes}), got "
                            f"[{lab.min()}, {lab.max()}]")
    if ds.low is not None:
        lo = ds.low
        f = ds.superres_factor
        if (len(lo) != len(x) or lo.ndim != x.ndim or lo.shape[1:-2] != x.shape[1:-2] or f < 1
                or lo.shape[-2] * f != x.shape[-2] or lo.shape[-1] * f != x.shape[-1]):
            raise DataError(f"{where}: low-resolution images {lo.shape} do not pair with images {x.shape}")
    if ds.unpaired is not None and ds.unpaired.shape[1:] != x.shape[1:]:
        raise DataError(f"{where}: unpaired images {ds.unpaired.shape[1:]} differ in shape from images {x.shape[1:]}")


def _listdir(folder: str) -> list[str]:
    try:
        return sorted(os.listdir(folder))
    except OSError as exc:
        raise DataError(f"{folder}: cannot list the folder ({exc.strerror or exc})") from None


# ------------------------------------------------------------------------------ normalisation

def refuse_channels_last(shape: tuple, where: str) -> None:
    """A 4-D image batch whose last axis looks like channels (1, 3 or 4) and whose second does not: refused with the
    fix, never guessed (the one check for the loaders and LSDM.fit)."""
    shape = tuple(int(d) for d in shape)
    if len(shape) == 4 and shape[3] in (1, 3, 4) and shape[1] > 4:
        raise DataError(f"{where}: shape {shape} looks channels-last (N, H, W, C); images must be channels-first "
                        "(N, C, H, W): use x.transpose(0, 3, 1, 2) (numpy) or x.permute(0, 3, 1, 2) (torch)")


def _image_layout(arr: np.ndarray, where: str) -> np.ndarray:
    """(N, H, W) or (N, C, H, W) with C >= 2 (a single channel squeezed); refuses anything else."""
    refuse_channels_last(arr.shape, where)
    if arr.ndim not in (3, 4):
        raise DataError(f"{where}: images must be (N, H, W) or (N, C, H, W), got shape {arr.shape}")
    if 0 in arr.shape:
        raise DataError(f"{where}: no images or an empty image dimension: shape {arr.shape}")
    return arr[:, 0] if arr.ndim == 4 and arr.shape[1] == 1 else arr


def _value_range(arr: np.ndarray) -> list:
    lo, hi = arr.min(), arr.max()
    return [int(lo), int(hi)] if arr.dtype.kind in "biu" else [float(lo), float(hi)]


def _check_finite(arr: np.ndarray, where: str) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        i = int(np.argwhere(bad.reshape(len(arr), -1).any(1))[0, 0])
        raise DataError(f"{where}: {int(bad.sum())} NaN/Inf pixel values (first in image {i})")


_RULES = {"bool": "bool as 0/1", "u8": "divided by 255", "u16": "divided by 65535",
          "float": "none: floats already in [0, 1]",
          "minmax": "(x - lo) / (hi - lo), lo and hi the min and max of the training split"}


def _rule(arr: np.ndarray, where: str, rescale: bool) -> tuple[str, list | None]:
    """Which _RULES key maps `arr` onto [0, 1] (and for "minmax" its [lo, hi]); raises on values
    the rule does not allow."""
    dt = arr.dtype
    if dt == np.bool_:
        return "bool", None
    if dt.kind in "iu":
        full = 65535 if dt == np.uint16 else 255
        lo, hi = _value_range(arr)
        if lo < 0 or hi > full:
            raise DataError(f"{where}: integer pixel values must be in [0, {full}] ({dt}), got [{lo}, {hi}]")
        return ("u16" if full == 65535 else "u8"), None
    if dt.kind == "f":
        _check_finite(arr, where)
        lo, hi = _value_range(arr)
        if rescale:
            if hi <= lo:
                raise DataError(f"{where}: rescale=True needs varying values; every pixel is {lo}")
            return "minmax", [lo, hi]
        if lo < 0 or hi > 1:
            raise DataError(f"{where}: float pixel values must be in [0, 1], got [{lo:.6g}, {hi:.6g}]; scale them "
                            "first (e.g. x / 255), or pass rescale=True to map the training split's min and max "
                            "onto [0, 1]")
        return "float", None
    raise DataError(f"{where}: images must be integers (e.g. uint8 0..255), bool or floats in [0, 1]; got dtype {dt}")


def _train_rule(train: np.ndarray, where: str, rescale: bool) -> tuple[str, list | None, dict]:
    """The rule fixed once by the training images, and what the provenance says about it."""
    rule, rng = _rule(train, where, rescale)
    prov = {"scaling": _RULES[rule]}
    if rng is not None:
        prov["rescale_range"] = rng
    elif rescale:
        prov["rescale"] = f"not applied: rescale=True acts on float images, these are {train.dtype}"
    return rule, rng, prov


def _apply_rule(arr: np.ndarray, where: str, rule: str, train_range: list | None) -> tuple[np.ndarray, dict]:
    """float32 in [0, 1] by the training split's `rule`; the same checks for every array."""
    if rule == "minmax":
        if arr.dtype.kind != "f":
            raise DataError(f"{where}: dtype {arr.dtype} differs from the training images' (float, rescaled)")
        _check_finite(arr, where)
        lo, hi = train_range
        x = (arr.astype(np.float64) - lo) / (hi - lo)
        clipped = int(((x < 0) | (x > 1)).sum())
        return np.clip(x, 0, 1).astype(np.float32), ({"clipped_values": clipped} if clipped else {})
    own, _ = _rule(arr, where, rescale=False)
    if own != rule:
        raise DataError(f"{where}: dtype {arr.dtype} ({_RULES[own]}) differs from the training images' "
                        f"({_RULES[rule]})")
    if rule in ("bool", "float"):
        return arr.astype(np.float32), {}
    return arr.astype(np.float32) / np.float32(65535 if rule == "u16" else 255), {}


def _check_labels(labels: np.ndarray, where: str, n: int, images_where: str) -> np.ndarray:
    if labels.dtype == np.bool_ or labels.dtype.kind not in "iu":
        raise DataError(f"{where}: labels must be integers, got dtype {labels.dtype}"
                        + (" (convert whole-number floats with .astype(int))" if labels.dtype.kind == "f" else ""))
    if labels.ndim != 1:
        raise DataError(f"{where}: labels must be 1-D (N,), got shape {labels.shape}")
    if len(labels) != n:
        raise DataError(f"{images_where} has {n} images but {where} has {len(labels)} labels: count mismatch")
    if len(labels) and labels.min() < 0:
        i = int(np.argmax(labels < 0))
        raise DataError(f"{where}: label {int(labels[i])} at index {i} is negative; labels must be 0..K-1")
    if labels.dtype == np.uint64 and len(labels) and labels.max() > np.iinfo(np.int64).max:
        raise DataError(f"{where}: label {labels.max()} does not fit in int64")
    return labels.astype(np.int64)


def _check_label_range(labels: np.ndarray, where: str, num_classes: int) -> None:
    if len(labels) and labels.max() >= num_classes:
        i = int(np.argmax(labels >= num_classes))
        raise DataError(f"{where}: label {int(labels[i])} at index {i} is out of range [0, {num_classes})")


def _check_classes(y_train: np.ndarray, y_test: np.ndarray, train_where: str, test_where: str) -> int:
    """K, for labels 0..K-1 with every class in the training split; otherwise a DataError naming the array, the
    label value and its index (a stray 1000 among 0..9, a class only in the test labels)."""
    train_classes = np.unique(y_train)
    if len(train_classes) == 0:
        raise DataError(f"{train_where}: no training labels")
    # the contiguous run 0..k-1 the training labels start with, and the first training label beyond it
    k = int(np.argmax(train_classes != np.arange(len(train_classes)))) if (
        train_classes != np.arange(len(train_classes))).any() else len(train_classes)
    if k < len(train_classes):
        value = int(train_classes[k])
        i = int(np.argmax(y_train == value))
        rest = train_classes[k:]
        gap = f"class {k}" if value - 1 == k else f"classes {k}..{value - 1}"
        raise DataError(f"{train_where}: label {value} at index {i} leaves {gap} without examples: "
                        f"labels must be 0..K-1 with every class present (the labels here are 0..{k - 1}"
                        + (f" and {', '.join(map(str, rest[:5].tolist()))}{' ...' if len(rest) > 5 else ''})"
                           if k > 0 else f", starting at {value}: 1-based labels? subtract 1)"))
    unseen = y_test[~np.isin(y_test, train_classes)]
    if len(unseen):
        value = int(unseen[0])
        i = int(np.argmax(y_test == value))
        raise DataError(f"{test_where}: label {value} at index {i} has no training examples (the training labels in "
                        f"{train_where} are 0..{k - 1}); every test class must also appear in training")
    return k


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) sorted indices: round(fraction * count) of each class, drawn with default_rng(seed)."""
    rng = np.random.default_rng(seed)
    test = [rng.permutation(np.flatnonzero(labels == c))[: int(math.floor(fraction * np.sum(labels == c) + 0.5))]
            for c in np.unique(labels)]
    test = np.sort(np.concatenate(test)) if test else np.zeros(0, np.int64)
    return np.setdiff1d(np.arange(len(labels)), test), test


def _holdout_text(what: str, seed: int, per: str = "of each class") -> str:
    return (f"seeded split of {what}: {TEST_FRACTION:.0%} {per} (rounded) held out for test, "
            f"numpy default_rng({seed})")


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


def _mnist_candidates(stem: str) -> tuple[str, ...]:
    """The file names an MNIST file goes by, in the order they are looked for."""
    dotted = stem.replace("-idx", ".idx")
    return stem, stem + ".gz", dotted, dotted + ".gz"


def _find(folder: str, stem: str) -> str:
    for name in _mnist_candidates(stem):
        p = os.path.join(folder, name)
        if os.path.exists(p):
            return p
    raise DataError(f"{os.path.join(folder, stem)}[.gz]: file not found (looked in {folder!r} for the "
                    f"standard MNIST file names)")


def _read_mnist_split(folder: str, split: str) -> tuple[np.ndarray, np.ndarray, str, str]:
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
    return images, labels, img_path, lab_path


def load_mnist(folder: str, split: str = "train", num_classes: int = 10, *, rescale: bool = False) -> Dataset:
    """MNIST-format images and labels (the four standard file names, raw or .gz) from `folder`.
    Float IDX images must lie in [0, 1]; rescale=True maps the training images' [min, max] onto
    [0, 1] for both splits (reading the training file for the test split too)."""
    if split not in MNIST_FILES:
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: data folder not found")
    images, labels, img_path, lab_path = _read_mnist_split(folder, split)
    images = _image_layout(images, img_path)
    train, train_path = images, img_path
    if rescale and split == "test" and images.dtype.kind == "f":
        train, _, train_path, _ = _read_mnist_split(folder, "train")
    rule, train_range, scaling = _train_rule(train, train_path, rescale)
    x, notes = _apply_rule(images, img_path, rule, train_range)
    lab = _check_labels(labels, lab_path, len(images), img_path)
    _check_label_range(lab, lab_path, num_classes)
    name = f"mnist-{split}:{os.path.normpath(folder)}"  # the folder as given: no machine-specific absolute path
    prov = {"source": os.path.normpath(folder), "format": "mnist-idx", "split": split,
            "read_from": [os.path.basename(img_path), os.path.basename(lab_path)],
            "split_origin": "the files' own train/t10k split",
            "original_dtype": str(images.dtype.newbyteorder("=")), "original_range": _value_range(images),
            **scaling, **notes}
    return _finish(Dataset(x, lab, num_classes, name, prov))


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
    prov = {"source": "sklearn.datasets.load_digits", "format": "digits", "split": split,
            "split_origin": f"sklearn train_test_split, stratified, test_size={test_fraction}, random_state={seed}",
            "original_dtype": str(d.images.dtype), "original_range": [0, 16], "scaling": "divided by 16"}
    return _finish(Dataset(x[idx], y[idx], 10, f"sklearn-digits-{split}", prov))


def _finish(ds: Dataset) -> Dataset:
    """Add the facts every provenance carries, from the finished arrays."""
    p = ds.provenance
    p.update(count=len(ds), image_shape=list(ds.image_shape),
             channels="grey (H, W)" if ds.channels == 1 else f"{ds.channels} channels first (C, H, W)")
    if ds.labels is not None:
        p.update(num_classes=ds.num_classes,
                 class_counts=np.bincount(ds.labels, minlength=ds.num_classes).tolist())
    if ds.class_names is not None:
        p["class_ids"] = {n: i for i, n in enumerate(ds.class_names)}
    if ds.low is not None:
        p.update(low_shape=list(ds.low.shape[1:]), factor=ds.superres_factor,
                 unpaired=0 if ds.unpaired is None else len(ds.unpaired))
    return ds


# ------------------------------------------------------------------------------ .npz / .npy arrays

# numpy's header parser (tokenize, ast), zipfile and zlib raise many types for a damaged file (tokenize.TokenError,
# SyntaxError, ValueError, struct.error, BadZipFile, NotImplementedError...): every one becomes a DataError naming
# the file; MemoryError too (a header promising more than memory holds is a damaged header here)
_NPY_ERRORS = (Exception,)


@contextlib.contextmanager
def _npy_errors_as(message: str):
    """The errors numpy, zipfile and the OS raise on a damaged file, inside the block, as a DataError
    `message (Type: text)`; a DataError passes unchanged."""
    try:
        yield
    except DataError:
        raise
    except _NPY_ERRORS as exc:
        raise DataError(f"{message} ({type(exc).__name__}: {exc})") from None


def _read_npy(fh, size: int, where: str) -> np.ndarray:
    """One .npy stream of `size` bytes: header checked against the size before any allocation,
    no pickles (object arrays are refused)."""
    with _npy_errors_as(f"{where}: not a readable .npy array"):
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise DataError(f"{where}: unsupported .npy format version {version}")
        if dtype.hasobject:
            raise DataError(f"{where}: holds Python objects (dtype {dtype}); only numeric arrays are read")
        need = math.prod(shape) * dtype.itemsize
        have = size - fh.tell()
        if need != have:
            raise DataError(f"{where}: header says {dtype} {shape} ({need} bytes of data) but {have} bytes follow: "
                            "truncated or damaged")
        buf = bytearray(need)
        got = fh.readinto(buf)
        if got != need:
            raise DataError(f"{where}: {got} bytes of array data where the header promises {need}: truncated")
        arr = np.frombuffer(buf, dtype=dtype, count=math.prod(shape))
        return arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)


class _NpzArrays:
    """The arrays of one .npz file, read on demand."""

    def __init__(self, path: str):
        self.source = path
        if not os.path.isfile(path):
            raise DataError(f"{path}: file not found" if not os.path.exists(path) else f"{path}: not a file")
        with _npy_errors_as(f"{path}: not a readable .npz (zip) file"), zipfile.ZipFile(path) as z:
            infos = z.infolist()
        self.members = {}
        for info in infos:
            if not info.filename.endswith(".npy") or info.is_dir():
                raise DataError(f"{path}: member {info.filename!r} is not an .npy array; an .npz holds arrays only")
            self.members[info.filename[:-4]] = info
        self.names = set(self.members)

    def where(self, name: str) -> str:
        return f"{self.source}[{name!r}]"

    def read(self, name: str) -> np.ndarray:
        with _npy_errors_as(f"{self.where(name)}: cannot read the array"):
            with zipfile.ZipFile(self.source) as z, z.open(self.members[name]) as fh:
                return _read_npy(fh, self.members[name].file_size, self.where(name))


class _NpyFolderArrays:
    """The NAME.npy files of a folder (other files ignored), read on demand."""

    def __init__(self, folder: str):
        self.source = folder
        if not os.path.isdir(folder):
            raise DataError(f"{folder}: folder not found" if not os.path.exists(folder) else f"{folder}: not a folder")
        self.names = {n[:-4] for n in _listdir(folder) if n.endswith(".npy")}
        if not self.names:
            raise DataError(f"{folder}: no .npy files (expected x_train.npy, y_train.npy, x_test.npy, y_test.npy, "
                            "or images.npy and labels.npy)")

    def where(self, name: str) -> str:
        return os.path.join(self.source, name + ".npy")

    def read(self, name: str) -> np.ndarray:
        path = self.where(name)
        try:
            with open(path, "rb") as fh:
                return _read_npy(fh, os.fstat(fh.fileno()).st_size, path)
        except IsADirectoryError:
            raise DataError(f"{path}: is a folder, expected an .npy file") from None
        except OSError as exc:
            raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _layout_of(names: set[str], source: str) -> str:
    """Which array-name layout `names` follow: class-split, class-single, pairs-split or pairs-single."""
    unknown = sorted(names - set(ARRAY_NAMES))
    if unknown:
        raise DataError(f"{source}: unexpected array name(s) {unknown}; expected {', '.join(CLASS_SPLIT)} "
                        f"(or {', '.join(CLASS_SINGLE)}) for labelled images, or {', '.join(PAIRS_SPLIT)} "
                        f"(or {', '.join(PAIRS_SINGLE)}) with optional {UNPAIRED} for super-resolution pairs")
    layouts = {"class-split": set(CLASS_SPLIT), "class-single": set(CLASS_SINGLE),
               "pairs-split": set(PAIRS_SPLIT) | {UNPAIRED}, "pairs-single": set(PAIRS_SINGLE) | {UNPAIRED}}
    used = [k for k, v in layouts.items() if names & (v - {UNPAIRED})]
    if len(used) != 1:
        found = ", ".join(sorted(names)) or "none"
        raise DataError(f"{source}: arrays {found} mix or miss the layouts: give x_train/y_train/x_test/y_test, "
                        "or images/labels, or low_train/high_train/low_test/high_test, or low/high")
    layout = used[0]
    if layout == "class-split" and names == {"x_train", "y_train"}:
        return "class-train-only"
    need = {"class-split": set(CLASS_SPLIT), "class-single": set(CLASS_SINGLE), "pairs-split": set(PAIRS_SPLIT),
            "pairs-single": set(PAIRS_SINGLE)}[layout]
    missing = sorted(need - names)
    if missing:
        raise DataError(f"{source}: missing array(s) {missing} (found {', '.join(sorted(names))})")
    return layout


def _from_arrays(src, split: str, fmt: str, seed: int, rescale: bool) -> Dataset:
    layout = _layout_of(src.names, src.source)
    prov = {"source": os.path.normpath(src.source), "format": fmt, "split": split}
    if layout.startswith("pairs"):
        return _pairs_from_arrays(src, layout, split, seed, rescale, prov)
    if layout == "class-split":
        xn, yn = ("x_train", "y_train") if split == "train" else ("x_test", "y_test")
        sources = {"train": ("x_train", "y_train"), "test": ("x_test", "y_test")}
        prov["split_origin"] = "the file's own x_train/y_train and x_test/y_test arrays"
    else:
        xn, yn = ("images", "labels") if layout == "class-single" else ("x_train", "y_train")
        sources = {"train": (xn, yn), "test": (xn, yn)}
        prov["split_origin"] = _holdout_text(f"{xn}/{yn}", seed)
    arrays = {}
    for part, (a, b) in sources.items():
        if (a, b) == sources["train"] and "train" in arrays:
            arrays[part] = arrays["train"]
            continue
        x = _image_layout(src.read(a), src.where(a))
        arrays[part] = (x, _check_labels(src.read(b), src.where(b), len(x), src.where(a)))
    if layout != "class-split":
        x, y = arrays["train"]
        _check_classes(y, y[:0], src.where(yn), src.where(yn))  # on the whole array: indices as in the file
        tr, te = stratified_holdout(y, TEST_FRACTION, seed)
        if len(te) == 0:
            raise DataError(f"{src.where(xn)}: too few images ({len(x)}) to hold out {TEST_FRACTION:.0%} of each class "
                            "for testing; give separate test arrays")
        arrays = {"train": (x[tr], y[tr]), "test": (x[te], y[te])}
    (x_tr, y_tr), (x_te, y_te) = arrays["train"], arrays["test"]
    if x_te.shape[1:] != x_tr.shape[1:]:
        raise DataError(f"{src.where(sources['test'][0])}: test images are {x_te.shape[1:]} but training images are "
                        f"{x_tr.shape[1:]}")
    num_classes = _check_classes(y_tr, y_te, src.where(sources["train"][1]), src.where(sources["test"][1]))
    rule, train_range, scaling = _train_rule(x_tr, src.where(sources["train"][0]), rescale)
    xs, ys = arrays[split]
    images, notes = _apply_rule(xs, src.where(xn), rule, train_range)
    prov.update(read_from=[xn, yn], original_dtype=str(xs.dtype), original_range=_value_range(xs), **scaling,
                **notes)
    return _finish(Dataset(images, ys, num_classes, f"{fmt}-{split}:{prov['source']}", prov))


def _pairs_from_arrays(src, layout: str, split: str, seed: int, rescale: bool, prov: dict) -> Dataset:
    names = {"train": ("low_train", "high_train"), "test": ("low_test", "high_test")} if layout == "pairs-split" \
        else {"train": ("low", "high"), "test": ("low", "high")}
    pairs = {}
    for s in ("train", "test") if layout == "pairs-split" else ("train",):
        ln, hn = names[s]
        low, high = (_image_layout(src.read(n), src.where(n)) for n in (ln, hn))
        if len(low) != len(high):
            raise DataError(f"{src.where(ln)} has {len(low)} images but {src.where(hn)} has {len(high)}: "
                            "count mismatch")
        _check_pair_shapes(low, high, src.where(ln), src.where(hn))
        pairs[s] = (low, high)
    if layout == "pairs-single":
        low, high = pairs["train"]
        tr, te = stratified_holdout(np.zeros(len(high), np.int64), TEST_FRACTION, seed)
        if len(te) == 0:
            raise DataError(f"{src.where('high')}: too few pairs ({len(high)}) to hold out {TEST_FRACTION:.0%} for "
                            "testing; give low_test/high_test")
        pairs = {"train": (low[tr], high[tr]), "test": (low[te], high[te])}
        prov["split_origin"] = _holdout_text("the low/high pairs", seed, per="of the pairs")
    else:
        prov["split_origin"] = "the file's own low_train/high_train and low_test/high_test arrays"
        if pairs["test"][1].shape[1:] != pairs["train"][1].shape[1:] or \
                pairs["test"][0].shape[1:] != pairs["train"][0].shape[1:]:
            raise DataError(f"{src.where('high_test')}: test pairs are {pairs['test'][0].shape[1:]} -> "
                            f"{pairs['test'][1].shape[1:]} but training pairs are {pairs['train'][0].shape[1:]} -> "
                            f"{pairs['train'][1].shape[1:]}")
    hn_train = names["train"][1]
    rule, train_range, scaling = _train_rule(pairs["train"][1], src.where(hn_train), rescale)
    ln, hn = names[split]
    low, high = pairs[split]
    notes = {}
    high_f, n1 = _apply_rule(high, src.where(hn), rule, train_range)
    low_f, n2 = _apply_rule(low, src.where(ln), rule, train_range)
    notes.update({f"{k} ({hn})": v for k, v in n1.items()}, **{f"{k} ({ln})": v for k, v in n2.items()})
    unpaired = None
    if split == "train" and UNPAIRED in src.names:
        u = _image_layout(src.read(UNPAIRED), src.where(UNPAIRED))
        if u.shape[1:] != high.shape[1:]:
            raise DataError(f"{src.where(UNPAIRED)}: images are {u.shape[1:]} but {src.where(hn)} are {high.shape[1:]}")
        unpaired, n3 = _apply_rule(u, src.where(UNPAIRED), rule, train_range)
        notes.update({f"{k} ({UNPAIRED})": v for k, v in n3.items()})
    prov.update(read_from=[ln, hn] + ([UNPAIRED] if unpaired is not None else []), original_dtype=str(high.dtype),
                original_range=_value_range(high), **scaling, **notes)
    return _finish(Dataset(high_f, None, None, f"{prov['format']}-{split}:{prov['source']}", prov,
                           low=low_f, unpaired=unpaired))


def _check_pair_shapes(low: np.ndarray, high: np.ndarray, low_where: str, high_where: str) -> None:
    h, w = high.shape[-2:]
    lh, lw = low.shape[-2:]
    if low.shape[1:-2] != high.shape[1:-2] or h % lh or w % lw or h // lh != w // lw:
        raise DataError(f"{low_where}: low-resolution images {low.shape[1:]} must be the high-resolution images "
                        f"{high.shape[1:]} ({high_where}) shrunk by one whole factor on both sides, same channels")


# ------------------------------------------------------------------------------ image folders

_GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N"}


def _is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _scan_classes(root: str) -> tuple[list[str], list[tuple[str, str]], list[str]]:
    """Class folder names (sorted), (file, class) for every image file, and the skipped files."""
    entries = _listdir(root)
    classes = [e for e in entries if not e.startswith(".") and os.path.isdir(os.path.join(root, e))]
    skipped = []
    for e in entries:
        p = os.path.join(root, e)
        if e in classes or os.path.isdir(p):
            continue
        if _is_image_file(e):
            raise DataError(f"{p}: an image outside the class folders; put each image in its class's sub-folder")
        skipped.append(p)
    if not classes:
        raise DataError(f"{root}: no class sub-folders (an image folder holds one sub-folder of images per class)")
    files = []
    for c in classes:
        found = 0
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, c), onerror=None):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # e.g. .ipynb_checkpoints
            for n in sorted(filenames):
                p = os.path.join(dirpath, n)
                if _is_image_file(n) and not n.startswith("."):
                    files.append((p, c))
                    found += 1
                else:
                    skipped.append(p)
        if not found:
            raise DataError(f"{os.path.join(root, c)}: class folder has no image files (looked for "
                            f"{', '.join(IMAGE_EXTENSIONS)})")
    return classes, files, skipped


def _open_image(path: str):
    from PIL import Image

    try:
        return Image.open(path)
    except Exception as exc:  # noqa: BLE001 - Pillow's decoders raise many types for damaged files
        raise DataError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None


def _decode(path: str, colour: bool) -> np.ndarray:
    """One image as float32 in [0, 1]: (H, W), or (3, H, W) when `colour`."""
    im = _open_image(path)
    try:
        with im:
            mode = im.mode
            if mode == "F":
                raise DataError(f"{path}: floating-point images (mode F) are not read; save as 8- or 16-bit")
            if mode == "I" or mode.startswith("I;16"):
                a = np.asarray(im).astype(np.int64)
                if a.min() < 0 or a.max() > 65535:
                    raise DataError(f"{path}: 16-bit image values must be in [0, 65535], got [{a.min()}, {a.max()}]")
                x = (a / 65535).astype(np.float32)
            elif mode in _GREY_MODES:
                x = np.asarray(im.convert("L"), dtype=np.float32) / 255
            else:
                x = np.asarray(im.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - as in _open_image: a damaged file fails in the decoder
        raise DataError(f"{path}: cannot decode the image ({type(exc).__name__}: {exc})") from None
    if colour and x.ndim == 2:
        x = np.broadcast_to(x, (3, *x.shape))
    return x


def _load_image_folder(root: str, split: str, seed: int) -> Dataset:
    if importlib.util.find_spec("PIL") is None:
        raise DataError("the image-folder format needs Pillow: pip install pillow")
    if not os.path.isdir(root):
        raise DataError(f"{root}: folder not found" if not os.path.exists(root) else f"{root}: not a folder")
    subdirs = {e for e in _listdir(root) if os.path.isdir(os.path.join(root, e))}
    if subdirs & set(SPLITS) and not set(SPLITS) <= subdirs:
        have = sorted(subdirs & set(SPLITS))[0]
        raise DataError(f"{root}: has a '{have}' folder but not both 'train' and 'test'; for a train/test layout "
                        "give both, each with one sub-folder per class")
    if set(SPLITS) <= subdirs:
        classes, train_files, skipped = _scan_classes(os.path.join(root, "train"))
        test_classes, test_files, more = _scan_classes(os.path.join(root, "test"))
        extra = sorted(set(test_classes) - set(classes))
        if extra:
            raise DataError(f"{os.path.join(root, 'test', extra[0])}: class {extra[0]!r} has no folder in "
                            f"{os.path.join(root, 'train')}")
        skipped += more
        origin = "the folder's own train/ and test/ sub-folders"
    else:
        classes, files, skipped = _scan_classes(root)
        labels = np.array([classes.index(c) for _, c in files], np.int64)
        tr, te = stratified_holdout(labels, TEST_FRACTION, seed)
        if len(te) == 0:
            raise DataError(f"{root}: too few images ({len(files)}) to hold out {TEST_FRACTION:.0%} of each class for "
                            "testing; add images or use train/ and test/ sub-folders")
        train_files, test_files = [files[i] for i in tr], [files[i] for i in te]
        origin = _holdout_text("the class folders", seed)
    # header pass over both splits (sizes and modes, nothing decoded): both splits get one shape
    first, size, modes = None, None, {}
    for path, _ in train_files + test_files:
        with _open_image(path) as im:
            if size is None:
                first, size = path, im.size
            elif im.size != size:
                raise DataError(f"{path}: image is {im.size[0]} wide x {im.size[1]} high but {first} is {size[0]} x "
                                f"{size[1]}; all images must share one size")
            modes[im.mode] = modes.get(im.mode, 0) + 1
    colour = any(m not in _GREY_MODES and m != "F" for m in modes)
    files = train_files if split == "train" else test_files
    images = np.stack([_decode(p, colour) for p, _ in files]).astype(np.float32, copy=False)
    labels = np.array([classes.index(c) for _, c in files], np.int64)
    bits = ", 16-bit values divided by 65535" if any(m == "I" or m.startswith("I;16") for m in modes) else ""
    prov = {"source": os.path.normpath(root), "format": "image-folder", "split": split, "split_origin": origin,
            "original_dtype": "image modes (both splits) " + ", ".join(f"{m} x{k}" for m, k in sorted(modes.items())),
            "scaling": "8-bit values divided by 255" + bits,
            "colour": ("RGB (grey images replicated to 3 channels; alpha dropped)" if colour
                       else "grey (alpha dropped)")}
    if skipped:
        prov["skipped_files"] = {"count": len(skipped), "first": [os.path.relpath(p, root) for p in skipped[:5]],
                                 "why": f"no image extension ({', '.join(IMAGE_EXTENSIONS)})"}
    return _finish(Dataset(images, labels, len(classes), f"image-folder-{split}:{prov['source']}", prov,
                           class_names=list(classes)))


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
    if labels is None:
        raise DataError("split_paired_unpaired needs class labels; a data set of super-resolution pairs (Dataset.low "
                        "set) has none: split its pairs as one class with labels=np.zeros(len(ds), int)")
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
    """(N, H, W) -> (N, H/f, W/f), or (N, C, H, W) -> (N, C, H/f, W/f): the mean of each f x f block."""
    *lead, h, w = images.shape
    if factor < 1 or h % factor or w % factor:
        raise DataError(f"super-resolution factor {factor} must divide the image size {h}x{w}")
    return images.reshape(*lead, h // factor, factor, w // factor, factor).mean(axis=(-3, -1))


def make_conditions(ds: Dataset, task: str, factor: int | None = 4) -> np.ndarray:
    """x for each example: one-hot labels ("class"), or the flat low-resolution image ("superres"):
    the data set's own `low` partner when it has pairs (`factor` must then be None or match), else
    the image average-pooled by `factor`."""
    if task == "class":
        if ds.labels is None:
            raise DataError(f"{ds.name}: task 'class' needs labels; this data set has super-resolution pairs only")
        return np.eye(ds.num_classes, dtype=np.float32)[ds.labels]
    if task == "superres":
        if ds.low is not None:
            if factor is not None and factor != ds.superres_factor:
                raise DataError(f"{ds.name}: its low-resolution images are 1/{ds.superres_factor} of the high ones; "
                                f"factor {factor} does not match")
            return ds.low.reshape(len(ds), -1)
        return average_pool(ds.images, 4 if factor is None else factor).reshape(len(ds), -1).astype(np.float32)
    raise DataError(f"task must be one of {TASKS}, got {task!r}")
