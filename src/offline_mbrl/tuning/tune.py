"""Hyperparameter sweeps: Optuna proposes, Ray Tune runs the trials.

A sweep tunes one offline mode on one dataset: the rollout length of a model-based mode
and its pessimism or conservatism (:mod:`offline_mbrl.tuning.search_space`). Before any
trial of a model-based mode starts, the dataset's environment model is loaded (or trained
and saved at its default path) and its uncertainty statistics fix the pessimism's range;
every trial reuses that model file.

A trial trains a population (``config.seeds``) for ``config.epochs`` epochs with the
proposed values, in its own run directories ``<experiments>/<exp>-trial<k>/...``, and
reports after every epoch ``score``: the mean over members and over the last ``last_k``
evaluations of ``NormalizedTestScore`` (``AverageTestEpRet`` for environments without D4RL
references). The last report is the objective; the per-epoch reports let ASHA stop weak
trials early.

Ray runs embedded and bound to 127.0.0.1 unless an ``address`` joins an existing cluster.
Trial workers get absolute paths (dataset, model, experiments root) because Ray runs them
in other processes, possibly on other machines (which must then share those paths).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from offline_mbrl.config import TrainerConfiguration, make_config
from offline_mbrl.data.resolve import load_dataset
from offline_mbrl.envs.registry import get_env_spec
from offline_mbrl.envs.scores import D4RL_REFERENCE_RETURNS
from offline_mbrl.errors import UserError
from offline_mbrl.files import write_json_atomic
from offline_mbrl.models.io import (
    check_model_matches,
    load_environment_model,
    save_environment_model,
)
from offline_mbrl.models.statistics import uncertainty_statistics
from offline_mbrl.models.training import resolve_device, train_environment_model
from offline_mbrl.models.uncertainty_command import model_path_for
from offline_mbrl.modes import get_mode
from offline_mbrl.runs import experiments_root, member_run_dirs
from offline_mbrl.train import Trainer
from offline_mbrl.tuning.search_space import (
    Bounds,
    check_tunable_mode,
    search_bounds,
    suggest,
    tuned_fields,
)

INSTALL_HINT = "pip install 'offline_mbrl[tune]'"
BEST_FILE = "best_hyperparameters.json"
DEFAULT_STORAGE = "data/tuning"
METRIC = "score"

# Variables a trial worker needs to resolve data as the driver does; directories are
# passed as absolute paths because workers run elsewhere (another cwd, another machine).
_PATH_VARIABLES = ("OMBRL_DATASETS_DIR", "OMBRL_MODELS_DIR", "OMBRL_DATA_DIR",
                   "D4RL_DATASET_DIR", "MINARI_DATASETS_PATH")
_PLAIN_VARIABLES = ("OMBRL_OFFLINE", "OMBRL_D4RL_URL")


# ---------------------------------------------------------------------- libraries
def import_tune_libraries() -> SimpleNamespace:
    """Ray, Ray Tune, Optuna and their glue, or a one-line :class:`UserError` saying how to
    install them."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports sent anywhere
    # Imported here: Ray and Optuna are the optional extra 'tune', and a missing one is
    # reported as the UserError below.
    try:
        import optuna
        import ray
        from ray import tune
        from ray.tune.schedulers import ASHAScheduler
        from ray.tune.search.optuna import OptunaSearch
    except ImportError as error:
        raise UserError(f"ombrl tune needs Ray Tune and Optuna ({error}): "
                        f"{INSTALL_HINT}") from None
    return SimpleNamespace(ray=ray, tune=tune, optuna=optuna, OptunaSearch=OptunaSearch,
                           ASHAScheduler=ASHAScheduler)


