"""Two source trees side by side: the pessimistic offline loop of each, measured in one run.

Both trees run ``benchmarks/offline_loop.py``'s loop (``time_ours``: OfflineRL-Kit MOPO's
hopper settings, epistemic-penalty, one rollout round of 50k × 5 per 1,000 gradient steps)
on the same synthetic dataset and the same environment model, each configuration in a
fresh process of its own tree, the trees alternating so that a slow phase of the machine
hits both. Reports end-to-end seed-steps/s and SAC seed-updates/s, and new / old.

``--variants`` adds runs of the new tree with an environment variable set (for example
``mallopt=OMBRL_KEEP_FREED_MEMORY=1``) to weigh an optional speed-up in the same run.

Usage::

    .venv/bin/python benchmarks/ab.py --old /path/to/old/checkout [--new .]
        [--configs float32:1:eager float32:6:eager bf16-all:6:eager float32:1:compiled]

Nothing else may run on the machine while it measures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import argparse, json, os, sys
tree = sys.argv[1]
sys.path.insert(0, os.path.join(tree, "src"))
sys.path.insert(0, os.path.join(tree, "benchmarks"))
import offline_loop
setting, P, mode = sys.argv[4].split(":")
args = argparse.Namespace(starts=int(sys.argv[5]), length=5, steps=int(sys.argv[6]),
                          device="cpu", repeats=int(sys.argv[7]))
result = offline_loop.time_ours(int(P), setting, mode == "compiled", sys.argv[2], sys.argv[3],
                                args)
import offline_mbrl
print(json.dumps({"result": result, "source": os.path.dirname(offline_mbrl.__file__)}))
"""


def prepare(work: Path, transitions: int) -> tuple[Path, Path]:
    sys.path.insert(0, str(ROOT / "src"))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import offline_loop

    from offline_mbrl.data.d4rl import write_d4rl_hdf5
    from offline_mbrl.models.io import save_environment_model
    from offline_mbrl.models.training import (
        EnvironmentModelConfiguration,
        train_environment_model,
    )

    dataset = offline_loop.synthetic_dataset(transitions)
    data_path = write_d4rl_hdf5(dataset, work / "synthetic.hdf5", compress=False)
    model, _ = train_environment_model(
        dataset, EnvironmentModelConfiguration(max_number_of_training_epochs=1),
        "hopper-medium-v2", progress=False)
    model_path = save_environment_model(model, work / "model.pt", {
        "dataset_name": dataset.name, "dataset_hash": dataset.content_hash()})
    return data_path, model_path


def measure(tree: Path, env_extra: dict[str, str], config: str, paths: tuple[Path, Path],
            work: Path, args: argparse.Namespace) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(env_extra, OMBRL_DATA_DIR=str(work / "experiments"))
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(tree), str(paths[0]), str(paths[1]), config,
         str(args.starts), str(args.steps), str(args.repeats)],
        env=env, check=True, capture_output=True, text=True, cwd=tree).stdout
    payload = json.loads(out.strip().splitlines()[-1])
    if not payload["source"].startswith(str(tree)):
        raise RuntimeError(f"{tree} ran the package from {payload['source']}")
    return payload["result"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, required=True, help="the reference checkout")
    parser.add_argument("--new", type=Path, default=ROOT, help="the checkout to compare")
    parser.add_argument("--configs", nargs="+",
                        default=["float32:1:eager", "float32:6:eager", "bf16-all:6:eager",
                                 "float32:1:compiled"],
                        help="setting:P:mode, settings as in offline_loop.py")
    parser.add_argument("--variants", nargs="*", default=[],
                        help="name=VAR=value: the new tree again with VAR=value")
    parser.add_argument("--transitions", type=int, default=200_000)
    parser.add_argument("--starts", type=int, default=50_000)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ombrl-ab-"))
    paths = prepare(work, args.transitions)
    trees = [("old", args.old.resolve(), {}), ("new", args.new.resolve(), {})]
    for variant in args.variants:
        name, var, value = variant.split("=", 2)
        trees.append((name, args.new.resolve(), {var: value}))
    rows = []
    for config in args.configs:
        results = {}
        for name, tree, env_extra in trees:
            results[name] = measure(tree, env_extra, config, paths, work, args)
            print(config, name, json.dumps(results[name]), flush=True)
        rows.append((config, results))
    names = [name for name, _, _ in trees]
    print(f"\nold: {args.old}, new: {args.new}; best of {args.repeats}\n")
    header = " | ".join(f"{n} steps/s | {n} updates/s" for n in names)
    print(f"| configuration (setting:P:mode) | {header} | "
          + " | ".join(f"{n} / old, end to end" for n in names[1:]) + " |")
    print("|---|" + "--:|" * (2 * len(names) + len(names) - 1))
    for config, results in rows:
        P = int(config.split(":")[1])
        cells = " | ".join(f"{results[n]['seed_steps_per_s']:.0f} | "
                           f"{results[n]['updates_per_s'] * P:.0f}" for n in names)
        old = results["old"]["seed_steps_per_s"]
        ratios = " | ".join(f"{results[n]['seed_steps_per_s'] / old:.2f}×" for n in names[1:])
        print(f"| {config} | {cells} | {ratios} |")


if __name__ == "__main__":
    main()
