"""Record D4RL-style datasets by running a policy in the environments D4RL was recorded with.

:func:`rollout_policy` is the shared recorder: it runs any batched policy
``obs [n, obs_dim] -> action [n, act_dim]`` and writes rows exactly as D4RL does
(``qpos``/``qvel`` of the state the observation was taken in, ``terminals`` for true
termination, ``timeouts`` for the 1000-step limit, the final partial episode left unflagged).
:func:`collect_random` is D4RL's ``random`` protocol; :func:`collect_medium`,
:func:`collect_medium_replay`, :func:`collect_expert` and :func:`collect_medium_expert` are
the SAC-based ones (see "SAC-based kinds" below). :data:`COLLECTORS` maps kinds to them.

One environment is stepped at a time. A vector env would have to stop with several
episodes in flight; dropping them would favour short episodes (they finish first) and
keeping them would end the file with several unflagged partial episodes, and a
synchronous vector env brings no speed on MuJoCo anyway.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
import torch

from offline_mbrl.agents import SAC
from offline_mbrl.agents.sac import squashed_gaussian
from offline_mbrl.config import TrainerConfiguration, make_config
from offline_mbrl.data.d4rl import load_d4rl_hdf5, write_d4rl_hdf5
from offline_mbrl.data.dataset import OfflineDataset
from offline_mbrl.data.resolve import datasets_dir
from offline_mbrl.envs.registry import D4RL_ENVS, get_env_spec, make_env, make_vector_env
from offline_mbrl.errors import UserError
from offline_mbrl.files import write_json_atomic
from offline_mbrl.policy import load_agent
from offline_mbrl.rng import PopulationRNG
from offline_mbrl.runs import member_run_dirs
from offline_mbrl.train import Trainer

MAX_EPISODE_STEPS = 1000

Policy = Callable[[np.ndarray], np.ndarray]
"""``obs [n, obs_dim] -> action [n, act_dim]`` (here always ``n = 1``)."""


def _return_stats(returns: list[float]) -> dict[str, float | int]:
    values = np.asarray(returns, dtype=np.float64)
    stats: dict[str, float | int] = {"policy_episodes": int(values.size)}
    if values.size:
        stats.update({
            "policy_return_mean": float(values.mean()),
            "policy_return_std": float(values.std()),
            "policy_return_min": float(values.min()),
            "policy_return_max": float(values.max()),
        })
    return stats


def rollout_policy(
    env_name: str,
    policy: Policy,
    size: int,
    seed: int,
    protocol: str,
    metadata: dict[str, object] | None = None,
    max_episode_steps: int = MAX_EPISODE_STEPS,
    progress: Callable[[int], None] | None = None,
) -> OfflineDataset:
    """Run ``policy`` until ``size`` transitions are recorded.

    Args:
        env_name: D4RL name or Gymnasium id (through :func:`make_env`).
        policy: ``obs [1, obs_dim] -> action [1, act_dim]``; actions are clipped to the action
            space and the clipped action (the one applied) is recorded.
        size: number of transitions (rows).
        seed: the first reset uses ``seed``; later resets continue the env's RNG.
        protocol: recorded in the metadata (e.g. ``d4rl-random``).
        metadata: extra metadata entries (policy description, ...).
        max_episode_steps: time limit; reaching it sets ``timeouts``.
        progress: called with the number of rows recorded so far, every 1000 rows and at the end.

    Returns:
        An :class:`OfflineDataset` named ``env_name`` with ``infos['qpos']``, ``infos['qvel']``
        (float64, state at ``observations[i]``) and metadata: protocol, env_name, env_id,
        gymnasium/mujoco versions, seed, size, max_episode_steps and the return statistics of
        the complete episodes (``policy_return_mean/std/min/max``, ``policy_episodes``).
    """
    if size < 1:
        raise UserError(f"dataset size must be at least 1, got {size}: pass --size N with N >= 1")
    spec = get_env_spec(env_name)
    env = make_env(env_name, max_episode_steps=max_episode_steps)
    try:
        observation_space, action_space = _box_spaces(env, spec.gym_id)
        # MuJoCo state is recorded where there is one (not for classic control).
        data = getattr(env.unwrapped, "data", None)
        rows = _RolloutRows.allocate(size, int(np.prod(observation_space.shape)),
                                     int(np.prod(action_space.shape)), data)
        returns = _record_rows(env, policy, action_space, rows, seed, data, progress)
    finally:
        env.close()
    meta = _base_metadata(env_name, protocol, seed, size, max_episode_steps)
    meta.update(_return_stats(returns))
    meta.update(metadata or {})
    return rows.dataset(env_name, meta, with_state=data is not None)


def _box_spaces(env: gym.Env, gym_id: str) -> tuple[gym.spaces.Box, gym.spaces.Box]:
    """``(observation_space, action_space)`` of ``env``; a :class:`UserError` unless both are
    Box spaces."""
    if not isinstance(env.action_space, gym.spaces.Box) or not isinstance(
        env.observation_space, gym.spaces.Box
    ):
        raise UserError(f"{gym_id} does not have Box observations and actions: "
                        "datasets can only be recorded on continuous-control environments")
    return env.observation_space, env.action_space


@dataclass
class _RolloutRows:
    """The arrays :func:`rollout_policy` fills, one row per step.

    ``observations`` and ``next_observations`` are ``[size, obs_dim]`` float32, ``actions``
    ``[size, act_dim]`` float32, ``rewards`` ``[size]`` float32, ``terminals`` and ``timeouts``
    ``[size]`` bool, ``qpos`` and ``qvel`` ``[size, nq]`` / ``[size, nv]`` float64 (zero
    columns without MuJoCo state).
    """

    observations: np.ndarray
    next_observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    qpos: np.ndarray
    qvel: np.ndarray

    @classmethod
    def allocate(cls, size: int, obs_dim: int, act_dim: int, data: Any) -> _RolloutRows:
        """Uninitialised rows (flags cleared); ``data`` is the MuJoCo state or None."""
        return cls(
            observations=np.empty((size, obs_dim), dtype=np.float32),
            next_observations=np.empty((size, obs_dim), dtype=np.float32),
            actions=np.empty((size, act_dim), dtype=np.float32),
            rewards=np.empty(size, dtype=np.float32),
            terminals=np.zeros(size, dtype=bool),
            timeouts=np.zeros(size, dtype=bool),
            qpos=np.empty((size, data.qpos.shape[0] if data else 0), dtype=np.float64),
            qvel=np.empty((size, data.qvel.shape[0] if data else 0), dtype=np.float64),
        )

    def dataset(self, name: str, metadata: dict[str, object], with_state: bool
                ) -> OfflineDataset:
        """The rows as a dataset; ``qpos``/``qvel`` become infos when ``with_state``."""
        return OfflineDataset(
            observations=self.observations,
            actions=self.actions,
            rewards=self.rewards,
            next_observations=self.next_observations,
            terminals=self.terminals,
            timeouts=self.timeouts,
            infos={"qpos": self.qpos, "qvel": self.qvel} if with_state else {},
            metadata=metadata,
            name=name,
        )


def _record_rows(env: gym.Env, policy: Policy, action_space: gym.spaces.Box,
                 rows: _RolloutRows, seed: int, data: Any,
                 progress: Callable[[int], None] | None) -> list[float]:
    """Step ``env`` with ``policy`` until every row is filled; the complete episodes' returns.

    Actions are clipped to ``action_space`` (``env``'s). The first reset is seeded with
    ``seed``; ``data`` is the MuJoCo state read into ``rows.qpos``/``qvel`` before each step,
    or None.
    """
    size, act_dim = rows.actions.shape
    low, high = action_space.low, action_space.high
    returns: list[float] = []
    episode_return = 0.0
    obs, _ = env.reset(seed=seed)
    for i in range(size):
        rows.observations[i] = obs
        if data is not None:
            rows.qpos[i] = data.qpos
            rows.qvel[i] = data.qvel
        action = np.asarray(policy(np.asarray(obs, dtype=np.float32)[None]))
        if action.shape != (1, act_dim):
            raise ValueError(f"policy returned shape {action.shape}, expected (1, {act_dim})")
        action = np.clip(action[0], low, high)
        obs, reward, terminated, truncated, _ = env.step(action)
        rows.actions[i] = action
        rows.rewards[i] = reward
        rows.next_observations[i] = obs
        rows.terminals[i] = terminated
        rows.timeouts[i] = truncated
        episode_return += float(reward)
        if terminated or truncated:
            returns.append(episode_return)
            episode_return = 0.0
            obs, _ = env.reset()
        if progress is not None and ((i + 1) % 1000 == 0 or i + 1 == size):
            progress(i + 1)
    return returns


def random_policy(action_space: gym.spaces.Box, rng: np.random.Generator) -> Policy:
    """Uniform actions over ``action_space``, drawn from ``rng``."""
    low = np.asarray(action_space.low, dtype=np.float64)
    high = np.asarray(action_space.high, dtype=np.float64)

    def policy(obs: np.ndarray) -> np.ndarray:
        return rng.uniform(low, high, size=(obs.shape[0], *low.shape)).astype(np.float32)

    return policy


def collect_random(
    env_name: str,
    size: int = 1_000_000,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> OfflineDataset:
    """D4RL's ``random`` protocol: uniform random actions, episodes of at most 1000 steps.

    The environment's resets are seeded with ``seed`` and the actions come from
    ``np.random.default_rng`` on an independent stream spawned from the same seed, so the
    result is a deterministic function of ``(env_name, size, seed)``.
    """
    spec = get_env_spec(env_name)
    env = make_env(env_name)
    try:
        action_space = env.action_space
    finally:
        env.close()
    if not isinstance(action_space, gym.spaces.Box):
        raise UserError(f"{spec.gym_id} has no continuous action space: "
                        "random datasets need Box actions")
    action_seed = np.random.SeedSequence(seed).spawn(1)[0]
    policy = random_policy(action_space, np.random.default_rng(action_seed))
    return rollout_policy(env_name, policy, size, seed, protocol="d4rl-random",
                          metadata={"policy": "uniform"}, progress=progress)


# ------------------------------------------------------------------------ SAC-based kinds
#
# medium: a SAC policy is trained online (the foundation's Trainer, mode 'sac') epoch by epoch
#   until its deterministic evaluation reaches ``target_score`` (D4RL normalised score; 33 is
#   one third of the expert reference return), or ``max_train_steps`` environment steps; then
#   ``size`` rows are sampled from it. The rows use the policy's *stochastic* actions (a draw
#   from its tanh-Gaussian, log-probability in ``infos/action_log_probs``): D4RL recorded its
#   SAC data the same way (hence the log-probabilities in its files), and the spread of actions
#   around the mean is part of what makes the data useful for offline learning.
# medium-replay: every transition that medium run collected, in order (its replay buffer up to
#   the stopping point; the buffer is sized so nothing is overwritten), with the flags and
#   qpos/qvel recorded during training.
# expert: ``size`` stochastic rows from a second SAC run trained for ``expert_steps`` (or until
#   ``expert_target_score``).
# medium-expert: the medium rows, then the expert rows, never truncated.
#
# Each run lives in ``<policies_dir>/<env>-<role>/<env>-<role>-s<seed>/`` (the Trainer's run
# layout: config.json, progress.txt, tensorboard/, checkpoint.pt) plus ``collection.json``,
# written last, holding the run's settings and outcome; the medium run also keeps
# ``medium-replay.hdf5``. A finished run with the same settings is reused, so medium,
# medium-replay and medium-expert of one environment and seed come from one policy. Sampling
# always goes through the saved checkpoint and is seeded, so a dataset is the same whether its
# policy was trained just now or earlier.

POLICY_MARKER = "collection.json"
"""Written last into a policy's run directory: ``{"settings": ..., "outcome": ...}``."""
REPLAY_FILE = "medium-replay.hdf5"
"""The medium run's transitions, in the medium run's directory."""
SAC_KINDS: tuple[str, ...] = ("medium", "medium-replay", "expert", "medium-expert")
_SAMPLE_STREAM = 7  # PopulationRNG stream of the sampled datasets' stochastic actions
_MARKER_FORMAT = 1

Log = Callable[[str], None]
"""Receives one-line messages; warnings start with ``warning:``."""


@dataclass(frozen=True)
class SACCollectionOptions:
    """How the SAC policies behind the medium and expert datasets are trained.

    Attributes:
        target_score: the medium run stops after the first epoch whose deterministic
            evaluation reaches this D4RL normalised score (33 ≈ one third of expert).
        max_train_steps: cap on the medium run's environment steps; if it is reached first, the
            reached score is recorded in the metadata and a warning is issued. The medium run's
            replay buffer is allocated at this size (it must never overwrite: medium-replay is
            all of it).
        expert_steps: environment steps of the expert run.
        expert_target_score: stop the expert run as soon as it reaches this score (None: always
            train ``expert_steps``).
        steps_per_epoch: environment steps between evaluations (the stopping granularity).
        random_steps: uniform-action warm-up steps; None: ``min(10_000, budget // 10)`` of the
            run's step budget (so tiny runs still learn something).
        init_steps: steps before the first gradient update; None: as ``random_steps``.
        test_episodes: deterministic evaluation episodes after each epoch.
        device: torch device for training and sampling.
        policies_dir: root of the policy runs; None: ``$OMBRL_DATASETS_DIR/policies``.
        retrain: train anew even where a finished run with the same settings exists.
    """

    target_score: float = 33.0
    max_train_steps: int = 1_000_000
    expert_steps: int = 1_000_000
    expert_target_score: float | None = None
    steps_per_epoch: int = 4000
    random_steps: int | None = None
    init_steps: int | None = None
    test_episodes: int = 10
    device: str = "cpu"
    policies_dir: Path | None = None
    retrain: bool = False

    def check(self) -> None:
        """Raise a :class:`UserError` for a setting that cannot work."""
        for flag, value, low in (("max_train_steps", self.max_train_steps, 1),
                                 ("expert_steps", self.expert_steps, 1),
                                 ("steps_per_epoch", self.steps_per_epoch, 1),
                                 ("test_episodes", self.test_episodes, 1),
                                 ("random_steps", self.random_steps, 0),
                                 ("init_steps", self.init_steps, 0)):
            if value is not None and value < low:
                raise UserError(f"--{flag} must be at least {low}, got {value}: "
                                f"pass --{flag} N with N >= {low}")
        for flag, score in (("target_score", self.target_score),
                            ("expert_target_score", self.expert_target_score)):
            if score is not None and not math.isfinite(score):
                raise UserError(f"--{flag} must be a finite number, got {score}: "
                                "pass a normalised score such as 33")

    def root(self) -> Path:
        return self.policies_dir if self.policies_dir is not None \
            else datasets_dir() / "policies"


@dataclass(frozen=True)
class TrainedPolicy:
    """A finished SAC run behind a dataset.

    Attributes:
        run_dir: its run directory (``checkpoint.pt``, ``collection.json``, ...).
        settings: what it was trained with (role, max_env_steps, target_score, ...).
        outcome: env_steps, updates, epochs, eval_return, eval_score, target_reached,
            train_seconds.
        reused: found on disk rather than trained by this call.
    """

    run_dir: Path
    settings: dict[str, Any]
    outcome: dict[str, Any]
    reused: bool


def _emit(log: Log | None, message: str, warning: bool = False) -> None:
    if log is not None:
        log(f"warning: {message}" if warning else message)
    elif warning:
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _family(env_name: str) -> str:
    family = get_env_spec(env_name).family
    if family not in D4RL_ENVS:
        raise UserError(f"'{env_name}' has no D4RL reference returns, which the SAC-based "
                        f"protocols need for their target score: use one of "
                        f"{', '.join(D4RL_ENVS)}")
    return family


def _run_settings(family: str, role: str, seed: int, options: SACCollectionOptions
                  ) -> dict[str, Any]:
    """The settings that identify a policy run (compared when deciding to reuse one)."""
    target: float | None
    if role == "medium":
        budget, target = options.max_train_steps, options.target_score
    else:
        budget, target = options.expert_steps, options.expert_target_score
    warmup = min(10_000, budget // 10)
    random_steps = warmup if options.random_steps is None else options.random_steps
    return {
        "role": role,
        "env_id": D4RL_ENVS[family],
        "seed": int(seed),
        "max_env_steps": int(budget),
        "target_score": None if target is None else float(target),
        "steps_per_epoch": int(options.steps_per_epoch),
        "random_steps": int(random_steps),
        "init_steps": int(random_steps if options.init_steps is None else options.init_steps),
        "test_episodes": int(options.test_episodes),
    }


def _trainer_config(family: str, settings: dict[str, Any], options: SACCollectionOptions
                    ) -> TrainerConfiguration:
    budget = settings["max_env_steps"]
    return make_config(
        TrainerConfiguration,
        env_name=f"{family}-v2",
        mode="sac",
        seed=settings["seed"],
        experiment_name=f"{family}-{settings['role']}",
        online_epochs=math.ceil(budget / settings["steps_per_epoch"]),
        steps_per_epoch=settings["steps_per_epoch"],
        random_steps=settings["random_steps"],
        init_steps=settings["init_steps"],
        test_episodes=settings["test_episodes"],
        max_episode_length=MAX_EPISODE_STEPS,
        # medium-replay is the whole buffer, so the medium run's buffer must never wrap.
        real_buffer_size=budget if settings["role"] == "medium" else min(budget, 1_000_000),
        device=options.device,
    )


def policy_run_dir(env_name: str, role: str, seed: int,
                   options: SACCollectionOptions | None = None) -> Path:
    """Where the ``role`` (``medium`` or ``expert``) policy of ``env_name`` and ``seed`` lives."""
    options = options or SACCollectionOptions()
    family = _family(env_name)
    config = _trainer_config(family, _run_settings(family, role, seed, options), options)
    return member_run_dirs(config, options.root())[0]


def ensure_policy(env_name: str, role: str, seed: int = 0,
                  options: SACCollectionOptions | None = None, log: Log | None = None
                  ) -> TrainedPolicy:
    """The finished ``role`` policy of ``env_name``/``seed``: reused if present, else trained.

    Args:
        env_name: a D4RL name of hopper, halfcheetah or walker2d (any kind).
        role: ``medium`` or ``expert``.
        seed: the run's seed.
        options: training settings (defaults: :class:`SACCollectionOptions`).
        log: receives progress lines (one per epoch) and warnings.

    Raises:
        UserError: a finished run with other settings is in the way (pass ``retrain``), or a
            setting is invalid.
    """
    if role not in ("medium", "expert"):
        raise ValueError(f"role must be 'medium' or 'expert', got {role!r}")
    options = options or SACCollectionOptions()
    options.check()
    family = _family(env_name)
    settings = _run_settings(family, role, seed, options)
    config = _trainer_config(family, settings, options)
    run_dir = member_run_dirs(config, options.root())[0]
    marker = run_dir / POLICY_MARKER
    if marker.is_file() and not options.retrain:
        try:
            info = json.loads(marker.read_text())
            stored, outcome = info["settings"], info["outcome"]
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{marker} is unreadable: pass --retrain to train the {role} "
                            "policy again") from None
        if stored != settings:
            differ = sorted(k for k in settings if stored.get(k) != settings[k])
            what = ", ".join(f"{k} {stored.get(k)} (now {settings[k]})" for k in differ)
            raise UserError(f"the {role} policy in {run_dir} was trained with {what}: pass "
                            "--retrain to replace it, or the settings it was trained with")
        needed = ["checkpoint.pt"] + ([REPLAY_FILE] if role == "medium" else [])
        for file in needed:
            if not (run_dir / file).is_file():
                raise UserError(f"{run_dir} lacks {file}: pass --retrain to train the {role} "
                                "policy again")
        _emit(log, f"reusing the {role} policy in {run_dir} (normalised score "
                   f"{outcome['eval_score']:.1f} after {outcome['env_steps']} env steps)")
        return TrainedPolicy(run_dir, settings, outcome, reused=True)
    if run_dir.exists() and any(run_dir.iterdir()) and not options.retrain:
        _emit(log, f"{run_dir} holds an unfinished {role} run: training it again")
    return _train_policy(env_name, settings, config, options, log)


class _StepRecorder:
    """Stands in for the one-member training vector env and records, per step, what the
    replay buffer does not keep: ``qpos``/``qvel`` of the state acted in, and both flags."""

    def __init__(self, envs: gym.vector.SyncVectorEnv, capacity: int) -> None:
        self.vector = envs
        # The sub-environments, as a vector env exposes them (checkpoints read their state).
        self.envs = envs.envs
        data = envs.envs[0].unwrapped.data  # type: ignore[attr-defined]
        self.qpos = np.empty((capacity, data.qpos.shape[0]), dtype=np.float64)
        self.qvel = np.empty((capacity, data.qvel.shape[0]), dtype=np.float64)
        self.terminated = np.zeros(capacity, dtype=bool)
        self.truncated = np.zeros(capacity, dtype=bool)
        self.count = 0

    def step(self, actions: np.ndarray) -> tuple[Any, ...]:
        i = self.count
        if i >= self.qpos.shape[0]:
            raise RuntimeError("the training run took more steps than its step budget")
        # Read before stepping: after the step, autoreset may already have moved to a new
        # episode's initial state (the state of the *next* row).
        data = self.envs[0].unwrapped.data  # type: ignore[attr-defined]
        self.qpos[i], self.qvel[i] = data.qpos, data.qvel
        out = self.vector.step(actions)
        self.terminated[i], self.truncated[i] = bool(out[2][0]), bool(out[3][0])
        self.count += 1
        return out


def _train_policy(env_name: str, settings: dict[str, Any], config: TrainerConfiguration,
                  options: SACCollectionOptions, log: Log | None) -> TrainedPolicy:
    role, budget, target = settings["role"], settings["max_env_steps"], settings["target_score"]
    trainer = Trainer(config, overwrite=True, progress=False, root=options.root())
    run_dir = trainer.run_dirs[0]
    goal = f" or normalised score {target:g}" if target is not None else ""
    _emit(log, f"training the {role} SAC policy of {config.env_name} (seed {settings['seed']}) "
               f"for up to {budget} env steps{goal}, in {run_dir}")
    start = time.time()
    outcome, recorder = _train_until(trainer, budget, target, record=role == "medium", log=log)
    outcome["train_seconds"] = round(time.time() - start, 3)
    if recorder is not None:
        replay = _replay_dataset(trainer, recorder, env_name, settings, outcome)
        write_d4rl_hdf5(replay, run_dir / REPLAY_FILE)
    # Written last: its presence says the run finished and everything it made is on disk.
    write_json_atomic(run_dir / POLICY_MARKER, {"format": _MARKER_FORMAT,
                                                 "settings": settings, "outcome": outcome})
    return TrainedPolicy(run_dir, settings, outcome, reused=False)


def _train_until(trainer: Any, budget: int, target: float | None, record: bool,
                 log: Log | None) -> tuple[dict[str, Any], _StepRecorder | None]:
    """Drive ``trainer`` epoch by epoch until ``target`` is reached or ``budget`` steps ran.

    The loop is :meth:`Trainer.run`'s with a stopping rule; the last epoch is shortened so
    that the budget is exact.
    """
    config = trainer.config
    envs = make_vector_env(config.env_name, trainer.P, config.max_episode_length)
    recorder = _StepRecorder(envs, budget) if record else None
    obs, _ = envs.reset(seed=[s * 1000 for s in trainer.seeds])
    trainer.use_envs(recorder or envs, obs)
    start = time.time()
    row: dict[str, float] = {}
    reached = False
    try:
        while trainer.total_env_steps < budget and not reached:
            remaining = budget - trainer.total_env_steps
            means = trainer.train_epoch(steps=min(remaining, config.steps_per_epoch))
            trainer.epoch += 1
            row = trainer.log_epoch(trainer.evaluate(), means, time.time() - start)[0]
            score = row["NormalizedTestScore"]
            reached = target is not None and score >= target
            _emit(log, f"epoch {trainer.epoch}: {trainer.total_env_steps} env steps, test return "
                       f"{row['AverageTestEpRet']:.1f}, normalised score {score:.1f}")
        trainer.save()
    finally:
        for logger in trainer.loggers:
            logger.close()
        envs.close()
    outcome = {
        "env_steps": int(trainer.total_env_steps),
        "updates": int(trainer.total_updates),
        "epochs": int(trainer.epoch),
        "eval_return": float(row["AverageTestEpRet"]),
        "eval_return_std": float(row["StdTestEpRet"]),
        "eval_score": float(row["NormalizedTestScore"]),
        "target_reached": bool(reached),
    }
    return outcome, recorder


def _replay_dataset(trainer: Any, recorder: _StepRecorder, env_name: str,
                    settings: dict[str, Any], outcome: dict[str, Any]) -> OfflineDataset:
    """The medium run's replay buffer (one member, insertion order) as a D4RL dataset."""
    rows = trainer.replay.state_dict()["rows"][0]
    parts = {k: v.numpy() for k, v in trainer.layout.unpack(rows).items()}
    n = rows.shape[0]
    terminals = parts["terminated"] > 0.5
    if n != trainer.total_env_steps or n != recorder.count \
            or not np.array_equal(terminals, recorder.terminated[:n]):
        raise RuntimeError(f"replay buffer ({n} rows) and step record ({recorder.count} steps) "
                           "of the medium run disagree")
    spec = get_env_spec(env_name)
    ds = OfflineDataset(
        observations=parts["obs"], actions=parts["action"], rewards=parts["reward"],
        next_observations=parts["next_obs"], terminals=terminals,
        timeouts=recorder.truncated[:n].copy(),
        infos={"qpos": recorder.qpos[:n], "qvel": recorder.qvel[:n]},
        name=f"{spec.family}-medium-replay-v2",
    )
    ds.metadata = {
        **_base_metadata(ds.name, "d4rl-medium-replay", int(settings["seed"]), n),
        "policy": "sac-training",
        **_return_stats(_complete_returns(ds)),
    }
    return ds


def _base_metadata(env_name: str, protocol: str, seed: int, size: int,
                   max_episode_steps: int = MAX_EPISODE_STEPS) -> dict[str, object]:
    return {
        "protocol": protocol,
        "env_name": env_name,
        "env_id": get_env_spec(env_name).gym_id,
        "gymnasium_version": gym.__version__,
        "mujoco_version": mujoco.__version__,
        "seed": int(seed),
        "size": int(size),
        "max_episode_steps": int(max_episode_steps),
    }


def _complete_returns(ds: OfflineDataset) -> list[float]:
    """Returns of the episodes that end with a terminal or timeout flag."""
    ends = np.flatnonzero(np.asarray(ds.terminals) | np.asarray(ds.timeouts))
    if ends.size == 0:
        return []
    totals = np.concatenate(([0.0], np.cumsum(ds.rewards, dtype=np.float64)))
    starts = np.concatenate(([0], ends[:-1] + 1))
    return (totals[ends + 1] - totals[starts]).tolist()


def _policy_metadata(policy: TrainedPolicy) -> dict[str, object]:
    settings, outcome = policy.settings, policy.outcome
    return {
        "policy": "sac",
        "policy_dir": str(policy.run_dir),
        "policy_train_env_steps": outcome["env_steps"],
        "policy_train_updates": outcome["updates"],
        "policy_train_epochs": outcome["epochs"],
        "policy_max_train_steps": settings["max_env_steps"],
        "policy_eval_return": outcome["eval_return"],
        "policy_eval_score": outcome["eval_score"],
        "policy_eval_episodes": settings["test_episodes"],
        "target_score": settings["target_score"],
        "target_reached": outcome["target_reached"],
    }


def _warn_below_target(policy: TrainedPolicy, log: Log | None) -> None:
    settings, outcome = policy.settings, policy.outcome
    if settings["target_score"] is None or outcome["target_reached"]:
        return
    flag = "--max_train_steps" if settings["role"] == "medium" else "--expert_steps"
    _emit(log, f"the {settings['role']} policy in {policy.run_dir} reached normalised score "
               f"{outcome['eval_score']:.1f}, below the target {settings['target_score']:g}, "
               f"after {outcome['env_steps']} env steps ({flag} cap): the data is below the "
               f"protocol's level; raise {flag} and pass --retrain", warning=True)


def sample_policy(env_name: str, run_dir: Path, size: int, seed: int, protocol: str,
                  metadata: dict[str, object] | None = None, device: str = "cpu",
                  progress: Callable[[int], None] | None = None,
                  noise_stream: int = _SAMPLE_STREAM) -> OfflineDataset:
    """``size`` rows of the saved SAC policy in ``run_dir``, with stochastic actions.

    Resets are seeded with ``seed`` (as :func:`rollout_policy`), the action noise comes from
    stream ``noise_stream`` of a :class:`PopulationRNG` of ``seed``, so the rows depend only on
    the checkpoint and the arguments. ``infos['action_log_probs']`` holds the log-density of
    each action under the policy's tanh-Gaussian in the agent's ``[-1, 1]`` units (the
    environment's units for the three D4RL tasks, whose action box is ``[-1, 1]``).
    """
    if size < 1:
        raise UserError(f"dataset size must be at least 1, got {size}: pass --size N with N >= 1")
    loaded = load_agent(run_dir, device)
    agent = loaded.agent
    if not isinstance(agent, SAC):
        raise UserError(f"{run_dir} holds a {type(agent).__name__} agent: pass a SAC run")
    rng = PopulationRNG((seed,), loaded.device, noise_stream)
    log_probs = np.empty(size, dtype=np.float32)
    count = [0]

    def policy(obs: np.ndarray) -> np.ndarray:
        obs_t = torch.as_tensor(obs, device=loaded.device)[None]  # [1, 1, obs_dim]
        with torch.no_grad():
            mean, log_std = agent.policy(obs_t)
            unit, log_prob = squashed_gaussian(mean, log_std, rng.normal(*mean.shape[1:]))
            action = agent.scaler.to_env(unit)
        log_probs[count[0]] = float(log_prob[0, 0])
        count[0] += 1
        return action[0].cpu().numpy()

    ds = rollout_policy(env_name, policy, size, seed, protocol=protocol, metadata=metadata,
                        progress=progress)
    ds.infos["action_log_probs"] = log_probs
    return ds


def _check_size(size: int) -> None:
    # Checked before any training, which can take hours.
    if size < 1:
        raise UserError(f"dataset size must be at least 1, got {size}: pass --size N with N >= 1")


def _sample_from(env_name: str, policy: TrainedPolicy, size: int, seed: int,
                 progress: Callable[[int], None] | None, options: SACCollectionOptions,
                 log: Log | None) -> OfflineDataset:
    _warn_below_target(policy, log)
    role = policy.settings["role"]
    # Separate noise streams, so that the two halves of medium-expert are not correlated.
    stream = _SAMPLE_STREAM + (role == "expert")
    return sample_policy(env_name, policy.run_dir, size, seed, f"d4rl-{role}",
                         metadata=_policy_metadata(policy), device=options.device,
                         progress=progress, noise_stream=stream)


def _sample_role(env_name: str, role: str, size: int, seed: int,
                 progress: Callable[[int], None] | None, options: SACCollectionOptions | None,
                 log: Log | None) -> OfflineDataset:
    _check_size(size)
    options = options or SACCollectionOptions()
    policy = ensure_policy(env_name, role, seed, options, log)
    return _sample_from(env_name, policy, size, seed, progress, options, log)


def collect_medium(env_name: str, size: int = 1_000_000, seed: int = 0,
                   progress: Callable[[int], None] | None = None,
                   options: SACCollectionOptions | None = None, log: Log | None = None
                   ) -> OfflineDataset:
    """D4RL's ``medium``: ``size`` rows of a SAC policy trained to ``options.target_score``.

    Metadata: that of :func:`rollout_policy` (protocol ``d4rl-medium``) plus ``policy_dir``,
    ``policy_train_env_steps``/``_updates``/``_epochs``, ``policy_max_train_steps``,
    ``policy_eval_return``/``_score``/``_episodes``, ``target_score`` and ``target_reached``.
    """
    return _sample_role(env_name, "medium", size, seed, progress, options, log)


def collect_expert(env_name: str, size: int = 1_000_000, seed: int = 0,
                   progress: Callable[[int], None] | None = None,
                   options: SACCollectionOptions | None = None, log: Log | None = None
                   ) -> OfflineDataset:
    """D4RL's ``expert``: ``size`` rows of a SAC policy trained ``options.expert_steps`` steps.

    Metadata as :func:`collect_medium` (protocol ``d4rl-expert``).
    """
    return _sample_role(env_name, "expert", size, seed, progress, options, log)


def collect_medium_replay(env_name: str, size: int | None = None, seed: int = 0,
                          progress: Callable[[int], None] | None = None,
                          options: SACCollectionOptions | None = None, log: Log | None = None
                          ) -> OfflineDataset:
    """D4RL's ``medium-replay``: every transition of the medium run, in order.

    ``size`` is ignored: the dataset has as many rows as the run took environment steps
    (``policy_train_env_steps``). ``timeouts`` and ``infos/qpos``/``qvel`` were recorded during
    training; the episode in progress when training stopped is left unflagged. The return
    statistics are those of the training episodes (exploration included).
    """
    options = options or SACCollectionOptions()
    policy = ensure_policy(env_name, "medium", seed, options, log)
    _warn_below_target(policy, log)
    ds = load_d4rl_hdf5(policy.run_dir / REPLAY_FILE, env_name=env_name)
    ds.name = env_name
    ds.metadata = {**ds.metadata, **_policy_metadata(policy), "policy": "sac-training",
                   "protocol": "d4rl-medium-replay", "env_name": env_name, "size": len(ds)}
    if progress is not None:
        progress(len(ds))
    return ds


def collect_medium_expert(env_name: str, size: int = 1_000_000, seed: int = 0,
                          progress: Callable[[int], None] | None = None,
                          options: SACCollectionOptions | None = None, log: Log | None = None
                          ) -> OfflineDataset:
    """D4RL's ``medium-expert``: :func:`collect_medium` rows, then :func:`collect_expert` rows.

    ``2 · size`` rows, never truncated; the two parts are exactly the medium and expert
    datasets of the same ``size`` and ``seed``, except that the medium part's last row, if its
    episode was still running, is flagged as a timeout: the episode was cut there, and no
    episode should run on into the expert's first one. Metadata: ``medium_rows``,
    ``expert_rows``, the return statistics of both parts' complete episodes, and each part's
    policy metadata under ``medium/...`` and ``expert/...``.
    """
    _check_size(size)
    options = options or SACCollectionOptions()
    # Both policies first: a failure in the second should not come after hours of sampling.
    medium_policy = ensure_policy(env_name, "medium", seed, options, log)
    expert_policy = ensure_policy(env_name, "expert", seed, options, log)
    medium = _sample_from(env_name, medium_policy, size, seed, progress, options, log)
    shifted = None if progress is None else (lambda done: progress(size + done))
    expert = _sample_from(env_name, expert_policy, size, seed, shifted, options, log)
    timeouts = medium.timeouts.copy()
    seam_cut = not (medium.terminals[-1] or timeouts[-1])
    timeouts[-1] = True
    parts = (medium, expert)
    meta = _base_metadata(env_name, "d4rl-medium-expert", seed, 2 * size)
    meta.update(_return_stats(_complete_returns(medium) + _complete_returns(expert)))
    meta.update({"medium_rows": len(medium), "expert_rows": len(expert),
                 "seam_timeout_added": seam_cut})
    for label, part in zip(("medium", "expert"), parts, strict=True):
        meta.update({f"{label}/{k}": v for k, v in part.metadata.items()
                     if k.startswith(("policy", "target"))})
    cat = np.concatenate
    return OfflineDataset(
        observations=cat([p.observations for p in parts]),
        actions=cat([p.actions for p in parts]),
        rewards=cat([p.rewards for p in parts]),
        next_observations=cat([p.next_observations for p in parts]),
        terminals=cat([p.terminals for p in parts]),
        timeouts=cat([timeouts, expert.timeouts]),
        infos={k: cat([medium.infos[k], expert.infos[k]]) for k in medium.infos},
        metadata=meta,
        name=env_name,
    )


Collector = Callable[..., OfflineDataset]
"""``(env_name, size, seed, progress=None) -> OfflineDataset``; the SAC-based ones also take
``options`` (:class:`SACCollectionOptions`) and ``log``."""

COLLECTORS: dict[str, Collector] = {
    "random": collect_random,
    "medium": collect_medium,
    "medium-replay": collect_medium_replay,
    "expert": collect_expert,
    "medium-expert": collect_medium_expert,
}
"""Dataset kind -> collector."""


def collect(
    name: str, size: int, seed: int, progress: Callable[[int], None] | None = None,
    options: SACCollectionOptions | None = None, log: Log | None = None,
) -> OfflineDataset:
    """Record the dataset ``name`` (e.g. ``hopper-medium-v2``) with its kind's collector.

    Args:
        name: a D4RL dataset name.
        size: rows (medium-expert: rows of each part; ignored by medium-replay).
        seed: seed of the environment resets, the action noise and the policy runs.
        progress: called with the number of rows recorded so far.
        options: training settings of the SAC-based kinds (ignored for ``random``).
        log: receives progress lines and ``warning:`` lines of the SAC-based kinds; without
            it, warnings go through :mod:`warnings`.
    """
    spec = get_env_spec(name)
    if spec.dataset_kind is None:
        family = spec.family if spec.family in D4RL_ENVS else "hopper"
        raise UserError(f"'{name}' names an environment, not a dataset: "
                        f"add a kind, e.g. {family}-random-v2")
    collector = COLLECTORS.get(spec.dataset_kind)
    if collector is None:
        available = ", ".join(sorted(COLLECTORS))
        raise UserError(
            f"collecting '{spec.dataset_kind}' datasets is not available yet (available: "
            f"{available}): download the D4RL file with `ombrl datasets download {name}`"
        )
    if spec.dataset_kind in SAC_KINDS:
        return collector(name, size, seed, progress=progress, options=options, log=log)
    return collector(name, size, seed, progress=progress)