def import_ray(command: str = "ombrl tune") -> Any:
    """Ray alone, or a one-line :class:`UserError` saying that ``command`` needs it and how
    to install it."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports sent anywhere
    try:
        import ray  # optional: the extra 'tune'
    except ImportError as error:
        raise UserError(f"{command} needs Ray ({error}): {INSTALL_HINT}") from None
    return ray


def add_ray_arguments(parser: Any, spread: str) -> None:
    """``--address`` and ``--num_cpus``, the Ray options every command on Ray shares;
    ``spread`` names what a cluster spreads (trials, units)."""
    parser.add_argument("--address", default=None,
                        help=f"join the Ray cluster at this address (auto or host:port) to "
                        f"spread {spread} over its machines; every node must then see the "
                        f"output directories at the same paths (a shared filesystem)")
    parser.add_argument("--num_cpus", type=int, default=None,
                        help="CPUs of the embedded Ray on 127.0.0.1 (default: all of this "
                        "machine)")


def init_ray(address: str | None = None, num_cpus: int | None = None,
             command: str | None = None) -> bool:
    """Start an embedded Ray bound to 127.0.0.1, or join the cluster at ``address``.

    Args:
        address: a cluster to join (``auto``, ``host:port``); None starts a local Ray.
        num_cpus: CPUs of the local Ray (default: all).
        command: the command that needs Ray, for the error when it is missing; None checks
            for everything ``ombrl tune`` needs (Ray Tune and Optuna too).

    Returns:
        True when this call connected Ray (the caller then shuts it down); False when Ray
        was already initialised, e.g. by a test session.
    """
    local = not address
    # Ray resolves 127.0.0.1 to this machine's outward address, and its processes listen on
    # every interface, unless its "cluster" mode is off. The variable covers the processes
    # Ray starts; the constant is what this process read when it first imported Ray (which
    # may have happened before this call). Joining a cluster keeps the user's setting.
    if local:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray = import_ray(command) if command else import_tune_libraries().ray
    if ray.is_initialized():
        return False
    if local:
        # Imported here: Ray is optional, and the import above has checked it.
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
    common: dict[str, Any] = {"configure_logging": False, "log_to_driver": False}
    if address:
        try:
            ray.init(address=address, **common)
        except (ConnectionError, RuntimeError, ValueError) as error:
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise UserError(f"cannot join the Ray cluster at {address} ({first[:160]}): start "
                            "it with `ray start --head`, set RAY_AUTH_MODE=token if it uses "
                            "token authentication, or drop --address to run locally") from None
    else:
        # "local" always starts a fresh instance instead of joining one found on the machine.
        ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1",
                 num_cpus=num_cpus, **common)
        node_ip = ray.util.get_node_ip_address()
        if node_ip != "127.0.0.1":
            ray.shutdown()
            raise UserError(f"the local Ray instance bound to {node_ip}, not 127.0.0.1: set "
                            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before starting, or pass "
                            "--address to use a cluster deliberately")
    return True


# ---------------------------------------------------------------------- objective
def row_score(row: dict[str, float]) -> float:
    """A member's evaluation: the normalised score, or the return where there is none."""
    score = row.get("NormalizedTestScore", math.nan)
    return float(score) if math.isfinite(score) else float(row["AverageTestEpRet"])


def objective(epoch_rows: list[list[dict[str, float]]], last_k: int = 3) -> float:
    """Mean over members and over the last ``last_k`` epochs of :func:`row_score`.

    Args:
        epoch_rows: one list of member rows per epoch, oldest first.
    """
    if last_k < 1:
        raise UserError(f"--last_k must be at least 1, got {last_k}")
    scores = [row_score(row) for rows in epoch_rows[-last_k:] for row in rows]
    return sum(scores) / len(scores) if scores else math.nan


def objective_name(env_name: str) -> str:
    family = get_env_spec(env_name).family
    return "NormalizedTestScore" if family in D4RL_REFERENCE_RETURNS else "AverageTestEpRet"


# ---------------------------------------------------------------------- trials
def trial_experiment_name(exp_name: str, trial: int) -> str:
    return f"{exp_name}-trial{trial}"


