"""Make "patches": 10 classes of 28x28 grey patches of natural images, in MNIST IDX format.

A second held-out set, built differently from "textures" (scripts/make_texture_set.py): real photographs
and texture scans, so real noise, grain and edges. Class k is "a patch of source image k": a square crop
of random side 28-56 px at a random place, area-resampled to 28x28 (Pillow's BOX filter), under one of the
8 flips/quarter turns, with a small random gain (x0.85-1.15 about the patch mean) and offset (+-0.05).
Training patches come from the left 75 % of each image's columns, test patches from the right 25 %, so no
test pixel was ever in a training patch.

The source images are the ones bundled inside scikit-image's wheel (skimage/data/, version 0.26.0), read
with Pillow and converted to grey with Pillow's "L" (ITU-R 601-2 luma); nothing of scikit-image is
imported. Licences (as stated in skimage/data/_fetchers.py): brick, grass, gravel: CC0 (CC0Textures);
coffee, chelsea: CC0 by the photographers; astronaut, text, hubble_deep_field: public domain (NASA, or
"no known copyright restrictions, released into the public domain"); coins, ihc: "no known copyright
restrictions". Each file's SHA-256 is checked before use, so the output is a pure function of the seed
and sizes.

Harder to classify than "textures": with lsdm_fast's evaluation nets (scripts/eval_net_accuracy.py, default
budget) the feature CNN reaches 82.4 % test accuracy but the MLP judge only 55.9 % (coffee, chelsea and grass
patches are confused), so conditional accuracy is weakly measured here; it suits reconstruction and FD checks.
JPEG decoding (hubble_deep_field.jpg) may differ by a level between Pillow builds.

Usage (from the repository root):
    pip download --no-deps scikit-image==0.26.0 -d /tmp/ski && unzip -q /tmp/ski/scikit_image-*.whl 'skimage/data/*' -d /tmp/ski
    python scripts/make_patch_set.py --images path/to/skimage/data        # -> data_local/patches (git-ignored)
(or with scikit-image installed, --images may be left out). An existing output is refused unless --overwrite.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from make_texture_set import FILES, gzip_bytes, idx_bytes, sample_grid  # noqa: E402

SIDE = 28
VERSION = "patches-v1"
SOURCES = (  # label: file in skimage/data, its SHA-256 in scikit-image 0.26.0
    ("brick.png", "7966caf324f6ba843118d98f7a07746d22f6a343430add0233eca5f6eaaa8fcf"),
    ("grass.png", "b6b6022426b38936c43a4ac09635cd78af074e90f42ffa8227ac8b7452d39f89"),
    ("gravel.png", "c48615b451bf1e606fbd72c0aa9f8cc0f068ab7111ef7d93bb9b0f2586440c12"),
    ("coins.png", "f8d773fc9cfa6f4d8e5942dc34d0a0788fcaed2a4fefbbed0aef5398d7ef4cba"),
    ("text.png", "bd84aa3a6e3c9887850d45d606c96b2e59433fbef50338570b63c319e668e6d1"),
    ("coffee.png", "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7"),
    ("chelsea.png", "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb"),
    ("astronaut.png", "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5"),
    ("hubble_deep_field.jpg", "3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4"),
    ("ihc.png", "f8dd1aa387ddd1f49d8ad13b50921b237df8e9b262606d258770687b0ef93cef"),
)
SPLIT_IDS = {"train": 0, "test": 1}
TRAIN_COLUMNS = 0.75


def default_images_dir() -> str | None:
    import importlib.util

    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], "data")


def load_sources(folder: str) -> list[np.ndarray]:
    """The 10 source images as grey float arrays in [0, 1], after checking each file's SHA-256."""
    from PIL import Image

    out = []
    for name, sha in SOURCES:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: not found (--images must be scikit-image 0.26.0's skimage/data folder)")
        got = hashlib.sha256(open(path, "rb").read()).hexdigest()
        if got != sha:
            raise ValueError(f"{path}: SHA-256 {got}, expected {sha} (not scikit-image 0.26.0's file)")
        with Image.open(path) as im:
            out.append(np.asarray(im.convert("L"), dtype=np.float64) / 255.0)
    return out


def crop_patch(img: np.ndarray, rng: np.random.Generator, split: str) -> np.ndarray:
    """One 28x28 patch in [0, 1] from the split's column range of `img`."""
    from PIL import Image

    h, w = img.shape
    cut = int(round(w * TRAIN_COLUMNS))
    lo, hi = (0, cut) if split == "train" else (cut, w)
    side = int(rng.integers(SIDE, min(2 * SIDE, hi - lo, h) + 1))
    top = int(rng.integers(0, h - side + 1))
    left = int(rng.integers(lo, hi - side + 1))
    crop = img[top:top + side, left:left + side]
    if side != SIDE:
        crop = np.asarray(Image.fromarray(crop.astype(np.float32), mode="F").resize((SIDE, SIDE), Image.BOX),
                          dtype=np.float64)
    crop = np.rot90(crop, int(rng.integers(4)))
    if rng.integers(2):
        crop = crop[:, ::-1]
    m = crop.mean()
    return np.clip(m + (crop - m) * rng.uniform(0.85, 1.15) + rng.uniform(-0.05, 0.05), 0.0, 1.0)


def make_split(sources: list[np.ndarray], split: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    k = len(sources)
    counts = [n // k + (1 if c < n % k else 0) for c in range(k)]
    images = np.empty((n, SIDE, SIDE), np.uint8)
    labels = np.empty(n, np.uint8)
    at = 0
    for c, cnt in enumerate(counts):
        rng = np.random.default_rng(np.random.SeedSequence([seed, SPLIT_IDS[split], c, 7]))
        for _ in range(cnt):
            images[at] = np.round(crop_patch(sources[c], rng, split) * 255)
            labels[at] = c
            at += 1
    order = np.random.default_rng(np.random.SeedSequence([seed, SPLIT_IDS[split], 1000, 7])).permutation(n)
    return images[order], labels[order]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", default=None, help="scikit-image 0.26.0's skimage/data folder (default: the "
                                                   "installed scikit-image's)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(HERE), "data_local", "patches"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=60_000)
    p.add_argument("--n-test", type=int, default=10_000)
    p.add_argument("--grid", default=None, help="also write a PNG of test samples, one row per class")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    folder = a.images or default_images_dir()
    if folder is None:
        p.error("--images is needed: scikit-image is not installed (see the usage above)")
    sys.path.insert(0, os.path.dirname(HERE))
    from lsdm_fast.io import atomic_write_bytes

    names = [f for pair in FILES.values() for f in pair] + ["SOURCE.md"]
    present = [f for f in names if os.path.exists(os.path.join(a.out, f))]
    if present and not a.overwrite:
        print(f"error: {a.out}: already holds {', '.join(present)}; pass --overwrite to replace them", file=sys.stderr)
        return 2
    try:
        sources = load_sources(folder)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    os.makedirs(a.out, exist_ok=True)
    digests, test = {}, None
    for split, n in (("train", a.n_train), ("test", a.n_test)):
        images, labels = make_split(sources, split, n, a.seed)
        test = (images, labels) if split == "test" else test
        for name, arr in zip(FILES[split], (images, labels)):
            data = gzip_bytes(idx_bytes(arr))
            atomic_write_bytes(os.path.join(a.out, name), data)
            digests[name] = hashlib.sha256(data).hexdigest()
            print(f"{os.path.join(a.out, name)}  sha256 {digests[name]}")
    classes = "\n".join(f"  {c}: {name}" for c, (name, _) in enumerate(SOURCES))
    rows = "\n".join(f"| {name} | {h} |" for name, h in digests.items())
    doc = __doc__.split("\n\n")
    atomic_write_bytes(os.path.join(a.out, "SOURCE.md"), f"""# patches ({VERSION}): 10 classes of 28x28 grey natural-image patches, MNIST IDX format

{a.n_train} training and {a.n_test} test images (uint8), labels 0..9, equal counts per class. Made by
lsdm_fast's `scripts/make_patch_set.py` with seed {a.seed} from scikit-image 0.26.0's bundled images.

{doc[1]}

{doc[2]}

Classes (label: source image):
{classes}

| file | sha256 |
|---|---|
{rows}
""".encode())
    if a.grid:
        sample_grid(*test).save(a.grid)
        print(f"wrote {a.grid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
