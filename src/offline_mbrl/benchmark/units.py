"""What one benchmark unit does, and when it is finished.

Three kinds of unit, run in this order for a dataset:

1. :func:`resolve_dataset`: the data file, collected under the D4RL protocol
   (``source = "collect"``, into ``$OMBRL_DATASETS_DIR``, reused once there) or the published
   D4RL file (``source = "d4rl"``: local, or downloaded into ``$OMBRL_DATASETS_DIR``);
2. :func:`train_model`: the dataset's environment model, trained once and saved at its
   default path (``$OMBRL_MODELS_DIR``), where every model-based run of the dataset loads it;
3. :func:`train_unit`: one (dataset, mode) population; skipped when :func:`finished`,
   continued from its checkpoints when it has some (``--resume``), else started afresh.

All paths come from the ``OMBRL_*`` variables that :func:`directories` derives from the
benchmark's root, so every unit, in any process or on any machine sharing the root, writes
under it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from offline_mbrl.benchmark.spec import (
    BenchmarkSpec,
    DatasetUnit,
    ModelUnit,
    TrainUnit,
    expand,
    unit_config,
)
from offline_mbrl.data.collect import SAC_KINDS, SACCollectionOptions, collect
from offline_mbrl.data.d4rl import write_d4rl_hdf5
from offline_mbrl.data.resolve import dataset_file, load_dataset, resolve_dataset_path
from offline_mbrl.envs.registry import get_env_spec
from offline_mbrl.models.io import default_model_path
from offline_mbrl.models.training import resolve_device
from offline_mbrl.plotting import read_progress
from offline_mbrl.run_setup import train_and_save_model
from offline_mbrl.runs import CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE, member_run_dirs
from offline_mbrl.train import Trainer

Log = Callable[[str], None]
PATH_VARIABLES = {"OMBRL_DATASETS_DIR": "datasets", "OMBRL_MODELS_DIR": "models",
                  "OMBRL_DATA_DIR": "experiments"}
"""The variables that place datasets, models and runs, and their folder under the root."""


def directories(root: Path) -> dict[str, str]:
    """``OMBRL_*`` variables placing datasets, models and runs under ``root`` (absolute)."""
    root = root.expanduser().resolve()
    return {name: str(root / folder) for name, folder in PATH_VARIABLES.items()}


def apply_environ(environ: dict[str, str]) -> None:
    """Set ``environ`` in this process (a Ray task's first step)."""
    os.environ.update(environ)


# ---------------------------------------------------------------------- datasets
def collect_dataset(path: Path, name: str, size: int | None, options: SACCollectionOptions,
                    seed: int = 0, log: Log = print) -> Path:
    """``path``, generated under the D4RL protocol if it is not there yet (``size`` rows;
    None: the kind's own size, medium-replay's whole replay buffer)."""
    if path.is_file():
        return path
    dataset = collect(name, size, seed=seed, options=options, log=log)  # type: ignore[arg-type]
    write_d4rl_hdf5(dataset, path)
    log(f"wrote {len(dataset)} transitions to {path}")
    return path


def resolve_dataset(unit: DatasetUnit, spec: BenchmarkSpec, log: Log = print) -> str:
    """The data file of ``unit`` (collected or published), as an absolute path."""
    if unit.source == "d4rl":
        where = resolve_dataset_path(unit.name)
        return str(Path(where).resolve()) if isinstance(where, Path) else where
    data = spec.data
    options = SACCollectionOptions(max_train_steps=data.collect_steps,
                                   expert_steps=data.expert_steps, steps_per_epoch=5000,
                                   test_episodes=5, device=spec.resources.device)
    kind = get_env_spec(unit.name).dataset_kind
    size = None if kind == "medium-replay" else data.size
    path = collect_dataset(dataset_file(unit.name), unit.name, size, options, data.seed, log)
    return str(path.resolve())


def needs_sac_policy(unit: DatasetUnit) -> bool:
    """Whether collecting ``unit`` trains (or reuses) its environment's SAC policies, which
    the other collected kinds of that environment share."""
    return unit.source == "collect" and get_env_spec(unit.name).dataset_kind in SAC_KINDS


# ---------------------------------------------------------------------- models
def model_config_unit(spec: BenchmarkSpec, unit: ModelUnit) -> TrainUnit:
    """The first of the dataset's model-based runs: its configuration sets the model's."""
    return next(t for t in _trains(spec, unit.dataset) if t.uses_model)


def _trains(spec: BenchmarkSpec, dataset: str) -> list[TrainUnit]:
    return [t for t in expand(spec).trains if t.dataset == dataset]


def train_model(unit: ModelUnit, spec: BenchmarkSpec, dataset_path: str) -> str:
    """The dataset's environment model at its default path, trained and saved if missing."""
    path = default_model_path(unit.dataset)
    if path.is_file():
        return str(path.resolve())
    config = unit_config(spec, model_config_unit(spec, unit), dataset_path)
    torch.set_num_threads(spec.resources.threads)
    data = load_dataset(unit.dataset, dataset=dataset_path)
    train_and_save_model(config, data, path, resolve_device(config.device),
                         log_dir=path.parent / f"{path.stem}-tensorboard", progress=False)
    return str(path.resolve())


# ---------------------------------------------------------------------- runs
def run_dirs(spec: BenchmarkSpec, unit: TrainUnit) -> list[Path]:
    """``$OMBRL_DATA_DIR/<dataset>-<mode>/<dataset>-<mode>-s<seed>/`` per seed."""
    return member_run_dirs(unit_config(spec, unit))


def unit_epochs(spec: BenchmarkSpec, unit: TrainUnit) -> int:
    """Evaluations of a finished run of ``unit``."""
    return unit_config(spec, unit).epochs


def runs_finished(dirs: list[Path], epochs: int) -> bool:
    """Whether every run in ``dirs`` logged ``epochs`` evaluations in its progress.txt."""
    for run_dir in dirs:
        progress = run_dir / "progress.txt"
        if not progress.is_file():
            return False
        if len(read_progress(progress).get("Epoch", [])) < epochs:
            return False
    return True


def finished(spec: BenchmarkSpec, unit: TrainUnit) -> bool:
    return runs_finished(run_dirs(spec, unit), unit_epochs(spec, unit))


def has_checkpoint(dirs: list[Path]) -> bool:
    """Whether a run of the population saved a checkpoint (it then resumes)."""
    return any((d / CHECKPOINT_FILE).is_file() or (d / PREVIOUS_CHECKPOINT_FILE).is_file()
               for d in dirs)


def train_unit(unit: TrainUnit, spec: BenchmarkSpec, dataset_path: str,
               model_path: str | None = None, log: Log = print) -> float:
    """Train ``unit``'s population to its budget; returns the seconds it took (0: it was
    finished already). ``model_path`` is the dataset's saved environment model."""
    if finished(spec, unit):
        log(f"{unit.experiment}: finished, skipped")
        return 0.0
    config = unit_config(spec, unit, dataset_path)
    if model_path is not None:
        config = config.model_copy(update={"pretrained_env_model_path": model_path})
    resume = has_checkpoint(member_run_dirs(config))
    log(f"{unit.experiment}: {'resuming' if resume else 'training'} seeds {list(spec.seeds)}")
    start = time.time()
    Trainer(config, resume=resume, overwrite=not resume, progress=False).run()
    elapsed = time.time() - start
    log(f"{unit.experiment}: done in {elapsed:.0f} s")
    return elapsed


def seed_scores(dirs: list[Path], epochs: int, last_k: int
                ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per run, the mean of its last ``last_k`` normalised scores, and its curve
    ``[2, epochs]`` (updates, score); runs short of ``epochs`` are left out."""
    finals, curves = [], []
    for run_dir in dirs:
        path = run_dir / "progress.txt"
        if not path.is_file():
            continue
        progress = read_progress(path)
        # A run extended past the budget is read at the budget, so that one set of runs
        # serves tables of several budgets.
        score = np.asarray(progress.get("NormalizedTestScore", []), dtype=float)[:epochs]
        updates = np.asarray(progress.get("TotalUpdates", []), dtype=float)[:epochs]
        if score.size == epochs:
            finals.append(float(score[-last_k:].mean()))
            curves.append(np.stack([updates, score]))
    return np.asarray(finals), curves
