"""The main job: the whole offline pipeline on an embedded default, end to end.

1. generate a small hopper medium-replay dataset under the D4RL protocol (a short SAC run
   whose replay buffer is the dataset);
2. train the environment model on it;
3. train a pessimistic agent (model-based) and the behavioral-cloning baseline;
4. evaluate both with the D4RL normalised score;
5. write a learning-curve plot and a summary table.

Everything lives under one directory (default ``data/demo``) so that the demo never
touches the user's own datasets, models or runs. Sized for about 9 minutes on 2 CPU
cores; ``--scale`` shrinks or grows every budget together.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from offline_mbrl.cli import OneLineParser, run_main
from offline_mbrl.config import TrainerConfiguration, make_config
from offline_mbrl.data.collect import SACCollectionOptions, collect
from offline_mbrl.data.d4rl import write_d4rl_hdf5
from offline_mbrl.scripts.plot import main as plot_main
from offline_mbrl.train import Trainer

DATASET = "hopper-medium-replay-v2"
LAST_EVALUATIONS = 3
"""The summary's second score averages each member's last this many evaluations."""

_History = list[list[dict[str, float]]]
"""Every epoch's progress rows of a training, one per member, oldest epoch first."""


def _train(trainer: Trainer) -> _History:
    """Run ``trainer``; every epoch's progress rows (one per member), oldest first."""
    history: _History = []
    trainer.run(on_epoch=lambda epoch, rows: history.append(rows))
    return history


def _budgets(scale: float) -> dict[str, int]:
    def n(value: float) -> int:
        return max(1, round(value * scale))

    return {
        "dataset_steps": n(15_000), "dataset_epoch": n(3_000), "model_epochs": n(40),
        "agent_epochs": 6, "agent_steps": n(2_500), "bc_steps": n(1_500),
    }


def run_pipeline(root: Path, mode: str, seeds: Sequence[int], scale: float,
                 progress: bool = True) -> int:
    """The demo under ``root``: dataset, environment model and agents, summary and plot.

    Args:
        root: directory of the demo's datasets, models, runs and results.
        mode: the pessimistic mode trained beside behavioral cloning.
        seeds: seeds of the population each mode trains.
        scale: factor on every budget but the number of agent epochs.
        progress: show progress bars while training.

    Returns:
        The exit status, 0.
    """
    console = Console()
    budget = _budgets(scale)
    _use_demo_directories(root)
    dataset_path = _make_dataset(root, budget, console)
    histories = _train_agents(dataset_path, mode, seeds, budget, progress, console)

    console.rule("4/4 evaluation, plot and summary")
    out = root / "results"
    out.mkdir(parents=True, exist_ok=True)
    table = _write_summary(histories, len(seeds), out)
    plot_main([str(root / "experiments"), "--out", str(out), "--value", "NormalizedTestScore",
               "--no_show"])
    console.print(table)
    console.print(f"summary: {out / 'summary.md'}, {out / 'summary.csv'}; plots in {out}")
    return 0


def _use_demo_directories(root: Path) -> None:
    """Point the dataset, model and experiment directories under ``root``."""
    os.environ["OMBRL_DATASETS_DIR"] = str(root / "datasets")
    os.environ["OMBRL_MODELS_DIR"] = str(root / "models")
    os.environ["OMBRL_DATA_DIR"] = str(root / "experiments")
    os.environ.setdefault("OMBRL_OFFLINE", "1")  # the demo makes its own data


def _make_dataset(root: Path, budget: dict[str, int], console: Console) -> Path:
    """Collect the demo's dataset with SAC unless an earlier run left it; returns its file."""
    dataset_path = root / "datasets" / f"{DATASET}.hdf5"
    console.rule(f"1/4 dataset: {DATASET} (D4RL protocol, {budget['dataset_steps']} SAC steps)")
    if dataset_path.is_file():
        console.print(f"reusing {dataset_path}")
    else:
        options = SACCollectionOptions(
            max_train_steps=budget["dataset_steps"], steps_per_epoch=budget["dataset_epoch"],
            test_episodes=3)
        dataset = collect(DATASET, budget["dataset_steps"], seed=0, options=options,
                          log=console.print)
        write_d4rl_hdf5(dataset, dataset_path)
        console.print(f"wrote {len(dataset)} transitions to {dataset_path}")
    return dataset_path


