"""Run directories: where a run lives, and refusing to clobber one."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

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


def claim_run_dirs(run_dirs: list[Path], resume: bool, overwrite: bool) -> bool:
    """Create run directories, refusing to silently replace existing runs.

    Returns:
        True when the run resumes from existing checkpoints.
    """
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other: pass only one")
    existing = [d for d in run_dirs if d.exists() and any(d.iterdir())]
    if resume:
        missing = [d for d in run_dirs if not (d / CHECKPOINT_FILE).is_file()]
        if missing:
            raise UserError(f"cannot resume: no checkpoint in {missing[0]}; "
                            "start the run without --resume")
        return True
    if existing and not overwrite:
        raise UserError(f"run directory {existing[0]} already exists: pass --resume to continue "
                        "it, --overwrite to replace it, or choose another --exp_name/--seed")
    for d in existing:
        shutil.rmtree(d)
    for d in run_dirs:
        d.mkdir(parents=True, exist_ok=True)
    return False


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
