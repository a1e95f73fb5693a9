"""Atomic, pickle-free checkpoints.

A checkpoint is a nested dict of tensors and plain Python values (no objects), so it
loads with ``torch.load(weights_only=True)``: opening a file cannot run code.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from offline_mbrl.errors import UserError
from offline_mbrl.files import atomic_write
from offline_mbrl.modes import same_agent
from offline_mbrl.renames import current_config_names

FORMAT_VERSION = 1


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically (see :func:`offline_mbrl.files.atomic_write`),
    each tensor with only the memory it shows (see :func:`compact`)."""
    compacted = compact(obj)
    atomic_write(path, lambda tmp: torch.save(compacted, tmp))


def compact(obj: Any) -> Any:
    """``obj`` with every tensor that views a larger storage replaced by a copy.

    ``torch.save`` writes a tensor's whole storage: a view of a few filled rows of a
    preallocated buffer would otherwise carry the full buffer into the file.
    """
    if isinstance(obj, torch.Tensor):
        if obj.untyped_storage().nbytes() > obj.numel() * obj.element_size():
            return obj.clone(memory_format=torch.contiguous_format)
        return obj
    if isinstance(obj, dict):
        return {k: compact(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [compact(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(compact(v) for v in obj)
    return obj


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


RESUME_MAY_CHANGE = frozenset({
    "online_epochs", "offline_epochs", "test_episodes", "render_test_episodes",
    "save_frequency", "device", "threads", "compile", "experiment_name", "seed", "seeds",
    "pretrained_agent_path", "pretrained_env_model_path", "dataset",
})
"""Settings a resumed run may change; every other one must equal the checkpoint's."""


def check_resumable(path: Path, state: dict[str, Any], agent_kind: str, obs_dim: int,
                    now: Callable[[int], dict[str, Any]]) -> None:
    """Refuse a checkpoint of another run, or a resume that changes fixed settings.

    Args:
        path: the checkpoint file (named in errors).
        state: its contents.
        agent_kind, obs_dim: the resuming run's agent and observation size.
        now: the resuming run's configuration as JSON, for a member seed.

    A checkpoint saved under old field names (:mod:`offline_mbrl.renames`) is compared
    under the current ones.
    """
    if not same_agent(state.get("agent_kind"), agent_kind) or state.get("obs_dim") != obs_dim:
        raise UserError(f"checkpoint {path} belongs to another mode or environment: "
                        "start a new run with --overwrite")
    saved = state.get("config")
    if not isinstance(saved, dict):
        raise UserError(f"checkpoint {path} holds no configuration: it is damaged or "
                        "foreign; start a new run with --overwrite")
    saved = current_config_names(saved)
    current = now(int(saved.get("seed", 0)))
    changed = [key for key in current if key not in RESUME_MAY_CHANGE
               and key in saved and saved[key] != current[key]]
    if changed:
        what = ", ".join(f"{k} (checkpoint {saved[k]!r}, now {current[k]!r})" for k in changed)
        raise UserError(f"--resume cannot change {what}: drop those flags, or start a new "
                        "run with --overwrite")
