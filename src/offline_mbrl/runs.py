"""Run directories: where a run lives, and refusing to clobber one."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from offline_mbrl.config import TrainerConfiguration
from offline_mbrl.errors import UserError
from offline_mbrl.paths import child_path

CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.pt"


def experiments_root() -> Path:
    """``$OMBRL_DATA_DIR`` or ``./data/experiments``."""
    return Path(os.environ.get("OMBRL_DATA_DIR", "data/experiments"))


def experiment_name(config: TrainerConfiguration) -> str:
    if config.experiment_name is not None:
        return config.experiment_name
    return f"{config.env_name}-{config.mode}"


def member_run_dirs(config: TrainerConfiguration, root: Path | None = None) -> list[Path]:
    """``<root>/<experiment>/<experiment>-s<seed>/`` for every member of the population."""
    root = experiments_root() if root is None else root
    name = experiment_name(config)
    base = child_path(root, name, "experiment name", "--exp_name")
    return [base / f"{Path(name).name}-s{seed}" for seed in config.population_seeds]


PREVIOUS_CHECKPOINT_FILE = "checkpoint.prev.pt"
"""The checkpoint before the latest one: a population killed while its members save
resumes from the newest epoch that every member has."""


def checkpoint_epoch(path: Path) -> int | None:
    """The epoch a checkpoint file ends, or ``None`` if it is missing or unreadable.

    Memory-mapped, so that the buffers inside are not read just for the counter.
    """
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(state["counters"]["epoch"])
    except Exception:  # a damaged or foreign file is no candidate
        return None


def common_checkpoints(run_dirs: list[Path]) -> tuple[int, list[Path]] | None:
    """The newest epoch every member has a checkpoint of, and those files (or ``None``)."""
    candidates = []
    for d in run_dirs:
        files = {}
        for name in (PREVIOUS_CHECKPOINT_FILE, CHECKPOINT_FILE):
            epoch = checkpoint_epoch(d / name)
            if epoch is not None:
                files[epoch] = d / name
        candidates.append(files)
    shared = set.intersection(*(set(c) for c in candidates)) if candidates else set()
    if not shared:
        return None
    epoch = max(shared)
    return epoch, [c[epoch] for c in candidates]


def remove_partial_writes(run_dir: Path) -> None:
    """Delete the temporary files an interrupted atomic write left behind."""
    for tmp in run_dir.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def claim_run_dirs(run_dirs: list[Path], resume: bool, overwrite: bool
                   ) -> list[Path] | None:
    """Create run directories, refusing to silently replace existing runs.

    With ``resume``, every member continues from the newest epoch that all of them have a
    checkpoint of (the latest one, or the one before where a kill interrupted the
    population's saves). Where no epoch is shared, because some member never saved, the
    whole population starts again from scratch, and a warning names the members.

    Returns:
        The checkpoint file of every member when the run resumes, else ``None``.
    """
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other: pass only one")
    for d in run_dirs:
        if d.is_dir():
            remove_partial_writes(d)
    existing = [d for d in run_dirs if d.exists() and any(d.iterdir())]
    if resume:
        found = common_checkpoints(run_dirs)
        if found is not None:
            return found[1]
        if not any((d / CHECKPOINT_FILE).is_file() or (d / PREVIOUS_CHECKPOINT_FILE).is_file()
                   for d in run_dirs):
            raise UserError(f"cannot resume: no checkpoint in {run_dirs[0]}; "
                            "start the run without --resume")
        missing = [d.name for d in run_dirs if checkpoint_epoch(d / CHECKPOINT_FILE) is None]
        warnings.warn(f"{', '.join(missing)} never saved a checkpoint, so the population has "
                      "no epoch in common: it starts again from scratch", stacklevel=2)
        overwrite = True
    elif existing and not overwrite:
        raise UserError(f"run directory {existing[0]} already exists: pass --resume to continue "
                        "it, --overwrite to replace it, or choose another --exp_name/--seed")
    for d in existing:
        shutil.rmtree(d)
    for d in run_dirs:
        d.mkdir(parents=True, exist_ok=True)
    return None


RESOLVED_KEY = "resolved"
"""Key of ``config.json`` holding the values the run derived, and where each came from; it
is informational, and ``--config`` ignores it."""


def write_config(run_dir: Path, config: TrainerConfiguration,
                 resolved: dict[str, Any] | None = None) -> None:
    values = config.model_dump(mode="json")
    if resolved:
        values[RESOLVED_KEY] = resolved
    (run_dir / CONFIG_FILE).write_text(json.dumps(values, indent=2) + "\n")


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint file from a run directory or a file path, with a helpful error."""
    path = Path(path)
    if path.is_dir():
        if (path / CHECKPOINT_FILE).is_file():
            return path / CHECKPOINT_FILE
        children = sorted(p for p in path.glob(f"*/{CHECKPOINT_FILE}"))
        hint = f" (it holds runs such as {children[0].parent})" if children else ""
        raise UserError(f"{path} holds no run: pass a run directory that contains "
                        f"{CHECKPOINT_FILE}{hint}")
    if path.is_file():
        return path
    raise UserError(f"{path} does not exist: pass the run directory printed by train_agent.py")
