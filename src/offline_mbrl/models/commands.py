"""``ombrl model ...``: commands about a dataset's environment model.

``ombrl model diagnose NAME``: the model's true one-step and multi-step error against the
simulator, and how well its aleatoric and epistemic uncertainty rank that error (see
:mod:`offline_mbrl.models.diagnose`). Training stays ``ombrl train-model``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from offline_mbrl.cli import OneLineParser, run_main
from offline_mbrl.data.resolve import resolve_dataset_path
from offline_mbrl.models.diagnose import (
    DEFAULT_HORIZON,
    DEFAULT_SAMPLES,
    DEFAULT_STARTS,
    KINDS,
    check_counts,
    diagnose,
    write_diagnosis,
)
from offline_mbrl.models.uncertainty_command import (
    add_dataset_and_model_arguments,
    load_model_for_dataset,
)


def default_out_dir(model_path: Path) -> Path:
    """``<model file without .pt>-diagnose/`` next to the model."""
    return model_path.with_name(f"{model_path.stem}-diagnose")


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else "n/a"


def summary_table(summary: Mapping[str, Any]) -> Table:
    """Spearman correlation and high-error AUROC per uncertainty kind, one-step and pooled
    multi-step, with the mean errors in the caption."""
    multi = summary["multi_step"]
    table = Table(title=f"model diagnosis of {summary['dataset']}")
    table.add_column("uncertainty")
    for column in ("one-step Spearman", "one-step AUROC", "multi-step Spearman",
                   "multi-step AUROC"):
        table.add_column(column, justify="right")
    for kind in KINDS:
        one = summary["one_step"][kind]
        pooled = {} if multi["skipped"] else multi["pooled"][kind]
        table.add_row(kind, _fmt(one["spearman"]), _fmt(one["auroc_high_error"]),
                      _fmt(pooled.get("spearman")), _fmt(pooled.get("auroc_high_error")))
    caption = (f"one-step error mean {summary['one_step']['error']['mean']:.4g} over "
               f"{summary['one_step']['samples']} held-out transitions")
    if not multi["skipped"]:
        last = multi["per_horizon"][-1]
        caption += (f"; error at h={last['h']} mean {_fmt(last['error']['mean'])} over "
                    f"{last['n']} rollouts")
    table.caption = caption
    return table


def cmd_diagnose(args: argparse.Namespace) -> int:
    """Diagnose the model of ``args.name``; write the PNG and JSON, print a summary."""
    check_counts(args.horizon, args.samples, args.starts)
    allow_download = not args.no_download
    model, path, data, metadata = load_model_for_dataset(
        args.name, dataset=args.dataset, model_path=args.model, device=args.device,
        allow_download=allow_download)
    source = str(resolve_dataset_path(args.name, args.dataset, allow_download))
    summary = diagnose(model, data, name=args.name, model_path=path, model_metadata=metadata,
                       dataset_source=source, horizon=args.horizon, samples=args.samples,
                       starts=args.starts, seed=args.seed)
    if summary["multi_step"]["skipped"]:
        print(f"warning: {summary['multi_step']['reason']}: multi-step error skipped "
              "(recorded in the JSON)", file=sys.stderr)
    out = Path(args.out).expanduser() if args.out else default_out_dir(path)
    png, json_file = write_diagnosis(summary, out)
    console = Console(highlight=False)
    console.print(summary_table(summary))
    console.print(f"wrote {png} and {json_file}", soft_wrap=True)
    return 0


def add_diagnose_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``diagnose`` among the ``model`` sub-commands."""
    p = sub.add_parser(
        "diagnose", help="true one-step and multi-step error of a dataset's model and how "
        "well its uncertainty ranks it",
        description="On held-out transitions and on model rollouts replayed in the real "
        "simulator (from the dataset's infos/qpos and infos/qvel), measure the model's error "
        "and how well its aleatoric and epistemic uncertainty rank it (Spearman correlation, "
        "AUROC for errors above their 90th percentile, calibration by deciles). Writes "
        "diagnose.png and diagnose.json.")
    add_dataset_and_model_arguments(p)
    p.add_argument("--out", metavar="DIR",
                   help="output directory (default <model file without .pt>-diagnose)")
    p.add_argument("--horizon", type=int, default=DEFAULT_HORIZON, metavar="H",
                   help=f"multi-step horizon H (default {DEFAULT_HORIZON})")
    p.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, metavar="N",
                   help=f"held-out transitions for the one-step error (default "
                   f"{DEFAULT_SAMPLES})")
    p.add_argument("--starts", type=int, default=DEFAULT_STARTS, metavar="N",
                   help=f"held-out start states for the multi-step error (default "
                   f"{DEFAULT_STARTS})")
    p.add_argument("--seed", type=int, default=0, metavar="S",
                   help="seed of the random held-out split and the subsamples (default 0)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--no-download", action="store_true", help="never download the dataset")
    p.set_defaults(func=cmd_diagnose)
    return p


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``model`` command and its sub-commands."""
    model = subparsers.add_parser("model", help="diagnose environment models")
    sub = model.add_subparsers(dest="model_command", required=True)
    add_diagnose_parser(sub)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``model ...``; ``argv`` may start with ``model`` or leave it out (as ``ombrl model
    ...`` passes it). A :class:`UserError` is one line on stderr and status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "model":
        argv = ["model", *argv]
    parser = OneLineParser(prog="ombrl")
    register(parser.add_subparsers(dest="command", required=True))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else 2
    return run_main(lambda: int(args.func(args)))
