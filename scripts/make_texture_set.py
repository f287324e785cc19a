"""Make "textures": 10 classes of 28x28 grey images of textured objects, in MNIST IDX format.

A held-out data set for lsdm_fast that is not digits: each image is one object of the class's shape,
filled with the class's texture, on a dim, softly mottled background, with a random light gradient and
a little pixel noise. The object is roughly centred, like an MNIST digit, with a random size (x0.75-1.12),
tilt (+-45 degrees), offset (+-2.5 px) and shape parameters; the texture's scale, orientation, phase and
contrast and the object's and background's brightness are random per image. Texture periods are
2.5-8 px at 28x28: high-frequency detail that a small autoencoder blurs away, and a class is told by its
outline (what a pixel MLP sees) and its texture (what a CNN sees).

Classes (label: shape, texture):
  0 disc (elliptic up to 0.7)       grating: parallel sinusoidal stripes
  1 square                          checker: a checkerboard (soft-edged squares)
  2 triangle                        dots on a hexagonal lattice
  3 ring                            cells: Voronoi cells, each its own brightness, dark borders (cobblestones)
  4 plus                            bricks: running bond, each brick its own brightness, mortar lines
  5 five-pointed star               weave: basket weave, blocks of stripes alternating in direction
  6 bar with round ends             grain: isotropic fine noise (Gaussian-filtered white noise, 0.5-1.1 px)
  7 crescent                        marble: stripes warped by smooth noise (veins)
  8 dome (disc cut flat below)      rings: concentric rings about a point near the object
  9 square frame                    chevron: zigzag (herringbone) stripes

Everything is drawn from numpy's default_rng seeded through a SeedSequence per (seed, split,
class), so the output is a pure function of (seed, sizes) and each class's images do not depend on
the other classes. Images are rendered at 2x (56x56) and area-averaged to 28x28 (anti-aliasing),
then rounded to uint8. The gzip files carry no time stamp or name, so the same arguments give
byte-identical files.

Usage (from the repository root; about a minute of CPU time on one core for 60,000 + 10,000):
    python scripts/make_texture_set.py                       # -> data_local/textures (git-ignored)
    python scripts/make_texture_set.py --out data_local/textures --grid samples.png
    python scripts/make_texture_set.py --n-train 600 --n-test 100 --out /tmp/tiny
An existing output folder with IDX files is refused unless --overwrite.
"""
from __future__ import annotations

import argparse
import gzip
import io
import os
import struct
import sys

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

SIDE = 28
SUPER = 2  # render at SUPER x SIDE, then area-average
CLASSES = ("grating", "checker", "dots", "cells", "bricks", "weave", "grain", "marble", "rings", "chevron")
SPLIT_IDS = {"train": 0, "test": 1}
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
VERSION = "textures-v1"


# ------------------------------------------------------------------------------ geometry

def _pixel_grid() -> tuple[np.ndarray, np.ndarray]:
    """Sample-point coordinates of the supersampled grid, in final-pixel units (0..SIDE)."""
    n = SIDE * SUPER
    c = (np.arange(n) + 0.5) / SUPER
    return np.meshgrid(c, c, indexing="ij")  # (row y, col x)


def _polygon(r, theta, sides: int, apothem: float, theta0: float):
    """Inside a regular polygon (unit frame): r cos(angle to the nearest edge normal) <= apothem."""
    step = 2 * np.pi / sides
    rel = np.mod(theta - theta0, step) - step / 2
    return r * np.cos(rel) <= apothem


