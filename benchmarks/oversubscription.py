"""Oversubscribed cores: one environment-model training epoch, alone and beside a busy
neighbour, under OpenMP's default wait policy, the short spin the package sets, and others.

Each case runs in a fresh process (OpenMP reads its wait policy once, at startup) that
trains the default hopper ensemble for a fixed number of epochs on random data of hopper's
dimensions, without early stopping, and reports seconds per epoch. The neighbour is a
single-threaded torch process that multiplies matrices without pause, as a
``--threads 1`` training beside it would. Cases:

- ``OpenMP default``: torch's thread count (one per core), OpenMP's default wait (spin a
  while, then sleep), as when torch is imported before the package;
- ``package default``: the same threads, the package's short spin (``GOMP_SPINCOUNT``);
- ``passive``: ``OMP_WAIT_POLICY=PASSIVE``, idle threads sleep at once;
- ``spin 10k``: a spin ten times the package's;
- ``OpenMP default, threads 1``: one thread, the advice for runs that share a machine.

Usage::

    .venv/bin/python benchmarks/oversubscription.py [--rows 96000] [--epochs 2]

Nothing else may run on the machine while it measures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

WORKLOAD = r"""
import json, os, sys, time
if sys.argv[4] == "openmp-default":
    import torch  # OpenMP starts before the package could set its wait policy
import numpy as np
import offline_mbrl  # sets the wait policy unless the environment already holds one
import torch
from offline_mbrl.data.dataset import OfflineDataset
from offline_mbrl.models.training import EnvironmentModelConfiguration, train_environment_model
rows, epochs, threads = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
if threads:
    torch.set_num_threads(threads)
rng = np.random.default_rng(0)
obs = rng.standard_normal((rows, 11), dtype=np.float32)
data = OfflineDataset(obs, rng.uniform(-1, 1, (rows, 3)).astype(np.float32),
                      rng.standard_normal(rows).astype(np.float32), obs + 0.01,
                      np.zeros(rows, bool), np.zeros(rows, bool), name="Hopper-v4")
config = EnvironmentModelConfiguration(max_number_of_training_epochs=epochs,
                                       training_patience=epochs + 1)
start = time.perf_counter()
_, metrics = train_environment_model(data, config, env_name="Hopper-v4", progress=False)
print(json.dumps({"epoch_s": (time.perf_counter() - start) / metrics["epochs"],
                  "threads": torch.get_num_threads(),
                  "policy": os.environ.get("OMP_WAIT_POLICY", ""),
                  "spin": os.environ.get("GOMP_SPINCOUNT", "")}))
"""

NEIGHBOUR = r"""
import torch
torch.set_num_threads(1)
a = torch.randn(256, 256)
while True:
    a = torch.tanh(a @ a)
"""


def run_case(rows: int, epochs: int, env_vars: dict[str, str], threads: int
             ) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(env_vars)
    # Only the package's own case lets the package choose the policy before torch loads.
    order = "package-default" if env_vars.get("package") else "openmp-default"
    env.pop("package", None)
    out = subprocess.run([sys.executable, "-c", WORKLOAD, str(rows), str(epochs), str(threads),
                          order], env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=96_000)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    cases: list[tuple[str, dict[str, str], int]] = [
        ("OpenMP default", {}, 0),
        ("package default", {"package": "1"}, 0),
        ("passive", {"OMP_WAIT_POLICY": "PASSIVE"}, 0),
        ("spin 10k", {"GOMP_SPINCOUNT": "10000"}, 0),
        ("OpenMP default, threads 1", {}, 1),
    ]
    results: dict[str, dict[str, float]] = {}
    for busy in (False, True):
        neighbour = None
        if busy:
            neighbour = subprocess.Popen([sys.executable, "-c", NEIGHBOUR])
            time.sleep(2.0)
        try:
            for name, env_vars, threads in cases:
                result = run_case(args.rows, args.epochs, env_vars, threads)
                results[f"{name}, {'beside a neighbour' if busy else 'alone'}"] = result
                print(name, "busy" if busy else "alone", result, flush=True)
        finally:
            if neighbour is not None:
                neighbour.kill()
                neighbour.wait()
    print(f"\n{args.rows} rows, hopper dims, default ensemble; seconds per model epoch\n")
    print("| case | threads | alone | beside a busy neighbour | slowdown |")
    print("|---|--:|--:|--:|--:|")
    for name, _, _ in cases:
        alone = results[f"{name}, alone"]
        busy = results[f"{name}, beside a neighbour"]
        print(f"| {name} | {alone['threads']} | {alone['epoch_s']:.1f} | {busy['epoch_s']:.1f} | "
              f"{busy['epoch_s'] / alone['epoch_s']:.1f}x |")


if __name__ == "__main__":
    main()
