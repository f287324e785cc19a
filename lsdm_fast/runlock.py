"""One writer per run folder: an exclusive lock taken before anything is written.

`run_lock(folder, what)` holds FOLDER/.lsdm.lock for the duration of a `with` block. The lock is
an fcntl `flock` on that file, so the kernel releases it when its holder dies in any way
(SIGKILL, power cut, crash): a lock is never left behind by a dead process. The file holds the
holder's pid, host, command and start time, so a refused writer can say who holds the folder.

Where the file system cannot flock (some network mounts answer ENOLCK or EOPNOTSUPP), the lock
falls back to creating the file exclusively (O_EXCL); a file left by a process that is dead on
this host is stale and taken over; one held from another host is refused (its liveness cannot be
checked from here).

Locks are re-entrant within a process (keyed by the folder's real path): `lsdm train` locks its
output folder, and the LSDM.fit it calls locks the checkpoint folder inside it without refusing
itself. Only rank 0 of a torch.distributed run writes, so only it locks (callers decide).

The lock file is removed when released, with an inode check on acquisition so that a writer that
opened the file just before its removal retries on the new file instead of holding a dead one.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import threading
import time

LOCK_FILE = ".lsdm.lock"

_held: dict[str, list] = {}  # real path of the folder -> [fd or None, depth, lock path, created folder]
_guard = threading.Lock()


class RunLockedError(OSError):
    """Another writer holds the folder; the message names it (pid, host, command, since when)."""


def _holder_text(info: dict | None) -> str:
    if not info:
        return "another process (its pid is not recorded yet)"
    since = info.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else "?"
    return f"pid {info.get('pid')} on {info.get('host')} ({info.get('what') or 'lsdm'}, since {when})"


def _read_info(path: str) -> dict | None:
    try:
        with open(path) as fh:
            info = json.loads(fh.read() or "null")
        return info if isinstance(info, dict) else None
    except (OSError, ValueError):
        return None


def _info(what: str) -> bytes:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "what": what,
                       "since": time.time(), "argv": sys.argv[:8]}).encode()


def _pid_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _refused(folder: str, info: dict | None) -> RunLockedError:
    return RunLockedError(errno.EBUSY, f"{folder}: in use by another writer, {_holder_text(info)}; wait for it to "
                                       "finish or write to another folder (one writer per run folder)")


def _lock_flock(folder: str, path: str, what: str):
    """The fd holding an flock on `path`, or None when the file system cannot flock."""
    import fcntl

    for _ in range(20):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _refused(folder, _read_info(path)) from None
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL):
                return None
            raise
        try:  # the file we locked must still be the one at `path` (a releasing holder unlinks it)
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, _info(what), 0)
        return fd
    raise _refused(folder, _read_info(path))


def _lock_exclusive_file(folder: str, path: str, what: str) -> None:
    """Fallback without flock: create the lock file exclusively; take over one left by a dead pid on this host."""
    for _ in range(20):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
        except FileExistsError:
            info = _read_info(path)
            if info and info.get("host") == socket.gethostname() and not _pid_alive(info.get("pid")):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)  # stale: its writer died without releasing it
                continue
            if info is None and time.time() - os.path.getmtime(path) > 60:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)  # empty for a minute: its writer died between creating and filling it
                continue
            raise _refused(folder, info) from None
        try:
            os.write(fd, _info(what))
        finally:
            os.close(fd)
        return
    raise _refused(folder, _read_info(path))


@contextlib.contextmanager
def run_lock(folder: str, what: str = "lsdm"):
    """Hold the one-writer lock of `folder` (created if missing) for the block; RunLockedError (an OSError) naming
    the holder if another process holds it. A folder this call created and left empty is removed on release."""
    created = not os.path.isdir(folder)
    os.makedirs(folder, exist_ok=True)
    key = os.path.realpath(folder)
    with _guard:
        entry = _held.get(key)
        if entry is not None:
            entry[1] += 1
    if entry is None:
        path = os.path.join(folder, LOCK_FILE)
        try:
            fd = _lock_flock(folder, path, what)
            if fd is None:
                _lock_exclusive_file(folder, path, what)
        except BaseException:
            if created:
                with contextlib.suppress(OSError):
                    os.rmdir(folder)
            raise
        entry = [fd, 1, path, created]
        with _guard:
            _held[key] = entry
    try:
        yield
    finally:
        with _guard:
            entry[1] -= 1
            last = entry[1] == 0
            if last:
                del _held[key]
        if last:
            _release(entry, folder)


def _release(entry: list, folder: str) -> None:
    fd, _, path, created = entry
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # while still locked: a waiter that opened it retries on a fresh file
    if fd is not None:
        os.close(fd)
    if created:
        with contextlib.suppress(OSError):
            os.rmdir(folder)  # only if empty: a refused run leaves no folder behind


def holds_lock(folder: str) -> bool:
    """Whether this process holds the lock of `folder`."""
    return os.path.realpath(folder) in _held
