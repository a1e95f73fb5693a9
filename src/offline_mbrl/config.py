"""Typed, validated, frozen configurations.

Each field's docstring is its documentation and its command-line help. The field
names of :class:`TrainerConfiguration` are the seed project's, except four that it spelled
with *virtual* (see :mod:`offline_mbrl.renames`); the old names are still accepted, so
that seed command lines and configuration files keep working.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from offline_mbrl.errors import UserError, validation_message
from offline_mbrl.fields import Frozen, NonNegativeFloat, NonNegativeInt, PositiveInt
from offline_mbrl.models.training import EnvironmentModelConfiguration
from offline_mbrl.modes import MODES, get_mode
from offline_mbrl.renames import AGENT_RENAMED, TRAINER_RENAMED


class AgentConfiguration(Frozen):
    """Hyperparameters of the SAC and behavioral-cloning agents (seed defaults)."""

    renamed: ClassVar[Mapping[str, str]] = AGENT_RENAMED

    n_hidden_layers: PositiveInt = 4
    """Hidden layers of the actor and of each critic."""
    n_hidden_units: PositiveInt = 128
    """ReLU units per hidden layer."""
    lr: Annotated[float, Field(gt=0)] = 3e-4
    """Adam learning rate of actor, critics and entropy temperature."""
    gamma: Annotated[float, Field(ge=0, le=1)] = 0.99
    """Discount factor."""
    polyak: Annotated[float, Field(ge=0, le=1)] = 0.995
    """Target networks move as target ← polyak·target + (1−polyak)·online."""
    alpha: float | Literal["auto"] = 0.2
    """Entropy temperature, or 'auto' to tune it toward a target entropy of −act_dim."""
    batch_size: PositiveInt = 256
    """Transitions per gradient step and member."""
    precision: Literal["float32", "bfloat16"] = "float32"
    """SAC networks' hidden layers, in updates and when acting: float32, or bfloat16 (mixed
    precision: weights, Adam, output layers, losses and TD targets stay float32). Faster on
    hardware with fast bf16 products; see benchmarks/README.md."""
    cql_weight: NonNegativeFloat = 5.0
    """cql: α_cql, the weight of the conservative critic term (the CQL paper's code uses 5.0
    on the D4RL locomotion datasets)."""
    cql_n_actions: PositiveInt = 10
    """cql, combo: actions sampled per state from each proposal (uniform, policy at s,
    policy at s') to estimate the log-sum-exp over actions (CQL's paper and OfflineRL-Kit's
    COMBO: 10). COMBO's log-sum-exp is CQL(H)'s, so the two share this field."""
    cql_temperature: Annotated[float, Field(gt=0)] = 1.0
    """cql, combo: temperature T of the log-sum-exp (CQL's paper and OfflineRL-Kit's COMBO:
    1.0)."""
    combo_weight: NonNegativeFloat = 0.5
    """combo: β, the weight of the conservative critic term. Unless given, the tuned table's
    value on the published D4RL files (OfflineRL-Kit's suggested values: 0.5 on
    halfcheetah-medium and the three medium-replay datasets, 5.0 on hopper-medium,
    walker2d-medium and the three medium-expert datasets), else this default."""
    combo_states: Literal["mixed", "model"] = "mixed"
    """combo: the states whose sampled actions the conservative term pushes down: every row
    of the batch, real and model-generated ('mixed', OfflineRL-Kit's default), or the
    model-generated rows alone ('model', the paper's ρ = d^π in the model). Either way it
    pushes Q up at the real rows' dataset actions only."""
    iql_expectile: Annotated[float, Field(gt=0, lt=1)] = 0.7
    """iql: expectile τ of the value regression; above 0.5 it moves V(s) toward the best
    actions the data took in s (paper: 0.7 on the D4RL locomotion datasets, 0.9 on
    AntMaze)."""
    iql_temperature: NonNegativeFloat = 3.0
    """iql: inverse temperature β of the actor's weights exp(β·(Q − V)); 0 is behavioral
    cloning (paper: 3.0 on the D4RL locomotion datasets, 10.0 on AntMaze)."""
    iql_advantage_clip: Annotated[float, Field(gt=0)] = 100.0
    """iql: the actor's weights exp(β·(Q − V)) are clipped at this value (paper: 100)."""

    @field_validator("alpha", mode="before")
    @classmethod
    def _parse_alpha(cls, value: Any) -> Any:
        if isinstance(value, str) and value != "auto":
            try:
                value = float(value)
            except ValueError:
                raise ValueError("alpha must be a number or 'auto'") from None
        if isinstance(value, int | float) and value < 0:
            raise ValueError("alpha must be non-negative")
        return value


class TrainerConfiguration(Frozen):
    """Everything a training run needs; written to ``config.json`` in each run directory."""

    renamed: ClassVar[Mapping[str, str]] = TRAINER_RENAMED

    env_name: str = "hopper-medium-replay-v2"
    """D4RL name (hopper-medium-replay-v2), plain name (hopper-v2) or Gymnasium id (Pendulum-v1)."""
    mode: str = Field("sac", json_schema_extra={"choices": "modes"})
    """Training mode, one of the registry's (offline_mbrl.modes): sac, mbpo, offline-sac,
    behavioral-cloning, {aleatoric,epistemic}-{penalty,partitioning}, cql, iql, mobile, and
    any registered since."""
    seed: NonNegativeInt = 0
    """Random seed of a single run."""
    seeds: tuple[NonNegativeInt, ...] | None = None
    """Seeds trained together as one batched population (one run directory each);
    overrides seed."""
    online_epochs: PositiveInt = 100
    """Epochs of online training (sac, mbpo)."""
    offline_epochs: PositiveInt | None = None
    """Epochs of offline training; unset means the mode's default (500k updates for SAC-based
    modes, 1M for cql, iql and combo, 250k for behavioral cloning, divided by steps_per_epoch)."""
    steps_per_epoch: PositiveInt = 4000
    """Environment steps (online) or agent update steps (offline) per epoch."""
    random_steps: NonNegativeInt = 10000
    """Online: initial environment steps with uniformly random actions (0 unless set when
    --pretrained_agent_path gives a policy to act with)."""
    init_steps: NonNegativeInt = 10000
    """Online: environment steps before the first agent update."""
    env_interactions_per_step: PositiveInt = 1
    """Online: environment steps per training step."""
    agent_updates_per_step: PositiveInt = 1
    """Agent gradient steps per training step."""
    test_episodes: PositiveInt = 10
    """Deterministic evaluation episodes after each epoch."""
    render_test_episodes: bool = False
    """Write a video of the first test episode after each epoch."""
    max_episode_length: PositiveInt = 1000
    """Episode length limit in training and evaluation."""
    use_env_model: bool = False
    """Train on synthetic data from an environment model (implied by mbpo and the
    pessimistic modes)."""
    n_parallel_rollouts: PositiveInt = 50
    """Synthetic transitions generated per agent update (seed: 50)."""
    max_rollout_length: PositiveInt = 15
    """Length of synthetic rollouts when no tuned value applies."""
    train_env_model_every: PositiveInt = 250
    """mbpo: retrain the environment model every this many environment steps."""
    train_env_model_from_scratch: bool = False
    """mbpo: re-initialise the model before each retraining."""
    reset_synthetic_buffer_after_env_model_training: bool = False
    """mbpo: empty the synthetic buffer after each model retraining."""
    pretrained_env_model_path: str | None = None
    """Environment model file to use instead of $OMBRL_MODELS_DIR/<env>-model.pt."""
    pretrained_agent_path: str | None = None
    """Run directory or checkpoint whose agent weights initialise training."""
    n_samples_from_dataset: Annotated[int, Field(ge=-1)] = 0
    """Online: dataset transitions (env_name's D4RL dataset or --dataset) copied into the
    replay buffer before training, a random subset per seed (-1: all, in order)."""
    real_buffer_size: Annotated[int, Field(gt=0)] = 1_000_000
    """Replay buffer capacity per member (online modes)."""
    synthetic_buffer_size: Annotated[int, Field(gt=0)] = 1_000_000
    """Synthetic buffer capacity per member (model-based modes)."""
    save_frequency: PositiveInt = 1
    """Write a checkpoint every this many epochs (and always after the last)."""
    device: str = "cpu"
    """Torch device: cpu, cuda or cuda:N."""
    threads: PositiveInt | None = None
    """CPU threads for torch (default: torch's choice, one per core). Idle threads wait
    passively (unless OMP_WAIT_POLICY says otherwise), so runs that share a machine degrade
    gracefully; 1 per run is still fastest when several run at once."""
    compile: bool = False
    """Compile the SAC update and the rollout step with torch.compile (about a minute at the
    start of the run); on CUDA with mode reduce-overhead, which captures them as CUDA graphs.
    Whether it is faster depends on the machine (benchmarks/README.md)."""
    experiment_name: str | None = None
    """Experiment directory name; default <env_name>-<mode>."""
    dataset: str | None = None
    """Dataset file (D4RL HDF5) or minari:<id> instead of resolving env_name."""
    rollout_length: tuple[PositiveInt, ...] | None = None
    """Synthetic rollout length (one value, or one per population member); default: the
    tuned table for the mode and dataset, else max_rollout_length."""
    pessimism: tuple[NonNegativeFloat, ...] | None = None
    """Penalty coefficient λ of *-penalty modes and β of mobile (one value or one per
    member); default: the tuned table, else R_max / the dataset's 99th-percentile
    uncertainty (mobile: 1.0, the MOBILE code's default; its per-dataset values are 0.1 on
    hopper- and halfcheetah-medium-replay, 0.5 on walker2d-medium-replay, 0.1 to 5 in all)."""
    ood_threshold: tuple[NonNegativeFloat, ...] | None = None
    """Uncertainty threshold of *-partitioning modes (one value or one per member); default:
    the tuned table, else the dataset's 99th-percentile uncertainty."""
    real_ratio: Annotated[float, Field(ge=0, le=1)] = 0.05
    """Fraction of each agent batch drawn from real data (the rest is synthetic). 0.05 as in
    MBPO and MOPO: enough real transitions to anchor the critics to true rewards, while the
    synthetic data supplies the coverage that makes model-based training worthwhile."""
    rollout_dtype: Literal["float32", "bfloat16"] = "float32"
    """Precision of the environment model's matmuls in rollouts. bfloat16 roughly halves
    rollout time on CPUs with bf16 units (AVX-512 BF16/AMX) at ~3 significant digits."""
    rollout_every: PositiveInt = 250
    """Agent updates between rollout rounds; each round generates
    n_parallel_rollouts × rollout_every synthetic transitions per member at once."""
    agent: AgentConfiguration = AgentConfiguration()
    """Agent hyperparameters."""
    env_model: EnvironmentModelConfiguration = EnvironmentModelConfiguration()
    """Environment model architecture and training (model-based modes)."""

    @field_validator("real_buffer_size", "synthetic_buffer_size", mode="before")
    @classmethod
    def _int_from_float(cls, value: Any) -> Any:
        # The seed writes buffer sizes as 1e6.
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is not None:
            if len(value) == 0:
                raise ValueError("seeds must not be empty")
            if len(set(value)) != len(value):
                raise ValueError("seeds must be distinct")
        return value

    @field_validator("rollout_length", "pessimism", "ood_threshold", mode="before")
    @classmethod
    def _scalar_to_tuple(cls, value: Any) -> Any:
        return (value,) if isinstance(value, int | float) else value

    @field_validator("mode")
    @classmethod
    def _registered_mode(cls, value: str) -> str:
        if value not in MODES:
            raise ValueError(f"unknown mode {value!r}: choose one of {', '.join(MODES)}")
        return value

    @model_validator(mode="after")
    def _precision_applies(self) -> TrainerConfiguration:
        if self.agent.precision not in get_mode(self.mode).precisions:
            raise ValueError(f"precision {self.agent.precision} does not apply to {self.mode}, "
                             "which trains in float32: drop --precision")
        return self

    @property
    def population_seeds(self) -> tuple[int, ...]:
        """The seeds of the population (one member when ``seeds`` is unset)."""
        return self.seeds if self.seeds is not None else (self.seed,)

    @property
    def epochs(self) -> int:
        """Epochs the mode trains for, with offline defaults resolved."""
        spec = get_mode(self.mode)
        if spec.online:
            return self.online_epochs
        if self.offline_epochs is not None:
            return self.offline_epochs
        updates = spec.default_updates
        return max(1, round(updates / (self.steps_per_epoch * self.agent_updates_per_step)))


CONFIG_GROUPS = ("agent", "env_model")
"""The nested groups of :class:`TrainerConfiguration` (objects of fields in files)."""


def merge_fields(values: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` (configuration fields, as a file holds them) with ``update`` applied: a
    group's fields join the group's others; any other field is replaced."""
    merged = dict(values)
    for key, value in update.items():
        both_groups = (key in CONFIG_GROUPS and isinstance(value, Mapping)
                       and isinstance(merged.get(key), Mapping))
        merged[key] = {**merged[key], **value} if both_groups else value
    return merged


def make_config(cls: type[BaseModel], **values: Any) -> Any:
    """Build ``cls(**values)``, turning validation errors into a one-line :class:`UserError`."""
    try:
        return cls(**values)
    except ValidationError as error:
        raise UserError(f"invalid configuration: {validation_message(error)}") from None
