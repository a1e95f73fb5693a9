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

from offline_mbrl.agents import SAC, split_member_state, stack_member_states
from offline_mbrl.checkpoint import load_checkpoint, save_checkpoint
from offline_mbrl.compiling import compile_networks, compiler, eager_rollout_networks
from offline_mbrl.config import TrainerConfiguration
from offline_mbrl.data.buffer import DatasetSampler, PopulationBuffer, TransitionLayout
from offline_mbrl.envs.registry import (
    evaluation_env_id,
    get_env_spec,
    make_env,
    make_vector_env,
)
from offline_mbrl.envs.state import episode_state, restore_episode
from offline_mbrl.errors import NonFiniteError, UserError
from offline_mbrl.logging import RunLogger
from offline_mbrl.models.training import resolve_device
from offline_mbrl.modes import agent_class_of, get_mode, same_agent
from offline_mbrl.rng import PopulationRNG
from offline_mbrl.rollouts import Pessimism, rollout, rollout_step
from offline_mbrl.runs import (
    CHECKPOINT_FILE,
    PREVIOUS_CHECKPOINT_FILE,
    claim_run_dirs,
    find_checkpoint,
    member_run_dirs,
    write_config,
)
from offline_mbrl.runtime import keep_freed_memory

# Streams of the per-member random generators; fixed so that checkpoints stay valid.
_AGENT_STREAM, _DATA_STREAM, _ACTION_STREAM, _ROLLOUT_STREAM = 1, 2, 3, 4


def make_agent(kind: str, obs_dim: int, act_dim: int, action_low: Any, action_high: Any,
               seeds: tuple[int, ...], config: TrainerConfiguration, device: torch.device
               ) -> Any:
    """The agent class ``kind`` names (a registered mode's, see :func:`agent_class_of`)."""
    cls = agent_class_of(kind)
    return cls(obs_dim, act_dim, action_low, action_high, seeds, config.agent, device)