def trial_config(base: dict[str, Any], exp_name: str, trial: int,
                 params: dict[str, Any]) -> TrainerConfiguration:
    """The configuration of trial ``trial``: ``base`` with the proposed values (a trainer
    field takes one value for every member; ``agent.<name>`` sets an agent field)."""
    values = dict(base)
    values["experiment_name"] = trial_experiment_name(exp_name, trial)
    return make_config(TrainerConfiguration, **with_tuned_values(values, params))


def with_tuned_values(values: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """``values`` (configuration fields) with the tuned ``params`` set: trainer fields as
    one value for every member (``[v]``), ``agent.<name>`` inside the ``agent`` group."""
    values = dict(values)
    for name, value in params.items():
        group, _, field = name.rpartition(".")
        if group:
            values[group] = {**values.get(group, {}), field: value}
        else:
            values[name] = [value]
    return values


def run_trial(params: dict[str, Any], setup: dict[str, Any]) -> None:
    """One trial, in a Ray worker: train the population and report after every epoch."""
    # Imported here: Ray is the optional extra 'tune', and run_trial only runs in its workers.
    from ray import tune

    os.environ.update(setup["environ"])
    torch.set_num_threads(setup["threads"])
    trial = int(params["trial"])
    tuned = {name: params[name] for name in setup["parameters"]}
    config = trial_config(setup["config"], setup["exp_name"], trial, tuned)
    history: list[list[dict[str, float]]] = []

    def on_epoch(epoch: int, rows: list[dict[str, float]]) -> None:
        history.append(rows)
        epoch_score = objective([rows], 1)
        tune.report({METRIC: objective(history, setup["last_k"]), "epoch_score": epoch_score,
                     "epoch": epoch, "trial": trial})

    Trainer(config, overwrite=setup["overwrite"], progress=False,
            root=Path(setup["root"])).run(on_epoch=on_epoch)


class DefineByRun:
    """Optuna's define-by-run space: the tuned values plus the trial's number."""

    def __init__(self, bounds: dict[str, Bounds]) -> None:
        self.bounds = bounds

    def __call__(self, trial: Any) -> dict[str, Any]:
        suggest(trial, self.bounds)
        return {"trial": int(trial.number)}


# ---------------------------------------------------------------------- the sweep
@dataclass(frozen=True)
class TuneOptions:
    """How a sweep runs (the trial configuration itself is a TrainerConfiguration)."""

    trials: int = 20
    exp_name: str | None = None
    storage_path: str = DEFAULT_STORAGE
    last_k: int = 3
    asha: bool = False
    grace_period: int = 1
    reduction_factor: float = 3.0
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None
    max_concurrent: int | None = None
    address: str | None = None
    num_cpus: int | None = None
    search_seed: int = 0
    overwrite: bool = False
    verbose: int = 0
    root: Path | None = None


@dataclass
class TrialOutcome:
    trial: int
    params: dict[str, Any]
    score: float
    epochs: int
    status: str
    run_dirs: list[Path]
    error: str | None = None


@dataclass
class SweepResult:
    exp_name: str
    mode: str
    env_name: str
    bounds: dict[str, Bounds]
    stats: dict[str, Any]
    model_path: Path | None
    trials: list[TrialOutcome]
    best: TrialOutcome
    best_file: Path
    objective: str
    epochs: int
    storage_dir: Path


def default_exp_name(config: TrainerConfiguration) -> str:
    return f"tune-{config.env_name}-{config.mode}"


def prepare_environment_model(config: TrainerConfiguration, progress: bool = True
                              ) -> tuple[Path, dict[str, Any]]:
    """Load the dataset's environment model, or train and save it at its default path.

    Returns:
        The model file (absolute) and the dataset's uncertainty statistics under it.
    """
    spec = get_env_spec(config.env_name)
    data = load_dataset(spec.dataset_name or config.env_name, dataset=config.dataset)
    explicit = config.pretrained_env_model_path
    path = Path(explicit).expanduser() if explicit else model_path_for(config.env_name)
    if explicit or path.is_file():
        model, metadata = load_environment_model(path, device=config.device)
        check_model_matches(metadata, data, config.env_name)
    else:
        model_config = config.env_model.model_copy(update={"device": config.device})
        model, metrics = train_environment_model(data, model_config, config.env_name,
                                                 progress=progress)
        save_environment_model(model, path, {
            "config": model_config.model_dump(mode="json"),
            "dataset_name": data.name,
            "dataset_hash": data.content_hash(),
            "validation": metrics,
        })
    stats = uncertainty_statistics(model, data, path)
    return path.resolve(), stats


def _trial_dirs(root: Path, exp_name: str) -> list[Path]:
    pattern = re.compile(re.escape(exp_name) + r"-trial\d+")
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and pattern.fullmatch(p.name))


