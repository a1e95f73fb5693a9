"""Command-line front end: ``ombrl <command>`` and the seed's scripts share this code.

Every :class:`TrainerConfiguration` field is a flag whose help is the field's docstring.
Errors the user can fix end the program with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from types import UnionType
from typing import Any, Literal, NoReturn, TextIO, Union, get_args, get_origin

import numpy as np
import torch
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from offline_mbrl.config import (
    CONFIG_GROUPS,
    AgentConfiguration,
    TrainerConfiguration,
    make_config,
    merge_fields,
)
from offline_mbrl.envs.registry import get_env_spec
from offline_mbrl.errors import UserError
from offline_mbrl.evaluation import evaluate_population, record_video
from offline_mbrl.fields import parse_bool
from offline_mbrl.files import write_failure
from offline_mbrl.hyperparameters import read_hyperparameters_file
from offline_mbrl.models.training import EnvironmentModelConfiguration
from offline_mbrl.modes import MODES
from offline_mbrl.policy import load_agent
from offline_mbrl.renames import current_config_names
from offline_mbrl.runs import CHECKPOINT_FILE, RESOLVED_KEY, find_checkpoint
from offline_mbrl.train import Trainer


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad flags in one line instead of a usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default, except where it is unset (the configuration's default
    is already in the help text of configuration flags)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def _scalar_type(annotation: Any) -> tuple[Any, bool]:
    """The argparse type of a field annotation, and whether it takes several values."""
    origin = get_origin(annotation)
    if origin in (Union, UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _scalar_type(args[0])
        return str, False  # e.g. float | "auto": validated by the model
    if origin is tuple:
        return _scalar_type(get_args(annotation)[0])[0], True
    if origin is Literal:
        return str, False
    if hasattr(annotation, "__metadata__"):  # Annotated[int, Field(...)]
        return _scalar_type(get_args(annotation)[0])
    if annotation is bool:
        return parse_bool, False
    if annotation in (int, float, str):
        return annotation, False
    return str, False


def add_model_flags(parser: Any, model: type[BaseModel], skip: Sequence[str] = (),
                    prefix: str = "") -> list[str]:
    """Add ``--<prefix><field>`` for each field of ``model`` (defaults unset), and a hidden
    ``--<prefix><old name>`` for each of its renamed fields (``model.renamed``)."""
    old_names = {new: old for old, new in getattr(model, "renamed", {}).items()}
    names = []
    for name, info in model.model_fields.items():
        if name in skip or (isinstance(info.annotation, type)
                            and issubclass(info.annotation, BaseModel)):
            continue
        kind, many = _scalar_type(info.annotation)
        help_text = (info.description or "").replace("%", "%%")
        default = info.default
        help_text += f" (default: {default}" + (
            f"; old name --{prefix}{old_names[name]})" if name in old_names else ")")
        kwargs: dict[str, Any] = {"default": None, "help": help_text,
                                  "dest": prefix + name}
        if kind is parse_bool:
            kwargs.update(nargs="?", const=True, type=parse_bool, metavar="BOOL")
        elif many:
            kwargs.update(nargs="+", type=kind)
        else:
            kwargs.update(type=kind)
        if get_origin(info.annotation) is Literal:
            kwargs["choices"] = list(get_args(info.annotation))
        elif (info.json_schema_extra or {}).get("choices") == "modes":  # type: ignore[union-attr]
            kwargs["choices"] = list(MODES)
        parser.add_argument(f"--{prefix}{name}", **kwargs)
        if name in old_names:
            parser.add_argument(f"--{prefix}{old_names[name]}",
                                **{**kwargs, "help": argparse.SUPPRESS})
        names.append(name)
    return names


def _act(agent: Any, obs: Any) -> Any:
    """A loaded agent's deterministic actions for a batch of observations on its device."""
    return agent.agent.act(obs.to(agent.device), deterministic=True)


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str,
                      lineno: int, file: TextIO | None = None, line: str | None = None) -> None:
    """Show a warning as one ``warning: ...`` line on stderr (a command's user reads the
    message, not the source line that raised it)."""
    print(f"warning: {message}", file=file or sys.stderr)


def run_main(body: Callable[[], int], interrupted: str = "interrupted") -> int:
    """Run a command body, turning :class:`UserError` into one line on stderr and exit 2,
    and showing warnings as one line each."""
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            return body()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
    except OSError as error:  # a read-only place, a full disk, a missing directory
        path = Path(error.filename) if error.filename else Path(".")
        print(f"error: {write_failure(path, error)}", file=sys.stderr)
        return 2


