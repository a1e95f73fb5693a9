"""``ombrl tune``: sweep the rollout length and pessimism or conservatism of an offline mode.

    ombrl tune --env_name hopper-medium-replay-v2 --mode epistemic-partitioning --trials 20 \\
        --seeds 0 1 2 --asha

Needs the optional extra: ``pip install 'offline_mbrl[tune]'``.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from offline_mbrl.cli import DefaultsHelpFormatter, OneLineParser, run_main
from offline_mbrl.config import CONFIG_GROUPS, TrainerConfiguration, make_config, merge_fields
from offline_mbrl.errors import UserError
from offline_mbrl.tuning.search_space import tunable_modes
from offline_mbrl.tuning.tune import (
    TuneOptions,
    add_ray_arguments,
    import_tune_libraries,
    tune_hyperparameters,
)


def build_parser(prog: str = "ombrl tune") -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=prog, formatter_class=DefaultsHelpFormatter,
        description="Tune an offline mode on a dataset: the synthetic rollout length "
        "(1..20) of model-based modes; partitioning thresholds on a log scale between the "
        "mean and the maximum dataset uncertainty; penalty coefficients in "
        "[0, R_max / u_max]; the fixed ranges of MOBILE's β, CQL's α, COMBO's β and IQL's "
        "expectile and temperature (offline_mbrl.modes). Optuna proposes, Ray Tune runs "
        "the trials (locally on 127.0.0.1 unless --address joins a cluster). The best "
        "values go to <storage_path>/<exp_name>/best_hyperparameters.json, which train_agent.py "
        "--hyperparameters reads.")
    what = parser.add_argument_group("what to tune")
    what.add_argument("--env_name", required=True, help="D4RL dataset name, e.g. "
                      "hopper-medium-replay-v2 (or an environment name with --dataset)")
    what.add_argument("--mode", required=True, choices=tunable_modes(),
                      help="offline mode whose hyperparameters are tuned: the rollout length of "
                      "model-based modes, and the pessimism or conservatism weight (λ, β, the "
                      "threshold, CQL's α, IQL's expectile and temperature)")
    what.add_argument("--trials", type=int, default=20, help="number of trials")
    what.add_argument("--seeds", type=int, nargs="+", default=[0],
                      help="seeds trained together as one population in every trial")
    what.add_argument("--last_k", type=int, default=3,
                      help="objective: mean over seeds and the last K evaluations of the "
                      "normalised score (return for environments without D4RL references)")
    what.add_argument("--search_seed", type=int, default=0, help="seed of Optuna's sampler")
    sweep = parser.add_argument_group("how trials run")
    sweep.add_argument("--asha", action="store_true",
                       help="stop weak trials early with ASHA on the per-epoch scores")
    sweep.add_argument("--grace_period", type=int, default=1,
                       help="ASHA: epochs every trial runs before it may be stopped")
    sweep.add_argument("--reduction_factor", type=float, default=3.0,
                       help="ASHA: keep the best 1/FACTOR of trials at each rung")
    sweep.add_argument("--cpus_per_trial", type=float, default=1.0,
                       help="CPUs Ray reserves per trial (also torch's thread count)")
    sweep.add_argument("--gpus_per_trial", type=float, default=None,
                       help="GPUs Ray reserves per trial (default: 1 with a cuda device, else 0)")
    sweep.add_argument("--max_concurrent", type=int, default=None,
                       help="at most this many trials at once (default: as resources allow)")
    add_ray_arguments(sweep, "trials")
    sweep.add_argument("--exp_name", default=None,
                       help="sweep name (default tune-<env_name>-<mode>); trial k trains as "
                       "experiment <exp_name>-trial<k>")
    sweep.add_argument("--storage_path", default="data/tuning",
                       help="Ray's results and best_hyperparameters.json go to "
                       "<storage_path>/<exp_name>/")
    sweep.add_argument("--overwrite", action="store_true",
                       help="replace an earlier sweep of the same name and its trial runs")
    sweep.add_argument("--verbose", type=int, default=0, choices=(0, 1, 2),
                       help="Ray Tune's own console output")
    sweep.add_argument("--no-progress", dest="progress", action="store_false",
                       help="no progress bar while the environment model trains")
    trial = parser.add_argument_group("trial configuration")
    trial.add_argument("--epochs", type=int, default=None,
                       help="epochs per trial (offline_epochs; default: the mode's)")
    trial.add_argument("--steps_per_epoch", type=int, default=None,
                       help="agent updates per epoch")
    trial.add_argument("--test_episodes", type=int, default=None,
                       help="evaluation episodes after each epoch")
    trial.add_argument("--dataset", default=None, metavar="PATH",
                       help="dataset file (or minari:<id>) instead of resolving env_name")
    trial.add_argument("--device", default=None, help="torch device of every trial")
    trial.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[],
                       metavar="KEY=VALUE",
                       help="any TrainerConfiguration field, nested ones with a dot, e.g. "
                       "agent.n_hidden_units=16 env_model.n_networks=5 max_episode_length=500 "
                       "(values are JSON, else strings)")
    return parser


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["a=1", "agent.n_hidden_units=16"]`` -> ``{"a": 1, "agent": {"n_hidden_units": 16}}``."""
    values: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--set {item!r} is not KEY=VALUE: write e.g. --set "
                            "agent.n_hidden_units=16")
        try:
            value: Any = json.loads(text)
        except json.JSONDecodeError:
            value = text
        parts = key.split(".")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] not in CONFIG_GROUPS):
            groups = " or ".join(CONFIG_GROUPS)
            raise UserError(f"--set {key}: nested keys must start with {groups}, "
                            "e.g. agent.n_hidden_units=16")
        if len(parts) == 2:
            values.setdefault(parts[0], {})[parts[1]] = value
        else:
            values[key] = value
    return values


