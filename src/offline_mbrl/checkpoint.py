"""Atomic, pickle-free checkpoints.

A checkpoint is a nested dict of tensors and plain Python values (no objects), so it
loads with ``torch.load(weights_only=True)``: opening a file cannot run code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from offline_mbrl.errors import UserError
from offline_mbrl.files import atomic_write

FORMAT_VERSION = 1


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically (see :func:`offline_mbrl.files.atomic_write`)."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Save a checkpoint dict (tensors, numbers, strings, lists, dicts) atomically."""
    atomic_torch_save({"format_version": FORMAT_VERSION, **state}, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Raises:
        UserError: the file is missing, truncated, not a checkpoint, or of another version.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}: train a run first or pass the right path")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for damaged files
        reason = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
        raise UserError(f"checkpoint {path} is corrupt or unreadable ({reason}): "
                        "delete it and retrain, or resume from another copy") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path} is not an offline_mbrl checkpoint of format {FORMAT_VERSION}: "
                        "retrain with this version")
    return state
