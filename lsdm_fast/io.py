"""Atomic file writes: a crash mid-write never leaves a half-written model, checkpoint or result.

Each write goes to a temporary file beside the target (fsynced), is renamed over it, and the folder
is fsynced so the rename survives a power cut. Permissions are what `open(path, "w")` would give:
a new file gets 0o666 less the process umask (the temporary file is created with mode 0o666 and
the kernel applies the umask, so nothing reads or changes the umask); replacing an existing file
keeps that file's permission bits. `overwrite=False` refuses an existing target with
FileExistsError, atomically where the file system supports hard links.
"""
from __future__ import annotations

import errno
import json
import os
import secrets
import stat


def _create_temp(folder: str, base: str) -> tuple[int, str]:
    """A new, empty, exclusively created file in `folder`: (fd, path)."""
    for _ in range(100):
        tmp = os.path.join(folder, f".{base}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "could not find a free temporary file name", folder)


def _fsync_dir(folder: str) -> None:
    try:  # make the rename itself durable; not every platform or file system can open a folder
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _refuse(path: str) -> FileExistsError:
    return FileExistsError(errno.EEXIST, f"{path} already exists; refusing to overwrite it (overwrite=False)", path)


def atomic_write_bytes(path: str, data: bytes, *, overwrite: bool = True) -> None:
    """Write `data` to `path` atomically: readers see the old file or the new one, never a mix.
    With overwrite=False an existing `path` raises FileExistsError and is left untouched."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    if not overwrite and os.path.lexists(path):
        raise _refuse(path)
    fd, tmp = _create_temp(folder, os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as fh:
            try:  # replacing a file keeps its permission bits, as open(path, "w") would
                os.fchmod(fh.fileno(), stat.S_IMODE(os.stat(path).st_mode))
            except FileNotFoundError:
                pass
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            _publish_new(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)


def _publish_new(tmp: str, path: str) -> None:
    """Move `tmp` to `path` only if `path` does not exist: a hard link fails atomically on an
    existing name; where links are unsupported, check then rename (a small race)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise _refuse(path) from None
    except OSError:
        if os.path.lexists(path):
            raise _refuse(path) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def atomic_write_json(path: str, obj, *, overwrite: bool = True) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode(), overwrite=overwrite)


def check_writable_dir(folder: str) -> None:
    """Fail now, with an OSError naming `folder`, if files cannot be created in it (made if
    missing): call before a long run rather than discovering it when saving."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise NotADirectoryError(errno.ENOTDIR, f"{folder!r} exists and is not a folder")
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = _create_temp(folder, "write-test")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise type(exc)(exc.errno, f"cannot write in {folder!r} ({exc.strerror or exc})") from None