def _train_agents(dataset_path: Path, mode: str, seeds: Sequence[int], budget: dict[str, int],
                  progress: bool, console: Console) -> dict[str, _History]:
    """Train ``mode`` (with its environment model), then behavioral cloning.

    Returns:
        Mode -> its training history, ``mode`` first.
    """
    common = {"env_name": DATASET, "seeds": tuple(seeds), "test_episodes": 5,
              "dataset": str(dataset_path), "offline_epochs": budget["agent_epochs"]}
    console.rule(f"2-3/4 environment model and {mode} agent")
    pessimistic = make_config(
        TrainerConfiguration, mode=mode, steps_per_epoch=budget["agent_steps"],
        rollout_length=(5,), env_model={"max_number_of_training_epochs": budget["model_epochs"],
                                        "training_patience": 10},
        **common)
    histories = {mode: _train(Trainer(pessimistic, overwrite=True, progress=progress))}
    console.rule("3/4 behavioral-cloning baseline")
    bc = make_config(TrainerConfiguration, mode="behavioral-cloning",
                     steps_per_epoch=budget["bc_steps"], **common)
    histories["behavioral-cloning"] = _train(Trainer(bc, overwrite=True, progress=progress))
    return histories


def _write_summary(histories: dict[str, _History], n_seeds: int, out: Path) -> Table:
    """Write ``summary.md`` and ``summary.csv`` under ``out``; returns the same as a table."""
    table = Table(title=f"{DATASET}: final evaluation ({n_seeds} seed(s), 5 episodes each)")
    columns = ("mode", "return (mean ± std over seeds)", "normalised score",
               f"score, last {LAST_EVALUATIONS} evaluations")
    for column in columns:
        table.add_column(column)
    lines = ["| " + " | ".join(columns) + " |", "|---|---|---|---|"]
    csv = ["mode,return_mean,return_std,score_mean,score_std,last_score_mean,last_score_std"]
    for name, history in histories.items():
        cells, csv_row = _summary_row(name, history)
        table.add_row(name, *cells)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        csv.append(csv_row)
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    (out / "summary.csv").write_text("\n".join(csv) + "\n")
    return table


def _summary_row(name: str, history: _History) -> tuple[tuple[str, str, str], str]:
    """One mode's table cells (return, score, score over the last evaluations) and CSV row."""
    returns = np.array([r["AverageTestEpRet"] for r in history[-1]])
    scores = np.array([r["NormalizedTestScore"] for r in history[-1]])
    # Per member, the mean of its last evaluations: on the demo's data a policy's test
    # episodes flip from epoch to epoch between a fall after about 60 steps (score ~3.5)
    # and an episode about twice as long (~8), so the last evaluation alone is noisy.
    last = np.array([[r["NormalizedTestScore"] for r in rows]
                     for rows in history[-LAST_EVALUATIONS:]]).mean(axis=0)
    cells = (f"{returns.mean():.1f} ± {returns.std():.1f}",
             f"{scores.mean():.1f} ± {scores.std():.1f}",
             f"{last.mean():.1f} ± {last.std():.1f}")
    csv_row = (f"{name},{returns.mean():.3f},{returns.std():.3f},{scores.mean():.3f},"
               f"{scores.std():.3f},{last.mean():.3f},{last.std():.3f}")
    return cells, csv_row


def main(argv: Sequence[str] | None = None) -> int:
    """``ombrl demo``; returns the exit status (2 for a problem the user can fix)."""
    parser = OneLineParser(prog="ombrl demo", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("data/demo"),
                        help="Directory for the demo's dataset, model, runs and results.")
    parser.add_argument("--mode", default="aleatoric-penalty",
                        choices=["aleatoric-penalty", "epistemic-penalty",
                                 "aleatoric-partitioning", "epistemic-partitioning"],
                        help="Pessimistic mode to train.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                        help="Seeds, trained as one batched population.")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="Multiply every budget (0.05 for a smoke run).")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)
    if args.scale <= 0:
        parser.error("--scale must be positive")
    return run_main(lambda: run_pipeline(args.root, args.mode, args.seeds, args.scale,
                                         args.progress))


if __name__ == "__main__":
    raise SystemExit(main())
