"""A benchmark spec: what to train, parsed from TOML (or YAML) and expanded to its units.

A spec names environments, dataset kinds, offline modes and seeds; its grid is every
(environment, kind) dataset times every mode, each trained as one population of the seeds::

    name = "smoke"
    envs = ["hopper"]
    datasets = ["random"]
    modes = ["behavioral-cloning", "epistemic-penalty"]
    seeds = [0, 1]

    [data]       # how each dataset is obtained
    source = "collect"   # or "d4rl"; per kind or dataset: sources = { expert = "d4rl" }
    size = 2000

    [budget]     # per run; without epochs or updates, the mode's default updates
    epochs = 2
    steps_per_epoch = 50

    [resources]  # per unit
    device = "cpu"
    threads = 1

    [config]     # any other TrainerConfiguration field, for every run
    max_episode_length = 50

Every problem (an unknown key, mode or environment, a missing field, a value of the wrong
type, a configuration the trainer refuses) is a one-line :class:`UserError` raised before
anything starts.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
    field_validator,
)

from offline_mbrl.config import TrainerConfiguration, make_config
from offline_mbrl.envs.registry import D4RL_ENVS, D4RL_KINDS
from offline_mbrl.errors import UserError, validation_message
from offline_mbrl.modes import get_mode, mode_names

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, as a package before Python 3.11
    import tomli as tomllib

Source = Literal["collect", "d4rl"]
SPEC_FIELDS = ("env_name", "mode", "seed", "seeds", "dataset", "experiment_name",
               "offline_epochs", "steps_per_epoch", "test_episodes", "threads", "device")
"""TrainerConfiguration fields the spec sets itself: refused in ``[config]``."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSection(_Section):
    """How the datasets are obtained."""

    source: Source = "d4rl"
    """``d4rl``: the published file (local, or downloaded); ``collect``: generated here
    under the D4RL protocol by ``ombrl datasets collect``'s code."""
    sources: dict[str, Source] = {}
    """Per dataset kind or dataset name, a source other than ``source``."""
    size: PositiveInt = 1_000_000
    """Rows of a collected dataset (medium-expert: of each half; medium-replay: all)."""
    collect_steps: PositiveInt = 1_000_000
    """Cap on the environment steps of the SAC run behind collected medium kinds."""
    expert_steps: PositiveInt = 1_000_000
    """Environment steps of the SAC run behind collected expert kinds."""
    seed: NonNegativeInt = 0
    """Seed of collection."""


class BudgetSection(_Section):
    """How long each run trains and how it is scored."""

    epochs: PositiveInt | None = None
    """Evaluations per run."""
    updates: PositiveInt | None = None
    """Agent updates per run (epochs = updates / steps_per_epoch); neither this nor
    ``epochs``: the mode's default (500,000; behavioral cloning 250,000)."""
    steps_per_epoch: PositiveInt = 5000
    """Agent updates between evaluations."""
    test_episodes: PositiveInt = 10
    """Episodes per evaluation."""
    last_k: PositiveInt = 3
    """A seed's score is the mean of its last this many evaluations."""
    model_epochs: PositiveInt | None = None
    """Cap on the environment model's training epochs (default: the model's)."""


class ResourcesSection(_Section):
    """What each unit asks Ray for."""

    device: str = "cpu"
    """Torch device of every unit (``cuda`` on a GPU node)."""
    threads: PositiveInt = 1
    """CPUs Ray reserves per unit, and torch's thread count in it."""
    gpus: NonNegativeFloat | None = None
    """GPUs Ray reserves per unit (fractions share a GPU); default 1 with cuda, else 0."""

    @property
    def gpus_per_unit(self) -> float:
        if self.gpus is not None:
            return self.gpus
        return 1.0 if self.device.startswith("cuda") else 0.0


class BenchmarkSpec(_Section):
    """The whole spec; :func:`load_spec` reads one."""

    name: str = Field("", pattern=r"^[A-Za-z0-9_.-]*$")
    envs: list[str] = Field(min_length=1)
    datasets: list[str] = Field(min_length=1)
    modes: list[str] = Field(min_length=1)
    seeds: list[NonNegativeInt] = Field(min_length=1)
    data: DataSection = DataSection()
    budget: BudgetSection = BudgetSection()
    resources: ResourcesSection = ResourcesSection()
    config: dict[str, Any] = {}

    @field_validator("envs")
    @classmethod
    def _known_envs(cls, values: list[str]) -> list[str]:
        return _known("environment", values, tuple(D4RL_ENVS))

    @field_validator("datasets")
    @classmethod
    def _known_kinds(cls, values: list[str]) -> list[str]:
        return _known("dataset kind", values, D4RL_KINDS)

    @field_validator("modes")
    @classmethod
    def _offline_modes(cls, values: list[str]) -> list[str]:
        return _known("offline mode", values, mode_names(online=False))

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, values: list[int]) -> list[int]:
        if len(set(values)) != len(values):
            raise ValueError("seeds repeat: list each seed once")
        return values

    @field_validator("config")
    @classmethod
    def _free_fields(cls, values: dict[str, Any]) -> dict[str, Any]:
        taken = [k for k in values if k in SPEC_FIELDS]
        if taken:
            raise ValueError(f"{', '.join(taken)} set by the spec itself: use envs, datasets, "
                             "modes, seeds, [budget] and [resources] instead")
        return values


