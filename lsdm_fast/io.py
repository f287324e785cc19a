"""Atomic file writes: a crash mid-write never leaves a half-written model, checkpoint or result.

Each write goes to a temporary file beside the target (fsynced), is renamed over it, and the folder
is fsynced so the rename survives a power cut. Permissions are what `open(path, "w")` would give:
a new file gets 0o666 less the process umask (the temporary file is created with mode 0o666 and
the kernel applies the umask, so nothing reads or changes the umask); replacing an existing file
keeps that file's permission bits. `overwrite=False` refuses an existing target with
FileExistsError, atomically where the file system supports hard links.

Disk full: a write checks the free space first and refuses, naming the file, the size and the free
space, before creating anything; a write that still fails (ENOSPC, EFBIG, EDQUOT...) raises a
`WriteError` (an OSError) naming the file, and leaves no temporary file behind.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import signal
import stat
import threading


class WriteError(OSError):
    """A file that could not be written (disk full, quota, file size limit...): the message names the file."""

    def __str__(self) -> str:
        return str(self.strerror)


def format_bytes(n: float) -> str:
    """1234567 -> '1.2 MB' (powers of 1000, as df -H and file managers print sizes)."""
    for unit in ("bytes", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def free_bytes(path: str) -> int | None:
    """Bytes an unprivileged process may still write on the file system holding `path` (its nearest existing
    ancestor), or None where that cannot be asked."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        st = os.statvfs(path)
    except (OSError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize


def require_free_space(path: str, nbytes: int, what: str) -> None:
    """Refuse, before writing anything, `nbytes` of `what` that cannot fit where `path` goes (WriteError, ENOSPC)."""
    free = free_bytes(path)
    if free is not None and nbytes > free:
        raise WriteError(errno.ENOSPC, f"{path}: {what} needs {format_bytes(nbytes)} but only {format_bytes(free)} "
                                       f"is free there; free some space or write elsewhere")


def write_error(exc: OSError, path: str, nbytes: int | None = None) -> WriteError:
    """`exc` from writing `path`, as a WriteError naming the file (and the size and free space when short of it)."""
    if isinstance(exc, WriteError):
        return exc
    size = f"{format_bytes(nbytes)} to write, " if nbytes is not None else ""
    free = free_bytes(path)
    room = f" ({size}{format_bytes(free)} free there)" if free is not None else ""
    return WriteError(exc.errno, f"cannot write {path}: {exc.strerror or exc}{room}")


def write_all(fd: int, data) -> None:
    """os.write until every byte is out (the one place bytes reach a file: tests inject ENOSPC here)."""
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view):]


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
    require_free_space(path, len(data), f"writing {os.path.basename(path)}")
    fd, tmp = _create_temp(folder, os.path.basename(path))
    try:
        try:
            try:  # replacing a file keeps its permission bits, as open(path, "w") would
                os.fchmod(fd, stat.S_IMODE(os.stat(path).st_mode))
            except FileNotFoundError:
                pass
            write_all(fd, data)
            os.fsync(fd)
        except OSError as exc:
            raise write_error(exc, path, len(data)) from None
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, path)
        else:
            _publish_new(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
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


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived during a `signals_as_exceptions` block (cleanup code runs, then it propagates)."""


@contextlib.contextmanager
def signals_as_exceptions():
    """Within the block, SIGTERM and SIGHUP raise Terminated instead of ending the process at once, so `finally`
    clauses remove partial files. Only in the main thread (elsewhere signal handlers cannot be set): a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum, frame):
        raise Terminated(f"stopped by signal {signal.Signals(signum).name}")

    previous = {}
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None and signal.getsignal(sig) in (signal.SIG_DFL, None):
            previous[sig] = signal.signal(sig, raise_terminated)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
