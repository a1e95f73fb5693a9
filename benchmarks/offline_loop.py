"""The pessimistic offline loop at OfflineRL-Kit MOPO's default hopper settings.

Settings of the peer's measurement: ensemble of 7 networks of 4×200, rollouts of 50,000
starts × length 5 every 1,000 gradient steps, batch 256, real ratio 0.05, on 200,000
transitions. The dataset here is synthetic but hopper-shaped (obs 11, action 3), so no
download is needed; the work per step is the same.

Prints, in one run:
- seconds per dynamics-training epoch on the 200k transitions (80% train);
- seconds per 50k × 5 rollout (one seed);
- gradient steps/s end to end (one rollout round per 1,000 steps, plus the updates)
  for P = 1 and P = 6 (seed-steps/s for the population);
- the ratios to the single-seed eager loop and to the peer's figures.

Usage::

    .venv/bin/python benchmarks/offline_loop.py                # full settings (~minutes)
    .venv/bin/python benchmarks/offline_loop.py --steps 200 --starts 5000   # quick look
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

PEER = {"epoch_s": 14.1, "rollout_s": 14.9, "sac_steps_per_s": 87.0, "end_to_end": 37.0}
OBS_DIM, ACT_DIM = 11, 3


def synthetic_dataset(n: int, seed: int = 0):
    """Linear-Gaussian dynamics with hopper's sizes; episodes of 1000 steps."""
    from offline_mbrl.data.dataset import OfflineDataset

    rng = np.random.default_rng(seed)
    a = rng.normal(scale=0.1, size=(OBS_DIM, OBS_DIM))
    b = rng.normal(scale=0.3, size=(ACT_DIM, OBS_DIM))
    obs = rng.normal(size=(n, OBS_DIM)).astype(np.float32)
    actions = rng.uniform(-1, 1, size=(n, ACT_DIM)).astype(np.float32)
    next_obs = (obs + obs @ a + actions @ b
                + 0.05 * rng.normal(size=(n, OBS_DIM))).astype(np.float32)
    rewards = (next_obs[:, 5] - 0.1 * (actions**2).sum(1)).astype(np.float32)
    timeouts = np.zeros(n, dtype=bool)
    timeouts[999::1000] = True
    return OfflineDataset(obs, actions, rewards, next_obs, np.zeros(n, dtype=bool), timeouts,
                          name="synthetic-hopper")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transitions", type=int, default=200_000)
    parser.add_argument("--starts", type=int, default=50_000, help="rollout starts per seed")
    parser.add_argument("--length", type=int, default=5)
    parser.add_argument("--steps", type=int, default=1000,
                        help="gradient steps per end-to-end measurement (one rollout round)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 6])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from offline_mbrl.config import TrainerConfiguration
    from offline_mbrl.data.d4rl import write_d4rl_hdf5
    from offline_mbrl.models.io import save_environment_model
    from offline_mbrl.models.training import (
        EnvironmentModelConfiguration,
        train_environment_model,
    )
    from offline_mbrl.train import Trainer

    console = Console()
    work = Path(tempfile.mkdtemp(prefix="ombrl-bench-"))
    os.environ["OMBRL_DATA_DIR"] = str(work / "experiments")
    dataset = synthetic_dataset(args.transitions)
    data_path = write_d4rl_hdf5(dataset, work / "synthetic.hdf5", compress=False)

    model_config = EnvironmentModelConfiguration(max_number_of_training_epochs=1,
                                                 device=args.device)
    start = time.perf_counter()
    model, metrics = train_environment_model(dataset, model_config, "hopper-medium-v2",
                                             progress=False)
    epoch_s = float(metrics.get("epoch_time_s", time.perf_counter() - start))
    model_path = save_environment_model(model, work / "model.pt", {
        "dataset_name": dataset.name, "dataset_hash": dataset.content_hash()})

    results: dict[int, dict[str, float]] = {}
    rollout_s = rollout_bf16_s = float("nan")
    for P in args.sizes:
        config = TrainerConfiguration(
            env_name="hopper-medium-v2", mode="epistemic-penalty", dataset=str(data_path),
            seeds=tuple(range(P)), pretrained_env_model_path=str(model_path),
            rollout_length=(args.length,), pessimism=(1.0,), real_ratio=0.05,
            rollout_every=args.steps,
            n_parallel_virtual_rollouts=max(1, args.starts * args.length // args.steps),
            experiment_name=f"bench-p{P}", device=args.device, test_episodes=1)
        trainer = Trainer(config, overwrite=True, progress=False)
        trainer.train_epoch(steps=5)  # warm-up: first rollout round and allocations
        if P == 1:
            def starts(n: int, t: Trainer = trainer) -> torch.Tensor:
                return t.dataset.sample(n, t.rngs["data"])

            t0 = time.perf_counter()
            trainer._rollout_round(starts)
            rollout_s = time.perf_counter() - t0
            fp32 = trainer.config
            trainer.config = fp32.model_copy(update={"rollout_dtype": "bfloat16"})
            t0 = time.perf_counter()
            trainer._rollout_round(starts)
            rollout_bf16_s = time.perf_counter() - t0
            trainer.config = fp32
        trainer._virtual_empty = False
        trainer.total_updates = 0  # the next step starts a rollout round
        t0 = time.perf_counter()
        trainer.train_epoch(steps=args.steps)
        elapsed = time.perf_counter() - t0
        t0 = time.perf_counter()
        trainer.total_updates = 1  # updates only
        trainer.train_epoch(steps=min(args.steps, 200))
        update_s = (time.perf_counter() - t0) / min(args.steps, 200)
        trainer.close()
        results[P] = {"steps_per_s": args.steps / elapsed,
                      "seed_steps_per_s": P * args.steps / elapsed,
                      "updates_per_s": 1.0 / update_s}

    table = Table(title=f"Pessimistic offline loop ({args.device}, torch "
                        f"{torch.__version__}, {torch.get_num_threads()} threads)")
    for column in ("figure", "ours", "peer", "ours / peer"):
        table.add_column(column)
    table.add_row("dynamics epoch on 200k (s)", f"{epoch_s:.1f}", f"{PEER['epoch_s']}",
                  f"{PEER['epoch_s'] / epoch_s:.2f}× faster")
    table.add_row(f"{args.starts // 1000}k × {args.length} rollout, one seed (s)",
                  f"{rollout_s:.1f}", f"{PEER['rollout_s']}",
                  f"{PEER['rollout_s'] / rollout_s:.2f}× faster")
    table.add_row("same rollout, --rollout_dtype bfloat16 (s)", f"{rollout_bf16_s:.1f}",
                  f"{PEER['rollout_s']}", f"{PEER['rollout_s'] / rollout_bf16_s:.2f}× faster")
    for P, r in results.items():
        table.add_row(f"SAC updates/s without rollouts, P={P}",
                      f"{r['updates_per_s']:.0f} ({r['updates_per_s'] * P:.0f} seed-updates/s)",
                      f"{PEER['sac_steps_per_s']}",
                      f"{r['updates_per_s'] * P / PEER['sac_steps_per_s']:.2f}×")
        table.add_row(f"end to end, P={P} (seed-steps/s)", f"{r['seed_steps_per_s']:.0f}",
                      f"{PEER['end_to_end']}",
                      f"{r['seed_steps_per_s'] / PEER['end_to_end']:.2f}×")
    if 1 in results:
        for P, r in results.items():
            if P != 1:
                table.add_row(f"P={P} vs single-seed eager loop",
                              f"{r['seed_steps_per_s'] / results[1]['seed_steps_per_s']:.2f}×",
                              "", "")
    console.print(table)


if __name__ == "__main__":
    main()
