"""Learning evidence: every offline mode on D4RL-protocol datasets this project generates.

For each dataset (default ``hopper-medium-replay-v2``; ``--datasets`` adds others, e.g.
``hopper-medium-v2``, each about as long again):

1. the dataset is generated with ``ombrl datasets collect``'s own code under the D4RL
   protocol (a SAC run on the v4 environment until a third of expert score; medium-replay
   is its replay buffer, medium samples the policy it reached) or reused;
2. the environment model is trained once (the first model-based mode trains and saves it,
   the others reuse it);
3. behavioral cloning, offline SAC and the four pessimistic modes train as populations of
   ``--seeds``, with the library's defaults for everything the command does not set
   (pessimism derived from the dataset's uncertainty statistics: the data is not the
   published D4RL file, so the seed's tuned table does not apply);
4. ``--rules previous`` adds rows of the penalty and partitioning modes with the rule the
   project used before (threshold = the largest dataset uncertainty, λ = ½·R_max / u_max),
   to show what the derived rule changes.

Everything lives under ``--root`` (default ``data/learning``). Every (dataset, mode) run
resumes where it stopped and finished runs are skipped, so the work can be split across
invocations (``--datasets``, ``--modes``) and interrupted at any time. The results table
(``results.md``, ``results.csv``: per seed, mean ± std and IQM with a bootstrap interval of
the score, where a seed's score is the mean of its last ``--last_k`` evaluations) and the
learning-curve figure (``learning.png``) go to ``--out`` (default ``benchmarks/results``).

Usage::

    .venv/bin/python benchmarks/learning.py --threads 2           # defaults, ~2 h on 2 cores
    .venv/bin/python benchmarks/learning.py --datasets hopper-medium-v2   # a second dataset
    .venv/bin/python benchmarks/learning.py --datasets hopper-medium-replay-v2 --modes \\
        behavioral-cloning aleatoric-partitioning
    .venv/bin/python benchmarks/learning.py --report_only          # tables and figure only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from offline_mbrl.benchmark.report import TABLE_HEADER, csv_values, current_commit, markdown_row
from offline_mbrl.benchmark.units import collect_dataset, runs_finished
from offline_mbrl.benchmark.units import seed_scores as run_scores
from offline_mbrl.modes import get_mode, mode_names

ROOT = Path(__file__).resolve().parent.parent
SEED_MODES = ("behavioral-cloning", "offline-sac", "epistemic-penalty",
              "aleatoric-partitioning", "aleatoric-penalty", "epistemic-partitioning")
"""The seed's offline modes: the default set."""
OFFLINE_MODES = SEED_MODES + tuple(m for m in mode_names(online=False) if m not in SEED_MODES)
"""Every offline mode of the registry, the seed's first: the table's order."""
RULES = ("derived", "previous")


@dataclass(frozen=True)
class Unit:
    """One population run: a dataset, a mode and the pessimism rule of its defaults."""

    dataset: str
    mode: str
    rule: str = "derived"

    @property
    def experiment(self) -> str:
        suffix = "" if self.rule == "derived" else f"-{self.rule}-rule"
        return f"{self.dataset}-{self.mode}{suffix}"

    @property
    def label(self) -> str:
        return self.mode if self.rule == "derived" else f"{self.mode} ({self.rule} rule)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT / "data" / "learning",
                        help="datasets, models and runs (default data/learning)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results",
                        help="where the table and figure go (default benchmarks/results)")
    parser.add_argument("--datasets", nargs="+", default=["hopper-medium-replay-v2"],
                        help="one run of the defaults per dataset fits about 2 hours on 2 cores")
    parser.add_argument("--modes", nargs="+", default=list(SEED_MODES), choices=OFFLINE_MODES,
                        help="modes to train (default: the seed's six); the table shows every "
                             "mode with finished runs under --root")
    parser.add_argument("--rules", nargs="+", default=["derived"], choices=RULES,
                        help="pessimism rules of the penalty and partitioning modes")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20,
                        help="evaluations per run (default 20: 50,000 updates)")
    parser.add_argument("--steps_per_epoch", type=int, default=2500,
                        help="agent updates between evaluations")
    parser.add_argument("--test_episodes", type=int, default=10)
    parser.add_argument("--last_k", type=int, default=3,
                        help="a seed's score is the mean of its last this many evaluations")
    parser.add_argument("--model_epochs", type=int, default=40,
                        help="cap on the environment model's training epochs")
    parser.add_argument("--collect_steps", type=int, default=200_000,
                        help="cap on the env steps of the SAC run behind the datasets")
    parser.add_argument("--medium_size", type=int, default=100_000,
                        help="transitions of the medium datasets")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report_only", action="store_true",
                        help="only write the table and figure from the runs on disk")
    return parser.parse_args(argv)


