"""Wall time of a default pessimistic run: model training plus 500,000 agent updates.

Measures on a synthetic hopper-shaped dataset (see ``offline_loop.py``) with the
default configuration (ensemble 7 × 4×200, SAC 4×128, 50 synthetic samples per update
generated every 250 updates, real ratio 0.05): the model's training time to early
stopping (capped by ``--model_epochs``), and the end-to-end gradient steps/s of the
agent loop over ``--steps`` updates, from which the time of 500k updates is projected.
Run it for P = 1 and P = 6 seeds; on a GPU add ``--device cuda`` (and ``--compile``).

Usage::

    .venv/bin/python benchmarks/offline_run.py --sizes 1 6
    .venv/bin/python benchmarks/offline_run.py --device cuda --compile --sizes 1 6
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from offline_loop import synthetic_dataset

UPDATES = 500_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transitions", type=int, default=200_000)
    parser.add_argument("--model_epochs", type=int, default=20)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 6])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()

    from offline_mbrl.config import TrainerConfiguration
    from offline_mbrl.data.d4rl import write_d4rl_hdf5
    from offline_mbrl.train import Trainer

    work = Path(tempfile.mkdtemp(prefix="ombrl-run-"))
    os.environ.update(OMBRL_DATA_DIR=str(work / "experiments"),
                      OMBRL_MODELS_DIR=str(work / "models"))
    dataset = synthetic_dataset(args.transitions)
    path = write_d4rl_hdf5(dataset, work / "synthetic.hdf5", compress=False)

    table = Table(title=f"Default pessimistic run ({args.device}, compile={args.compile}, "
                        f"{torch.get_num_threads()} threads)")
    for column in ("P", "model training (s)", "seed-steps/s end to end",
                   "projected 500k updates (min)", "total (min)"):
        table.add_column(column)
    for P in args.sizes:
        config = TrainerConfiguration(
            env_name="hopper-medium-v2", mode="epistemic-penalty", dataset=str(path),
            seeds=tuple(range(P)), device=args.device, compile=args.compile,
            experiment_name=f"run-p{P}", test_episodes=1,
            env_model={"max_number_of_training_epochs": args.model_epochs})
        model_file = work / "models" / "hopper-medium-v2-model.pt"
        model_file.unlink(missing_ok=True)  # time the model training for every P
        start = time.perf_counter()
        trainer = Trainer(config, overwrite=True, progress=False)
        model_s = time.perf_counter() - start
        trainer.train_epoch(steps=10)  # warm-up
        start = time.perf_counter()
        trainer.train_epoch(steps=args.steps)
        rate = args.steps / (time.perf_counter() - start)
        trainer.close()
        projected = UPDATES / rate / 60
        table.add_row(str(P), f"{model_s:.0f}", f"{rate * P:.0f}", f"{projected:.0f}",
                      f"{projected + model_s / 60:.0f}")
    Console().print(table)


if __name__ == "__main__":
    main()