# ---------------------------------------------------------------------- train
def build_train_parser(prog: str = "train_agent.py") -> argparse.ArgumentParser:
    parser = OneLineParser(prog=prog, description="Train agents online or offline "
                           "(one batched population per command).",
                           formatter_class=DefaultsHelpFormatter)
    config_group = parser.add_argument_group("trainer configuration")
    add_model_flags(config_group, TrainerConfiguration)
    agent_group = parser.add_argument_group("agent configuration")
    add_model_flags(agent_group, AgentConfiguration)
    model_group = parser.add_argument_group("environment model configuration")
    add_model_flags(model_group, EnvironmentModelConfiguration, prefix="model_",
                    skip=("device",))
    parser.add_argument("--hyperparameters", type=Path, default=None,
                        help="JSON file of tuned fields (written by 'ombrl tune'); flags "
                             "override it.")
    run = parser.add_argument_group("run control")
    run.add_argument("--epochs", type=int, default=None,
                     help="Epochs for the mode: sets online_epochs (sac, mbpo) or offline_epochs.")
    run.add_argument("--exp_name", dest="experiment_name", default=None,
                     help="Alias of --experiment_name.")
    run.add_argument("--config", type=Path, default=None,
                     help="JSON file of configuration fields (e.g. a run's config.json); "
                          "flags override it.")
    run.add_argument("--resume", action="store_true",
                     help="Continue the runs in the existing run directories.")
    run.add_argument("--overwrite", action="store_true",
                     help="Delete existing run directories of this experiment first.")
    run.add_argument("--no-progress", dest="progress", action="store_false",
                     help="Do not show progress bars.")
    return parser


def _current_names(values: dict[str, Any], source: str) -> dict[str, Any]:
    """A file's configuration fields with old names replaced by current ones, before flags
    (which set current names) override them."""
    try:
        return current_config_names(values)
    except ValueError as error:
        raise UserError(f"{source}: {error}") from None


def config_from_args(args: argparse.Namespace) -> TrainerConfiguration:
    """Merge ``--config`` file, flags and aliases into a validated configuration."""
    values: dict[str, Any] = {}
    if args.config is not None:
        try:
            values = json.loads(Path(args.config).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise UserError(f"cannot read --config {args.config} ({error}): "
                            "pass a JSON file of configuration fields") from None
        if not isinstance(values, dict):
            raise UserError(f"--config {args.config} holds a JSON {type(values).__name__}, "
                            "not an object of configuration fields: pass a run's config.json")
        values.pop(RESOLVED_KEY, None)  # what a run derived, not a setting
        values = _current_names(values, f"--config {args.config}")
    if args.hyperparameters is not None:
        # A tuned agent field joins the --config file's agent group, not replaces it.
        values = merge_fields(values, _current_names(
            read_hyperparameters_file(args.hyperparameters),
            f"--hyperparameters {args.hyperparameters}"))
    for group in CONFIG_GROUPS:
        if not isinstance(values.get(group, {}), dict):
            raise UserError(f"'{group}' in the configuration file must be an object of fields, "
                            f"got {values[group]!r}: write it as in a run's config.json")
    agent = dict(values.get("agent", {}))
    env_model = dict(values.get("env_model", {}))
    for name in TrainerConfiguration.model_fields:
        value = getattr(args, name, None)
        if value is not None and name not in ("agent", "env_model"):
            values[name] = tuple(value) if isinstance(value, list) else value
    for name in AgentConfiguration.model_fields:
        value = getattr(args, name, None)
        if value is not None:
            agent[name] = value
    for name in EnvironmentModelConfiguration.model_fields:
        value = getattr(args, f"model_{name}", None)
        if value is not None:
            env_model[name] = value
    values["agent"] = agent
    values["env_model"] = env_model
    if args.epochs is not None and args.epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {args.epochs}: leave it out for the "
                        "mode's default, or pass --epochs N with N >= 1")
    if args.epochs is not None:
        mode = values.get("mode", "sac")
        spec = MODES.get(mode)  # an unknown mode is refused by the configuration
        key = "online_epochs" if spec is not None and spec.online else "offline_epochs"
        values[key] = args.epochs
    return make_config(TrainerConfiguration, **values)


def train_main(argv: Sequence[str] | None = None, prog: str = "train_agent.py") -> int:
    parser = build_train_parser(prog)
    args = parser.parse_args(argv)

    def body() -> int:
        config = config_from_args(args)
        trainer = Trainer(config, resume=args.resume, overwrite=args.overwrite,
                          progress=args.progress)
        rows = trainer.run()
        table = Table(title=f"{config.env_name} {config.mode}: final evaluation")
        for column in ("seed", "return", "std", "normalised score", "run directory"):
            table.add_column(column, overflow="fold")
        for seed, row, run_dir in zip(trainer.seeds, rows, trainer.run_dirs, strict=True):
            score = row["NormalizedTestScore"]
            table.add_row(str(seed), f"{row['AverageTestEpRet']:.1f}",
                          f"{row['StdTestEpRet']:.1f}",
                          f"{score:.1f}" if score == score else "n/a", str(run_dir))
        Console().print(table)
        return 0

    return run_main(body, "interrupted: completed epochs are checkpointed; rerun with --resume")