def set_directories(root: Path) -> None:
    os.environ["OMBRL_DATASETS_DIR"] = str(root / "datasets")
    os.environ["OMBRL_MODELS_DIR"] = str(root / "models")
    os.environ["OMBRL_DATA_DIR"] = str(root / "experiments")
    os.environ.setdefault("OMBRL_OFFLINE", "1")  # the data is generated, never downloaded


def ensure_dataset(name: str, args: argparse.Namespace) -> Path:
    """The dataset file, generated under the D4RL protocol if it is not there yet."""
    from offline_mbrl.data.collect import SACCollectionOptions

    options = SACCollectionOptions(max_train_steps=args.collect_steps, steps_per_epoch=5000,
                                   test_episodes=5)
    size = args.medium_size if not name.endswith("medium-replay-v2") else None
    return collect_dataset(args.root / "datasets" / f"{name}.hdf5", name, size, options,
                           log=lambda line: print(line, flush=True))


def previous_rule(unit: Unit, dataset_path: Path, args: argparse.Namespace) -> dict[str, object]:
    """The pessimism the project derived before: threshold u_max, λ = ½·R_max / u_max."""
    from offline_mbrl.data.resolve import load_dataset
    from offline_mbrl.models.io import default_model_path, load_environment_model
    from offline_mbrl.models.statistics import largest_reward, uncertainty_statistics

    data = load_dataset(unit.dataset, dataset=str(dataset_path))
    path = default_model_path(unit.dataset)
    model, _ = load_environment_model(path)
    spec = get_mode(unit.mode)
    u_max = uncertainty_statistics(model, data, path)[str(spec.uncertainty)]["max"]
    if spec.pessimism == "partitioning":
        return {"ood_threshold": (u_max,)}
    return {"pessimism": (0.5 * largest_reward(data.rewards) / u_max,)}


def run_dirs(unit: Unit, args: argparse.Namespace) -> list[Path]:
    base = args.root / "experiments" / unit.experiment
    return [base / f"{unit.experiment}-s{seed}" for seed in args.seeds]


def finished(unit: Unit, args: argparse.Namespace) -> bool:
    return runs_finished(run_dirs(unit, args), args.epochs)


def train_unit(unit: Unit, dataset_path: Path, args: argparse.Namespace) -> None:
    from offline_mbrl.config import TrainerConfiguration, make_config
    from offline_mbrl.train import Trainer

    if finished(unit, args):
        print(f"{unit.experiment}: finished, skipped", flush=True)
        return
    extra = previous_rule(unit, dataset_path, args) if unit.rule == "previous" else {}
    config = make_config(
        TrainerConfiguration, env_name=unit.dataset, mode=unit.mode, seeds=tuple(args.seeds),
        dataset=str(dataset_path), experiment_name=unit.experiment,
        offline_epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
        test_episodes=args.test_episodes, threads=args.threads,
        env_model={"max_number_of_training_epochs": args.model_epochs}, **extra)
    resume = all((d / "checkpoint.pt").is_file() for d in run_dirs(unit, args))
    print(f"{unit.experiment}: {'resuming' if resume else 'training'} seeds {args.seeds}",
          flush=True)
    start = time.time()
    Trainer(config, resume=resume, overwrite=not resume, progress=False).run()
    print(f"{unit.experiment}: done in {time.time() - start:.0f} s", flush=True)