def _claim(storage_dir: Path, root: Path, exp_name: str, overwrite: bool) -> None:
    existing = ([storage_dir] if storage_dir.exists() else []) + _trial_dirs(root, exp_name)
    if existing and not overwrite:
        raise UserError(f"{existing[0]} already exists: pass --overwrite to replace the sweep "
                        "or choose another --exp_name")
    for path in existing:
        shutil.rmtree(path)


def _environ() -> dict[str, str]:
    environ = {name: str(Path(os.environ[name]).expanduser().resolve())
               for name in _PATH_VARIABLES if os.environ.get(name)}
    environ.update({name: os.environ[name] for name in _PLAIN_VARIABLES
                    if os.environ.get(name)})
    return environ


def _error_line(error: BaseException | None) -> str | None:
    if error is None:
        return None
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    last = lines[-1] if lines else type(error).__name__
    # Ray's wrapped errors end with "package.module.SomeError: message".
    return re.sub(r"^[\w.]+(Error|Exception): ", "", last)[:300]


def _print_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _trial_callback(tune: Any, epochs: int) -> Any:
    class TrialLines(tune.Callback):  # type: ignore[misc, name-defined]
        """One line per finished trial (Ray's own status tables are off by default)."""

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any
                              ) -> None:
            result = trial.last_result or {}
            if METRIC in result:
                _print_progress(f"trial {result.get('trial')} done after {result.get('epoch')}"
                                f"/{epochs} epochs: score {result[METRIC]:.4g}")

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any
                           ) -> None:
            _print_progress(f"trial {trial.config.get('trial')} failed: see its error in the "
                            "results table")

    return TrialLines()


def tune_hyperparameters(config: TrainerConfiguration, options: TuneOptions,
                         progress: bool = True) -> SweepResult:
    """Run a sweep of ``options.trials`` trials around ``config``; write the best values.

    Args:
        config: the trial configuration; the mode's :func:`tuned_fields` are tuned.
        options: how the sweep runs.
        progress: show the model's training progress bar.

    Returns:
        Every trial's outcome, the best trial and where its hyperparameters were written
        (``<storage>/<exp>/best_hyperparameters.json``).
    """
    libs = import_tune_libraries()
    _check_sweep_options(config, options)
    epochs = config.epochs
    device = resolve_device(config.device)
    exp_name = _checked_exp_name(options.exp_name or default_exp_name(config))
    root = (options.root or experiments_root()).expanduser().resolve()
    storage = Path(options.storage_path).expanduser().resolve()
    storage_dir = storage / exp_name
    _claim(storage_dir, root, exp_name, options.overwrite)

    config = _with_absolute_dataset(config)
    model_path: Path | None = None
    stats: dict[str, Any] = {}
    if get_mode(config.mode).model_based:
        model_path, stats = prepare_environment_model(config, progress=progress)
        config = config.model_copy(update={"pretrained_env_model_path": str(model_path)})
    bounds = search_bounds(config.mode, stats)

    setup = _trial_setup(config, exp_name, bounds, root, options)
    tuner = _make_tuner(libs, setup, bounds, exp_name, storage, epochs, device, options)
    grid = _fit(tuner, libs, options)
    outcomes = _trial_outcomes(grid, config, exp_name, bounds, root, epochs)
    best = _best_trial(outcomes, storage_dir)
    best_file = write_best(storage_dir / BEST_FILE, best, config, options.last_k)
    return SweepResult(exp_name=exp_name, mode=config.mode, env_name=config.env_name,
                       bounds=bounds, stats=stats, model_path=model_path,
                       trials=outcomes, best=best, best_file=best_file,
                       objective=objective_name(config.env_name), epochs=epochs,
                       storage_dir=storage_dir)


