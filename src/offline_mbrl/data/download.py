"""Download a dataset file with urllib: progress bar, resume, atomic rename, HDF5 check.

The bytes go to ``<dest>.part``; an interrupted transfer leaves that file behind and the next
attempt (within the same call, or a later call) asks the server for the rest with an HTTP
``Range`` request. Servers that ignore ``Range`` (answer 200 with the whole file) are handled
by starting over. Only a complete file that opens as HDF5 with the D4RL keys is moved to
``dest``.
"""

from __future__ import annotations

import http.client
import os
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import h5py
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from offline_mbrl.errors import UserError

CHUNK_BYTES = 1 << 20
SANITY_KEYS: tuple[str, ...] = ("observations", "actions", "rewards")
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


class _TransferCut(Exception):
    """The connection ended before the announced number of bytes arrived (worth resuming)."""


def _default_hint() -> str:
    return ("set OMBRL_D4RL_URL to a reachable mirror, put the file in place by hand, "
            "or create data with `ombrl datasets collect <name>`")


def check_hdf5(path: Path, url: str) -> None:
    """Raise :class:`UserError` (after deleting ``path``) unless it is a D4RL-style HDF5 file."""
    problem = None
    try:
        with h5py.File(path, "r") as f:
            missing = [key for key in SANITY_KEYS if key not in f]
            if missing:
                problem = f"it has no '{missing[0]}'"
    except OSError as exc:
        problem = f"it is not HDF5 ({exc})"
    if problem is not None:
        path.unlink(missing_ok=True)
        raise UserError(
            f"the file downloaded from {url} is not a D4RL dataset: {problem}; it was deleted: "
            "check the URL (OMBRL_D4RL_URL)"
        )


def _attempt(url: str, part: Path, progress: Progress | None, task: TaskID | None,
             timeout: float) -> None:
    """One request, appending to ``part``; raises :class:`_TransferCut` on a short transfer."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "offline_mbrl"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            # The partial file is at least as long as the resource: it cannot be resumed.
            part.unlink()
            raise _TransferCut("range not satisfiable") from exc
        raise
    with response:
        status = response.status
        length_header = response.headers.get("Content-Length")
        length = int(length_header) if length_header is not None else None
        if offset and status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if match is None or int(match.group(1)) != offset:
                part.unlink()
                raise _TransferCut("server answered a different range")
            mode = "ab"
            total = int(match.group(3)) if match.group(3) != "*" else None
        else:
            # Status 200: the server sent the whole file, whatever was asked.
            offset = 0
            mode = "wb"
            total = length
        if progress is not None and task is not None:
            progress.update(task, total=total, completed=offset)
        received = 0
        with open(part, mode) as out:
            while True:
                try:
                    chunk = response.read(CHUNK_BYTES)
                except http.client.IncompleteRead as exc:
                    out.write(exc.partial)
                    raise _TransferCut("connection closed early") from exc
                except OSError as exc:  # reset or timed out mid-body: resumable
                    raise _TransferCut(str(exc) or type(exc).__name__) from exc
                if not chunk:
                    break
                out.write(chunk)
                received += len(chunk)
                if progress is not None and task is not None:
                    progress.update(task, completed=offset + received)
        if length is not None and received < length:
            raise _TransferCut(f"got {received} of {length} bytes")


def download_file(
    url: str,
    dest: str | os.PathLike[str],
    progress: bool = True,
    retries: int = 3,
    timeout: float = 60.0,
    hint: str | None = None,
    validate: Callable[[Path], None] | None = None,
) -> Path:
    """Download ``url`` to ``dest``, resuming an earlier partial download.

    Args:
        url: what to fetch (http/https).
        dest: final path; the transfer goes to ``<dest>.part`` and is renamed when complete.
        progress: show a rich progress bar on stderr.
        retries: how many times a cut transfer is resumed within this call.
        timeout: socket timeout in seconds.
        hint: what to tell the user to do when the download fails (default: use
            ``OMBRL_D4RL_URL`` or ``ombrl datasets collect``).
        validate: raises :class:`UserError` for a complete file that must not be used
            (NaN values, wrong dimensions, no rows); it runs before the file takes its
            final name, and a file it refuses is deleted.

    Returns:
        ``dest``, which now holds a file that opens as HDF5 with observations/actions/rewards.

    Raises:
        UserError: the server cannot be reached or answers with an error (the ``.part`` file
            is kept for a later resume), or the downloaded file is not a D4RL HDF5 file
            (it is deleted).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    fix = hint or _default_hint()
    bar: Progress | None = None
    task: TaskID | None = None
    if progress:
        bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
            TransferSpeedColumn(), TimeRemainingColumn(),
            console=Console(file=sys.stderr), transient=False,
        )
        task = bar.add_task(dest.name, total=None)
        bar.start()
    try:
        for attempt in range(retries + 1):
            try:
                _attempt(url, part, bar, task, timeout)
                break
            except _TransferCut as exc:
                if attempt == retries:
                    raise UserError(
                        f"download of {url} was interrupted {retries + 1} times ({exc}); the "
                        f"partial file {part} is kept and the next try resumes it: {fix}"
                    ) from exc
            except urllib.error.HTTPError as exc:
                raise UserError(f"could not download {url}: HTTP {exc.code} {exc.reason}: "
                                f"{fix}") from exc
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                reason = getattr(exc, "reason", None) or exc
                raise UserError(f"could not download {url}: {reason}: {fix}") from exc
    finally:
        if bar is not None:
            bar.stop()
    check_hdf5(part, url)
    if validate is not None:
        try:
            validate(part)
        except UserError as error:
            part.unlink(missing_ok=True)
            raise UserError(f"the file downloaded from {url} is unusable and was deleted "
                            f"({error}): {fix}") from None
    os.replace(part, dest)
    return dest