RESUME_MAY_CHANGE = frozenset({
    "online_epochs", "offline_epochs", "test_episodes", "render_test_episodes",
    "save_frequency", "device", "threads", "compile", "experiment_name", "seed", "seeds",
    "pretrained_agent_path", "pretrained_env_model_path", "dataset",
})
"""Settings a resumed run may change; every other one must equal the checkpoint's."""

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
        self.device = resolve_device(config.device)
        if self.device.type == "cpu":
            keep_freed_memory()
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        self.spec = get_env_spec(config.env_name)
        self.seeds = config.population_seeds
        self.P = len(self.seeds)
        self.progress = progress
        self._check_mode()

        probe: Any = make_env(config.env_name)
        self.obs_dim = int(np.prod(probe.observation_space.shape))
        self.act_dim = int(np.prod(probe.action_space.shape))
        self.action_low = torch.as_tensor(probe.action_space.low, dtype=torch.float32)
        self.action_high = torch.as_tensor(probe.action_space.high, dtype=torch.float32)
        probe.close()
        self.layout = TransitionLayout(self.obs_dim, self.act_dim)

        self.mode = get_mode(config.mode)
        self.online = self.mode.online
        self.eval_env = self.spec.gym_id
        """Gymnasium id of the evaluation episodes (a dataset's own, see _load_dataset_rows)."""
        self.model_based = self.mode.model_based or config.use_env_model
        # Everything that can fail on bad input happens before run directories are touched.
        dataset_rows = None if self.online else self._load_dataset_rows()
        self.model: Any = None
        self.model_path: Path | None = None
        if self.model_based and not self.online:
            self.model = self._existing_model()
        pretrained = (self._read_pretrained_agent(config.pretrained_agent_path)
                      if config.pretrained_agent_path and not resume else None)
        self.run_dirs = member_run_dirs(config, root)
        resume_from = claim_run_dirs(self.run_dirs, resume, overwrite)
        resuming = resume_from is not None
        if self.model_based and not self.online and self.model is None:
            self.model = self._train_and_save_model()

        self.kind = agent_kind(config.mode)
        self.agent = make_agent(self.kind, self.obs_dim, self.act_dim, self.action_low,
                                self.action_high, self.seeds, config, self.device)
        self._rollout_step: Any = None
        self._rollout_model: tuple[Any, Any] | None = None
        self.compiled: tuple[str, ...] = ()
        """What ``--compile`` handed to ``torch.compile``: ``"update"`` (SAC's gradient
        computation), ``"networks"`` (BC's policy) and ``"rollout_step"`` (model-based
        modes). Compilation itself happens at the first call."""
        if config.compile:
            compile_fn = compiler(self.device)
            if isinstance(self.agent, SAC):
                self.agent.compile_update(compile_fn)
                self.compiled += ("update",)
            else:
                compile_networks(self.agent, self.device)
                self.compiled += ("networks",)
            if self.model_based:
                self._rollout_step = compile_fn(rollout_step)
                self.compiled += ("rollout_step",)
        self.rngs = {name: PopulationRNG(self.seeds, self.device, stream)
                     for name, stream in (("agent", _AGENT_STREAM), ("data", _DATA_STREAM),
                                          ("action", _ACTION_STREAM),
                                          ("rollout", _ROLLOUT_STREAM))}
        self.epoch = 0
        self.saved_epoch = 0
        """The epoch of the newest checkpoint on disk (0: none yet)."""
        self.total_env_steps = 0
        self.total_updates = 0
        self.replay: PopulationBuffer | None = None
        self.dataset: DatasetSampler | None = None
        if dataset_rows is None:
            self.replay = PopulationBuffer(self.P, config.real_buffer_size, self.layout,
                                           self.device)
        else:
            self.dataset = DatasetSampler(dataset_rows)

        self.synthetic: PopulationBuffer | None = None
        self.pessimism: Pessimism | None = None
        self.resolved: dict[str, dict[str, Any]] = {}
        """Values the configuration leaves open, with where each came from (config.json)."""
        if self.model_based:
            self.synthetic = PopulationBuffer(self.P, config.virtual_buffer_size, self.layout,
                                            self.device)
            if self.model is not None:
                self.pessimism = self._resolve_pessimism()
        self.rollout_stats: dict[str, torch.Tensor] = {}
        self.rollout_rounds = 0
        self._synthetic_empty = True
        self._resumed_episodes: list[dict[str, Any]] | None = None

        if pretrained is not None:
            self.agent.load_state_dict(stack_member_states([pretrained] * self.P))
        if resume_from is not None:
            self._restore(resume_from)
        # On resume too: the settings a resume may change are applied and recorded.
        for run_dir, seed in zip(self.run_dirs, self.seeds, strict=True):
            write_config(run_dir, self.member_config(seed), self.resolved)
        purge = self.log_step + 1 if resuming else None
        self.loggers = [RunLogger(d, resume_epochs=self.epoch if resuming else None,
                                  purge_step=purge) for d in self.run_dirs]
        self._envs: Any = None
        self._env_state: dict[str, Any] = {}

    # ------------------------------------------------------------------ setup
    def _check_mode(self) -> None:
        for name in ("rollout_length", "pessimism", "ood_threshold"):
            values = getattr(self.config, name)
            if values is not None and len(values) not in (1, self.P):
                raise UserError(f"--{name} got {len(values)} values for {self.P} population "
                                f"members: pass one value or one per member")
        spec = get_mode(self.config.mode)
        online_model = spec.online and (spec.model_based or self.config.use_env_model)
        if online_model and self.P > 1:
            raise UserError("mbpo trains one environment model per seed from its own "
                            "interactions, so it runs one seed per command: pass a single --seed")
        if not issubclass(spec.agent_class(), SAC) and self.config.use_env_model:
            raise UserError(f"{spec.name} does not use an environment model: "
                            "drop --use_env_model")
        if not spec.online and self.spec.dataset_name is None \
                and self.config.dataset is None:
            raise UserError(f"mode '{self.config.mode}' trains on a dataset, but "
                            f"'{self.config.env_name}' names none: use a D4RL name such as "
                            "hopper-medium-replay-v2 or pass --dataset PATH")

    def member_config(self, seed: int) -> TrainerConfiguration:
        """The configuration as a single run of ``seed`` would have it."""
        return self.config.model_copy(update={"seed": seed, "seeds": None})

    def _load_dataset_rows(self) -> torch.Tensor:
        from offline_mbrl.data.resolve import load_dataset

        dataset = load_dataset(self.spec.dataset_name or self.config.env_name,
                               dataset=self.config.dataset)
        if dataset.obs_dim != self.obs_dim or dataset.act_dim != self.act_dim:
            raise UserError(f"dataset {dataset.name} has obs/action sizes {dataset.obs_dim}/"
                            f"{dataset.act_dim} but {self.config.env_name} needs "
                            f"{self.obs_dim}/{self.act_dim}: use the dataset of that environment")
        if len(dataset) == 0:
            raise UserError(f"dataset {dataset.name or self.config.env_name} has no transitions: "
                            "pass a dataset with data, or collect one with 'ombrl datasets "
                            "collect'")
        self.offline_dataset = dataset
        self.eval_env = evaluation_env_id(self.config.env_name, dataset.metadata.get("env_id"))
        as_tensor = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32))  # noqa: E731
        rows = self.layout.pack(as_tensor(dataset.observations), as_tensor(dataset.actions),
                                as_tensor(dataset.rewards), as_tensor(dataset.next_observations),
                                as_tensor(dataset.terminals))
        return rows.to(self.device)

    def _read_pretrained_agent(self, path: str) -> dict[str, Any]:
        """The agent state of a run to start from; every member starts from it."""
        state = load_checkpoint(find_checkpoint(path))
        kind = agent_kind(self.config.mode)
        if not same_agent(state.get("agent_kind"), kind) or state.get("obs_dim") != self.obs_dim:
            raise UserError(f"pretrained agent {path} is a {state.get('agent_kind')} agent for "
                            f"obs_dim {state.get('obs_dim')}: pass a {kind} run of "
                            f"{self.config.env_name}")
        return state["agent"]

    # ------------------------------------------------------------------ model
    def _model_config(self) -> Any:
        return self.config.env_model.model_copy(update={"device": str(self.device)})

    def _existing_model(self) -> Any:
        """The saved model to reuse, ``None`` when one must be trained; refuses mismatches."""
        from offline_mbrl.models.io import (
            check_model_matches,
            default_model_path,
            load_environment_model,
        )

        explicit = self.config.pretrained_env_model_path
        path = Path(explicit) if explicit else default_model_path(
            self.spec.dataset_name or self.config.env_name)
        self.model_path = path
        if not explicit and not path.is_file():
            return None
        model, metadata = load_environment_model(path, device=self.device)
        check_model_matches(metadata, self.offline_dataset, self.config.env_name)
        return model

    def _train_and_save_model(self) -> Any:
        from offline_mbrl.models.io import save_environment_model
        from offline_mbrl.models.training import train_environment_model

        model, metrics = train_environment_model(
            self.offline_dataset, self._model_config(), self.config.env_name,
            log_dir=self.run_dirs[0].parent / "env_model_tensorboard", progress=self.progress)
        assert self.model_path is not None
        save_environment_model(model, self.model_path, {
            "config": self._model_config().model_dump(mode="json"),
            "dataset_name": self.offline_dataset.name,
            "dataset_hash": self.offline_dataset.content_hash(),
            "validation": metrics,
        })
        return model.to(self.device)

    def _per_member(self, name: str, values: tuple[float, ...]) -> torch.Tensor:
        if len(values) not in (1, self.P):
            raise UserError(f"--{name} got {len(values)} values for {self.P} population "
                            f"members: pass one value or one per member")
        return torch.as_tensor(values * (self.P if len(values) == 1 else 1),
                               dtype=torch.float32, device=self.device)

    def _resolve_pessimism(self) -> Pessimism:
        """Per-member rollout lengths and pessimism: flags, then the tuned table (only for
        the published D4RL files, recognised by content), then values derived from the
        dataset's uncertainty statistics. Where each came from goes to ``self.resolved``."""
        from offline_mbrl.data.d4rl import is_published_d4rl
        from offline_mbrl.hyperparameters import fallback_pessimism, lookup
        from offline_mbrl.models.statistics import largest_reward

        config = self.config
        mode = config.mode
        name = self.spec.dataset_name
        published = not self.online and is_published_d4rl(self.offline_dataset, name)
        tuned = lookup(mode, name) if published else None
        if config.rollout_length:
            lengths, source = config.rollout_length, "flag"
        elif tuned:
            lengths, source = (tuned.rollout_length,), "table"
        else:
            lengths, source = (config.max_virtual_rollout_length,), "max_virtual_rollout_length"
        rollout_length = self._per_member("rollout_length", lengths).long()
        self.resolved["rollout_length"] = {"value": rollout_length.tolist(), "source": source}
        penalty = torch.zeros(self.P, device=self.device)
        threshold = torch.full((self.P,), math.inf, device=self.device)
        max_reward = largest_reward(self.offline_dataset.rewards) if not self.online else 0.0
        field = self.mode.pessimism_field
        if field is not None:
            given, source = getattr(config, field), "flag"
            if given is None and tuned is not None:
                given, source = (tuned.value,), "table"
            if given is None:
                from offline_mbrl.models.statistics import uncertainty_statistics

                stats = uncertainty_statistics(self.model, self.offline_dataset, self.model_path)
                assert self.mode.uncertainty is not None
                given = (fallback_pessimism(mode, stats[self.mode.uncertainty], max_reward),)
                source = "derived from the dataset's uncertainty statistics"
            values = self._per_member(field, given)
            self.resolved[field] = {"value": values.tolist(), "source": source}
            if self.mode.pessimism == "penalty":
                penalty = values
            else:
                threshold = values
        self.resolved["max_reward"] = {
            "value": max_reward,
            "source": ("largest dataset reward"
                       if self.online or self.offline_dataset.rewards.max(initial=0.0) > 0
                       else "width of the dataset's reward range (no reward is positive)")}
        return Pessimism.from_mode(mode, rollout_length, penalty, threshold, max_reward)

    def _rollout_round(self, start_source: Callable[[int], torch.Tensor]) -> None:
        """Generate ``n_parallel_virtual_rollouts × rollout_every`` transitions per member."""
        assert self.pessimism is not None and self.synthetic is not None
        samples = self.config.n_parallel_virtual_rollouts * self.config.rollout_every
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
        if not self.model_based or self.synthetic is None:
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
        from offline_mbrl.data.dataset import OfflineDataset
        from offline_mbrl.models.training import train_environment_model

        assert self.replay is not None
        rows = self.replay.state_dict()["rows"][0]
        parts = self.layout.unpack(rows)
        dataset = OfflineDataset(
            observations=parts["obs"].numpy(), actions=parts["action"].numpy(),
            rewards=parts["reward"].numpy(), next_observations=parts["next_obs"].numpy(),
            terminals=parts["terminated"].numpy() > 0.5,
            timeouts=np.zeros(rows.shape[0], dtype=bool), name="replay")
        # Warm retraining continues from the current weights, with a short patience.
        config = self._model_config()
        warm = self.model is not None and not self.config.train_env_model_from_scratch
        if warm:
            config = config.model_copy(update={"training_patience": 5})
        self.model, _ = train_environment_model(dataset, config, self.config.env_name,
                                                progress=False,
                                                initial=self.model if warm else None)
        self.model = self.model.to(self.device)
        if self.pessimism is None:
            self.pessimism = self._resolve_pessimism()
        if self.config.reset_virtual_buffer_after_env_model_training and self.synthetic is not None:
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
            self._check_resumable(f, state)
        try:
            self._load_states(states)
        except (KeyError, RuntimeError, ValueError, TypeError) as error:
            reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
            raise UserError(f"checkpoint {files[0]} does not fit this run ({reason}): resume "
                            "with the settings it was trained with, or pass --overwrite") from None

    def _check_resumable(self, path: Path, state: dict[str, Any]) -> None:
        """Refuse a checkpoint of another run, or a resume that changes fixed settings."""
        if not same_agent(state.get("agent_kind"), self.kind) \
                or state.get("obs_dim") != self.obs_dim:
            raise UserError(f"checkpoint {path} belongs to another mode or environment: "
                            "start a new run with --overwrite")
        saved = state.get("config")
        if not isinstance(saved, dict):
            raise UserError(f"checkpoint {path} holds no configuration: it is damaged or "
                            "foreign; start a new run with --overwrite")
        now = self.member_config(int(saved.get("seed", 0))).model_dump(mode="json")
        changed = [key for key in now if key not in RESUME_MAY_CHANGE
                   and key in saved and saved[key] != now[key]]
        if changed:
            what = ", ".join(f"{k} (checkpoint {saved[k]!r}, now {now[k]!r})" for k in changed)
            raise UserError(f"--resume cannot change {what}: drop those flags, or start a new "
                            "run with --overwrite")

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
            from offline_mbrl.models.ensemble import EnvironmentModel

            saved = states[0]["model"]
            self.model = EnvironmentModel(**saved["architecture"])
            self.model.load_state_dict(saved["state"])
            self.model = self.model.to(self.device).eval()
            self.pessimism = self._resolve_pessimism()

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
                if self.total_env_steps < config.random_steps:
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
        from offline_mbrl.evaluation import evaluate_population

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
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        config = self.config
        epochs = config.epochs
        last_rows: list[dict[str, float]] = []
        start_time = time.time()
        progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(),
            TextColumn("{task.completed}/{task.total} epochs"),
            TextColumn("{task.fields[speed]:.0f} steps/s"),
            TextColumn("test return {task.fields[ret]}"), TimeRemainingColumn(),
            disable=not self.progress, transient=False)
        try:
            with progress:
                task = progress.add_task(f"{config.env_name} {config.mode}", total=epochs,
                                         completed=self.epoch, speed=0.0, ret="-")
                while self.epoch < epochs:
                    epoch_start = time.time()
                    steps_done = [0]

                    def tick(task: Any = task, steps_done: list[int] = steps_done,
                             epoch_start: float = epoch_start) -> None:
                        steps_done[0] += 1
                        if steps_done[0] % 200 == 0:
                            speed = steps_done[0] / max(time.time() - epoch_start, 1e-9)
                            progress.update(task, speed=speed)

                    means = self.train_epoch(tick)
                    self.epoch += 1
                    result = self.evaluate()
                    last_rows = self.log_epoch(result, means, time.time() - start_time)
                    self.rollout_stats, self.rollout_rounds = {}, 0
                    # With a callback the checkpoint comes first: a sweep scheduler may end the
                    # process inside the callback, and the run directory must be complete.
                    if (self.epoch % config.save_frequency == 0 or self.epoch == epochs
                            or on_epoch is not None):
                        self.save()
                    stop = bool(on_epoch(self.epoch, last_rows)) if on_epoch else False
                    mean_return = np.mean([r["AverageTestEpRet"] for r in last_rows])
                    progress.update(task, completed=self.epoch, ret=f"{mean_return:.1f}")
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
    from offline_mbrl.config import make_config

    if config is None:
        config = make_config(TrainerConfiguration, **overrides)
    elif overrides:
        config = make_config(TrainerConfiguration, **{**config.model_dump(), **overrides})
    return Trainer(config, resume=resume, overwrite=overwrite, progress=progress).run()
