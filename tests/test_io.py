"""Atomic writes: all or nothing, usual permissions, errors name the file (a full disk too)."""

import errno
import os
import stat

import pytest
from safetensors import SafetensorError

from geossl.io import WriteError, atomic_path, atomic_write_json, read_json, write_error


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text('{"v": 2, "trunc')
        raise RuntimeError("crash mid-write")
    assert read_json(target) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_outputs_get_umask_permissions_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", {})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644


def test_read_json_names_the_file(tmp_path):
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ValueError, match=r"bad.json: not valid JSON"):
        read_json(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match=r"missing.json: file not found"):
        read_json(tmp_path / "missing.json")


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),  # Python's own writes
    SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),  # no errno
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"),  # torch.save, no words
])
def test_a_full_disk_is_a_write_error_naming_the_final_file(error, tmp_path, monkeypatch):
    """Regression (#23): a full disk surfaced as a raw SafetensorError or torch's C++ enforce message, with no
    path. Whatever the writer raised, it is one WriteError naming the file, and nothing is left behind."""
    import geossl.io as io_module

    if isinstance(error, RuntimeError):  # torch says nothing of the disk: the space left does
        monkeypatch.setattr(io_module, "disk_is_full", lambda folder: True)
    target = tmp_path / "features.safetensors"
    with pytest.raises(WriteError) as caught, atomic_path(target) as tmp:
        tmp.write_bytes(b"half a file")
        raise error
    assert str(caught.value) == f"[Errno {errno.ENOSPC}] cannot write (the disk is full): '{target}'"
    assert caught.value.filename == str(target) and caught.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []  # no partial file, nothing under the final name


def test_errors_that_are_not_failed_writes_pass_unchanged(tmp_path):
    """Bad input (ValueError) and an input that cannot be read keep their own message."""
    with pytest.raises(ValueError, match="no readable tiles"), atomic_path(tmp_path / "a.csv"):
        raise ValueError("no readable tiles")
    with pytest.raises(FileNotFoundError) as caught, atomic_path(tmp_path / "a.csv"):
        open(tmp_path / "input.tif", "rb")  # noqa: SIM115 (the error is the point)
    assert not isinstance(caught.value, WriteError)
    assert write_error(OSError(errno.EIO, "Input/output error"), tmp_path / "a.csv") is None  # not our file's
    assert list(tmp_path.iterdir()) == []
