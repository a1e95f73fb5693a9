"""The training loop: composes agent, data sources, evaluation, logging and checkpoints.

One :class:`Trainer` trains a whole population (the seeds of ``config.population_seeds``)
in lockstep; each member writes its own run directory, which is self-contained: its
checkpoint holds only that member's slice of the population state.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from offline_mbrl.agents import SAC, MixedBatchAgent, split_member_state, stack_member_states
from offline_mbrl.checkpoint import (
    RESUME_MAY_CHANGE,
    check_resumable,
    load_checkpoint,
    save_checkpoint,
)
from offline_mbrl.compiling import compile_networks, compiler, eager_rollout_networks
from offline_mbrl.config import TrainerConfiguration, make_config
from offline_mbrl.data.buffer import DatasetSampler, PopulationBuffer, TransitionLayout
from offline_mbrl.data.dataset import OfflineDataset
from offline_mbrl.envs.registry import get_env_spec, make_vector_env
from offline_mbrl.envs.state import episode_state, restore_episode
from offline_mbrl.errors import NonFiniteError, UserError
from offline_mbrl.evaluation import evaluate_population
from offline_mbrl.logging import RunLogger
from offline_mbrl.models.ensemble import EnvironmentModel
from offline_mbrl.models.training import train_environment_model
from offline_mbrl.modes import agent_class_of, get_mode
from offline_mbrl.progress import EpochProgress
from offline_mbrl.rng import PopulationRNG
from offline_mbrl.rollouts import Pessimism, rollout, rollout_step
from offline_mbrl.run_setup import (
    check_settings,
    dataset_rows_for_replay,
    environment_model_path,
    find_environment_model,
    load_offline_data,
    model_config,
    probe_environment,
    read_pretrained_agent,
    resolve_agent_field,
    resolve_pessimism,
    resolve_random_steps,
    set_up_process,
    train_and_save_model,
    warn_about_emulated_bfloat16,
)
from offline_mbrl.runs import (
    CHECKPOINT_FILE,
    PREVIOUS_CHECKPOINT_FILE,
    claim_run_dirs,
    member_run_dirs,
    write_config,
)

__all__ = ["RESUME_MAY_CHANGE", "EpochMetrics", "Trainer", "make_agent", "train"]

# Streams of the per-member random generators; fixed so that checkpoints stay valid.
_AGENT_STREAM, _DATA_STREAM, _ACTION_STREAM, _ROLLOUT_STREAM = 1, 2, 3, 4


def make_agent(kind: str, obs_dim: int, act_dim: int, action_low: Any, action_high: Any,
               seeds: tuple[int, ...], config: TrainerConfiguration, device: torch.device
               ) -> Any:
    """The agent class ``kind`` names (a registered mode's, see :func:`agent_class_of`)."""
    cls = agent_class_of(kind)
    return cls(obs_dim, act_dim, action_low, action_high, seeds, config.agent, device)


BATCH_BLOCK_STEPS = 64
"""Offline training steps whose batches are drawn together (see ``Trainer._batch_block``)."""


def agent_kind(mode: str) -> str:
    """What checkpoints call the agent of ``mode``: its import path."""
    return get_mode(mode).agent


@dataclass
class EpochMetrics:
    """Per-update metrics of an epoch, kept on the device until read.

    Each update costs one operator call: its metrics are stacked into the next row of a
    preallocated ``[rows, M, P]`` float32 block. :meth:`read` sums the rows in float64
    (thousands of float32 additions would drift visibly) and finds the first non-finite
    update, so it can be named, with no host synchronisation before then.
    """

    keys: list[str] = field(default_factory=list)
    blocks: list[torch.Tensor] = field(default_factory=list)
    count: int = 0
    block_rows: int = 1024

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        row = self.count % self.block_rows
        if row == 0:
            if not self.keys:
                self.keys = list(metrics)
            first = next(iter(metrics.values()))
            self.blocks.append(first.new_empty(self.block_rows, len(self.keys), *first.shape))
        torch.stack(list(metrics.values()), out=self.blocks[-1][row])
        self.count += 1

    def read(self) -> tuple[dict[str, np.ndarray], int | None]:
        """Means ``{name: [P]}`` and the index of the first non-finite update, if any."""
        if not self.count:
            return {}, None
        rows = torch.cat(self.blocks)[:self.count]  # [count, M, P]
        finite = torch.isfinite(rows).flatten(1).all(dim=1)
        means = (rows.double().sum(0) / self.count).cpu().numpy()
        bad = (~finite).nonzero()
        first_bad = int(bad[0, 0]) if bad.numel() else None
        return dict(zip(self.keys, means, strict=True)), first_bad


class Trainer:
    """Trains ``config.population_seeds`` as one population.

    Constructing a trainer checks the settings, loads the dataset and any saved
    environment model, claims the run directories and builds the agent, buffers and
    random generators (restoring them on ``resume``); it never trains. :meth:`run` is the
    loop, top to bottom: :meth:`prepare` (train the environment model if the mode needs one
    and none is saved, resolve the pessimism, write config.json), then per epoch
    :meth:`train_epoch`, :meth:`evaluate`, :meth:`log_epoch` and :meth:`save`.

    Args:
        config: the resolved configuration.
        resume: continue from the checkpoints in the run directories.
        overwrite: replace existing run directories.
        progress: show a progress bar.
        root: experiments root (default ``$OMBRL_DATA_DIR`` or ``./data/experiments``).
    """

    def __init__(self, config: TrainerConfiguration, resume: bool = False,
                 overwrite: bool = False, progress: bool = True, root: Path | None = None,
                 ) -> None:
        self.config = config
        self.device = set_up_process(config)
        self.spec = get_env_spec(config.env_name)
        self.mode = get_mode(config.mode)
        self.seeds = config.population_seeds
        self.P = len(self.seeds)
        self.progress = progress
        self.online = self.mode.online
        self.model_based = self.mode.model_based or config.use_env_model
        self.kind = agent_kind(config.mode)

        # Everything that can fail on bad input happens before run directories are touched.
        check_settings(config, self.spec, self.P)
        warn_about_emulated_bfloat16(config, self.device)
        env = probe_environment(config.env_name)
        self.obs_dim, self.act_dim = env.obs_dim, env.act_dim
        self.action_low, self.action_high = env.action_low, env.action_high
        self.layout = TransitionLayout(self.obs_dim, self.act_dim)
        data = (load_offline_data(config, self.spec, self.layout, self.device)
                if not self.online or config.n_samples_from_dataset else None)
        # Online, the dataset only fills the replay buffer (--n_samples_from_dataset).
        seed_rows = data.rows if data and self.online else None
        data = None if self.online else data
        self.offline_dataset = data.dataset if data else None
        self.eval_env = data.eval_env if data else self.spec.gym_id
        """Gymnasium id of the evaluation episodes (a dataset's own recorded id)."""
        config, self.agent_resolved = resolve_agent_field(config, self.spec,
                                                          self.offline_dataset)
        self.config = config
        self.model_path = environment_model_path(config, self.spec) if data else None
        self.model: Any = (find_environment_model(config, self.spec, data.dataset, self.device)
                           if data and self.model_based else None)
        pretrained = (read_pretrained_agent(config.pretrained_agent_path, config, self.kind,
                                            self.obs_dim)
                      if config.pretrained_agent_path and not resume else None)
        self.agent = make_agent(self.kind, self.obs_dim, self.act_dim, self.action_low,
                                self.action_high, self.seeds, config, self.device)
        if isinstance(self.agent, MixedBatchAgent):
            self.agent.use_batch_split(*self._batch_split())
        self.run_dirs = member_run_dirs(config, root)
        resume_from = claim_run_dirs(self.run_dirs, resume, overwrite)

        self.compiled = self._compile()
        self.rngs = {name: PopulationRNG(self.seeds, self.device, stream)
                     for name, stream in (("agent", _AGENT_STREAM), ("data", _DATA_STREAM),
                                          ("action", _ACTION_STREAM),
                                          ("rollout", _ROLLOUT_STREAM))}
        self._make_buffers(data.rows if data else None)
        if seed_rows is not None and self.replay is not None:
            self.replay.add(dataset_rows_for_replay(
                seed_rows, config.n_samples_from_dataset, config.real_buffer_size,
                self.rngs["data"]))
        self.epoch = 0
        self.saved_epoch = 0
        """The epoch of the newest checkpoint on disk (0: none yet)."""
        self.total_env_steps = 0
        self.total_updates = 0
        self.pessimism: Pessimism | None = None
        self.resolved: dict[str, dict[str, Any]] = {}
        """Values the configuration leaves open, with where each came from (config.json)."""
        self.random_steps, self.loop_resolved = resolve_random_steps(config)
        self.prepared = False
        self.rollout_stats: dict[str, torch.Tensor] = {}
        self.rollout_rounds = 0
        self._resumed_episodes: list[dict[str, Any]] | None = None
        self._envs: Any = None
        self._env_state: dict[str, Any] = {}

        if pretrained is not None:
            self.agent.load_state_dict(stack_member_states([pretrained] * self.P))
        if resume_from is not None:
            self._restore(resume_from)
        purge = self.log_step + 1 if resume_from is not None else None
        self.loggers = [RunLogger(d, resume_epochs=self.epoch if resume_from else None,
                                  purge_step=purge) for d in self.run_dirs]

    # ------------------------------------------------------------------ setup
    def _compile(self) -> tuple[str, ...]:
        """Hand the hot paths to ``torch.compile`` under ``--compile``.

        Returns what was handed over: ``"update"`` (SAC-family losses), ``"networks"``
        (other agents' networks) and ``"rollout_step"`` (model-based modes). Compilation
        itself happens at the first call.
        """
        self._rollout_step: Any = None
        self._rollout_model: tuple[Any, Any] | None = None
        if not self.config.compile:
            return ()
        compile_fn = compiler(self.device)
        compiled: tuple[str, ...]
        if isinstance(self.agent, SAC):
            self.agent.compile_update(compile_fn)
            compiled = ("update",)
        else:
            compile_networks(self.agent, self.device)
            compiled = ("networks",)
        if self.model_based:
            self._rollout_step = compile_fn(rollout_step)
            compiled += ("rollout_step",)
        return compiled

    def _make_buffers(self, dataset_rows: torch.Tensor | None) -> None:
        """The real data (a dataset sampler offline, a replay buffer online) and, for
        model-based modes, the buffer of synthetic (model-generated) transitions."""
        config = self.config
        self.replay: PopulationBuffer | None = None
        self.dataset: DatasetSampler | None = None
        if dataset_rows is None:
            self.replay = PopulationBuffer(self.P, config.real_buffer_size, self.layout,
                                           self.device)
        else:
            self.dataset = DatasetSampler(dataset_rows)
        self.synthetic: PopulationBuffer | None = None
        if self.model_based:
            self.synthetic = PopulationBuffer(self.P, config.synthetic_buffer_size, self.layout,
                                              self.device)
        self._synthetic_empty = True

    def prepare(self) -> None:
        """The step before the first update (idempotent; :meth:`run` and
        :meth:`train_epoch` call it): train and save the environment model if the mode
        needs one and none is saved, resolve the pessimism, and record the configuration,
        with the values it left open and their sources, in every run's config.json."""
        if self.prepared:
            return
        if self.model_based and not self.online and self.model is None:
            assert self.offline_dataset is not None and self.model_path is not None
            self.model = train_and_save_model(
                self.config, self.offline_dataset, self.model_path, self.device,
                log_dir=self.run_dirs[0].parent / "env_model_tensorboard",
                progress=self.progress)
        if self.model is not None and self.pessimism is None:
            self._resolve_pessimism()
        # On resume too: the settings a resume may change are applied and recorded.
        for run_dir, seed in zip(self.run_dirs, self.seeds, strict=True):
            write_config(run_dir, self.member_config(seed),
                         {**self.loop_resolved, **self.agent_resolved, **self.resolved})
        self.prepared = True

    def member_config(self, seed: int) -> TrainerConfiguration:
        """The configuration as a single run of ``seed`` would have it."""
        return self.config.model_copy(update={"seed": seed, "seeds": None})

    def _resolve_pessimism(self) -> None:
        self.pessimism, self.resolved = resolve_pessimism(
            self.config, self.spec, self.model, self.model_path, self.offline_dataset,
            self.P, self.device)

    def _rollout_round(self, start_source: Callable[[int], torch.Tensor]) -> None:
        """Generate ``n_parallel_rollouts × rollout_every`` transitions per member."""
        assert self.pessimism is not None and self.synthetic is not None
        samples = self.config.n_parallel_rollouts * self.config.rollout_every
        lengths = self.pessimism.rollout_length
        n_active = torch.div(samples + lengths - 1, lengths, rounding_mode="floor")
        n_starts = int(samples // int(lengths.min()) + 1)
        start_obs = start_source(n_starts)[..., self.layout.slices["obs"]]
        dtype = getattr(torch, self.config.rollout_dtype)
        if self._rollout_model is None or self._rollout_model[0] is not self.model:
            # One copy per model, not per round: a compiled step is specialised on it.
            model = self.model.for_rollouts(dtype)
            if self._rollout_step is not None and eager_rollout_networks(self.device, dtype):
                model.eager_networks = True  # on a bf16 copy: the trained model is untouched
            self._rollout_model = (self.model, model)
        batch = rollout(self._rollout_model[1], self.agent, start_obs, self.pessimism,
                        self.layout, self.rngs["rollout"], n_active=n_active, dtype=dtype,
                        step_fn=self._rollout_step)
        self.synthetic.add(batch.rows, batch.valid)
        self._synthetic_empty = False
        for key, value in batch.stats.items():
            self.rollout_stats[key] = self.rollout_stats.get(key, 0) + value
        self.rollout_rounds += 1

    def _rollout_due(self) -> bool:
        # A host-side flag, not synthetic.size: reading a device tensor each step would sync.
        return self._synthetic_empty or self.total_updates % self.config.rollout_every == 0

    def _batch_split(self) -> tuple[int, int]:
        """``(real, synthetic)`` rows per batch: ``real_ratio`` real, the rest synthetic."""
        batch_size = self.config.agent.batch_size
        if not self.model_based:
            return batch_size, 0
        n_real = round(self.config.real_ratio * batch_size)
        return n_real, batch_size - n_real

    def _mixed_source(self, real: Callable[[int], torch.Tensor]) -> Callable[[], torch.Tensor]:
        """One batch per call: ``real_ratio`` real rows and the rest from the synthetic buffer."""
        n_real, n_synthetic = self._batch_split()
        synthetic = self.synthetic
        rng = self.rngs["data"]
        if n_synthetic == 0 or synthetic is None:
            return lambda: real(n_real)
        if n_real == 0:
            return lambda: synthetic.sample(n_synthetic, rng)
        return lambda: torch.cat([real(n_real), synthetic.sample(n_synthetic, rng)], dim=1)

    def _batch_block(self, n_updates: int) -> torch.Tensor:
        """``[n_updates, P, B, F]`` offline batches drawn and gathered at once.

        Between rollout rounds neither the dataset nor the synthetic buffer changes, so
        the batches of many updates can be drawn together: two gathers for the block
        instead of a dozen small operators per update.
        """
        assert self.dataset is not None
        n_real, n_synthetic = self._batch_split()
        rng = self.rngs["data"]
        # Update-major and freshly laid out, so that every batch is contiguous with the same
        # strides whatever the block length (a compiled update is specialised on them).
        block = torch.empty(n_updates, self.P, n_real + n_synthetic, self.layout.width,
                            device=self.device)
        if n_real:
            block[:, :, :n_real] = self.dataset.sample(n_updates * n_real, rng).view(
                self.P, n_updates, n_real, -1).transpose(0, 1)
        if n_synthetic:
            assert self.synthetic is not None
            block[:, :, n_real:] = self.synthetic.sample(n_synthetic * n_updates, rng).view(
                self.P, n_updates, n_synthetic, -1).transpose(0, 1)
        return block

    def _retrain_online_model(self) -> None:
        """mbpo: fit the model to the real buffer (member 0; mbpo runs one seed)."""
        assert self.replay is not None
        rows = self.replay.state_dict()["rows"][0]
        parts = self.layout.unpack(rows)
        dataset = OfflineDataset(
            observations=parts["obs"].numpy(), actions=parts["action"].numpy(),
            rewards=parts["reward"].numpy(), next_observations=parts["next_obs"].numpy(),
            terminals=parts["terminated"].numpy() > 0.5,
            timeouts=np.zeros(rows.shape[0], dtype=bool), name="replay")
        # Warm retraining continues from the current weights, with a short patience.
        config = model_config(self.config, self.device)
        warm = self.model is not None and not self.config.train_env_model_from_scratch
        if warm:
            config = config.model_copy(update={"training_patience": 5})
        self.model, _ = train_environment_model(dataset, config, self.config.env_name,
                                                progress=False,
                                                initial=self.model if warm else None)
        self.model = self.model.to(self.device)
        if self.pessimism is None:
            self._resolve_pessimism()
        if (self.config.reset_synthetic_buffer_after_env_model_training
                and self.synthetic is not None):
            self.synthetic.clear()
            self._synthetic_empty = True

    # ------------------------------------------------------------------ state
    def member_state(self, member: int) -> dict[str, Any]:
        """Member ``member``'s complete checkpoint."""
        P = self.P
        state: dict[str, Any] = {
            "kind": "agent-run",
            "config": self.member_config(self.seeds[member]).model_dump(mode="json"),
            "agent_kind": self.kind,
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "action_low": self.action_low.clone(),
            "action_high": self.action_high.clone(),
            "agent": split_member_state(self.agent.state_dict(), P, member),
            "rngs": {k: split_member_state(r.state_dict(), P, member)
                     for k, r in self.rngs.items()},
            "counters": {"epoch": self.epoch, "total_env_steps": self.total_env_steps,
                         "total_updates": self.total_updates},
        }
        if self.replay is not None:
            state["replay"] = self.replay.member_state(member)
        if self.synthetic is not None:
            state["synthetic"] = self.synthetic.member_state(member)
            state["synthetic_empty"] = self._synthetic_empty
        if self.online and self._envs is not None:
            episode = episode_state(self._envs.envs[member])
            if episode is not None:
                episode["obs"] = self._env_state["obs"][member].cpu()
                state["episode"] = episode
        if self.online and self.model is not None:
            # mbpo's model is part of the run's state: it is retrained as the run goes on.
            state["model"] = {"architecture": self.model.architecture(),
                              "state": self.model.state_dict()}
        return state

    def save(self) -> None:
        """Write every member's checkpoint; the previous one stays until the next save."""
        for member, run_dir in enumerate(self.run_dirs):
            latest = run_dir / CHECKPOINT_FILE
            if latest.is_file():
                os.replace(latest, run_dir / PREVIOUS_CHECKPOINT_FILE)
            save_checkpoint(latest, self.member_state(member))
        self.saved_epoch = self.epoch

    def _restore(self, files: list[Path]) -> None:
        states = [load_checkpoint(f, map_location=self.device) for f in files]
        for f, state in zip(files, states, strict=True):
            check_resumable(f, state, self.kind, self.obs_dim,
                            lambda seed: self.member_config(seed).model_dump(mode="json"))
        try:
            self._load_states(states)
        except (KeyError, RuntimeError, ValueError, TypeError) as error:
            reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
            raise UserError(f"checkpoint {files[0]} does not fit this run ({reason}): resume "
                            "with the settings it was trained with, or pass --overwrite") from None

    def _load_states(self, states: list[dict[str, Any]]) -> None:
        trained = int(states[0]["counters"]["epoch"])
        if trained >= self.config.epochs:
            raise UserError(f"{self.run_dirs[0].parent} already trained {trained} epochs and "
                            f"{self.config.epochs} are asked for: pass --epochs N with N > "
                            f"{trained} to continue it")
        counters = {s["counters"]["epoch"] for s in states}
        if len(counters) != 1:
            raise UserError(f"members of {self.run_dirs[0].parent} stopped at different epochs "
                            f"{sorted(counters)}: resume them one seed at a time")
        self.agent.load_state_dict(stack_member_states([s["agent"] for s in states]))
        for name, rng in self.rngs.items():
            rng.load_state_dict(stack_member_states([s["rngs"][name] for s in states]))
        self.epoch = self.saved_epoch = states[0]["counters"]["epoch"]
        self.total_env_steps = states[0]["counters"]["total_env_steps"]
        self.total_updates = states[0]["counters"]["total_updates"]
        if self.replay is not None:
            self.replay.load_member_states([s["replay"] for s in states])
        if self.synthetic is not None:
            self.synthetic.load_member_states([s["synthetic"] for s in states])
            self._synthetic_empty = bool(states[0]["synthetic_empty"])
        if self.online and all("episode" in s for s in states):
            self._resumed_episodes = [s["episode"] for s in states]
        if "model" in states[0]:
            saved = states[0]["model"]
            self.model = EnvironmentModel(**saved["architecture"])
            self.model.load_state_dict(saved["state"])
            self.model = self.model.to(self.device).eval()
            self._resolve_pessimism()

    # ------------------------------------------------------------------ training
    def _update(self, source: Callable[[], torch.Tensor], metrics: EpochMetrics) -> None:
        for _ in range(self.config.agent_updates_per_step):
            batch = self.layout.unpack(source())
            metrics.add(self.agent.update(batch, self.rngs["agent"]))
            self.total_updates += 1

    def _online_epoch(self, envs: Any, state: dict[str, Any], metrics: EpochMetrics,
                      tick: Callable[[], None], steps: int) -> None:
        config = self.config
        replay = self.replay
        assert replay is not None
        real = lambda n: replay.sample(n, self.rngs["data"])  # noqa: E731
        source = self._mixed_source(real)
        for _ in range(steps):
            for _ in range(config.env_interactions_per_step):
                obs = state["obs"]
                if self.total_env_steps < self.random_steps:
                    unit = self.rngs["action"].uniform(1, self.act_dim) * 2 - 1
                    action = self.agent.scaler.to_env(unit)
                else:
                    action = self.agent.act(obs, deterministic=False, rng=self.rngs["action"])
                next_obs_np, reward, terminated, _truncated, info = envs.step(
                    action[:, 0].cpu().numpy())
                stored_next = next_obs_np
                if "_final_obs" in info:
                    stored_next = next_obs_np.copy()
                    for i in np.flatnonzero(info["_final_obs"]):
                        stored_next[i] = info["final_obs"][i]
                to_t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32),  # noqa: E731
                                                 device=self.device)
                # Only true terminations stop bootstrapping; time-limit cuts do not.
                replay.add(self.layout.pack(obs[:, 0], action[:, 0], to_t(reward),
                                            to_t(stored_next), to_t(terminated))[:, None])
                state["obs"] = to_t(next_obs_np)[:, None]
                self.total_env_steps += 1
                if self.model_based and self.total_env_steps >= config.init_steps and (
                        self.model is None
                        or self.total_env_steps % config.train_env_model_every == 0):
                    self._retrain_online_model()
            if self.total_env_steps >= config.init_steps:
                if self.model_based and self._rollout_due():
                    self._rollout_round(real)
                self._update(source, metrics)
            tick()

    def _offline_epoch(self, metrics: EpochMetrics, tick: Callable[[], None], steps: int
                       ) -> None:
        dataset = self.dataset
        assert dataset is not None
        real = lambda n: dataset.sample(n, self.rngs["data"])  # noqa: E731
        per_step = self.config.agent_updates_per_step
        batches: Iterator[torch.Tensor] = iter(())
        steps_left = 0  # in the current block of batches
        for step in range(steps):
            if self.model_based and self._rollout_due():
                # Rollouts start from dataset observations, drawn uniformly.
                self._rollout_round(real)
                steps_left = 0
            if steps_left == 0:
                steps_left = min(BATCH_BLOCK_STEPS, steps - step)
                if self.model_based:
                    every = self.config.rollout_every
                    until_due = every - self.total_updates % every
                    steps_left = min(steps_left, -(-until_due // per_step))
                batches = iter(self._batch_block(steps_left * per_step))
            self._update(partial(next, batches), metrics)
            steps_left -= 1
            tick()

    def evaluate(self) -> Any:
        """Test episodes of every member's deterministic policy."""
        return evaluate_population(
            self.eval_env,
            lambda obs: self.agent.act(obs.to(self.device), deterministic=True),
            n_members=self.P,
            episodes=self.config.test_episodes,
            seed=10_000 + self.epoch,
            max_episode_length=self.config.max_episode_length,
        )

    def _check_finite(self, first_bad: int | None, updates_before: int) -> None:
        bad_params = [n for n, p in self.agent.named_parameters() if not torch.isfinite(p).all()]
        if first_bad is None and not bad_params:
            return
        step = updates_before + (first_bad or 0) + 1
        what = f"parameter {bad_params[0]}" if first_bad is None else "a loss"
        where = f"{what} became non-finite at update {step} (epoch {self.epoch + 1})"
        fix = "lower the learning rate or check the data for extreme values"
        if self.saved_epoch == 0:
            raise NonFiniteError(f"{where}, before any checkpoint was written: {fix}, then "
                                 "start again with --overwrite")
        raise NonFiniteError(
            f"{where}; the checkpoint of epoch {self.saved_epoch} in "
            f"{self.run_dirs[0].parent} is kept: {fix}, then --resume")

    def _open_envs(self) -> None:
        """Online modes: the population's training environments, one per member."""
        if not self.online or self._envs is not None:
            return
        self._envs = make_vector_env(self.config.env_name, self.P, self.config.max_episode_length)
        obs, _ = self._envs.reset(seed=[s * 1000 + self.epoch for s in self.seeds])
        obs = torch.as_tensor(obs, dtype=torch.float32, device=self.device)[:, None]
        if self._resumed_episodes is not None:
            # A resumed run continues the episodes it stopped in (see envs/state.py).
            for env, episode in zip(self._envs.envs, self._resumed_episodes, strict=True):
                restore_episode(env, episode)
            obs = torch.stack([e["obs"] for e in self._resumed_episodes]).to(self.device)
            self._resumed_episodes = None
        self._env_state["obs"] = obs

    def use_envs(self, envs: Any, obs: np.ndarray) -> None:
        """Train online in ``envs`` (one sub-environment per member, already reset to
        ``obs [P, obs_dim]``) instead of environments the trainer makes itself; used by
        dataset collection, which records every step."""
        self._envs = envs
        self._env_state["obs"] = torch.as_tensor(obs, dtype=torch.float32,
                                                 device=self.device)[:, None]

    def train_epoch(self, tick: Callable[[], None] | None = None,
                    steps: int | None = None) -> dict[str, np.ndarray]:
        """One epoch of training steps (no evaluation, logging or checkpoint).

        Args:
            tick: called after every training step (progress display).
            steps: training steps instead of ``steps_per_epoch`` (benchmarks, tests).

        Returns:
            Means of the update metrics over the epoch, ``{name: [P]}``.

        Raises:
            NonFiniteError: a loss or parameter became NaN or infinite.
        """
        self.prepare()
        self._open_envs()
        metrics = EpochMetrics()
        updates_before = self.total_updates
        tick = tick or (lambda: None)
        steps = self.config.steps_per_epoch if steps is None else steps
        if self.online:
            self._online_epoch(self._envs, self._env_state, metrics, tick, steps)
        else:
            self._offline_epoch(metrics, tick, steps)
        means, first_bad = metrics.read()
        self._check_finite(first_bad, updates_before)
        return means

    def run(self, on_epoch: Callable[[int, list[dict[str, float]]], bool | None] | None = None
            ) -> list[dict[str, float]]:
        """Train to ``config.epochs``, evaluating, logging and checkpointing each epoch.

        Args:
            on_epoch: called with ``(epoch, rows)`` after each epoch's log and checkpoint
                (rows: one progress row per member); returning True stops training
                (early stopping, sweeps).

        Returns:
            The last logged row of every member.
        """
        config = self.config
        last_rows: list[dict[str, float]] = []
        start_time = time.time()
        try:
            self.prepare()
            with EpochProgress(f"{config.env_name} {config.mode}", config.epochs, self.epoch,
                               enabled=self.progress) as progress:
                while self.epoch < config.epochs:
                    means = self.train_epoch(progress.epoch_ticker())
                    self.epoch += 1
                    last_rows = self.log_epoch(self.evaluate(), means, time.time() - start_time)
                    self.rollout_stats, self.rollout_rounds = {}, 0
                    # With a callback the checkpoint comes first: a sweep scheduler may end the
                    # process inside the callback, and the run directory must be complete.
                    if (self.epoch % config.save_frequency == 0 or self.epoch == config.epochs
                            or on_epoch is not None):
                        self.save()
                    stop = bool(on_epoch(self.epoch, last_rows)) if on_epoch else False
                    progress.epoch_done(self.epoch, last_rows)
                    if stop:
                        break
        finally:
            self.close()
        return last_rows

    @property
    def log_step(self) -> int:
        """TensorBoard's x-axis: agent updates offline, environment steps online."""
        return self.total_env_steps if self.online else self.total_updates

    def close(self) -> None:
        """Release loggers and environments (``run`` does this itself)."""
        for logger in self.loggers:
            logger.close()
        if self._envs is not None:
            self._envs.close()
            self._envs = None

    def log_epoch(self, result: Any, means: dict[str, np.ndarray], elapsed: float
                  ) -> list[dict[str, float]]:
        """Write one progress row per member from an evaluation and epoch metric means."""
        rows = []
        for member, logger in enumerate(self.loggers):
            row: dict[str, Any] = {"Epoch": self.epoch}
            test = result.as_metrics(member, self.spec.family)
            row.update({k: test[k] for k in ("AverageTestEpRet", "StdTestEpRet",
                                              "MaxTestEpRet", "MinTestEpRet", "TestEpLen")})
            row["TotalEnvInteracts"] = self.total_env_steps
            row["TotalUpdates"] = self.total_updates
            for key in ("LossPi", "LossQ", "Alpha", "QMean", "LogPi"):
                if key in means:
                    row[key] = float(means[key][member])
                elif key in ("LossPi", "LossQ"):
                    row[key] = math.nan
            for key, value in self.rollout_stats.items():
                row[key] = float(value[member]) / max(self.rollout_rounds, 1)
            row["Time"] = elapsed
            row["NormalizedTestScore"] = test["NormalizedTestScore"]
            logger.log_epoch(row, step=self.log_step)
            rows.append(row)
        return rows


def train(config: TrainerConfiguration | None = None, *, resume: bool = False,
          overwrite: bool = False, progress: bool = True, **overrides: Any
          ) -> list[dict[str, float]]:
    """Train a population as ``config`` (plus keyword overrides) describes.

    Returns:
        The last progress row of each member (AverageTestEpRet, NormalizedTestScore, ...).
    """
    if config is None:
        config = make_config(TrainerConfiguration, **overrides)
    elif overrides:
        config = make_config(TrainerConfiguration, **{**config.model_dump(), **overrides})
    return Trainer(config, resume=resume, overwrite=overwrite, progress=progress).run()
