"""Setting up a run: what the training loop needs before its first update.

Each step is a function of the configuration, called by :class:`offline_mbrl.train.Trainer`
in this order, after :func:`set_up_process` (device, threads, allocator):

1. :func:`check_settings`: flag combinations and per-member value counts;
2. :func:`probe_environment`: observation and action sizes and the action box;
3. :func:`load_offline_data`: the dataset, packed as rows, and the environment to
   evaluate on (a dataset's own recorded id when it has one);
4. :func:`find_environment_model`: the saved model to reuse, if any;
   :func:`train_and_save_model` trains one when none is saved (an explicit step of
   ``Trainer.prepare``, never of constructing the trainer);
5. :func:`resolve_agent_field` (with the dataset, before the agent is built) and
   :func:`resolve_pessimism`: an agent field the tuned table holds (COMBO's β),
   per-member rollout lengths, penalty or threshold, each with where it came from (flag,
   the tuned table, or derived from the data).

Steps 1-4 can fail on bad input and run before any run directory is touched.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from offline_mbrl.agents import SAC
from offline_mbrl.checkpoint import load_checkpoint
from offline_mbrl.config import TrainerConfiguration
from offline_mbrl.data.buffer import TransitionLayout
from offline_mbrl.data.d4rl import is_published_d4rl
from offline_mbrl.data.dataset import OfflineDataset
from offline_mbrl.data.resolve import load_dataset
from offline_mbrl.envs.registry import EnvSpec, evaluation_env_id, make_env
from offline_mbrl.errors import UserError
from offline_mbrl.hyperparameters import DEFAULT_PESSIMISM, Tuned, fallback_pessimism, lookup
from offline_mbrl.models.ensemble import EnvironmentModel
from offline_mbrl.models.io import (
    check_model_matches,
    default_model_path,
    load_environment_model,
    save_environment_model,
)
from offline_mbrl.models.statistics import largest_reward, uncertainty_statistics
from offline_mbrl.models.training import (
    EnvironmentModelConfiguration,
    resolve_device,
    train_environment_model,
)
from offline_mbrl.modes import ModeSpec, get_mode, same_agent
from offline_mbrl.rng import PopulationRNG
from offline_mbrl.rollouts import Pessimism
from offline_mbrl.runs import find_checkpoint
from offline_mbrl.runtime import bfloat16_warning, keep_freed_memory

PER_MEMBER_FLAGS = ("rollout_length", "pessimism", "ood_threshold")
"""Flags that take one value, or one per population member."""


def set_up_process(config: TrainerConfiguration) -> torch.device:
    """The run's device, with this process's torch threads (``--threads``) and, on the CPU,
    its allocator (:func:`~offline_mbrl.runtime.keep_freed_memory`) set for it."""
    device = resolve_device(config.device)
    if device.type == "cpu":
        keep_freed_memory()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    return device


def check_settings(config: TrainerConfiguration, env: EnvSpec, n_members: int) -> None:
    """Refuse flag combinations the run cannot honour (one-line :class:`UserError`)."""
    for name in PER_MEMBER_FLAGS:
        values = getattr(config, name)
        if values is not None:
            _check_count(name, len(values), n_members)
    mode = get_mode(config.mode)
    if mode.online and (mode.model_based or config.use_env_model) and n_members > 1:
        raise UserError("mbpo trains one environment model per seed from its own "
                        "interactions, so it runs one seed per command: pass a single --seed")
    if config.use_env_model and not issubclass(mode.agent_class(), SAC):
        raise UserError(f"{mode.name} does not use an environment model: drop --use_env_model")
    if not mode.online and env.dataset_name is None and config.dataset is None:
        raise UserError(f"mode '{config.mode}' trains on a dataset, but '{config.env_name}' "
                        "names none: use a D4RL name such as hopper-medium-replay-v2 or pass "
                        "--dataset PATH")
    if config.n_samples_from_dataset:
        _check_dataset_seeding(config, env, mode)


def warn_about_emulated_bfloat16(config: TrainerConfiguration, device: torch.device) -> None:
    """One line of warning when a bfloat16 flag meets a CPU that emulates bfloat16."""
    message = bfloat16_warning({"precision": config.agent.precision,
                                "rollout_dtype": config.rollout_dtype,
                                "model_precision": config.env_model.precision}, device.type)
    if message:
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _check_dataset_seeding(config: TrainerConfiguration, env: EnvSpec, mode: ModeSpec) -> None:
    """``--n_samples_from_dataset`` needs an online mode and a dataset."""
    if not mode.online:
        raise UserError(f"--n_samples_from_dataset fills an online replay buffer, but mode "
                        f"'{mode.name}' trains on the whole dataset: drop the flag")
    if env.dataset_name is None and config.dataset is None:
        raise UserError(f"--n_samples_from_dataset needs a dataset, but '{config.env_name}' "
                        "names none: use a D4RL name such as hopper-medium-replay-v2 or pass "
                        "--dataset PATH")


def resolve_random_steps(config: TrainerConfiguration
                         ) -> tuple[int, dict[str, dict[str, Any]]]:
    """Online steps with uniformly random actions, and where the number came from.

    A run that starts from a pretrained agent acts with its policy from the first step
    (random actions would only fill the buffer with data the policy never produces),
    unless ``--random_steps`` is given.
    """
    if config.pretrained_agent_path and "random_steps" not in config.model_fields_set:
        return 0, {"random_steps": {"value": 0, "source": "pretrained agent"}}
    return config.random_steps, {}


def dataset_rows_for_replay(rows: torch.Tensor, n_samples: int, capacity: int,
                            rng: PopulationRNG) -> torch.Tensor:
    """``[P, n, F]`` dataset rows to put in each member's replay buffer before training.

    ``n_samples`` -1 (or at least the dataset's size) takes every row in dataset order for
    every member; fewer takes a uniformly random subset without repetition per member,
    drawn from the member's own stream, so member ``p`` gets the rows a single run with
    seed ``p`` gets.
    """
    N = rows.shape[0]
    n = N if n_samples < 0 else min(n_samples, N)
    if n > capacity:
        raise UserError(f"--n_samples_from_dataset copies {n} transitions into a replay buffer "
                        f"of {capacity}: raise --real_buffer_size or copy fewer")
    if n == N:
        return rows.expand(rng.n_members, N, rows.shape[1])
    # The n smallest of one uniform key per row: a subset without repetition, in row order.
    keys = rng.uniform(N)
    index = keys.topk(n, dim=1, largest=False).indices.sort(dim=1).values
    return rows[index]


def _check_count(name: str, count: int, n_members: int) -> None:
    if count not in (1, n_members):
        raise UserError(f"--{name} got {count} values for {n_members} population members: "
                        "pass one value or one per member")


def per_member(name: str, values: tuple[float, ...], n_members: int,
               device: torch.device) -> torch.Tensor:
    """``[P]`` float32: one value broadcast to every member, or one value per member."""
    _check_count(name, len(values), n_members)
    return torch.as_tensor(values * (n_members if len(values) == 1 else 1),
                           dtype=torch.float32, device=device)


@dataclass(frozen=True)
class EnvironmentInfo:
    """Sizes and action box of an environment: ``action_low``/``action_high`` ``[act_dim]``."""

    obs_dim: int
    act_dim: int
    action_low: torch.Tensor
    action_high: torch.Tensor


def probe_environment(env_name: str) -> EnvironmentInfo:
    """Open ``env_name`` once to read its spaces."""
    probe: Any = make_env(env_name)
    try:
        return EnvironmentInfo(
            int(np.prod(probe.observation_space.shape)), int(np.prod(probe.action_space.shape)),
            torch.as_tensor(probe.action_space.low, dtype=torch.float32),
            torch.as_tensor(probe.action_space.high, dtype=torch.float32))
    finally:
        probe.close()


@dataclass(frozen=True)
class OfflineData:
    """A run's dataset: ``rows [N, layout.width]`` on the training device, and the
    Gymnasium id its agents are evaluated on."""

    dataset: OfflineDataset
    rows: torch.Tensor
    eval_env: str


def load_offline_data(config: TrainerConfiguration, env: EnvSpec, layout: TransitionLayout,
                      device: torch.device) -> OfflineData:
    """Load the run's dataset and check that it fits the environment."""
    dataset = load_dataset(env.dataset_name or config.env_name, dataset=config.dataset)
    if dataset.obs_dim != layout.obs_dim or dataset.act_dim != layout.act_dim:
        raise UserError(f"dataset {dataset.name} has obs/action sizes {dataset.obs_dim}/"
                        f"{dataset.act_dim} but {config.env_name} needs {layout.obs_dim}/"
                        f"{layout.act_dim}: use the dataset of that environment")
    if len(dataset) == 0:
        raise UserError(f"dataset {dataset.name or config.env_name} has no transitions: pass a "
                        "dataset with data, or collect one with 'ombrl datasets collect'")

    def as_tensor(values: Any) -> torch.Tensor:
        return torch.as_tensor(np.asarray(values, dtype=np.float32))

    rows = layout.pack(as_tensor(dataset.observations), as_tensor(dataset.actions),
                       as_tensor(dataset.rewards), as_tensor(dataset.next_observations),
                       as_tensor(dataset.terminals))
    eval_env = evaluation_env_id(config.env_name, dataset.metadata.get("env_id"))
    return OfflineData(dataset, rows.to(device), eval_env)


def read_pretrained_agent(path: str, config: TrainerConfiguration, agent_kind: str,
                          obs_dim: int) -> dict[str, Any]:
    """The agent state of a run to start from (``--pretrained_agent_path``)."""
    state = load_checkpoint(find_checkpoint(path))
    if not same_agent(state.get("agent_kind"), agent_kind) or state.get("obs_dim") != obs_dim:
        raise UserError(f"pretrained agent {path} is a {state.get('agent_kind')} agent for "
                        f"obs_dim {state.get('obs_dim')}: pass a {agent_kind} run of "
                        f"{config.env_name}")
    return state["agent"]


def environment_model_path(config: TrainerConfiguration, env: EnvSpec) -> Path:
    """Where the run's environment model is read from and saved to."""
    explicit = config.pretrained_env_model_path
    return Path(explicit) if explicit else default_model_path(
        env.dataset_name or config.env_name)


def find_environment_model(config: TrainerConfiguration, env: EnvSpec, dataset: OfflineDataset,
                           device: torch.device) -> EnvironmentModel | None:
    """The saved model to reuse, ``None`` when one must be trained; refuses a model of
    other data, and a ``--pretrained_env_model_path`` that does not exist."""
    path = environment_model_path(config, env)
    if not config.pretrained_env_model_path and not path.is_file():
        return None
    model, metadata = load_environment_model(path, device=device)
    check_model_matches(metadata, dataset, config.env_name)
    return model


def model_config(config: TrainerConfiguration, device: torch.device
                 ) -> EnvironmentModelConfiguration:
    """The environment model's settings, on the run's device."""
    return config.env_model.model_copy(update={"device": str(device)})


def train_and_save_model(config: TrainerConfiguration, dataset: OfflineDataset, path: Path,
                         device: torch.device, log_dir: Path, progress: bool
                         ) -> EnvironmentModel:
    """Train the environment model on ``dataset`` and save it to ``path`` with the metadata
    that lets later runs check it fits their data."""
    settings = model_config(config, device)
    model, metrics = train_environment_model(dataset, settings, config.env_name,
                                             log_dir=log_dir, progress=progress)
    save_environment_model(model, path, {
        "config": settings.model_dump(mode="json"),
        "dataset_name": dataset.name,
        "dataset_hash": dataset.content_hash(),
        "validation": metrics,
    })
    return model.to(device)


def resolve_pessimism(config: TrainerConfiguration, env: EnvSpec, model: EnvironmentModel,
                      model_path: Path | None, dataset: OfflineDataset | None, n_members: int,
                      device: torch.device) -> tuple[Pessimism, dict[str, dict[str, Any]]]:
    """Per-member rollout lengths and pessimism, and where each value came from.

    The order is: flags, then the tuned table (only for the published D4RL files,
    recognised by content), then values derived from the dataset's uncertainty statistics
    (or the mode's default, for MOBILE's Bellman inconsistency, which has none).
    ``dataset`` is ``None`` online (mbpo), which has no pessimism.

    Returns:
        The :class:`Pessimism` and ``{name: {"value": ..., "source": ...}}`` for config.json.
    """
    mode = get_mode(config.mode)
    tuned = table_row(config, env, dataset)
    if config.rollout_length:
        lengths, source = config.rollout_length, "flag"
    elif tuned:
        lengths, source = (tuned.rollout_length,), tuned.source
    else:
        lengths, source = (config.max_rollout_length,), "max_rollout_length"
    rollout_length = per_member("rollout_length", lengths, n_members, device).long()
    resolved: dict[str, dict[str, Any]] = {
        "rollout_length": {"value": rollout_length.tolist(), "source": source}}
    penalty = torch.zeros(n_members, device=device)
    threshold = torch.full((n_members,), math.inf, device=device)
    max_reward = largest_reward(dataset.rewards) if dataset is not None else 0.0
    if mode.pessimism_field is not None:
        assert dataset is not None, "pessimistic modes train offline"
        values, source = _pessimism_values(config, mode, tuned, model, model_path, dataset,
                                           max_reward)
        values_t = per_member(mode.pessimism_field, values, n_members, device)
        resolved[mode.pessimism_field] = {"value": values_t.tolist(), "source": source}
        if mode.pessimism == "penalty":
            penalty = values_t
        else:
            threshold = values_t
    positive = dataset is None or dataset.rewards.max(initial=0.0) > 0
    resolved["max_reward"] = {
        "value": max_reward,
        "source": ("largest dataset reward" if positive
                   else "width of the dataset's reward range (no reward is positive)")}
    return Pessimism.from_mode(config.mode, rollout_length, penalty, threshold,
                               max_reward, config.agent.gamma), resolved


def table_row(config: TrainerConfiguration, env: EnvSpec, dataset: OfflineDataset | None
              ) -> Tuned | None:
    """The tuned table's row of the mode on the dataset: only for the published D4RL files
    (recognised by content), which the table's values were found on."""
    published = dataset is not None and is_published_d4rl(dataset, env.dataset_name)
    return lookup(config.mode, env.dataset_name) if published else None


def resolve_agent_field(config: TrainerConfiguration, env: EnvSpec,
                        dataset: OfflineDataset | None
                        ) -> tuple[TrainerConfiguration, dict[str, dict[str, Any]]]:
    """The configuration with the agent field the mode takes from the tuned table (COMBO's
    β, :attr:`~offline_mbrl.modes.ModeSpec.table_agent_field`), and where its value came
    from: the flag, the table (published D4RL files only), or the field's default.

    Returns:
        The configuration the agent is built from, and ``{"agent.<field>": {"value": ...,
        "source": ...}}`` for config.json (empty for modes without such a field).
    """
    name = get_mode(config.mode).table_agent_field
    if name is None:
        return config, {}
    tuned = table_row(config, env, dataset)
    if name in config.agent.model_fields_set:
        source = "flag"
    elif tuned is not None:
        agent = config.agent.model_copy(update={name: tuned.value})
        config, source = config.model_copy(update={"agent": agent}), tuned.source
    else:
        source = "default"
    return config, {f"agent.{name}": {"value": getattr(config.agent, name), "source": source}}


def _pessimism_values(config: TrainerConfiguration, mode: ModeSpec, tuned: Tuned | None,
                      model: EnvironmentModel, model_path: Path | None,
                      dataset: OfflineDataset, max_reward: float
                      ) -> tuple[tuple[float, ...], str]:
    """λ or the threshold of a pessimistic mode: flag, table, or derived from the data."""
    assert mode.pessimism_field is not None and mode.uncertainty is not None
    given = getattr(config, mode.pessimism_field)
    if given is not None:
        return tuple(given), "flag"
    if tuned is not None:
        return (tuned.value,), tuned.source
    if mode.uncertainty in DEFAULT_PESSIMISM:
        value, source = DEFAULT_PESSIMISM[mode.uncertainty]
        return (value,), source
    stats = uncertainty_statistics(model, dataset, model_path)
    return ((fallback_pessimism(config.mode, stats[mode.uncertainty], max_reward),),
            "derived from the dataset's uncertainty statistics")
