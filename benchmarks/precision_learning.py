"""Does reduced precision change what a population learns? Six seeds on the demo's data.

Trains epistemic-penalty populations with the demo's budgets (6 epochs × 2,500 updates,
rollout length 5, 5 test episodes) on the dataset and environment model of an existing
``ombrl demo`` directory, once per precision setting, and prints per setting the final
normalised scores, the mean of each seed's last three evaluations and the wall time.

Usage::

    .venv/bin/ombrl demo --root data/demo                      # dataset and model first
    .venv/bin/python benchmarks/precision_learning.py --root data/demo \\
        --settings float32 bf16-rollouts bf16-all-compiled --first-seed 0
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

SETTINGS: dict[str, dict[str, Any]] = {
    "float32": {},
    "bf16-rollouts": {"rollout_dtype": "bfloat16"},
    "bf16-all-compiled": {"rollout_dtype": "bfloat16", "agent": {"precision": "bfloat16"},
                          "compile": True},
}
DATASET = "hopper-medium-replay-v2"


def run(root: Path, setting: str, seeds: tuple[int, ...]) -> tuple[np.ndarray, float]:
    """``[epochs, P]`` normalised test scores of one population, and its wall time (s)."""
    from offline_mbrl.config import TrainerConfiguration, make_config
    from offline_mbrl.train import Trainer

    config = make_config(
        TrainerConfiguration, mode="epistemic-penalty", env_name=DATASET, seeds=seeds,
        dataset=str(root / "datasets" / f"{DATASET}.hdf5"), offline_epochs=6,
        steps_per_epoch=2500, rollout_length=(5,), test_episodes=5,
        env_model={"max_number_of_training_epochs": 40, "training_patience": 10},
        experiment_name=f"precision-{setting}-s{seeds[0]}", **SETTINGS[setting])
    history: list[list[float]] = []
    start = time.perf_counter()
    Trainer(config, overwrite=True, progress=False).run(
        on_epoch=lambda epoch, rows: history.append([r["NormalizedTestScore"] for r in rows]))
    return np.array(history), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("data/demo"),
                        help="an ombrl demo directory (its datasets/ and models/ are reused)")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first .. first + 5")
    args = parser.parse_args()
    dataset = args.root / "datasets" / f"{DATASET}.hdf5"
    model = args.root / "models" / f"{DATASET}-model.pt"
    if not dataset.is_file() or not model.is_file():
        parser.error(f"{args.root} has no demo dataset and model: run "
                     f"`ombrl demo --root {args.root}` first")
    os.environ["OMBRL_DATASETS_DIR"] = str(args.root / "datasets")
    os.environ["OMBRL_MODELS_DIR"] = str(args.root / "models")
    os.environ["OMBRL_DATA_DIR"] = str(args.root / "precision-experiments")
    os.environ.setdefault("OMBRL_OFFLINE", "1")
    seeds = tuple(range(args.first_seed, args.first_seed + 6))
    for setting in args.settings:
        scores, seconds = run(args.root, setting, seeds)
        last = scores[-3:].mean(axis=0)
        print(f"{setting:18s} seeds {seeds[0]}-{seeds[-1]}: final {scores[-1].mean():.1f} ± "
              f"{scores[-1].std():.1f} {np.round(scores[-1], 1).tolist()}; last 3 "
              f"{last.mean():.1f} ± {last.std():.1f} {np.round(last, 1).tolist()}; "
              f"{seconds:.0f} s", flush=True)


if __name__ == "__main__":
    main()
