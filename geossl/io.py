"""Output rules shared by every command: atomic writes (a reader never sees a half-written file, a crash
never destroys the last good one), failed writes named by the file they were writing (a full disk is
"PATH: cannot write (the disk is full)", whichever library was writing), no replacing without
``--overwrite``, one writer per folder."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success it is fsynced and renamed onto ``final``.

    On error the temporary file is removed and ``final`` is untouched; a failed write (a full disk, whatever
    library was writing) is a :class:`WriteError` naming ``final``. The temporary name ends with
    ``suffix`` (e.g. ``.tif``) so libraries that infer formats from extensions still work.
    """
    final = Path(final)
    with naming_write_errors(final):  # a full disk can refuse even the empty temporary file
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix + ".partial", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    mode = 0o666 & ~_umask()  # mkstemp makes 0600; outputs get the usual permissions
    os.chmod(tmp_path, mode)
    try:
        with naming_write_errors(final, tmp_path):  # before the finally: a full disk is seen with the file on it
            yield tmp_path
            os.chmod(tmp_path, mode)  # again: a writer that replaces the file (safetensors does) made it 0600
            with open(tmp_path, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# How libraries without an errno say it: Rust's io errors (safetensors) end "(os error 28)"; GDAL and
# others may only repeat the C library's text.
OS_ERROR_IN_TEXT = re.compile(r"\(os error (\d+)\)|\[Errno (\d+)\]")
NO_SPACE_TEXT = "No space left on device"
# Less free space than this, seen while a failed write's partial file is still on the disk: the disk is
# what failed. torch.save and GDAL report a full disk only as "unexpected pos 576 vs 534" or "Write failed".
FULL_DISK_FREE_BYTES = 1 << 20


class WriteError(OSError):
    """A file that could not be written: ``filename`` is its final name (never the temporary one beside it)
    and ``strerror`` says why in words, so the command line prints one line such as
    ``PATH: cannot write (the disk is full)`` instead of a library's own message without the path."""


def describe_errno(code: int | None, text: str = "") -> str:
    """Why a write failed, in words a user acts on (``text``, the error's own, when there are none better)."""
    if code == errno.ENOSPC:
        return "the disk is full"
    if code == errno.EDQUOT:
        return "the disk quota is exceeded"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "no permission to write (read-only folder or file system)"
    return text or (os.strerror(code) if code else "unknown error")


def describe_os_error(exc: OSError) -> str:
    """:func:`describe_errno` of an OSError (its own text for the errors without better words)."""
    return describe_errno(exc.errno, exc.strerror or str(exc))


def disk_is_full(folder: Path) -> bool:
    """Whether the file system holding ``folder`` has (almost) no space left for this user."""
    try:
        return shutil.disk_usage(folder).free < FULL_DISK_FREE_BYTES
    except OSError:
        return False


def errno_in_text(text: str) -> int | None:
    """The OS error a library reported only in its message ("(os error 28)", "[Errno 28]", "No space left")."""
    match = OS_ERROR_IN_TEXT.search(text)
    if match:
        return int(match.group(1) or match.group(2))
    return errno.ENOSPC if NO_SPACE_TEXT in text else None


def write_error(exc: BaseException, final: Path, partial: Path | None = None) -> WriteError | None:
    """``exc``, raised while writing ``final`` (through ``partial``), as a :class:`WriteError` naming ``final``,
    or None when it is not a failed write of that file.

    A write failed when the errno says the disk is full, when ``exc`` is the error of the temporary file
    ``partial``, or, for libraries that hide the errno in their own exceptions (safetensors'
    ``SafetensorError``, torch's C++ "enforce fail ... unexpected pos", GDAL's "Write failed"), when the
    text says the disk is full or the disk has no space left. Bad input (``ValueError``), other errors
    (e.g. an input that cannot be read), an error that already names its file (a WriteError from a nested
    write) and an interrupt pass through unchanged.
    """
    if isinstance(exc, WriteError) or not isinstance(exc, Exception):
        return None
    if isinstance(exc, OSError) and exc.errno is not None:
        code: int | None = exc.errno
        ours = code in DISK_FULL_ERRNOS or (partial is not None and exc.filename in (str(partial), partial))
    else:  # a full disk only: any other OS error in a library's text may as well be an input it read
        code = errno_in_text(str(exc))
        ours = code in DISK_FULL_ERRNOS
    if not ours and not isinstance(exc, ValueError) and disk_is_full(final.parent):
        code, ours = errno.ENOSPC, True
    if not ours:
        return None
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else _one_line(exc)
    return WriteError(code, f"cannot write ({describe_errno(code, text)})", str(final))


def write_error_in(exc: BaseException) -> WriteError | None:
    """The :class:`WriteError` ``exc`` is, or arose while handling: clean-up after a failed write often
    fails on the same full disk (Lightning's CSV logger saving its rows) and hides the first, named error."""
    seen: BaseException | None = exc
    for _ in range(16):  # a context chain is short; a cycle must not hang the error report
        if seen is None or isinstance(seen, WriteError):
            return seen
        seen = seen.__context__
    return None


def as_write_error(exc: Exception, final: Path, partial: Path | None = None) -> WriteError:
    """``exc``, known to be a failed write of ``final`` (a library's own error from its save call), as a
    :class:`WriteError`: :func:`write_error`'s reading when it has one, else the error's own text."""
    code = errno_in_text(str(exc))
    return write_error(exc, final, partial) or WriteError(
        code or errno.EIO, f"cannot write ({describe_errno(code, f'{type(exc).__name__}: {_one_line(exc)}')})",
        str(final))


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


@contextlib.contextmanager
def naming_write_errors(final: str | os.PathLike[str], partial: Path | None = None) -> Iterator[None]:
    """Re-raise a failed write in the block as a :class:`WriteError` naming ``final`` (:func:`write_error`);
    anything else passes unchanged. :func:`atomic_path` applies it; a writer that streams into its own
    temporary file (the map writer) wraps its writes in it."""
    try:
        yield
    except Exception as exc:
        error = write_error(exc, Path(final), partial)
        if error is None:
            raise
        raise error from exc


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
        folder = self.path.parent
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(f"{folder}: {self.option} names a file; {self.what} writes a folder there "
                                     f"(choose another {self.option})")
        folder.mkdir(parents=True, exist_ok=True)
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