def seed_scores(unit: Unit, args: argparse.Namespace) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per seed, the mean of the last ``last_k`` normalised scores, and each seed's curve;
    a run short of ``--epochs`` (stopped, or still training) is left out of the table."""
    return run_scores(run_dirs(unit, args), args.epochs, args.last_k)


Scores = tuple[np.ndarray, list[np.ndarray], str | None]
"""Per seed, the score of the table; each seed's curve ``[2, epochs]`` (may be empty); and
for a row without curves, its line of the previous ``results.csv``, written again verbatim
(its scores are rounded: recomputing their statistics would move the last digit)."""


def stored_scores(args: argparse.Namespace) -> dict[Unit, Scores]:
    """What the previous report in ``--out`` wrote, per unit: its curves (``curves.json``),
    or for units reported before curves were stored, the per-seed scores of
    ``results.csv`` without curves. Runs need not stay on disk for their rows to stay in
    the table."""
    stored: dict[Unit, Scores] = {}
    csv_path, curves_path = args.out / "results.csv", args.out / "curves.json"
    if csv_path.is_file():
        for line in csv_path.read_text().splitlines()[1:]:
            dataset, mode, rule, _, scores = line.split(",")[:5]
            stored[Unit(dataset, mode, rule)] = (
                np.asarray([float(s) for s in scores.split()]), [], line)
    if curves_path.is_file():
        for entry in json.loads(curves_path.read_text()):
            curves = [np.asarray(c, dtype=float)[:, :args.epochs] for c in entry["curves"]]
            curves = [c for c in curves if c.shape[1] == args.epochs]
            if curves:
                finals = np.asarray([c[1, -args.last_k:].mean() for c in curves])
                stored[Unit(entry["dataset"], entry["mode"], entry["rule"])] = (
                    finals, curves, None)
    return stored


def table_scores(units: list[Unit], args: argparse.Namespace) -> dict[Unit, Scores]:
    """Every unit of the table in its order: runs on disk first-hand, the others as the
    previous report stored them."""
    stored = stored_scores(args)
    on_disk: dict[Unit, Scores] = {u: (*seed_scores(u, args), None) for u in units}
    every = set(on_disk) | set(stored)
    datasets = list(dict.fromkeys([*args.datasets, *sorted({u.dataset for u in every})]))
    order = [Unit(d, m, r) for d in datasets for r in RULES for m in OFFLINE_MODES]
    result = {}
    for unit in (u for u in order if u in every):
        first_hand = on_disk.get(unit, (np.zeros(0), [], None))
        result[unit] = first_hand if first_hand[0].size else stored.get(unit, first_hand)
    return {u: s for u, s in result.items() if s[0].size}


def report(units: list[Unit], args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    args.out.mkdir(parents=True, exist_ok=True)
    scores = table_scores(units, args)
    lines = list(TABLE_HEADER)
    csv = ["dataset,mode,rule,seeds,scores,mean,std,iqm,ci_low,ci_high"]
    datasets = list(dict.fromkeys(u.dataset for u in scores))
    without_curves = [f"{u.dataset}: {u.label}" for u, (_, c, _) in scores.items() if not c]
    # One panel per dataset with curves to draw (rows without curves are in the table only).
    plotted = [d for d in datasets if any(scores[u][1] for u in scores if u.dataset == d)]
    fig, axes = plt.subplots(1, max(1, len(plotted)), figsize=(6 * max(1, len(plotted)), 4.2),
                             squeeze=False)
    panels = dict(zip(plotted, axes[0], strict=False))
    for dataset in datasets:
        for i, unit in enumerate(u for u in scores if u.dataset == dataset):
            finals, curves, kept_line = scores[unit]
            lines.append(markdown_row(dataset, unit.label, finals))
            csv.append(kept_line or f"{dataset},{unit.mode},{unit.rule},{csv_values(finals)}")
            if not curves:
                continue
            ax = panels[dataset]
            length = min(c.shape[1] for c in curves)
            x = curves[0][0, :length]
            ys = np.stack([c[1, :length] for c in curves])
            style = "--" if unit.mode == "behavioral-cloning" else "-"
            if unit.rule != "derived":
                style = ":"
            color = f"C{i}"
            ax.plot(x, ys.mean(0), style, color=color, label=unit.label)
            ax.fill_between(x, ys.mean(0) - ys.std(0), ys.mean(0) + ys.std(0), color=color,
                            alpha=0.15)
    for dataset, ax in panels.items():
        ax.set_title(dataset)
        ax.set_xlabel("agent updates")
        ax.set_ylabel("D4RL normalised score")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    # Rows kept from a report that stored no curves (their runs are gone) keep the figure
    # that shows them; the curves this report has go beside it.
    figure = "learning-latest.png" if without_curves else "learning.png"
    fig.savefig(args.out / figure, dpi=120)
    if without_curves:
        print(f"{figure}: learning.png is kept, it has the curves of "
              + "; ".join(without_curves), flush=True)
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    (args.out / "results.csv").write_text("\n".join(csv) + "\n")
    (args.out / "curves.json").write_text(json.dumps([
        {"dataset": u.dataset, "mode": u.mode, "rule": u.rule,
         "curves": [np.round(c, 3).tolist() for c in curves]}
        for u, (_, curves, _) in scores.items() if curves]) + "\n")
    previous = args.out / "results.json"
    identities = json.loads(previous.read_text()).get("datasets", {}) if (
        previous.is_file()) else {}
    for dataset in datasets:
        identities[dataset] = dataset_identity(dataset, args) or identities.get(dataset, {})
    meta = {"command": " ".join(sys.argv), "commit": current_commit(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "seeds": args.seeds, "updates": args.epochs * args.steps_per_epoch,
            "test_episodes": args.test_episodes, "last_k": args.last_k,
            "model_epochs": args.model_epochs, "collect_steps": args.collect_steps,
            "datasets": {d: identities.get(d, {}) for d in datasets},
            "rows_kept_from_previous_reports": [f"{u.dataset}: {u.label}" for u in scores
                                                if u not in units]}
    (args.out / "results.json").write_text(json.dumps(meta, indent=2) + "\n")
    print("\n".join(lines), flush=True)



def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.root = args.root.resolve()
    set_directories(args.root)
    import torch

    torch.set_num_threads(args.threads)
    # The library's defaults first, comparisons after them.
    units = [Unit(d, m, r) for d in args.datasets for r in args.rules for m in args.modes
             if r == "derived" or has_previous_rule(m)]
    if not args.report_only:
        for dataset in args.datasets:
            path = ensure_dataset(dataset, args)
            for unit in (u for u in units if u.dataset == dataset):
                train_unit(unit, path, args)
                report(units_on_disk(args), args)
    report(units_on_disk(args), args)
    return 0


def has_previous_rule(mode: str) -> bool:
    """Whether ``--rules previous`` applies: the ensemble-uncertainty modes."""
    return get_mode(mode).uncertainty in ("aleatoric", "epistemic")


def units_on_disk(args: argparse.Namespace) -> list[Unit]:
    """Every (dataset, mode, rule) with runs under ``--root``, datasets in the order asked for
    and then by name, modes in the table's order, so that runs split over invocations share
    one table."""
    datasets = list(args.datasets) + sorted(
        p.stem for p in (args.root / "datasets").glob("*.hdf5") if p.stem not in args.datasets)
    candidates = [Unit(d, m, r) for d in datasets for r in RULES for m in OFFLINE_MODES
                  if r == "derived" or has_previous_rule(m)]
    return [u for u in candidates if any((d / "progress.txt").is_file()
                                         for d in run_dirs(u, args))]


def dataset_identity(name: str, args: argparse.Namespace) -> dict[str, object]:
    """The generated file's size and content digest, so a table names the data it read."""
    import hashlib

    path = args.root / "datasets" / f"{name}.hdf5"
    if not path.is_file():
        return {}
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    import h5py

    with h5py.File(path, "r") as f:
        transitions = int(f["rewards"].shape[0])
    return {"transitions": transitions, "sha256": digest.hexdigest()[:16]}


if __name__ == "__main__":
    raise SystemExit(main())