def _shape_mask(label: int, rng: np.random.Generator, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The class's silhouette (bool) in the object's unit frame (a right, b down, radius ~1)."""
    r, theta = np.hypot(a, b), np.arctan2(b, a)
    if label == 0:  # disc (slightly elliptic)
        return (a / rng.uniform(0.7, 1.0)) ** 2 + b ** 2 <= 1
    if label == 1:  # square
        return np.maximum(np.abs(a), np.abs(b)) <= 0.82
    if label == 2:  # triangle, apex up
        return _polygon(r, theta, 3, 0.58, np.pi / 6)  # an edge normal points down: flat base
    if label == 3:  # ring
        return (r <= 1.0) & (r >= rng.uniform(0.35, 0.65))
    if label == 4:  # plus
        w = rng.uniform(0.32, 0.42)
        return ((np.abs(a) <= w) & (np.abs(b) <= 1)) | ((np.abs(b) <= w) & (np.abs(a) <= 1))
    if label == 5:  # five-pointed star
        return r <= 0.55 + 0.5 * (0.5 + 0.5 * np.cos(5 * (theta + np.pi / 2))) ** 2
    if label == 6:  # bar with round ends
        half = rng.uniform(0.35, 0.75)
        return np.hypot(np.maximum(np.abs(a) - half, 0), b) <= rng.uniform(0.42, 0.62)
    if label == 7:  # crescent, opening to the upper right
        return (r <= 1.0) & (np.hypot(a - 0.5, b + 0.3) >= 0.8)
    if label == 8:  # dome: a disc cut flat below
        return (r <= 1.05) & (b <= rng.uniform(0.25, 0.45))
    if label == 9:  # square frame
        m = np.maximum(np.abs(a), np.abs(b))
        return (m <= 0.92) & (m >= rng.uniform(0.35, 0.6))
    raise ValueError(f"no shape for label {label}")


def _silhouette(label: int, rng: np.random.Generator, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, tuple]:
    """A soft mask (H, W) in [0, 1] of the class's shape, roughly centred like an MNIST digit, with a random
    size, tilt and offset; and its centre and radius."""
    cy, cx = 14.0 + rng.uniform(-2.5, 2.5, size=2)
    radius = 10.0 * rng.uniform(0.75, 1.12)
    rot = rng.uniform(-0.8, 0.8)  # +-45 degrees
    dy, dx = y - cy, x - cx
    a = (dx * np.cos(rot) + dy * np.sin(rot)) / radius
    b = (-dx * np.sin(rot) + dy * np.cos(rot)) / radius
    mask = _shape_mask(label, rng, a, b).astype(np.float64)
    mask = ndimage.gaussian_filter(mask, 0.6 * SUPER)  # soft edges, as pen strokes have
    return mask, (cy, cx, radius)


def _frame(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, centre: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Texture coordinates (u, v): the pixel grid rotated by a random angle about the object centre,
    shifted by a random phase."""
    cy, cx = centre[:2]
    ang = rng.uniform(0, 2 * np.pi)
    dy, dx = y - cy, x - cx
    u = dx * np.cos(ang) + dy * np.sin(ang) + rng.uniform(0, 50)
    v = -dx * np.sin(ang) + dy * np.cos(ang) + rng.uniform(0, 50)
    return u, v


def _smooth_noise(rng: np.random.Generator, shape: tuple, sigma_px: float) -> np.ndarray:
    """White noise Gaussian-filtered with `sigma_px` (final pixels), scaled to unit std."""
    n = ndimage.gaussian_filter(rng.standard_normal(shape), sigma_px * SUPER, mode="wrap")
    return n / (n.std() + 1e-12)


def _hash01(i: np.ndarray, j: np.ndarray, salt: int) -> np.ndarray:
    """A deterministic pseudo-random value in [0, 1) per integer cell (i, j) (for per-brick shades)."""
    h = (i.astype(np.int64) * 73856093) ^ (j.astype(np.int64) * 19349663) ^ (salt * 83492791)
    h = (h ^ (h >> 13)) * 1274126177
    return ((h ^ (h >> 16)) & 0xFFFF) / 65536.0


# ------------------------------------------------------------------------------ textures (values ~[-1, 1])

def _grating(rng, u, v, centre):
    return np.sin(2 * np.pi * u / rng.uniform(2.6, 6.0))


def _checker(rng, u, v, centre):
    p = rng.uniform(3.0, 7.0)  # side of one square
    s = np.sin(np.pi * u / p) * np.sin(np.pi * v / p)
    return np.tanh(4.0 * s)


def _dots(rng, u, v, centre):
    p = rng.uniform(3.2, 6.5)  # lattice spacing
    r0 = p * rng.uniform(0.22, 0.34)
    # hexagonal lattice: two rectangular sub-lattices offset by half a cell
    a, b = p, p * np.sqrt(3)
    d1 = np.hypot((u % a) - a / 2, (v % b) - b / 2)
    d2 = np.hypot(((u + a / 2) % a) - a / 2, ((v + b / 2) % b) - b / 2)
    d = np.minimum(d1, d2)
    return np.tanh((r0 - d) * 2.5)


def _cells(rng, u, v, centre):
    size = rng.uniform(3.5, 7.0)  # typical cell diameter
    n = max(int(round((SIDE + 16) ** 2 / size ** 2)), 4)
    seeds = rng.uniform(-8, SIDE + 8, size=(n, 2))  # covers the rotated frame's corners
    shade = rng.uniform(-0.6, 0.9, size=n)
    pts = np.stack([u.ravel(), v.ravel()], 1)
    tree = cKDTree(seeds)
    # the frame's u, v are rotated/shifted; cells live in the same rotated frame (seeds offset to it)
    pts = pts - np.array([u.mean() - SIDE / 2, v.mean() - SIDE / 2])
    d, idx = tree.query(pts, k=2)
    border = (d[:, 1] - d[:, 0])  # 0 on a cell border
    val = np.where(border < 0.55, -1.0, shade[idx[:, 0]])
    return val.reshape(u.shape)


def _bricks(rng, u, v, centre):
    h = rng.uniform(2.6, 4.8)
    w = h * rng.uniform(1.8, 2.8)
    mortar = rng.uniform(0.45, 0.7)
    row = np.floor(v / h)
    uu = u + 0.5 * w * (row % 2)
    col = np.floor(uu / w)
    fv, fu = v - row * h, uu - col * w
    in_mortar = (fv < mortar) | (fu < mortar)
    shade = 0.9 * (_hash01(row, col, int(rng.integers(1 << 20))) * 1.4 - 0.4)
    return np.where(in_mortar, -1.0, shade)


def _weave(rng, u, v, centre):
    s = rng.uniform(3.6, 7.0)  # block side
    strands = 2 + int(rng.integers(0, 2))  # stripes per block
    parity = (np.floor(u / s) + np.floor(v / s)) % 2
    along = np.where(parity == 0, u, v)
    return np.sin(2 * np.pi * along * strands / s)


def _grain(rng, u, v, centre):
    return np.clip(_smooth_noise(rng, u.shape, rng.uniform(0.5, 1.1)), -2.5, 2.5) / 1.6


def _marble(rng, u, v, centre):
    p = rng.uniform(3.5, 7.0)
    warp = _smooth_noise(rng, u.shape, rng.uniform(2.0, 3.5)) * rng.uniform(1.2, 2.5)
    return np.sin(2 * np.pi * (u / p + warp / 2.0))


def _rings(rng, u, v, centre):
    cy, cx, radius = centre
    ry, rx = cy + rng.uniform(-1, 1) * radius, cx + rng.uniform(-1, 1) * radius
    y, x = _pixel_grid()
    return np.sin(2 * np.pi * np.hypot(y - ry, x - rx) / rng.uniform(2.6, 5.5) + rng.uniform(0, 2 * np.pi))


def _chevron(rng, u, v, centre):
    p = rng.uniform(2.8, 5.5)  # stripe period
    arm = rng.uniform(3.5, 7.0)  # width of one zig
    slope = rng.uniform(0.7, 1.3)
    tri = np.abs((u / arm) % 1.0 - 0.5) * arm * slope
    return np.sin(2 * np.pi * (v + tri) / p)


TEXTURES = (_grating, _checker, _dots, _cells, _bricks, _weave, _grain, _marble, _rings, _chevron)


# ------------------------------------------------------------------------------ images

def render(label: int, rng: np.random.Generator) -> np.ndarray:
    """One 28x28 float image in [0, 1] of class `label`."""
    y, x = _pixel_grid()
    mask, centre = _silhouette(label, rng, y, x)
    u, v = _frame(rng, y, x, centre)
    tex = TEXTURES[label](rng, u, v, centre)
    level = rng.uniform(0.35, 0.72)
    contrast = rng.uniform(0.2, 0.38)
    g = rng.standard_normal(2) * 0.012  # light gradient across the object
    light = 1.0 + g[0] * (y - centre[0]) + g[1] * (x - centre[1])
    obj = (level + contrast * tex) * light
    back = rng.uniform(0.03, 0.3) + 0.04 * _smooth_noise(rng, y.shape, 3.0)
    img = back * (1 - mask) + obj * mask
    img = img.reshape(SIDE, SUPER, SIDE, SUPER).mean((1, 3))
    img = img + rng.normal(0, 0.015, size=img.shape)
    return np.clip(img, 0.0, 1.0)


def make_split(split: str, n: int, seed: int, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (n, 28, 28), labels uint8 (n,)): n // num_classes images per class (the
    remainder to the first classes), in a seeded random order."""
    counts = [n // num_classes + (1 if c < n % num_classes else 0) for c in range(num_classes)]
    images = np.empty((n, SIDE, SIDE), np.uint8)
    labels = np.empty(n, np.uint8)
    at = 0
    for c, k in enumerate(counts):
        rng = np.random.default_rng(np.random.SeedSequence([seed, SPLIT_IDS[split], c]))
        for _ in range(k):
            images[at] = np.round(render(c, rng) * 255)
            labels[at] = c
            at += 1
    order = np.random.default_rng(np.random.SeedSequence([seed, SPLIT_IDS[split], 1000])).permutation(n)
    return images[order], labels[order]


# ------------------------------------------------------------------------------ files

def idx_bytes(arr: np.ndarray) -> bytes:
    """An uint8 array as an IDX file (magic 0x0000_08_<ndim>, big-endian dims)."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    return struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def gzip_bytes(data: bytes) -> bytes:
    """gzip without time stamp or file name, so equal data give equal files."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as fh:
        fh.write(data)
    return buf.getvalue()


def write_set(out: str, n_train: int, n_test: int, seed: int, *, overwrite: bool = False) -> dict:
    """Render both splits and write the four IDX .gz files into `out`, each atomically; returns
    {file name: sha256}. Refuses a folder that already holds any of them unless overwrite."""
    import hashlib

    from lsdm_fast.io import atomic_write_bytes

    names = [f for pair in FILES.values() for f in pair] + ["SOURCE.md"]
    present = [f for f in names if os.path.exists(os.path.join(out, f))]
    if present and not overwrite:
        raise FileExistsError(f"{out}: already holds {', '.join(present)}; pass --overwrite to replace them")
    os.makedirs(out, exist_ok=True)
    digests = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = make_split(split, n, seed)
        for name, arr in zip(FILES[split], (images, labels)):
            data = gzip_bytes(idx_bytes(arr))
            atomic_write_bytes(os.path.join(out, name), data)
            digests[name] = hashlib.sha256(data).hexdigest()
    atomic_write_bytes(os.path.join(out, "SOURCE.md"), source_md(n_train, n_test, seed, digests).encode())
    return digests


def source_md(n_train: int, n_test: int, seed: int, digests: dict) -> str:
    """The SOURCE.md written beside the files: how they were made, what each class is, checksums."""
    doc = __doc__.split("\n\n")
    rows = "\n".join(f"| {name} | {h} |" for name, h in digests.items())
    cmd = "python scripts/make_texture_set.py --out FOLDER"
    cmd += "".join(f" {flag} {v}" for flag, v, d in (("--seed", seed, 0), ("--n-train", n_train, 60_000),
                                                      ("--n-test", n_test, 10_000)) if v != d)
    return f"""# textures ({VERSION}): 10 classes of 28x28 grey textured objects, MNIST IDX format

