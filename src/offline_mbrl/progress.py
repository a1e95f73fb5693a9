"""The training loop's progress bar: epochs done, steps per second, last test return."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType

import numpy as np
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

TICK_EVERY = 200
"""Training steps between speed updates (a redraw per step would cost more than the step)."""


class EpochProgress:
    """A context manager around a rich progress bar; every method is a no-op when disabled.

    Args:
        description: the bar's label, e.g. ``"hopper-medium-v2 epistemic-penalty"``.
        epochs: the run's total epochs.
        done: epochs already trained (a resumed run starts part-way).
        enabled: show the bar.
    """

    def __init__(self, description: str, epochs: int, done: int, enabled: bool) -> None:
        self.bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(),
            TextColumn("{task.completed}/{task.total} epochs"),
            TextColumn("{task.fields[speed]:.0f} steps/s"),
            TextColumn("test return {task.fields[ret]}"), TimeRemainingColumn(),
            disable=not enabled, transient=False)
        self.task = self.bar.add_task(description, total=epochs, completed=done, speed=0.0,
                                      ret="-")

    def __enter__(self) -> EpochProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.bar.__exit__(kind, error, traceback)

    def epoch_ticker(self) -> Callable[[], None]:
        """A callback for every training step of the epoch that starts now."""
        start = time.time()
        steps = 0

        def tick() -> None:
            nonlocal steps
            steps += 1
            if steps % TICK_EVERY == 0:
                self.bar.update(self.task, speed=steps / max(time.time() - start, 1e-9))

        return tick

    def epoch_done(self, epoch: int, rows: list[dict[str, float]]) -> None:
        """Show ``epoch`` as completed, with the members' mean test return."""
        mean_return = np.mean([row["AverageTestEpRet"] for row in rows])
        self.bar.update(self.task, completed=epoch, ret=f"{mean_return:.1f}")
