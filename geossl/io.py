"""Output rules shared by every command: atomic writes (a reader never sees a half-written file, a crash
never destroys the last good one), no replacing without ``--overwrite``, one writer per folder."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success it is fsynced and renamed onto ``final``.

    On error the temporary file is removed and ``final`` is untouched. The temporary name ends with
    ``suffix`` (e.g. ``.tif``) so libraries that infer formats from extensions still work.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix + ".partial", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    mode = 0o666 & ~_umask()  # mkstemp makes 0600; outputs get the usual permissions
    os.chmod(tmp_path, mode)
    try:
        yield tmp_path
        os.chmod(tmp_path, mode)  # again: a writer that replaces the file (safetensors does) made it 0600
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(final: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(final: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(final, text.encode("utf-8"))


def atomic_write_json(final: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(final, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read JSON, naming the file in the error when it is missing or malformed."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def check_outputs(paths: Sequence[Path], overwrite: bool, note: str = "") -> None:
    """Refuse to replace results unless asked: one line listing what already exists (``note``: why it
    may not be replaced, e.g. "made with other options", put before the hint)."""
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        shown = ", ".join(existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
        raise FileExistsError(f"{shown} already exist{'s' if len(existing) == 1 else ''} "
                              f"({note + '; ' if note else ''}pass --overwrite to replace)")


class RunLock:
    """An exclusive, non-blocking ``fcntl`` lock on ``FOLDER/.lock``, held while a command writes there.

    A second command on the same folder (two ``pretrain`` runs, two ``classify`` runs with different
    models) is refused instead of interleaving or replacing the first one's files. The kernel drops the
    lock when the process dies (even ``kill -9``), so there is never a stale lock to clean by hand.
    """

    def __init__(self, run_dir: Path, what: str = "geossl pretrain", option: str = "--run-dir") -> None:
        self.path = Path(run_dir) / ".lock"
        self.what = what  # named in the refusal: the command that holds the folder
        self.option = option  # the flag that picks another folder, named in the refusal
        self._handle: Any = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 (held open for the whole run)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise RuntimeError(f"{self.path.parent}: another {self.what} ({owner}) is running in this folder; "
                               f"wait for it to end or choose another {self.option}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