def config_from_tune_args(args: argparse.Namespace) -> TrainerConfiguration:
    """The configuration every trial starts from."""
    values: dict[str, Any] = {"env_name": args.env_name, "mode": args.mode,
                              "seeds": tuple(args.seeds)}
    if args.epochs is not None:
        values["offline_epochs"] = args.epochs
    for name in ("steps_per_epoch", "test_episodes", "dataset", "device"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    values = merge_fields(values, parse_overrides(args.overrides))
    return make_config(TrainerConfiguration, **values)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else "n/a"
    return str(value)


def print_result(result: Any) -> None:
    console = Console(highlight=False)
    ranges = []
    for name, b in result.bounds.items():
        scale = "integers" if b.integer else ("log-uniform" if b.log else "uniform")
        ranges.append(f"{name} {scale} in [{_fmt(b.low)}, {_fmt(b.high)}]")
    console.print(f"search space: {'; '.join(ranges)}", soft_wrap=True)
    table = Table(title=f"{result.exp_name}: {result.env_name} {result.mode}, "
                  f"score = {result.objective}")
    table.add_column("trial", justify="right")
    for name in result.bounds:
        # The search-space line above names the group; the column keeps the width for values.
        table.add_column(name.removeprefix("agent."), justify="right")
    for column in ("epochs", "score", "status", "run directory"):
        table.add_column(column, justify="right" if column in ("epochs", "score") else "left",
                         overflow="fold")
    for outcome in result.trials:
        mark = " *" if outcome is result.best else ""
        status = outcome.status if outcome.error is None else f"error: {outcome.error}"
        table.add_row(f"{outcome.trial}{mark}",
                      *(_fmt(outcome.params.get(name, "-")) for name in result.bounds),
                      f"{outcome.epochs}/{result.epochs}", _fmt(outcome.score), status,
                      str(outcome.run_dirs[0].parent))
    table.caption = "* best"
    console.print(table)
    best = result.best
    console.print(f"best: trial {best.trial}, score {_fmt(best.score)}, "
                  + ", ".join(f"{k}={_fmt(v)}" for k, v in best.params.items()), soft_wrap=True)
    console.print(f"wrote {result.best_file} (use: train_agent.py --env_name {result.env_name} "
                  f"--mode {result.mode} --hyperparameters {result.best_file})", soft_wrap=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    def body() -> int:
        import_tune_libraries()  # the missing extra is the first thing to report
        config = config_from_tune_args(args)
        options = TuneOptions(
            trials=args.trials, exp_name=args.exp_name, storage_path=args.storage_path,
            last_k=args.last_k, asha=args.asha, grace_period=args.grace_period,
            reduction_factor=args.reduction_factor, cpus_per_trial=args.cpus_per_trial,
            gpus_per_trial=args.gpus_per_trial, max_concurrent=args.max_concurrent,
            address=args.address, num_cpus=args.num_cpus, search_seed=args.search_seed,
            overwrite=args.overwrite, verbose=args.verbose)
        print_result(tune_hyperparameters(config, options, progress=args.progress))
        return 0

    return run_main(body)