def _check_sweep_options(config: TrainerConfiguration, options: TuneOptions) -> None:
    """Refuse a mode with nothing to tune, a tuned field set by hand and bad sweep options."""
    check_tunable_mode(config.mode)
    for name in tuned_fields(config.mode):
        group, _, field = name.rpartition(".")
        given = (field in getattr(config, group).model_fields_set if group
                 else getattr(config, name) is not None)
        if given:
            raise UserError(f"{name} is what the sweep tunes: drop it from --set")
    if options.trials < 1:
        raise UserError(f"--trials must be at least 1, got {options.trials}")
    if options.last_k < 1:
        raise UserError(f"--last_k must be at least 1, got {options.last_k}")
    if options.cpus_per_trial <= 0:
        raise UserError(f"--cpus_per_trial must be positive, got {options.cpus_per_trial}")
    epochs = config.epochs
    if options.asha and not 1 <= options.grace_period <= epochs:
        raise UserError(f"--grace_period must be between 1 and the {epochs} epochs of a trial, "
                        f"got {options.grace_period}")
    if options.asha and options.reduction_factor <= 1:
        raise UserError(f"--reduction_factor must be above 1, got {options.reduction_factor}")


def _checked_exp_name(exp_name: str) -> str:
    """``exp_name``, refused unless it is a plain directory name."""
    if not re.fullmatch(r"[\w.+=-]+", exp_name):
        raise UserError(f"--exp_name '{exp_name}' must be a plain directory name "
                        "(letters, digits, . _ - + =)")
    return exp_name


def _with_absolute_dataset(config: TrainerConfiguration) -> TrainerConfiguration:
    """``config`` with a dataset file as an absolute path, for workers in another cwd."""
    if config.dataset is not None and not config.dataset.startswith("minari:"):
        config = config.model_copy(update={"dataset": str(Path(config.dataset).resolve())})
    return config


def _trial_setup(config: TrainerConfiguration, exp_name: str, bounds: dict[str, Bounds],
                 root: Path, options: TuneOptions) -> dict[str, Any]:
    """What every trial worker needs besides its proposed values (see :func:`run_trial`)."""
    return {
        "config": config.model_dump(mode="json"),
        "exp_name": exp_name,
        "parameters": list(bounds),
        "last_k": options.last_k,
        "root": str(root),
        "environ": _environ(),
        "threads": max(1, int(options.cpus_per_trial)),
        "overwrite": options.overwrite,
    }


