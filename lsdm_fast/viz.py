"""Pictures people would rather see than read: sample grids and loss curves."""
from __future__ import annotations

import io
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .io import atomic_write_bytes  # noqa: E402


def save_figure(fig, path: str, **kw) -> str:
    """Render `fig` to `path` atomically (a crash never leaves half a PNG) and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format=os.path.splitext(path)[1].lstrip(".") or "png", **kw)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def save_grid(images, path: str, rows: int, cols: int, image_shape, row_labels=None, title=None) -> str:
    """images: (rows*cols, prod(image_shape)) in [0, 1], filled row by row. image_shape (H, W) for grey,
    (3, H, W) for colour (shown in colour); other channel counts are shown as their mean."""
    imgs = np.asarray(images, dtype=np.float32).reshape(rows, cols, *image_shape)
    if len(image_shape) == 3:  # channels first -> last
        imgs = np.moveaxis(imgs, 2, -1)
        if image_shape[0] != 3:
            imgs = imgs.mean(-1)
    h, w = imgs.shape[2:4]
    pad = 1
    canvas = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad, *imgs.shape[4:]), dtype=np.float32)
    for r in range(rows):
        for c in range(cols):
            canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = imgs[r, c]
    scale = max(1.0, 6.0 / cols)
    fig, ax = plt.subplots(figsize=(cols * 0.45 * scale + 0.6, rows * 0.45 * scale + (0.4 if title else 0.1)))
    if canvas.ndim == 3:
        ax.imshow(canvas.clip(0, 1), interpolation="nearest")
    else:
        ax.imshow(canvas, cmap="gray", vmin=0, vmax=1, interpolation="nearest")  # 0 black, 1 white, as in the data
    ax.set_xticks([])
    if row_labels is not None:
        ax.set_yticks([pad + r * (h + pad) + h / 2 for r in range(rows)], [str(l) for l in row_labels])
    else:
        ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    for s in ax.spines.values():
        s.set_visible(False)
    return save_figure(fig, path, dpi=150, bbox_inches="tight")


def save_loss_plot(history: dict, path: str) -> str:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
    rec = np.asarray(history.get("reconstruction", []))
    axes[0].plot(rec, lw=0.6)
    axes[0].set(title="stage 1: reconstruction loss", xlabel="step", yscale="log")

    def smooth(v, k=25):
        v = np.asarray(v, dtype=float)
        return v if len(v) < k else np.convolve(v, np.ones(k) / k, mode="valid")

    axes[1].plot(smooth(history.get("wasserstein", [])), lw=0.8, label="W estimate")
    axes[1].plot(smooth(history.get("penalty", [])), lw=0.8, label="gradient penalty")
    axes[1].set(title="stage 2: critic", xlabel="generator step")
    axes[1].legend(fontsize=8)
    axes[2].plot(smooth(history.get("generator_loss", [])), lw=0.8)
    axes[2].set(title="stage 2: generator loss  -mean f(x, G)", xlabel="generator step")
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)
