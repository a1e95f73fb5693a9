"""The benchmark's progress: status files the units write, and the line the driver prints.

Each unit writes ``<root>/status/<unit id>.json`` when it starts (``running``) and when it
ends (``done`` or ``failed``, with its duration), so the driver sees which units run even
when they run on other machines of a cluster sharing the root.

The line counts training units (the datasets and models before them are counted apart):
``done`` includes units finished by an earlier invocation. The estimate of the time left is
the mean duration of the units finished so far times the work left, where a running unit
counts as half a unit, spread over the units that can run at once.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from offline_mbrl.files import write_json_atomic

STATUS_DIR = "status"


def write_status(root: Path, unit_id: str, state: str, session: str,
                 started: float | None = None) -> float:
    """Record that ``unit_id`` is ``state`` (``running``, ``done`` or ``failed``) in this
    ``session``; returns the time recorded."""
    now = time.time()
    values: dict[str, Any] = {"state": state, "session": session,
                              "started": started if started is not None else now}
    if state != "running":
        values.update(ended=now, seconds=now - values["started"])
    write_json_atomic(root / STATUS_DIR / f"{unit_id}.json", values)
    return now


def read_status(root: Path, unit_id: str) -> dict[str, Any]:
    """The unit's last recorded status (empty if none or unreadable)."""
    try:
        value = json.loads((root / STATUS_DIR / f"{unit_id}.json").read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class ProgressState:
    """What the progress line shows.

    Attributes:
        done, running, left, failed: training units in each state.
        prepared, preparing: datasets and models ready, and those still to do.
        durations: seconds of the training units finished in this invocation.
        slots: training units that can run at once (from the cluster's resources).
        elapsed: seconds since the invocation started.
    """

    done: int
    running: int
    left: int
    failed: int = 0
    prepared: int = 0
    preparing: int = 0
    durations: tuple[float, ...] = ()
    slots: int = 1
    elapsed: float = 0.0


def eta_seconds(state: ProgressState) -> float | None:
    """Seconds left by the module's estimate; 0 with nothing left, None before any unit of
    this invocation has finished."""
    if state.left + state.running == 0:
        return 0.0
    if not state.durations:
        return None
    mean = sum(state.durations) / len(state.durations)
    parallel = max(1, min(state.slots, state.left + state.running))
    return mean * (state.left + 0.5 * state.running) / parallel


def format_duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3.5 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def format_progress(state: ProgressState) -> str:
    """One line: units done, running, left (and failed), and the time left."""
    total = state.done + state.running + state.left + state.failed
    parts = [f"units {state.done}/{total} done", f"{state.running} running",
             f"{state.left} left"]
    if state.failed:
        parts.append(f"{state.failed} failed")
    if state.preparing:
        parts.append(f"datasets and models {state.prepared}/"
                     f"{state.prepared + state.preparing} ready")
    eta = eta_seconds(state)
    if eta is None:
        remaining = "time left: known after the first unit"
    elif eta == 0 or not math.isfinite(eta):
        remaining = "nothing left"
    else:
        remaining = f"about {format_duration(eta)} left"
    return (f"[{format_duration(state.elapsed)}] " + ", ".join(parts) + f"; {remaining}")
