"""``ombrl datasets uncertainty NAME``: a dataset's uncertainty under its environment model.

The mean, standard deviation and maximum of the aleatoric and epistemic uncertainty over
every dataset sample, and ``R_max``, set the seed's search ranges for pessimism (see
:mod:`offline_mbrl.tuning.search_space`). The statistics are cached next to the model file
by :func:`~offline_mbrl.models.statistics.uncertainty_statistics`; ``--refresh`` recomputes.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from offline_mbrl.data.dataset import OfflineDataset
from offline_mbrl.data.resolve import MINARI_PREFIX, load_dataset
from offline_mbrl.envs.registry import get_env_spec
from offline_mbrl.errors import UserError
from offline_mbrl.models.ensemble import EnvironmentModel
from offline_mbrl.models.io import check_model_matches, default_model_path, load_environment_model
from offline_mbrl.models.statistics import statistics_path, uncertainty_statistics

KINDS = ("aleatoric", "epistemic")


def model_path_for(name: str) -> Path:
    """Where a run of ``name`` looks for its model: ``$OMBRL_MODELS_DIR/<dataset>-model.pt``.

    The same rule as the trainer's: the D4RL dataset name when ``name`` resolves to one,
    else ``name`` itself.
    """
    dataset_name = None
    with contextlib.suppress(UserError):
        dataset_name = get_env_spec(name).dataset_name
    return default_model_path(dataset_name or name)


def _env_name(name: str) -> str | None:
    return None if name.startswith(MINARI_PREFIX) else name


def train_model_hint(name: str, dataset: str | None = None) -> str:
    """The command that trains the model a dataset's uncertainty needs."""
    extra = f" --dataset {dataset}" if dataset else ""
    return f"ombrl train-model --env_name {name}{extra}"


def load_model_for_dataset(name: str, dataset: str | None = None,
                           model_path: str | Path | None = None, device: str = "cpu",
                           allow_download: bool = True
                           ) -> tuple[EnvironmentModel, Path, OfflineDataset, dict[str, Any]]:
    """The dataset of ``name`` and its saved environment model, checked to match.

    Returns ``(model, model_path, dataset, model_metadata)``.

    Args:
        name: D4RL dataset name, ``minari:<id>``, or an environment name with ``dataset``.
        dataset: explicit dataset file or ``minari:<id>``.
        model_path: model file (default :func:`model_path_for`).
        device: torch device of the model.
        allow_download: permit downloading the dataset.

    Raises:
        UserError: no model file (the message says how to train one), or a model of
            another dataset.
    """
    data = load_dataset(name, dataset=dataset, allow_download=allow_download)
    path = Path(model_path).expanduser() if model_path is not None else model_path_for(name)
    if not path.is_file():
        raise UserError(f"no environment model for {name} at {path}: train it with "
                        f"`{train_model_hint(name, dataset)}` or pass --model PATH")
    model, metadata = load_environment_model(path, device=device)
    check_model_matches(metadata, data, _env_name(name))
    return model, path, data, metadata


def statistics_table(stats: dict[str, Any], title: str) -> Table:
    """A rich table of mean, std and max per uncertainty kind, with ``R_max``."""
    r_max = float(stats["max_reward"])
    table = Table(title=title)
    table.add_column("uncertainty")
    for column in ("mean", "std", "max", "R_max / max"):
        table.add_column(column, justify="right")
    for kind in KINDS:
        values = stats[kind]
        ratio = r_max / values["max"] if values["max"] > 0 else float("inf")
        table.add_row(kind, f"{values['mean']:.6g}", f"{values['std']:.6g}",
                      f"{values['max']:.6g}", f"{ratio:.6g}")
    table.caption = f"R_max (largest dataset reward) = {r_max:.6g}; {stats['n_samples']} samples"
    return table


def cmd_uncertainty(args: argparse.Namespace) -> int:
    """Print the uncertainty statistics of a dataset (computed once, then cached)."""
    model, path, data, _ = load_model_for_dataset(args.name, dataset=args.dataset,
                                               model_path=args.model, device=args.device,
                                               allow_download=not args.no_download)
    cache = statistics_path(path)
    before = cache.stat().st_mtime_ns if cache.is_file() else None
    stats = uncertainty_statistics(model, data, path, refresh=args.refresh)
    after = cache.stat().st_mtime_ns if cache.is_file() else None
    origin = "cached" if before is not None and before == after else "computed"
    console = Console(highlight=False)
    console.print(statistics_table(stats, f"uncertainty of {args.name} under {path.name}"))
    console.print(f"{origin}: {cache}", soft_wrap=True)
    return 0


def add_dataset_and_model_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments that name a dataset and its environment model: NAME, --dataset, --model."""
    p.add_argument("name", help="dataset name, e.g. hopper-medium-replay-v2 (or an "
                   "environment name with --dataset)")
    p.add_argument("--dataset", metavar="PATH", help="explicit file (or minari:<id>) for NAME")
    p.add_argument("--model", metavar="PATH",
                   help="environment model file (default $OMBRL_MODELS_DIR/<name>-model.pt)")


def add_uncertainty_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``uncertainty`` among the ``datasets`` sub-commands."""
    p = sub.add_parser(
        "uncertainty", help="uncertainty statistics of a dataset under its environment model",
        description="Mean, std and max of the aleatoric and epistemic uncertainty of the "
        "environment model over every dataset sample, and R_max. They are saved next to the "
        "model and reused; --refresh recomputes them.")
    add_dataset_and_model_arguments(p)
    p.add_argument("--refresh", action="store_true", help="recompute instead of reading the "
                   "saved statistics")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--no-download", action="store_true", help="never download the dataset")
    p.set_defaults(func=cmd_uncertainty)
    return p
