"""Train an environment model (probabilistic ensemble) on an offline dataset and save it.

    python src/offline_mbrl/scripts/train_environment_model.py --env_name hopper-medium-replay-v2

The model is written to ``$OMBRL_MODELS_DIR/<env_name>-model.pt`` (default ``./data/models``)
unless ``--out`` says otherwise; an existing file is only replaced with ``--overwrite``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

try:
    import offline_mbrl.errors  # noqa: F401
except ModuleNotFoundError:  # run as a file from a checkout without an installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch
from rich.console import Console
from rich.table import Table

from offline_mbrl.cli import run_main
from offline_mbrl.data.resolve import load_dataset
from offline_mbrl.envs.registry import get_env_spec
from offline_mbrl.errors import UserError
from offline_mbrl.models.io import default_model_path, save_environment_model
from offline_mbrl.models.training import (
    make_model_config,
    resolve_device,
    train_environment_model,
)


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="train_environment_model.py",
        description="Train an ensemble of probabilistic networks on an offline dataset and "
                    "save it for the offline model-based modes.",
    )
    parser.add_argument("--env_name", required=True,
                        help="D4RL dataset name, e.g. hopper-medium-replay-v2")
    parser.add_argument("--dataset", metavar="PATH", default=None,
                        help="dataset file (D4RL HDF5) or minari:<id> instead of resolving "
                             "env_name")
    parser.add_argument("--out", metavar="PATH", default=None,
                        help="model file (default $OMBRL_MODELS_DIR/<env_name>-model.pt)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing model file")
    parser.add_argument("--no-download", dest="no_download", action="store_true",
                        help="never download the dataset")
    parser.add_argument("--patience", type=int, default=None,
                        help="epochs without validation improvement before stopping "
                             "(default: 10 medium-expert, 100 medium-replay, 30 otherwise)")
    parser.add_argument("--max_epochs", type=int, default=None, help="upper limit on epochs")
    parser.add_argument("--max_batches", type=int, default=None,
                        help="upper limit on gradient steps")
    parser.add_argument("--n_networks", type=int, default=7, help="ensemble members")
    parser.add_argument("--n_elites", type=int, default=None,
                        help="members used for sampling (default: all)")
    parser.add_argument("--type", choices=("probabilistic", "deterministic"),
                        default="probabilistic", help="network outputs and loss")
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                        help="matrix products during training (bfloat16: faster on CPUs with "
                             "AVX512-BF16 and on GPUs)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: one per core); 1 is faster when "
                             "other processes keep the cores busy")
    parser.add_argument("--log_dir", default=None, help="write TensorBoard scalars here")
    parser.add_argument("--no-progress", dest="no_progress", action="store_true",
                        help="hide the progress bar")
    return parser


def _summary(metrics: dict, path: Path, env_name: str) -> None:
    elites = set(metrics["elites"])
    table = Table(title=f"Environment model for {env_name}")
    table.add_column("member", justify="right")
    table.add_column("validation MSE", justify="right")
    table.add_column("best epoch", justify="right")
    table.add_column("elite", justify="center")
    for e, (mse, best) in enumerate(zip(metrics["val_mse_per_member"],
                                        metrics["best_epoch_per_member"], strict=True)):
        table.add_row(str(e), f"{mse:.5f}", str(best), "yes" if e in elites else "")
    table.add_section()
    table.add_row("mean", f"{metrics['val_mse']:.5f}", "", "")
    table.add_row("mean predictor", f"{metrics['val_mse_mean_predictor']:.5f}", "", "")
    console = Console()
    console.print(table)
    stop = "early stop" if metrics["stopped_early"] else "limit reached"
    console.print(
        f"epochs: {metrics['epochs']} ({stop}, patience {metrics['patience']}), "
        f"batches: {metrics['batches']}, time: {metrics['time_s']:.1f} s "
        f"({metrics['epoch_time_s']:.2f} s/epoch), "
        f"train/validation: {metrics['n_train']}/{metrics['n_val']}"
    )
    console.print(f"saved: {path}", soft_wrap=True)


def run(args: argparse.Namespace) -> int:
    get_env_spec(args.env_name)  # a typo fails before anything is loaded
    config = make_model_config(
        type=args.type, n_networks=args.n_networks, n_elites=args.n_elites,
        training_patience=args.patience, max_number_of_training_epochs=args.max_epochs,
        max_number_of_training_batches=args.max_batches, seed=args.seed, device=args.device,
        precision=args.precision,
    )
    resolve_device(config.device)
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be at least 1, got {args.threads}: pass e.g. "
                            "--threads 1")
        torch.set_num_threads(args.threads)
    out = Path(args.out).expanduser() if args.out else default_model_path(args.env_name)
    if out.is_dir():
        raise UserError(f"--out {out} is a directory: give a file path such as "
                        f"{out / (args.env_name + '-model.pt')}")
    if out.exists() and not args.overwrite:
        raise UserError(f"model file {out} already exists: pass --overwrite to replace it "
                        "or --out to write elsewhere")
    dataset = load_dataset(args.env_name, dataset=args.dataset,
                           allow_download=not args.no_download)
    model, metrics = train_environment_model(dataset, config, args.env_name,
                                             log_dir=args.log_dir,
                                             progress=not args.no_progress)
    save_environment_model(model, out, {
        "config": config.model_dump(mode="json"),
        "dataset_name": dataset.name or args.env_name,
        "dataset_source": args.dataset,
        "dataset_hash": metrics["dataset_hash"],
        "n_transitions": len(dataset),
        "validation": metrics,
    })
    _summary(metrics, out, args.env_name)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for a problem the user can fix)."""
    args = build_parser().parse_args(argv)
    return run_main(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
