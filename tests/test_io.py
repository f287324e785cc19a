"""Atomic writes: permissions as open() gives them under the umask, no temporary file left on
failure, refusal to overwrite when asked, and the writable-folder check."""
import json
import os
import stat

import pytest

from lsdm_fast import io as lio
from lsdm_fast.io import atomic_write_bytes, atomic_write_json, check_writable_dir


def mode_of(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it (pytest runs tests in one thread)."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield lambda m: os.umask(m)
    os.umask(saved)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_new_files_honour_the_umask_like_open(tmp_path, umask, mask):
    umask(mask)
    atomic_write_bytes(str(tmp_path / "a.bin"), b"x")
    with open(tmp_path / "plain.bin", "w"):
        pass
    assert mode_of(tmp_path / "a.bin") == 0o666 & ~mask == mode_of(tmp_path / "plain.bin")
    atomic_write_json(str(tmp_path / "sub" / "m.json"), {"a": 1})
    assert mode_of(tmp_path / "sub" / "m.json") == 0o666 & ~mask


def test_replacing_keeps_the_files_permissions(tmp_path, umask):
    umask(0o022)
    p = tmp_path / "model.bin"
    p.write_bytes(b"old")
    os.chmod(p, 0o640)
    atomic_write_bytes(str(p), b"new")
    assert p.read_bytes() == b"new" and mode_of(p) == 0o640


def test_content_and_json(tmp_path):
    atomic_write_json(str(tmp_path / "r.json"), {"b": [1, 2], "a": None})
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": None, "b": [1, 2]}


def test_no_temporary_file_left_when_the_rename_fails(tmp_path, monkeypatch):
    p = tmp_path / "c.bin"
    p.write_bytes(b"old")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(lio.os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_bytes(str(p), b"new")
    assert os.listdir(tmp_path) == ["c.bin"] and p.read_bytes() == b"old"


def test_no_temporary_file_left_when_the_write_fails(tmp_path):
    with pytest.raises(TypeError):
        atomic_write_bytes(str(tmp_path / "d.bin"), "not bytes")
    assert os.listdir(tmp_path) == []


def test_overwrite_false_refuses_an_existing_file(tmp_path):
    p = tmp_path / "metrics.json"
    atomic_write_json(str(p), {"run": 1}, overwrite=False)  # new: written
    with pytest.raises(FileExistsError, match=r"metrics.json already exists; refusing to overwrite"):
        atomic_write_json(str(p), {"run": 2}, overwrite=False)
    assert json.loads(p.read_text()) == {"run": 1} and os.listdir(tmp_path) == ["metrics.json"]
    atomic_write_json(str(p), {"run": 3})  # told to overwrite
    assert json.loads(p.read_text()) == {"run": 3}


def test_overwrite_false_without_hard_links(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(lio.os, "link", no_links)
    p = tmp_path / "x.bin"
    atomic_write_bytes(str(p), b"1", overwrite=False)
    assert p.read_bytes() == b"1"
    with pytest.raises(FileExistsError):
        atomic_write_bytes(str(p), b"2", overwrite=False)
    assert p.read_bytes() == b"1" and os.listdir(tmp_path) == ["x.bin"]


def test_overwrite_false_loses_a_race_cleanly(tmp_path, monkeypatch):
    """The file appears between the early check and the publish: the hard link refuses it."""
    p = tmp_path / "y.bin"
    real_link = os.link

    def racing_link(src, dst):
        with open(dst, "wb") as fh:
            fh.write(b"other writer")
        return real_link(src, dst)

    monkeypatch.setattr(lio.os, "link", racing_link)
    with pytest.raises(FileExistsError):
        atomic_write_bytes(str(p), b"mine", overwrite=False)
    assert p.read_bytes() == b"other writer" and os.listdir(tmp_path) == ["y.bin"]


def test_check_writable_dir(tmp_path):
    check_writable_dir(str(tmp_path / "new" / "run"))  # made if missing
    assert os.listdir(tmp_path / "new" / "run") == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"file' exists and is not a folder"):
        check_writable_dir(str(tmp_path / "file"))
    with pytest.raises(OSError, match=r"cannot write in .*file/run"):
        check_writable_dir(str(tmp_path / "file" / "run"))