def _known(what: str, values: list[str], known: tuple[str, ...]) -> list[str]:
    unknown = [v for v in values if v not in known]
    if unknown:
        raise ValueError(f"unknown {what} {', '.join(map(repr, unknown))}: choose from "
                         f"{', '.join(known)}")
    if len(set(values)) != len(values):
        raise ValueError(f"a {what} repeats: list each once")
    return values


def read_spec_file(path: Path) -> dict[str, Any]:
    """The spec file's table: TOML (``.toml``), or YAML (``.yaml``/``.yml``, needs PyYAML)."""
    if not path.is_file():
        raise UserError(f"spec {path} does not exist: pass the path of a .toml or .yaml spec, "
                        "e.g. benchmarks/specs/smoke.toml")
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml  # optional: only YAML specs need it (Ray installs it)
        except ImportError:
            raise UserError(f"{path}: YAML specs need PyYAML (pip install pyyaml): or write "
                            "the spec in TOML") from None
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise UserError(f"{path} is not valid YAML ({' '.join(str(error).split())}): "
                            "fix the syntax") from None
    elif path.suffix == ".toml":
        try:
            values = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise UserError(f"{path} is not valid TOML ({error}): fix the syntax") from None
    else:
        raise UserError(f"{path}: a spec ends in .toml, .yaml or .yml: rename it")
    if not isinstance(values, dict):
        raise UserError(f"{path} holds no table of keys: write e.g. envs = [\"hopper\"]")
    return values


def load_spec(path: str | Path) -> BenchmarkSpec:
    """Read and validate the spec at ``path`` (its name defaults to the file's stem), and
    check that every unit it expands to is a configuration the trainer accepts."""
    path = Path(path)
    values = read_spec_file(path)
    try:
        spec = BenchmarkSpec(**values)
    except ValidationError as error:
        raise UserError(f"{path}: {validation_message(error)}: fix the spec") from None
    except TypeError as error:  # e.g. a key that is no identifier
        raise UserError(f"{path}: {error}: fix the spec") from None
    if not spec.name:
        spec = spec.model_copy(update={"name": path.stem})
    for unit in expand(spec).trains:
        try:
            unit_config(spec, unit)
        except UserError as error:
            raise UserError(f"{path}: {unit.experiment}: {error}: fix [config] or "
                            "[budget]") from None
    return spec


# ---------------------------------------------------------------------- the grid
@dataclass(frozen=True)
class DatasetUnit:
    """One dataset to resolve (load, download or collect)."""

    name: str
    source: Source

    @property
    def id(self) -> str:
        return f"dataset-{self.name}"


@dataclass(frozen=True)
class ModelUnit:
    """The environment model of one dataset, shared by its model-based runs."""

    dataset: str

    @property
    def id(self) -> str:
        return f"model-{self.dataset}"


@dataclass(frozen=True)
class TrainUnit:
    """One (dataset, mode) population of the spec's seeds."""

    dataset: str
    mode: str
    uses_model: bool = False
    """Trains on the dataset's environment model (a model-based mode, or use_env_model)."""

    @property
    def experiment(self) -> str:
        return f"{self.dataset}-{self.mode}"

    @property
    def id(self) -> str:
        return f"train-{self.experiment}"


@dataclass(frozen=True)
class Grid:
    """Every unit of a spec, datasets in the spec's order (environment, then kind)."""

    datasets: tuple[DatasetUnit, ...]
    models: tuple[ModelUnit, ...]
    trains: tuple[TrainUnit, ...]


def dataset_source(spec: BenchmarkSpec, env: str, kind: str) -> Source:
    name = dataset_name(env, kind)
    return spec.data.sources.get(name, spec.data.sources.get(kind, spec.data.source))


def dataset_name(env: str, kind: str) -> str:
    return f"{env}-{kind}-v2"


def expand(spec: BenchmarkSpec) -> Grid:
    """The spec's units: a dataset per (env, kind), a model per dataset that a model-based
    mode trains on, a population per (dataset, mode)."""
    datasets = tuple(DatasetUnit(dataset_name(e, k), dataset_source(spec, e, k))
                     for e in spec.envs for k in spec.datasets)
    forced = bool(spec.config.get("use_env_model", False))
    trains = tuple(TrainUnit(d.name, m, get_mode(m).model_based or forced)
                   for d in datasets for m in spec.modes)
    models = tuple(ModelUnit(d.name) for d in datasets
                   if any(t.uses_model for t in trains if t.dataset == d.name))
    return Grid(datasets, models, trains)


def unit_config(spec: BenchmarkSpec, unit: TrainUnit, dataset: str | None = None
                ) -> TrainerConfiguration:
    """The validated configuration of ``unit``'s run; ``dataset`` is its data file."""
    values = dict(spec.config)
    env_model = dict(values.pop("env_model", {}) or {})
    if spec.budget.model_epochs is not None:
        env_model["max_number_of_training_epochs"] = spec.budget.model_epochs
    budget = spec.budget
    epochs = budget.epochs
    if epochs is None and budget.updates is not None:
        epochs = max(1, round(budget.updates / budget.steps_per_epoch))
    return make_config(  # type: ignore[no-any-return]
        TrainerConfiguration, **values, env_name=unit.dataset, mode=unit.mode,
        seeds=tuple(spec.seeds), dataset=dataset, experiment_name=unit.experiment,
        offline_epochs=epochs, steps_per_epoch=budget.steps_per_epoch,
        test_episodes=budget.test_episodes, threads=spec.resources.threads,
        device=spec.resources.device, env_model=env_model)