# ---------------------------------------------------------------------- evaluate
def build_evaluate_parser(prog: str = "evaluate_agent.py") -> argparse.ArgumentParser:
    parser = OneLineParser(prog=prog, description="Evaluate trained agents with "
                           "deterministic test episodes.")
    parser.add_argument("--exp_path", required=True,
                        help="Run directory (…-s0/) or experiment directory holding runs.")
    parser.add_argument("--env_name", default=None,
                        help="Environment to evaluate in (default: the run's own).")
    parser.add_argument("--episodes", type=int, default=10, help="Test episodes per run.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the test episodes.")
    parser.add_argument("--max_episode_length", type=int, default=1000,
                        help="Episode length limit.")
    parser.add_argument("--device", default="cpu", help="Torch device.")
    parser.add_argument("--render", nargs="?", const=True, default=False, type=parse_bool,
                        metavar="BOOL", help="Write a video of the first episode (headless).")
    parser.add_argument("--video", type=Path, default=None,
                        help="Video path (.mp4 or .gif; default <run dir>/videos/eval.mp4).")
    return parser


def _checkpoints_under(path: Path) -> list[Path]:
    """The checkpoint of a run directory or file, or of every run in an experiment."""
    if path.is_dir() and not (path / CHECKPOINT_FILE).is_file():
        runs = sorted(path.glob(f"*/{CHECKPOINT_FILE}"))
        if runs:
            return runs
    return [find_checkpoint(path)]


def evaluate_main(argv: Sequence[str] | None = None, prog: str = "evaluate_agent.py") -> int:
    parser = build_evaluate_parser(prog)
    args = parser.parse_args(argv)

    def body() -> int:
        if args.episodes <= 0:
            raise UserError(f"--episodes must be positive, got {args.episodes}")
        console = Console()
        table = Table(title="Evaluation")
        for column in ("run", "episodes", "mean return", "std", "min", "max", "length",
                       "normalised score"):
            table.add_column(column, overflow="fold")
        for checkpoint in _checkpoints_under(Path(args.exp_path)):
            run_dir = checkpoint.parent
            agent = load_agent(checkpoint, device=args.device)
            env_name = args.env_name or agent.env_name
            spec = get_env_spec(env_name)
            if spec.family != get_env_spec(agent.env_name).family:
                raise UserError(f"{run_dir} was trained on {agent.env_name}, not {env_name}: "
                                "pass a matching --env_name")
            result = evaluate_population(
                env_name,
                partial(_act, agent),
                n_members=1, episodes=args.episodes, seed=args.seed,
                max_episode_length=args.max_episode_length)
            returns = result.returns[0]
            for i, value in enumerate(returns):
                console.print(f"{run_dir.name} episode {i}: return {value:.1f}, "
                              f"length {int(result.lengths[0][i])}")
            metrics = result.as_metrics(0, spec.family)
            table.add_row(run_dir.name, str(args.episodes), f"{metrics['AverageTestEpRet']:.1f}",
                          f"{metrics['StdTestEpRet']:.1f}", f"{metrics['MinTestEpRet']:.1f}",
                          f"{metrics['MaxTestEpRet']:.1f}", f"{metrics['TestEpLen']:.0f}",
                          f"{metrics['NormalizedTestScore']:.1f}"
                          if np.isfinite(metrics["NormalizedTestScore"]) else "n/a")
            if args.render:
                video = args.video or run_dir / "videos" / "eval.mp4"
                with torch.no_grad():
                    written = record_video(env_name, agent.act, video,
                                           seed=args.seed,
                                           max_episode_length=args.max_episode_length)
                console.print(f"video: {written}")
        console.print(table)
        return 0

    return run_main(body)


# ---------------------------------------------------------------------- ombrl
# name -> (module, function, one-line description)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("offline_mbrl.cli", "train_main", "train agents (same flags as train_agent.py)"),
    "evaluate": ("offline_mbrl.cli", "evaluate_main", "evaluate trained agents"),
    "demo": ("offline_mbrl.pipeline", "main",
             "the offline pipeline end to end on an embedded default (about 5 minutes)"),
    "datasets": ("offline_mbrl.data.commands", "main",
                 "download, collect, inspect, list and export datasets"),
    "train-model": ("offline_mbrl.scripts.train_environment_model", "main",
                    "train an environment model on a dataset"),
    "model": ("offline_mbrl.models.commands", "main",
              "diagnose a dataset's environment model (ombrl model diagnose)"),
    "plot": ("offline_mbrl.scripts.plot", "main", "plot training curves and final scores"),
    "tune": ("offline_mbrl.tuning.commands", "main",
             "tune rollout length and pessimism with Ray Tune and Optuna"),
    "benchmark": ("offline_mbrl.benchmark.commands", "main",
                  "train a spec's grid of datasets × modes on Ray and write its results"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ombrl`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        lines = ["usage: ombrl <command> [options]", "", "commands:"]
        lines += [f"  {name:<12} {desc}" for name, (_, _, desc) in COMMANDS.items()]
        lines += ["", "Run 'ombrl <command> --help' for a command's options."]
        print("\n".join(lines))
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"ombrl: error: unknown command '{name}': use one of {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    module_name, function, _ = COMMANDS[name]
    function_ = getattr(importlib.import_module(module_name), function)
    if name in ("train", "evaluate"):
        return int(function_(rest, prog=f"ombrl {name}"))
    return int(function_(rest))


if __name__ == "__main__":
    sys.exit(main())
