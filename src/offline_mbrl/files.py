"""Atomic file writes: readers see the old file or the new one, never half of one.

Every file the library writes (checkpoints, models, datasets, plots, JSON summaries) goes
through :func:`atomic_write`: the data goes to a temporary file in the target directory
(same file system), is flushed to disk, gets the mode a plain ``open`` would give it, and
is renamed over the target. A failed write leaves the target untouched, removes the
temporary file, and surfaces as one :class:`UserError` line naming the file and the fix.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from offline_mbrl.errors import UserError

_SPACE_MARGIN = 1.05  # compressed writers may need a little more than the raw size


def _umask_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_failure(path: Path, error: BaseException) -> UserError:
    """One line for a failed write, with advice that fits its cause."""
    code = getattr(error, "errno", None)
    reason = getattr(error, "strerror", None) or str(error).splitlines()[0][:120] or \
        type(error).__name__
    if code == errno.ENOSPC or _nearly_full(path.parent):
        advice = "free disk space or write to another location"
    elif code in (errno.EROFS, errno.EACCES, errno.EPERM):
        advice = ("write to a writable location (OMBRL_DATA_DIR, OMBRL_MODELS_DIR, "
                  "OMBRL_DATASETS_DIR or --out)")
    else:
        return UserError(f"cannot access {path} ({reason}): check the path and its permissions")
    return UserError(f"cannot write {path} ({reason}): {advice}")


def _nearly_full(directory: Path) -> bool:
    try:
        return shutil.disk_usage(directory).free < (1 << 20)
    except OSError:
        return False


def check_free_space(directory: Path, nbytes: int, what: str) -> None:
    """Refuse a write of about ``nbytes`` that the file system of ``directory`` cannot hold."""
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return  # the write itself will report what is wrong
    if free < nbytes * _SPACE_MARGIN:
        raise UserError(f"{what} needs about {nbytes / 2**20:.1f} MiB but {directory} has "
                        f"{free / 2**20:.1f} MiB free: free disk space or write elsewhere")


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None],
                 expected_bytes: int | None = None) -> Path:
    """Write ``path`` through ``write(tmp_path)`` atomically; returns ``path``.

    Args:
        path: the target; its directory is created if needed.
        write: writes the whole content to the temporary path it is given.
        expected_bytes: the approximate size, checked against the free space first.

    Raises:
        UserError: the directory cannot be created or written, or the disk is full.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise write_failure(path, error) from None
    if expected_bytes is not None:
        check_free_space(path.parent, expected_bytes, f"writing {path.name}")
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise write_failure(path, error) from None
    tmp = Path(name)
    try:
        os.close(fd)
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as error:  # torch reports write failures as RuntimeError
        tmp.unlink(missing_ok=True)
        raise write_failure(path, error) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """:func:`atomic_write` of ``data``."""
    def write(tmp: Path) -> None:
        tmp.write_bytes(data)

    return atomic_write(path, write, expected_bytes=len(data))


def write_json_atomic(path: str | os.PathLike[str], value: Any) -> Path:
    """:func:`atomic_write` of ``value`` as indented JSON."""
    return write_bytes_atomic(path, (json.dumps(value, indent=2) + "\n").encode())
