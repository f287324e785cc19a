"""Generation of batches larger than memory: chunk by chunk into a preallocated tensor or a
memory-mapped .npy file.

Chunk k covers rows [k * chunk_size, (k + 1) * chunk_size) and is generated with Philox row
offset `offset + k * chunk_size`, so the result equals one big `generate` call with the same
seed (the noise of a row depends only on the seed and the row's global index).

Labels are checked once for the whole batch; the chunks are views of the checked tensor, so on
CUDA no chunk reads anything back to the host (lsdm_fast.ops.encode_generate.validate_labels).
"""
from __future__ import annotations

import os

import numpy as np
import torch

from .ops.encode_generate import LABEL_DTYPES, OUT_DTYPES, generate, validate_labels
from .ops.mlp import MLPParams, check_mlp

_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16,
                 torch.uint8: np.uint8}


def generate_chunked(generator: MLPParams, decoder: MLPParams, cond: torch.Tensor, *, noise_dim: int,
                     num_classes: int | None = None, seed: int = 0, offset: int = 0, chunk_size: int = 65536,
                     out: torch.Tensor | None = None, path: str | os.PathLike | None = None,
                     out_dtype: torch.dtype = torch.float32, backend: str = "auto", progress: bool = True,
                     tail=None, out_features: int | None = None):
    """y = decoder(generator(cat(eta, x))) for every row of `cond`, `chunk_size` rows at a time (with `tail`,
    a conv decoder's convolutional part, y = tail(decoder(...)): give its output width as `out_features`).

    cond: integer labels (N,) (with num_classes) or a float condition tensor (N, cond_dim), on the
    device to compute on. Output goes to
      - `out`: a preallocated (N, decoder.out_features) tensor of dtype `out_dtype` (any device);
      - `path`: a .npy file, written through numpy.lib.format.open_memmap under a temporary name
        and renamed to `path` when complete (bfloat16 is not a numpy dtype: not allowed here);
      - neither: a new tensor on cond's device.
    Returns `out`, the read-write memmap of `path`, or the new tensor.
    """
    check_mlp(generator, "generator")
    check_mlp(decoder, "decoder")
    if not isinstance(cond, torch.Tensor):
        raise TypeError(f"cond must be a torch.Tensor, got {type(cond).__name__}")
    if cond.dtype.is_floating_point:
        if cond.dim() != 2:
            raise ValueError(f"a condition tensor must be 2-D (N, cond_dim), got shape {tuple(cond.shape)}")
    elif cond.dim() != 1:
        raise ValueError(f"labels must be 1-D (N,), got shape {tuple(cond.shape)}")
    if out_dtype not in OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of {OUT_DTYPES}, got {out_dtype}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    if out is not None and path is not None:
        raise ValueError("give either `out` or `path`, not both")
    if cond.dtype in LABEL_DTYPES and num_classes is not None:
        if cond.device.type != "cpu" and cond._base is not None:
            cond = cond.clone()  # a tensor of its own: its range is checked (and cached) once
        validate_labels(cond, num_classes)
    if tail is not None and out_features is None:
        raise ValueError("with a tail, give out_features (the width of the tail's output)")
    n, width = int(cond.shape[0]), (decoder.out_features if tail is None else int(out_features))

    target = out
    tmp_path = None
    if out is not None:
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"out must be a torch.Tensor, got {type(out).__name__}")
        if tuple(out.shape) != (n, width):
            raise ValueError(f"out must have shape ({n}, {width}), got {tuple(out.shape)}")
        if out.dtype != out_dtype:
            raise ValueError(f"out has dtype {out.dtype} but out_dtype is {out_dtype}")
    elif path is not None:
        path = os.fspath(path)
        if not path.endswith(".npy"):
            raise ValueError(f"path must name a .npy file, got {path!r}")
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise FileNotFoundError(f"directory {parent!r} for {path!r} does not exist")
        if os.path.isdir(path):
            raise IsADirectoryError(f"path {path!r} is a directory")
        if out_dtype not in _NUMPY_DTYPES:
            raise ValueError(f"out_dtype {out_dtype} cannot be stored in a .npy file; use one of "
                             f"{tuple(_NUMPY_DTYPES)}")
        tmp_path = os.path.join(parent, f".{os.path.basename(path)[:-4]}.partial-{os.getpid()}.npy")
        target = np.lib.format.open_memmap(tmp_path, mode="w+", dtype=_NUMPY_DTYPES[out_dtype], shape=(n, width))
    else:
        target = torch.empty((n, width), dtype=out_dtype, device=cond.device)

    try:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, unit="sample", unit_scale=True, disable=not progress, desc="generate")
        try:
            for start in range(0, n, chunk_size):
                stop = min(start + chunk_size, n)
                y = generate(generator, decoder, cond[start:stop], noise_dim=noise_dim, num_classes=num_classes,
                             seed=seed, offset=offset + start, out_dtype=out_dtype, tail=tail, backend=backend)
                if tmp_path is not None:
                    target[start:stop] = y.cpu().numpy()
                else:
                    target[start:stop].copy_(y)
                bar.update(stop - start)
        finally:
            bar.close()
        if tmp_path is not None:
            target.flush()
            del target
            os.replace(tmp_path, path)
            tmp_path = None
            return np.load(path, mmap_mode="r+")
        return target
    finally:
        if tmp_path is not None and os.path.exists(tmp_path):  # failed part-way: leave nothing behind
            try:
                os.remove(tmp_path)
            except OSError:
                pass