def _make_tuner(libs: SimpleNamespace, setup: dict[str, Any], bounds: dict[str, Bounds],
                exp_name: str, storage: Path, epochs: int, device: torch.device,
                options: TuneOptions) -> Any:
    """Ray Tune's tuner: Optuna proposes, ASHA (with ``options.asha``) stops weak trials."""
    gpus = options.gpus_per_trial
    if gpus is None:
        gpus = 1.0 if device.type == "cuda" else 0.0
    tune = libs.tune
    if options.verbose == 0:
        libs.optuna.logging.set_verbosity(libs.optuna.logging.WARNING)
    searcher = libs.OptunaSearch(space=DefineByRun(bounds), metric=METRIC, mode="max",
                                 seed=options.search_seed)
    scheduler = None
    if options.asha:
        scheduler = libs.ASHAScheduler(time_attr="training_iteration", max_t=epochs,
                                       grace_period=options.grace_period,
                                       reduction_factor=options.reduction_factor)
    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup),
                                    {"cpu": options.cpus_per_trial, "gpu": gpus})
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(metric=METRIC, mode="max", search_alg=searcher,
                                    scheduler=scheduler, num_samples=options.trials,
                                    max_concurrent_trials=options.max_concurrent),
        run_config=tune.RunConfig(name=exp_name, storage_path=str(storage),
                                  verbose=options.verbose,
                                  callbacks=[_trial_callback(tune, epochs)]),
    )


def _fit(tuner: Any, libs: SimpleNamespace, options: TuneOptions) -> Any:
    """Run every trial on Ray (started here unless already running); Ray's result grid."""
    quiet = options.verbose == 0
    started = init_ray(options.address, options.num_cpus)
    # Ray's newer console output prints its banner even at verbose=0; the classic one obeys.
    previous = os.environ.get("RAY_AIR_NEW_OUTPUT")
    if quiet:
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        return tuner.fit()
    finally:
        if quiet:
            if previous is None:
                os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
            else:
                os.environ["RAY_AIR_NEW_OUTPUT"] = previous
        if started:
            libs.ray.shutdown()


def _trial_outcomes(grid: Any, config: TrainerConfiguration, exp_name: str,
                    bounds: dict[str, Bounds], root: Path, epochs: int) -> list[TrialOutcome]:
    """Every trial's values, score, epochs run, status and run directories, by trial number."""
    outcomes = []
    for result in grid:
        params = dict(result.config or {})
        trial = int(params.get("trial", -1))
        metrics = result.metrics or {}
        done = int(metrics.get("epoch", 0))
        error = _error_line(result.error)
        if error is not None:
            status = "error"
        elif done >= epochs:
            status = "completed"
        else:
            status = "stopped early"
        trial_dirs = member_run_dirs(config.model_copy(
            update={"experiment_name": trial_experiment_name(exp_name, trial)}), root)
        outcomes.append(TrialOutcome(
            trial=trial, params={k: params[k] for k in bounds if k in params},
            score=float(metrics.get(METRIC, math.nan)), epochs=done, status=status,
            run_dirs=trial_dirs, error=error))
    outcomes.sort(key=lambda o: o.trial)
    return outcomes


def _best_trial(outcomes: list[TrialOutcome], storage_dir: Path) -> TrialOutcome:
    """The best-scoring trial, preferring those that ran every epoch.

    Raises:
        UserError: no trial reported a finite score.
    """
    scored = [o for o in outcomes if o.error is None and math.isfinite(o.score)]
    if not scored:
        first = next((o.error for o in outcomes if o.error), "no trial reported a score")
        raise UserError(f"every trial of the sweep failed (trial 0: {first}): fix the "
                        f"configuration; Ray's logs are in {storage_dir}")
    # Trials that ran every epoch first: an early-stopped trial's score covers fewer epochs.
    completed = [o for o in scored if o.status == "completed"] or scored
    return max(completed, key=lambda o: o.score)


def write_best(path: Path, best: TrialOutcome, config: TrainerConfiguration, last_k: int
               ) -> Path:
    """Write the best values as ``train_agent.py --hyperparameters`` reads them (atomically)."""
    payload = {
        "hyperparameters": with_tuned_values({}, best.params),
        "score": best.score,
        "mode": config.mode,
        "env_name": config.env_name,
        "trial": best.trial,
        "objective": f"mean of the last {last_k} evaluations of "
                     f"{objective_name(config.env_name)} over seeds "
                     f"{list(config.population_seeds)}",
        "run_dirs": [str(d) for d in best.run_dirs],
    }
    return write_json_atomic(path, payload)
