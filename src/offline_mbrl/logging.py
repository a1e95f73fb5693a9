"""Per-run logs: ``progress.txt`` (tab-separated, seed-compatible), TensorBoard, console."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

PROGRESS_FILE = "progress.txt"


class ProgressLog:
    """One row per epoch in ``progress.txt``; the header is fixed by the first row.

    On resume the existing file is truncated to the rows of completed epochs
    (``keep_epochs``) so that a crash between logging and checkpointing cannot leave
    duplicate rows.
    """

    def __init__(self, run_dir: Path, keep_epochs: int | None = None) -> None:
        self.path = run_dir / PROGRESS_FILE
        self.columns: list[str] | None = None
        if keep_epochs is not None and self.path.exists():
            lines = self.path.read_text().splitlines()
            if lines:
                self.columns = lines[0].split("\t")
                self.path.write_text("\n".join(lines[: keep_epochs + 1]) + "\n")
        elif self.path.exists():
            self.path.unlink()

    def write(self, row: dict[str, Any]) -> None:
        if self.columns is None:
            self.columns = list(row)
            self.path.write_text("\t".join(self.columns) + "\n")
        values = [_format(row.get(column, math.nan)) for column in self.columns]
        with self.path.open("a") as handle:
            handle.write("\t".join(values) + "\n")


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def read_progress(path: str | Path) -> dict[str, list[float]]:
    """Columns of a ``progress.txt`` as lists of floats."""
    lines = Path(path).read_text().splitlines()
    if not lines:
        return {}
    header = lines[0].split("\t")
    columns: dict[str, list[float]] = {name: [] for name in header}
    for line in lines[1:]:
        for name, value in zip(header, line.split("\t"), strict=False):
            columns[name].append(float(value))
    return columns


class RunLogger:
    """Everything one member's run directory records per epoch."""

    def __init__(self, run_dir: Path, resume_epochs: int | None = None,
                 purge_step: int | None = None) -> None:
        """``resume_epochs``: keep that many progress rows; ``purge_step``: TensorBoard drops
        the events of earlier sessions at this step or later (logged after the checkpoint a
        run resumes from), so that its curves match ``progress.txt``."""
        self.run_dir = run_dir
        self.progress = ProgressLog(run_dir, keep_epochs=resume_epochs)
        self._purge_step = purge_step
        # Opened at the first epoch: a writer runs a thread of its own, which a trainer
        # that never trains (a refused resume, a test) would leave behind.
        self._tensorboard: SummaryWriter | None = None

    def log_epoch(self, row: dict[str, Any], step: int) -> None:
        self.progress.write(row)
        if self._tensorboard is None:
            self._tensorboard = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"),
                                              purge_step=self._purge_step)
        for key, value in row.items():
            if key != "Epoch" and isinstance(value, int | float) and math.isfinite(value):
                self._tensorboard.add_scalar(_tensorboard_tag(key), value, step)
        self._tensorboard.flush()

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None


def _tensorboard_tag(key: str) -> str:
    if "Test" in key or key.startswith("Normalized"):
        return f"test/{key}"
    if key.startswith("Loss") or key in ("Alpha", "QMean", "LogPi"):
        return f"train/{key}"
    return f"misc/{key}"