{n_train} training and {n_test} test images (uint8, 0..255), labels 0..9, equal counts per class.
Made by lsdm_fast's `scripts/make_texture_set.py` with seed {seed}, from the repository root:

    {cmd}

Procedural only: no image, font or data file from anywhere else went in, so there is no third-party
licence: the images are under the lsdm_fast repository's licence (MIT), like the script.

{doc[1]}

{doc[2]}

{doc[3]}

| file | sha256 |
|---|---|
{rows}
"""


def sample_grid(images: np.ndarray, labels: np.ndarray, per_class: int = 12, scale: int = 3):
    """A PIL image: one row per class, `per_class` samples each, upscaled `scale`x (nearest)."""
    from PIL import Image

    k = int(labels.max()) + 1
    pad = 2
    cell = SIDE + pad
    canvas = np.full((k * cell + pad, per_class * cell + pad), 255, np.uint8)
    for c in range(k):
        for j, i in enumerate(np.flatnonzero(labels == c)[:per_class]):
            canvas[pad + c * cell: pad + c * cell + SIDE, pad + j * cell: pad + j * cell + SIDE] = images[i]
    img = Image.fromarray(canvas, mode="L")
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST)


def main(argv: list[str] | None = None) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(os.path.dirname(here), "data_local", "textures"),
                   help="output folder (default: data_local/textures in the repository, git-ignored)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=60_000)
    p.add_argument("--n-test", type=int, default=10_000)
    p.add_argument("--grid", default=None, help="also write a PNG of test samples, one row per class")
    p.add_argument("--overwrite", action="store_true", help="replace IDX files already in --out")
    a = p.parse_args(argv)
    if a.n_train < 10 or a.n_test < 10:
        p.error("--n-train and --n-test must be at least 10 (one image per class)")
    sys.path.insert(0, os.path.dirname(here))  # lsdm_fast from this checkout when not installed
    try:
        digests = write_set(a.out, a.n_train, a.n_test, a.seed, overwrite=a.overwrite)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, h in digests.items():
        print(f"{os.path.join(a.out, name)}  sha256 {h}")
    if a.grid:
        from lsdm_fast.data import load_mnist

        test = load_mnist(a.out, "test")
        sample_grid(np.round(test.images * 255).astype(np.uint8), test.labels).save(a.grid)
        print(f"wrote {a.grid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
