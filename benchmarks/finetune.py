"""Offline-to-online fine-tuning: an offline agent continued online against SAC from scratch.

An offline run of a SAC-based mode (``--source``: a run directory of ``benchmarks/learning.py``
or ``ombrl train``, e.g. offline SAC or a pessimistic mode on hopper-medium-v2) initialises
every member of an online ``sac`` population (``--pretrained_agent_path``), whose replay
buffer starts with ``--dataset_rows`` transitions of the source's dataset
(``--n_samples_from_dataset``) and which acts with the pretrained policy from its first
step. Online SAC from scratch (random actions for its first ``--init_steps`` steps) runs
beside it for the same environment steps. Both evaluate after every epoch; the table gives
the source's offline score, the fine-tuned population's first evaluation and the lowest of its
first ``--last_k`` (no collapse when it starts online), its score at the end and the scratch
population's (each run's mean over its last ``--last_k`` evaluations), as normalised scores
(mean ± std over seeds), and the figure the curves. Each run resumes where it stopped.

Usage::

    .venv/bin/python benchmarks/finetune.py --source \\
        data/learning/experiments/hopper-medium-v2-offline-sac/hopper-medium-v2-offline-sac-s0 \\
        --dataset data/learning/datasets/hopper-medium-v2.hdf5 --env_name hopper-medium-v2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from offline_mbrl.benchmark.report import current_commit
from offline_mbrl.config import TrainerConfiguration, make_config
from offline_mbrl.plotting import read_progress
from offline_mbrl.train import Trainer

ROOT = Path(__file__).resolve().parent.parent
SCORE = "NormalizedTestScore"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True,
                        help="run directory of the offline agent (a SAC-based mode)")
    parser.add_argument("--dataset", type=Path, required=True, help="the source's dataset")
    parser.add_argument("--env_name", required=True, help="its D4RL name, e.g. hopper-medium-v2")
    parser.add_argument("--root", type=Path, default=ROOT / "data" / "finetune",
                        help="where the online runs go")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--steps_per_epoch", type=int, default=2000,
                        help="environment steps between evaluations")
    parser.add_argument("--init_steps", type=int, default=1000,
                        help="environment steps before the first update (both runs); the "
                             "scratch run acts randomly for as long")
    parser.add_argument("--dataset_rows", type=int, default=-1,
                        help="dataset transitions in the fine-tuned buffer at the start (-1: all)")
    parser.add_argument("--test_episodes", type=int, default=10)
    parser.add_argument("--last_k", type=int, default=3,
                        help="a run's score is the mean of its last K evaluations (a hopper "
                        "evaluation alone jumps between a fall and a long episode)")
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args(argv)


def run(name: str, args: argparse.Namespace, **settings: object) -> Path:
    """Train (or resume, or skip when finished) one online population; its experiment dir."""
    base = args.root / "experiments" / name
    dirs = [base / f"{name}-s{seed}" for seed in args.seeds]
    done = all((d / "progress.txt").is_file()
               and len(read_progress(d / "progress.txt").get("Epoch", [])) >= args.epochs
               for d in dirs)
    if done:
        print(f"{name}: finished, skipped", flush=True)
        return base
    config = make_config(
        TrainerConfiguration, env_name=args.env_name, mode="sac", seeds=tuple(args.seeds),
        experiment_name=name, online_epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
        init_steps=args.init_steps, test_episodes=args.test_episodes, threads=args.threads,
        **settings)
    resume = all((d / "checkpoint.pt").is_file() for d in dirs)
    start = time.time()
    Trainer(config, resume=resume, overwrite=not resume, progress=False).run()
    print(f"{name}: done in {time.time() - start:.0f} s", flush=True)
    return base


def curves(base: Path, seeds: list[int], epochs: int) -> tuple[np.ndarray, np.ndarray]:
    """``[epochs]`` environment steps and ``[seeds, epochs]`` normalised scores."""
    progress = [read_progress(base / f"{base.name}-s{seed}" / "progress.txt") for seed in seeds]
    steps = np.asarray(progress[0]["TotalEnvInteracts"][:epochs], dtype=float)
    return steps, np.array([np.asarray(p[SCORE][:epochs], dtype=float) for p in progress])


def cell(values: np.ndarray) -> str:
    return f"{values.mean():.1f} ± {values.std(ddof=1) if values.size > 1 else 0.0:.1f}"


def report(source_score: float, tuned: Path, scratch: Path, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, tuned_scores = curves(tuned, args.seeds, args.epochs)
    _, scratch_scores = curves(scratch, args.seeds, args.epochs)
    k = args.last_k
    lines = [f"| dataset | source (offline, last {k}) | fine-tuned, first evaluation | "
             f"fine-tuned, lowest of first {k} | fine-tuned, last {k} | "
             f"SAC from scratch, last {k} | env steps |",
             "|---|--:|--:|--:|--:|--:|--:|",
             f"| {args.env_name} | {source_score:.1f} | {cell(tuned_scores[:, 0])} | "
             f"{cell(tuned_scores[:, :k].min(1))} | {cell(tuned_scores[:, -k:].mean(1))} | "
             f"{cell(scratch_scores[:, -k:].mean(1))} | {int(steps[-1])} |"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, scores, color in (("fine-tuned from the offline agent", tuned_scores, "C1"),
                                 ("SAC from scratch", scratch_scores, "C0")):
        ax.plot(steps, scores.mean(0), color=color, label=label)
        ax.fill_between(steps, scores.mean(0) - scores.std(0), scores.mean(0) + scores.std(0),
                        color=color, alpha=0.15)
    ax.axhline(source_score, color="k", ls=":", label="offline agent (source)")
    ax.set(title=f"{args.env_name}: offline to online", xlabel="environment steps",
           ylabel="D4RL normalised score")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out / "finetune.png", dpi=120)
    (args.out / "finetune.md").write_text("\n".join(lines) + "\n")
    meta = {"command": " ".join(sys.argv), "commit": current_commit(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "source": str(args.source), "source_score": source_score, "last_k": args.last_k,
            "seeds": args.seeds,
            "fine_tuned": tuned_scores.tolist(), "scratch": scratch_scores.tolist(),
            "env_steps": steps.tolist()}
    (args.out / "finetune.json").write_text(json.dumps(meta, indent=2) + "\n")
    print("\n".join(lines), flush=True)



def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.root = args.root.resolve()
    os.environ["OMBRL_DATA_DIR"] = str(args.root / "experiments")
    os.environ.setdefault("OMBRL_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    source_scores = read_progress(args.source / "progress.txt")[SCORE]
    source_score = float(np.mean(source_scores[-args.last_k:]))
    tuned = run("finetuned", args, pretrained_agent_path=str(args.source),
                dataset=str(args.dataset.resolve()), n_samples_from_dataset=args.dataset_rows)
    scratch = run("scratch", args, random_steps=args.init_steps)
    report(source_score, tuned, scratch, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
