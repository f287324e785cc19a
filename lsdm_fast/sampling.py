"""Generation of batches larger than memory: chunk by chunk into a preallocated tensor or a
memory-mapped .npy file.

Chunk k covers rows [k * chunk_size, (k + 1) * chunk_size) and is generated with Philox row
offset `offset + k * chunk_size`, so the result equals one big `generate` call with the same
seed (the noise of a row depends only on the seed and the row's global index).

Labels are checked once for the whole batch; the chunks are views of the checked tensor, so on
CUDA no chunk reads anything back to the host (lsdm_fast.ops.encode_generate.validate_labels).
"""
from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import socket

import numpy as np
import torch

from . import io as lsdm_io
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
      - `path`: a .npy file, written chunk by chunk under a temporary name and renamed to `path` when
        complete (bfloat16 is not a numpy dtype: not allowed here). No memory map is written through (a
        full disk would kill the process with SIGBUS): the free space is checked and the file preallocated
        before any sample is drawn, and every failure (disk full, an error, Ctrl-C, SIGTERM) removes it;
        (see write_npy_chunks);
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

    def draw(start: int, stop: int) -> torch.Tensor:
        return generate(generator, decoder, cond[start:stop], noise_dim=noise_dim, num_classes=num_classes, seed=seed,
                        offset=offset + start, out_dtype=out_dtype, tail=tail, backend=backend)

    target = out
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
        return write_npy_chunks(path, n, width, out_dtype, draw, chunk_size, progress)
    else:
        target = torch.empty((n, width), dtype=out_dtype, device=cond.device)

    from tqdm.auto import tqdm

    bar = tqdm(total=n, unit="sample", unit_scale=True, disable=not progress, desc="generate")
    try:
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            target[start:stop].copy_(draw(start, stop))
            bar.update(stop - start)
    finally:
        bar.close()
    return target


# ------------------------------------------------------------------------------ .npy files

def npy_header(dtype: torch.dtype, n: int, width: int) -> bytes:
    """The .npy header of an (n, width) C-order array of `dtype` (format 1.0)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(_NUMPY_DTYPES[dtype])),
                                               "fortran_order": False, "shape": (int(n), int(width))})
    return buf.getvalue()


def npy_bytes(dtype: torch.dtype, n: int, width: int) -> int:
    """Size of the .npy file of an (n, width) array of `dtype`."""
    return len(npy_header(dtype, n, width)) + int(n) * int(width) * np.dtype(_NUMPY_DTYPES[dtype]).itemsize


def check_npy_fits(path: str, dtype: torch.dtype, n: int, width: int) -> None:
    """Refuse (WriteError, naming the size and the free space) an (n, width) .npy file that cannot fit at `path`:
    before anything is allocated or drawn."""
    lsdm_io.require_free_space(path, npy_bytes(dtype, n, width),
                               f"{n:,} samples x {width} {np.dtype(_NUMPY_DTYPES[dtype]).name} values")


_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40]


def _partial_name(path: str, pid: int) -> str:
    base = os.path.basename(path)[:-4]
    return os.path.join(os.path.dirname(os.path.abspath(path)), f".{base}.partial-{_HOST}-{pid}.npy")


def remove_stale_partials(path: str) -> list[str]:
    """Partial files of `path` left by writers that died on this host without cleaning up (SIGKILL): removed."""
    folder, base = os.path.dirname(os.path.abspath(path)), os.path.basename(path)[:-4]
    pattern = re.compile(re.escape(f".{base}.partial-{_HOST}-") + r"(\d+)\.npy$")
    removed = []
    for name in os.listdir(folder):
        m = pattern.match(name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(folder, name))
                removed.append(name)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_npy_chunks(path: str, n: int, width: int, dtype: torch.dtype, chunk, chunk_size: int, progress: bool):
    """Write the (n, width) array whose rows [start, stop) `chunk(start, stop)` returns to the .npy file `path`:
    free space checked and the whole file preallocated (posix_fallocate) before the first chunk is drawn, plain
    writes (no memory map), fsync, rename. Any failure, Ctrl-C or SIGTERM removes the partial file; one left by a
    SIGKILLed writer is removed by the next write to `path`. Returns a read-write memmap of the finished file."""
    from tqdm.auto import tqdm

    remove_stale_partials(path)
    header = npy_header(dtype, n, width)
    total = len(header) + n * width * np.dtype(_NUMPY_DTYPES[dtype]).itemsize
    check_npy_fits(path, dtype, n, width)
    tmp = _partial_name(path, os.getpid())
    with lsdm_io.signals_as_exceptions():
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            try:
                try:  # reserve every block now: a full disk fails here, not after the samples are drawn
                    os.posix_fallocate(fd, 0, total)
                except (AttributeError, OSError) as exc:
                    if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                        raise
                lsdm_io.write_all(fd, header)
                bar = tqdm(total=n, unit="sample", unit_scale=True, disable=not progress, desc="generate")
                try:
                    for start in range(0, n, chunk_size):
                        stop = min(start + chunk_size, n)
                        y = chunk(start, stop)
                        lsdm_io.write_all(fd, np.ascontiguousarray(y.cpu().numpy()))
                        bar.update(stop - start)
                finally:
                    bar.close()
                os.fsync(fd)
            except OSError as exc:
                raise lsdm_io.write_error(exc, path, total) from None
            finally:
                os.close(fd)
            os.replace(tmp, path)
            lsdm_io._fsync_dir(os.path.dirname(os.path.abspath(path)))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    return np.load(path, mmap_mode="r+")
