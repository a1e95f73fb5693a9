"""``ombrl datasets ...``: download, inspect, list, export and collect offline datasets."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from offline_mbrl.data.collect import SAC_KINDS, SACCollectionOptions, collect
from offline_mbrl.data.d4rl import load_d4rl_hdf5, write_d4rl_hdf5
from offline_mbrl.data.dataset import OfflineDataset
from offline_mbrl.data.download import download_file
from offline_mbrl.data.info import dataset_info, list_local_datasets
from offline_mbrl.data.minari_io import default_minari_id, export_minari
from offline_mbrl.data.resolve import (
    MINARI_PREFIX,
    check_dataset_name,
    d4rl_url,
    dataset_file,
    datasets_dir,
    load_dataset,
    local_dataset_path,
    offline_mode,
    validate_d4rl_file,
)
from offline_mbrl.envs.registry import get_env_spec
from offline_mbrl.errors import UserError
from offline_mbrl.models.uncertainty_command import add_uncertainty_parser


def _console() -> Console:
    # Created per call so that it writes to the sys.stdout of the moment (tests capture it).
    return Console(highlight=False)


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.6g}"
    if isinstance(value, list):
        return " ".join(_fmt(v) for v in value)
    return str(value)


def print_info(ds: OfflineDataset, source: str, env_name: str | None = None) -> None:
    """Print :func:`dataset_info` as two rich tables (summary, per-dimension ranges)."""
    info = dataset_info(ds, env_name=env_name)
    console = _console()
    table = Table(title=f"dataset {info['name']}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("source", source)
    for key in ("transitions", "episodes", "complete_episodes", "terminals", "timeouts",
                "obs_dim", "act_dim", "evaluation_env"):
        table.add_row(key, _fmt(info[key]))
    for prefix, label in (("return", "return"), ("score", "normalized score")):
        if info[f"{prefix}_mean"] is not None:
            table.add_row(
                label,
                f"{_fmt(info[f'{prefix}_mean'])} ± {_fmt(info[f'{prefix}_std'])} "
                f"[{_fmt(info[f'{prefix}_min'])}, {_fmt(info[f'{prefix}_max'])}]",
            )
    metadata = info["metadata"]
    assert isinstance(metadata, dict)
    for key in sorted(metadata):
        table.add_row(f"metadata.{key}", _fmt(metadata[key]))
    console.print(table)

    ranges = Table(title="per-dimension ranges")
    for column in ("array", "dim", "min", "max"):
        ranges.add_column(column, justify="right" if column != "array" else "left")
    for array, low_key, high_key in (("obs", "obs_min", "obs_max"),
                                     ("action", "action_min", "action_max")):
        lows, highs = info[low_key], info[high_key]
        assert isinstance(lows, list) and isinstance(highs, list)
        for dim, (low, high) in enumerate(zip(lows, highs, strict=True)):
            ranges.add_row(array, str(dim), _fmt(low), _fmt(high))
    console.print(ranges)


def cmd_download(args: argparse.Namespace) -> int:
    """Download the published D4RL file for NAME into ``$OMBRL_DATASETS_DIR``."""
    name = check_dataset_name(args.name)
    console = _console()
    existing = local_dataset_path(name)
    if existing is not None and not args.force:
        console.print(f"{name} is already at {existing} (use --force to download it again)")
        return 0
    if offline_mode():
        raise UserError(f"cannot download {name}: OMBRL_OFFLINE is set; unset it, or create the "
                        f"data with `ombrl datasets collect {name}`")
    dest = dataset_file(name)
    download_file(d4rl_url(name), dest, progress=not args.quiet,
                  hint=f"set OMBRL_D4RL_URL to a reachable mirror, or create the data with "
                       f"`ombrl datasets collect {name}`",
                  validate=lambda path: validate_d4rl_file(path, name))
    ds = load_d4rl_hdf5(dest, env_name=name)
    console.print(f"downloaded {name} to {dest} ({len(ds)} transitions)")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Summarise a dataset given by name, ``minari:<id>`` or file path."""
    target: str = args.target
    allow = not args.no_download
    env_name: str | None = None
    if args.dataset is not None:
        ds = load_dataset(target, dataset=args.dataset, allow_download=allow)
        source = args.dataset
    elif target.startswith(MINARI_PREFIX):
        ds = load_dataset(target)
        source = target
    elif target.endswith((".hdf5", ".h5")) or Path(target).is_file():
        ds = load_d4rl_hdf5(target)
        source = target
    else:
        ds = load_dataset(target, allow_download=allow)
        source = target
        env_name = target
    print_info(ds, source, env_name=env_name)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """List the datasets on this machine."""
    console = _console()
    found = list_local_datasets()
    if not found:
        console.print(
            f"no local datasets (looked in {datasets_dir()}, d4rl's cache and Minari's root): "
            "use `ombrl datasets download NAME` or `ombrl datasets collect NAME`"
        )
        return 0
    table = Table(title="local datasets")
    table.add_column("name")
    table.add_column("source")
    table.add_column("path", overflow="fold")
    for name, path, source in found:
        table.add_row(name, source, path)
    console.print(table)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write a dataset as a local Minari dataset."""
    name: str = args.name
    if args.minari_id is None and name.startswith(MINARI_PREFIX):
        raise UserError(f"{name} is already a Minari dataset: pass --minari-id for the copy")
    minari_id = args.minari_id or default_minari_id(name)
    ds = load_dataset(name, dataset=args.dataset)
    env_id = None if name.startswith(MINARI_PREFIX) else name
    path = export_minari(ds, minari_id, env_id=env_id)
    _console().print(f"exported {len(ds)} transitions of {name} to {MINARI_PREFIX}{minari_id} "
                     f"({path})")
    return 0


# Options of the SAC-based kinds, as argparse destinations (None or False when not given).
SAC_OPTIONS: tuple[str, ...] = (
    "target_score", "max_train_steps", "expert_steps", "expert_target_score", "steps_per_epoch",
    "random_steps", "init_steps", "test_episodes", "device", "policies_dir", "retrain",
)
DEFAULT_SIZE = 1_000_000


def cmd_collect(args: argparse.Namespace) -> int:
    """Record a dataset by running its protocol's policy, and write it as a D4RL file."""
    name: str = args.name
    kind = get_env_spec(name).dataset_kind
    out = Path(args.out) if args.out else dataset_file(name)
    if out.exists() and not args.overwrite:
        raise UserError(f"{out} already exists: pass --overwrite to replace it or --out PATH")
    size = DEFAULT_SIZE if args.size is None else args.size
    if size < 1:
        raise UserError(f"--size must be at least 1, got {size}")
    given = {key: getattr(args, key) for key in SAC_OPTIONS
             if getattr(args, key, None) not in (None, False)}
    if given and kind not in SAC_KINDS:
        raise UserError(f"--{next(iter(given))} applies only to the SAC-based kinds "
                        f"({', '.join(SAC_KINDS)}): drop it for {name}")
    if "policies_dir" in given:
        given["policies_dir"] = Path(given["policies_dir"])
    options = SACCollectionOptions(**given)

    err = Console(file=sys.stderr, highlight=False, soft_wrap=True)

    def log(message: str) -> None:
        if args.quiet and message.startswith("epoch "):
            return
        err.print(message, markup=False)

    if kind == "medium-replay" and args.size is not None:
        log("note: --size does not apply to medium-replay, which holds every transition of "
            "the medium policy's training run")
    if args.quiet:
        ds = collect(name, size, args.seed, options=options, log=log)
    else:
        total = {"medium-expert": 2 * size, "medium-replay": None}.get(kind or "", size)
        with Progress(TextColumn("collecting {task.description}"), BarColumn(),
                      MofNCompleteColumn(), TimeRemainingColumn(), console=err) as bar:
            task = bar.add_task(name, total=total)
            ds = collect(name, size, args.seed, options=options, log=log,
                         progress=lambda done: bar.update(task, completed=done))
    write_d4rl_hdf5(ds, out)
    print_info(ds, str(out), env_name=name)
    _console().print(f"wrote {len(ds)} transitions to {out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``datasets`` command (and its sub-commands) to ``subparsers``.

    Each sub-command sets ``func``, a handler ``(args) -> int``.
    """
    parser = subparsers.add_parser(
        "datasets", help="download, inspect, list, export and collect offline datasets",
        description="Offline datasets: D4RL files, Minari datasets, and data recorded here.",
    )
    sub = parser.add_subparsers(dest="datasets_command", required=True, metavar="COMMAND")
    _add_download_parser(sub)
    _add_info_parser(sub)
    _add_list_parser(sub)
    _add_export_parser(sub)
    _add_collect_parser(sub)
    add_uncertainty_parser(sub)
    return parser


def _add_download_parser(sub: argparse._SubParsersAction) -> None:
    """``datasets download NAME``: :func:`cmd_download`."""
    p = sub.add_parser("download", help="download a published D4RL file")
    p.add_argument("name", help="D4RL dataset name, e.g. hopper-medium-replay-v2")
    p.add_argument("--force", action="store_true", help="download even if a local copy exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_download)


def _add_info_parser(sub: argparse._SubParsersAction) -> None:
    """``datasets info NAME|PATH``: :func:`cmd_info`."""
    p = sub.add_parser("info", help="summarise a dataset")
    p.add_argument("target", metavar="NAME|PATH", help="dataset name, minari:<id>, or HDF5 file")
    p.add_argument("--dataset", metavar="PATH", help="explicit file (or minari:<id>) for NAME")
    p.add_argument("--no-download", action="store_true", help="never download")
    p.set_defaults(func=cmd_info)


def _add_list_parser(sub: argparse._SubParsersAction) -> None:
    """``datasets list``: :func:`cmd_list`."""
    p = sub.add_parser("list", help="list the datasets on this machine")
    p.set_defaults(func=cmd_list)


def _add_export_parser(sub: argparse._SubParsersAction) -> None:
    """``datasets export NAME --format minari``: :func:`cmd_export`."""
    p = sub.add_parser("export", help="write a dataset in another format")
    p.add_argument("name", help="dataset name (or minari:<id>)")
    p.add_argument("--format", required=True, choices=["minari"], help="output format")
    p.add_argument("--dataset", metavar="PATH", help="explicit input file for NAME")
    p.add_argument("--minari-id", metavar="ID",
                   help="Minari id to create (default ombrl/<env>/<kind>-v2)")
    p.set_defaults(func=cmd_export)


def _add_collect_parser(sub: argparse._SubParsersAction) -> None:
    """``datasets collect NAME``: :func:`cmd_collect`, with the SAC options."""
    p = sub.add_parser(
        "collect", help="record a dataset under the D4RL protocol",
        description="Record a D4RL-protocol dataset on the environments D4RL was recorded with "
        "(Gymnasium v4). random: uniform actions. "
        "medium: a SAC policy trained until its deterministic evaluation reaches "
        "--target_score, sampled with its stochastic actions. medium-replay: every transition "
        "of that training run. expert: a SAC policy trained --expert_steps steps. "
        "medium-expert: medium, then expert. The trained policies are kept under "
        "--policies_dir and reused by later collections with the same settings.")
    p.add_argument("name", help="dataset name, e.g. hopper-random-v2 or hopper-medium-v2")
    p.add_argument("--size", type=int, default=None,
                   help=f"transitions (default {DEFAULT_SIZE}); medium-expert has twice as "
                   "many, medium-replay as many as its training run took steps")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--out", metavar="PATH", help="output file (default "
                   "$OMBRL_DATASETS_DIR/<name>.hdf5)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar and no per-epoch training lines")
    _add_sac_options(p.add_argument_group(
        "SAC-based kinds (medium, medium-replay, expert, medium-expert)"))
    p.set_defaults(func=cmd_collect)


def _add_sac_options(sac: argparse._ArgumentGroup) -> None:
    """The :data:`SAC_OPTIONS` flags; unset ones stay None or False (see :func:`cmd_collect`)."""
    defaults = SACCollectionOptions()
    sac.add_argument("--target_score", type=float,
                     help="D4RL normalised score at which the medium policy stops training "
                     f"(default {defaults.target_score:g}, a third of expert)")
    sac.add_argument("--max_train_steps", type=int,
                     help="cap on the medium policy's training env steps "
                     f"(default {defaults.max_train_steps})")
    sac.add_argument("--expert_steps", type=int,
                     help=f"training env steps of the expert policy "
                     f"(default {defaults.expert_steps})")
    sac.add_argument("--expert_target_score", type=float,
                     help="stop the expert's training early at this normalised score")
    sac.add_argument("--steps_per_epoch", type=int,
                     help="env steps between evaluations (default "
                     f"{defaults.steps_per_epoch})")
    sac.add_argument("--random_steps", type=int,
                     help="initial uniform-action steps (default min(10000, budget/10))")
    sac.add_argument("--init_steps", type=int,
                     help="steps before the first update (default: as --random_steps)")
    sac.add_argument("--test_episodes", type=int,
                     help=f"evaluation episodes per epoch (default {defaults.test_episodes})")
    sac.add_argument("--device", help="torch device for training and sampling (default cpu)")
    sac.add_argument("--policies_dir", metavar="PATH",
                     help="where policy runs are kept (default $OMBRL_DATASETS_DIR/policies)")
    sac.add_argument("--retrain", action="store_true",
                     help="train the policies again even if finished runs exist")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``datasets ...`` with only this command registered (for tests and scripts).

    ``argv`` may start with ``datasets`` or leave it out (as ``ombrl datasets ...`` passes it).
    A :class:`UserError` is printed as one line on stderr and gives status 2.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "datasets":
        argv = ["datasets", *argv]
    parser = argparse.ArgumentParser(prog="ombrl")
    subparsers = parser.add_subparsers(dest="command", required=True)
    register(subparsers)
    try:
        args = parser.parse_args(argv)
        return int(args.func(args))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except SystemExit as exc:  # argparse: --help or a usage error
        return exc.code if isinstance(exc.code, int) else 2
