"""The pessimistic offline loop at OfflineRL-Kit MOPO's default hopper settings.

Settings of the peer's measurement: ensemble of 7 networks of 4×200, rollouts of 50,000
starts × length 5 every 1,000 gradient steps, batch 256, real ratio 0.05, on 200,000
transitions. The dataset here is synthetic but hopper-shaped (obs 11, action 3) and its
states are healthy under Hopper's termination rule, so rollouts run their full length as
they do on the real hopper data the peer used; the work per step is the same.

Prints, in one run:
- seconds per dynamics-training epoch on the 200k transitions (80% train);
- seconds per 50k × 5 rollout (one seed), float32 and bfloat16;
- gradient steps/s end to end (one rollout round per 1,000 steps, plus the updates)
  for P = 1 and P = 6 (seed-steps/s for the population), in float32, with bf16 rollouts,
  and with bf16 rollouts and the mixed-precision SAC update (``--settings``);
- the arithmetic it needs (GFLOP per 1,000 steps and one rollout round, counted by
  ``torch.utils.flop_counter``) and the rate at which each configuration ran;
- the machine's float32 and bf16 matrix-product rates before and after the run;
- the peer's recorded figures and, with ``--peer DIR``, the peer measured in this run
  (below), with the ratios to each;
- the same loop written plainly (``PlainLoop``: nn.Linear networks, autograd SAC with
  separate critics, one model call over all 50k starts, per-step ``.item()`` logging),
  single seed and eager, measured in the same run, and the ratios to it.

Every figure is timed ``--repeats`` times (default 2) and the fastest is reported: on a
shared machine other processes can only slow a measurement down.

The peer, OfflineRL-Kit's MOPO at its hopper settings, appears in two columns:

- "peer (recorded at N threads)": figures measured once on this machine kind, keyed by the
  thread count they were measured at (``PEER_RECORDED``: at 2 threads a dynamics epoch of
  14.1 s, a rollout of 14.9 s, 87 SAC steps/s and 37 steps/s end to end; at 1 thread 25
  steps/s end to end only). The ratios to it are given only where a figure was recorded at
  this run's thread count; elsewhere the ratio cell holds a dash and a footnote says why
  (a figure recorded at another thread count is shown but never divided into this run's).
- "peer (measured)", with ``--peer DIR``: the peer's own code measured in this run, at the
  same settings, thread count and synthetic dataset. ``DIR`` is a local checkout of
  https://github.com/yihaosun1124/OfflineRL-Kit that the user provides; it is never vendored
  or copied into this repository, only imported from ``DIR`` at run time (``sys.path``).
  The run follows ``run_example/run_mopo.py`` without d4rl: the synthetic dataset, as a dict
  of numpy arrays in D4RL's layout, goes through their ``qlearning_dataset``; their
  ``EnsembleDynamicsModel`` (7 × 4×200, 5 elites) and ``EnsembleDynamics`` (hopper
  termination, penalty 5.0) trained by ``EnsembleDynamics.train`` (one epoch per timing; the
  figure is the time of its ``learn`` pass over the training split, which holds out
  min(20%, 1,000) rows where ours holds out 20%); their ``MLP``,
  ``ActorProb``, ``TanhDiagGaussian`` and ``Critic`` networks (256×256, auto-alpha) in a
  ``MOPOPolicy``; their ``ReplayBuffer`` for real and model data (fake buffer of 5 rollout
  rounds); and their ``MBPolicyTrainer.train`` for one epoch of ``--steps`` steps with one
  rollout round (``--starts`` × ``--length`` every ``--steps`` steps, batch 256, real ratio
  0.05), which is the end-to-end figure. That figure includes what their loop does once per
  epoch (logger dump, checkpoint save) but no evaluation: there is no simulator, and the
  evaluation environment is a stand-in asked for zero episodes. The rollout figure is one
  ``MOPOPolicy.rollout`` call; the SAC figure is their step without the rollout (buffer
  samples and ``MOPOPolicy.learn``). Their logger and progress bar write to ``peer.log`` in
  the run's temporary directory. Where ``gym`` is not installed (OfflineRL-Kit imports it
  but the loop uses it only in type annotations: ``gym.Env``, ``gym.spaces.Space``,
  ``gym.envs.mujoco.mujoco_env.MujocoEnv``), an empty stand-in module is put in
  ``sys.modules`` while their package is imported; d4rl and mujoco-py are not imported by
  their package, only by their example scripts, which this does not run.

Usage::

    .venv/bin/python benchmarks/offline_loop.py                # full settings (~20 minutes)
    .venv/bin/python benchmarks/offline_loop.py --steps 200 --starts 5000 --sizes 1
    .venv/bin/python benchmarks/offline_loop.py --threads 1 --peer ~/src/OfflineRL-Kit
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import math
import os
import platform
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

# OfflineRL-Kit MOPO, hopper, its default settings, measured on this machine kind, keyed by
# the thread count of the measurement (at 1 thread only the end-to-end rate was recorded).
PEER_RECORDED = {
    2: {"epoch_s": 14.1, "rollout_s": 14.9, "sac_steps_per_s": 87.0, "end_to_end": 37.0},
    1: {"end_to_end": 25.0},
}
OBS_DIM, ACT_DIM = 11, 3
TARGETS = {"p1": 110.0, "p6": 200.0, "rollout_s": 5.0, "epoch_s": 11.0}


def synthetic_dataset(n: int, seed: int = 0):
    """Stable linear-Gaussian dynamics with hopper's sizes and healthy hopper states.

    The height (obs 0) stays near 1.25 and the torso angle (obs 1) near 0, well inside
    Hopper-v5's healthy ranges, so that model rollouts do not end at their first step.
    """
    from offline_mbrl.data.dataset import OfflineDataset

    rng = np.random.default_rng(seed)
    center = np.zeros(OBS_DIM)
    center[0] = 1.25
    scale = np.ones(OBS_DIM)
    scale[:2] = (0.05, 0.03)
    mix = rng.normal(scale=0.1, size=(OBS_DIM, OBS_DIM))
    drive = rng.normal(scale=0.3, size=(ACT_DIM, OBS_DIM))
    state = rng.normal(size=(n, OBS_DIM))
    actions = rng.uniform(-1, 1, size=(n, ACT_DIM))
    next_state = 0.9 * state + state @ mix + actions @ drive + 0.1 * rng.normal(size=state.shape)
    obs = (center + scale * state).astype(np.float32)
    next_obs = (center + scale * next_state).astype(np.float32)
    rewards = (next_state[:, 5] - 0.1 * (actions**2).sum(1)).astype(np.float32)
    timeouts = np.zeros(n, dtype=bool)
    timeouts[999::1000] = True
    return OfflineDataset(obs, actions.astype(np.float32), rewards, next_obs,
                          np.zeros(n, dtype=bool), timeouts, name="synthetic-hopper")


# --------------------------------------------------------------------------- plain loop
def _mlp(n_in: int, n_out: int, hidden: int = 128, layers: int = 4) -> nn.Sequential:
    sizes = [n_in, *[hidden] * layers]
    modules: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        modules += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*modules, nn.Linear(sizes[-1], n_out))


class PlainLoop:
    """The same pessimistic loop as a straightforward single-seed implementation.

    What a careful first version looks like: tensors stay in torch on the device, but
    networks are ``nn.Linear`` stacks, the twin critics are separate modules updated by
    autograd (critic step, then actor step), the model runs on all starts in one call,
    and losses are logged with ``.item()`` at every step.
    """

    def __init__(self, model, rows: torch.Tensor, layout, pessimism: float, seed: int = 0
                 ) -> None:
        torch.manual_seed(seed)
        self.model, self.rows, self.layout, self.pessimism = model, rows, layout, pessimism
        self.generator = torch.Generator().manual_seed(seed)
        self.actor = _mlp(OBS_DIM, 2 * ACT_DIM)
        self.q1, self.q2 = _mlp(OBS_DIM + ACT_DIM, 1), _mlp(OBS_DIM + ACT_DIM, 1)
        self.q1_target, self.q2_target = copy.deepcopy(self.q1), copy.deepcopy(self.q2)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=3e-4)
        self.critic_optimizer = torch.optim.Adam(
            [*self.q1.parameters(), *self.q2.parameters()], lr=3e-4)
        self.synthetic = rows[:0]
        self.log: list[float] = []

    def _policy(self, obs: torch.Tensor, deterministic: bool = False):
        mean, log_std = self.actor(obs).chunk(2, dim=-1)
        std = log_std.clamp(-20, 2).exp()
        dist = torch.distributions.Normal(mean, std)
        u = dist.rsample()
        action = torch.tanh(u)
        log_prob = (dist.log_prob(u) - torch.log(1 - action.pow(2) + 1e-6)).sum(-1)
        return action, log_prob

    @torch.no_grad()
    def rollout(self, n_starts: int, length: int) -> None:
        from offline_mbrl.models.uncertainty import epistemic_uncertainty

        index = torch.randint(len(self.rows), (n_starts,), generator=self.generator)
        obs = self.rows[index][:, :OBS_DIM]
        new = []
        for _ in range(length):
            action, _ = self._policy(obs)
            outputs = self.model(obs, action)
            member = torch.randint(outputs.delta_mean.shape[0], (len(obs),),
                                   generator=self.generator)
            noise = torch.randn(len(obs), OBS_DIM + 1, generator=self.generator)
            next_obs, reward = self.model.sample_next(outputs, obs, member, noise)
            reward = reward - self.pessimism * epistemic_uncertainty(outputs,
                                                                     self.model.normalizer)
            terminated = self.model.terminated(obs, action, next_obs)
            new.append(self.layout.pack(obs, action, reward, next_obs, terminated))
            keep = ~terminated
            if not keep.any():
                break
            obs = next_obs[keep]
        self.synthetic = torch.cat([*new, self.synthetic])[:1_000_000]

    def update(self, n_real: int, n_synthetic: int) -> None:
        real = self.rows[torch.randint(len(self.rows), (n_real,), generator=self.generator)]
        fake = self.synthetic[torch.randint(len(self.synthetic), (n_synthetic,),
                                          generator=self.generator)]
        batch = self.layout.unpack(torch.cat([real, fake]))
        obs, action, next_obs = batch["obs"], batch["action"], batch["next_obs"]
        with torch.no_grad():
            next_action, next_log_prob = self._policy(next_obs)
            x = torch.cat([next_obs, next_action], -1)
            next_q = torch.min(self.q1_target(x), self.q2_target(x)).squeeze(-1)
            target = batch["reward"] + 0.99 * (1 - batch["terminated"]) * (
                next_q - 0.2 * next_log_prob)
        x = torch.cat([obs, action], -1)
        loss_q = ((self.q1(x).squeeze(-1) - target) ** 2).mean() + (
            (self.q2(x).squeeze(-1) - target) ** 2).mean()
        self.critic_optimizer.zero_grad()
        loss_q.backward()
        self.critic_optimizer.step()
        new_action, log_prob = self._policy(obs)
        for p in [*self.q1.parameters(), *self.q2.parameters()]:
            p.requires_grad_(False)
        x = torch.cat([obs, new_action], -1)
        loss_pi = (0.2 * log_prob - torch.min(self.q1(x), self.q2(x)).squeeze(-1)).mean()
        self.actor_optimizer.zero_grad()
        loss_pi.backward()
        self.actor_optimizer.step()
        for p in [*self.q1.parameters(), *self.q2.parameters()]:
            p.requires_grad_(True)
        with torch.no_grad():
            for net, target_net in ((self.q1, self.q1_target), (self.q2, self.q2_target)):
                for p, tp in zip(net.parameters(), target_net.parameters(), strict=True):
                    tp.mul_(0.995).add_(0.005 * p)
        self.log += [loss_q.item(), loss_pi.item(), log_prob.mean().item()]


def time_plain(model, dataset, starts: int, length: int, steps: int, repeats: int
               ) -> dict[str, float]:
    from offline_mbrl.data.buffer import TransitionLayout

    layout = TransitionLayout(OBS_DIM, ACT_DIM)
    as_t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32))  # noqa: E731
    rows = layout.pack(as_t(dataset.observations), as_t(dataset.actions),
                       as_t(dataset.rewards), as_t(dataset.next_observations),
                       as_t(dataset.terminals))
    loop = PlainLoop(model, rows, layout, pessimism=1.0)
    loop.rollout(2000, length)
    for _ in range(5):
        loop.update(13, 243)
    rollout_s = update_s = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        loop.rollout(starts, length)
        rollout_s = min(rollout_s, time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(steps):
            loop.update(13, 243)
        update_s = min(update_s, (time.perf_counter() - t0) / steps)
    return {"rollout_s": rollout_s, "updates_per_s": 1 / update_s,
            "steps_per_s": steps / (rollout_s + steps * update_s)}


# --------------------------------------------------------------------------- ours
# Named precision settings: (rollout dtype of the model, precision of the SAC update).
SETTINGS = {"float32": ("float32", "float32"),
            "bf16-rollouts": ("bfloat16", "float32"),
            "bf16-all": ("bfloat16", "bfloat16")}


def trainer_config(P: int, setting: str, compiled: bool, data_path: Path, model_path: Path,
                   args, name: str):
    """The pessimistic loop at the peer's settings, for ``P`` seeds in ``setting``."""
    from offline_mbrl.config import TrainerConfiguration

    return TrainerConfiguration(
        env_name="hopper-medium-v2", mode="epistemic-penalty", dataset=str(data_path),
        seeds=tuple(range(P)), pretrained_env_model_path=str(model_path),
        rollout_length=(args.length,), pessimism=(1.0,), real_ratio=0.05,
        rollout_every=args.steps, rollout_dtype=SETTINGS[setting][0],
        agent={"precision": SETTINGS[setting][1]},
        n_parallel_rollouts=max(1, args.starts * args.length // args.steps),
        experiment_name=name, device=args.device, test_episodes=1, compile=compiled)


def time_ours(P: int, setting: str, compiled: bool, data_path: Path, model_path: Path, args
              ) -> dict[str, float]:
    from offline_mbrl.train import Trainer

    config = trainer_config(P, setting, compiled, data_path, model_path, args,
                            f"bench-p{P}-{setting}")
    if compiled:
        # As in a run of its own: dynamo's caches are per function, and the guards of other
        # trainers' agents would be checked at every call.
        torch._dynamo.reset()
    trainer = Trainer(config, overwrite=True, progress=False)
    # Warm-up: first rollout round, allocations and, compiled, the compilation.
    trainer.train_epoch(steps=5)
    if compiled:
        trainer.total_updates = 0
        trainer.train_epoch(steps=5)
    result: dict[str, float] = {}
    if P == 1:
        def starts(n: int, t: Trainer = trainer) -> torch.Tensor:
            return t.dataset.sample(n, t.rngs["data"])

        result["rollout_s"] = math.inf
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            trainer._rollout_round(starts)
            result["rollout_s"] = min(result["rollout_s"], time.perf_counter() - t0)
        result["rollout_length"] = float(trainer.rollout_stats["RolloutLength"][0]
                                         / trainer.rollout_rounds)
    elapsed = math.inf
    for _ in range(args.repeats):
        trainer.total_updates = 0  # the next step starts a rollout round
        t0 = time.perf_counter()
        trainer.train_epoch(steps=args.steps)
        elapsed = min(elapsed, time.perf_counter() - t0)
    n_updates = min(args.steps - 1, 200)
    best = math.inf
    for _ in range(args.repeats):
        trainer.total_updates = 1  # updates only
        t0 = time.perf_counter()
        trainer.train_epoch(steps=n_updates)
        best = min(best, time.perf_counter() - t0)
    result["updates_per_s"] = n_updates / best
    result["seed_steps_per_s"] = P * args.steps / elapsed
    trainer.close()
    return result


# --------------------------------------------------------------------------- the peer
# run_mopo.py's arguments (hopper-medium-v2's suggested penalty) that the loop uses.
PEER_SETTINGS = {"hidden_dims": [256, 256], "actor_lr": 1e-4, "critic_lr": 3e-4,
                 "alpha_lr": 1e-4, "gamma": 0.99, "tau": 0.005, "dynamics_lr": 1e-3,
                 "dynamics_hidden_dims": [200, 200, 200, 200],
                 "dynamics_weight_decay": [2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4],
                 "n_ensemble": 7, "n_elites": 5, "penalty_coef": 5.0, "model_retain_epochs": 5,
                 "batch_size": 256, "real_ratio": 0.05, "epoch": 3000, "seed": 1,
                 "task": "hopper-medium-v2"}
# Their logger's outputs, as in run_mopo.py.
PEER_LOG_OUTPUTS = {"consoleout_backup": "stdout", "policy_training_progress": "csv",
                    "dynamics_training_progress": "csv", "tb": "tensorboard"}


def _gym_stand_in() -> dict[str, types.ModuleType]:
    """Empty ``gym`` modules with the three names OfflineRL-Kit's package reads at import,
    all in type annotations (``gym.Env``, ``gym.spaces.Space``,
    ``gym.envs.mujoco.mujoco_env.MujocoEnv``); nothing in the MOPO loop calls gym."""
    modules = {name: types.ModuleType(name) for name in (
        "gym", "gym.spaces", "gym.envs", "gym.envs.mujoco", "gym.envs.mujoco.mujoco_env")}
    modules["gym"].Env = type("Env", (), {})
    modules["gym.spaces"].Space = type("Space", (), {})
    modules["gym.envs.mujoco.mujoco_env"].MujocoEnv = type("MujocoEnv", (modules["gym"].Env,),
                                                           {})
    modules["gym"].spaces = modules["gym.spaces"]
    modules["gym"].envs = modules["gym.envs"]
    modules["gym.envs"].mujoco = modules["gym.envs.mujoco"]
    modules["gym.envs.mujoco"].mujoco_env = modules["gym.envs.mujoco.mujoco_env"]
    return modules


def import_peer(peer_dir: Path) -> tuple[types.SimpleNamespace, list[str]]:
    """OfflineRL-Kit's classes, imported from the checkout at ``peer_dir``; the modules that
    had to be stood in for."""
    if not (peer_dir / "offlinerlkit" / "__init__.py").is_file():
        raise SystemExit(f"--peer {peer_dir}: no offlinerlkit package there (expected a "
                         "checkout of https://github.com/yihaosun1124/OfflineRL-Kit)")
    sys.path.insert(0, str(peer_dir.resolve()))
    stood_in: dict[str, types.ModuleType] = {}
    try:
        import gym  # noqa: F401
    except ImportError:
        stood_in = _gym_stand_in()
        sys.modules.update(stood_in)
    try:
        from offlinerlkit.buffer import ReplayBuffer
        from offlinerlkit.dynamics import EnsembleDynamics
        from offlinerlkit.modules import (
            ActorProb,
            Critic,
            EnsembleDynamicsModel,
            TanhDiagGaussian,
        )
        from offlinerlkit.nets import MLP
        from offlinerlkit.policy import MOPOPolicy
        from offlinerlkit.policy_trainer import MBPolicyTrainer
        from offlinerlkit.utils.load_dataset import qlearning_dataset
        from offlinerlkit.utils.logger import Logger
        from offlinerlkit.utils.scaler import StandardScaler
        from offlinerlkit.utils.termination_fns import get_termination_fn
    finally:
        for name in stood_in:  # their modules keep their references; nobody else sees it
            del sys.modules[name]
    kit = types.SimpleNamespace(
        ReplayBuffer=ReplayBuffer, EnsembleDynamics=EnsembleDynamics, ActorProb=ActorProb,
        Critic=Critic, EnsembleDynamicsModel=EnsembleDynamicsModel,
        TanhDiagGaussian=TanhDiagGaussian, MLP=MLP, MOPOPolicy=MOPOPolicy,
        MBPolicyTrainer=MBPolicyTrainer, qlearning_dataset=qlearning_dataset, Logger=Logger,
        StandardScaler=StandardScaler, get_termination_fn=get_termination_fn)
    return kit, sorted(stood_in)


class _NoEvaluation:
    """The evaluation environment handed to ``MBPolicyTrainer``: it is asked for zero
    episodes, so only ``reset`` and ``get_normalized_score`` are called."""

    def __init__(self, obs_dim: int) -> None:
        self.obs_dim = obs_dim

    def reset(self) -> np.ndarray:
        return np.zeros(self.obs_dim, dtype=np.float32)

    def get_normalized_score(self, score: float) -> float:
        return score


def time_peer(peer_dir: Path, dataset, work: Path, args) -> dict[str, Any]:
    """OfflineRL-Kit's MOPO on the same data, settings and threads (see the docstring).

    Returns seconds per dynamics epoch (``epoch_s``) and per rollout round (``rollout_s``),
    the mean rollout length, SAC ``updates_per_s``, end-to-end ``steps_per_s``, the modules
    stood in for (``stood_in``) and the path of their log (``log``).
    """
    kit, stood_in = import_peer(peer_dir)
    S = PEER_SETTINGS
    d4rl_layout = {"observations": dataset.observations, "actions": dataset.actions,
                   "next_observations": dataset.next_observations,
                   "rewards": dataset.rewards, "terminals": dataset.terminals,
                   "timeouts": dataset.timeouts}
    logs = iter(itertools.count())

    def logger():  # a fresh one each time: their trainer closes it at the end of a run
        directory = work / "peer" / f"run{next(logs)}"
        directory.mkdir(parents=True)
        return kit.Logger(str(directory), PEER_LOG_OUTPUTS)

    result: dict[str, Any] = {"stood_in": stood_in}
    log_path = work / "peer.log"
    with open(log_path, "w") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # their mean over zero evaluation episodes
        data = kit.qlearning_dataset(None, dataset=d4rl_layout)
        np.random.seed(S["seed"])
        torch.manual_seed(S["seed"])
        obs_shape, action_dim = (data["observations"].shape[1],), data["actions"].shape[1]
        device = args.device

        actor_backbone = kit.MLP(input_dim=obs_shape[0], hidden_dims=S["hidden_dims"])
        critic_backbones = [kit.MLP(input_dim=obs_shape[0] + action_dim,
                                    hidden_dims=S["hidden_dims"]) for _ in range(2)]
        dist = kit.TanhDiagGaussian(latent_dim=actor_backbone.output_dim,
                                    output_dim=action_dim, unbounded=True,
                                    conditioned_sigma=True, max_mu=1.0)
        actor = kit.ActorProb(actor_backbone, dist, device)
        critic1, critic2 = (kit.Critic(b, device) for b in critic_backbones)
        actor_optim = torch.optim.Adam(actor.parameters(), lr=S["actor_lr"])
        critic1_optim = torch.optim.Adam(critic1.parameters(), lr=S["critic_lr"])
        critic2_optim = torch.optim.Adam(critic2.parameters(), lr=S["critic_lr"])
        lr_scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(actor_optim, S["epoch"])
        log_alpha = torch.zeros(1, requires_grad=True, device=device)
        alpha = (-action_dim, log_alpha, torch.optim.Adam([log_alpha], lr=S["alpha_lr"]))

        dynamics_model = kit.EnsembleDynamicsModel(
            obs_dim=obs_shape[0], action_dim=action_dim,
            hidden_dims=S["dynamics_hidden_dims"], num_ensemble=S["n_ensemble"],
            num_elites=S["n_elites"], weight_decays=S["dynamics_weight_decay"], device=device)
        dynamics = kit.EnsembleDynamics(
            dynamics_model, torch.optim.Adam(dynamics_model.parameters(), lr=S["dynamics_lr"]),
            kit.StandardScaler(), kit.get_termination_fn(task=S["task"]),
            penalty_coef=S["penalty_coef"])
        policy = kit.MOPOPolicy(dynamics, actor, critic1, critic2, actor_optim, critic1_optim,
                                critic2_optim, tau=S["tau"], gamma=S["gamma"], alpha=alpha)
        real_buffer = kit.ReplayBuffer(buffer_size=len(data["observations"]),
                                       obs_shape=obs_shape, obs_dtype=np.float32,
                                       action_dim=action_dim, action_dtype=np.float32,
                                       device=device)
        real_buffer.load_dataset(data)
        fake_buffer = kit.ReplayBuffer(
            buffer_size=args.starts * args.length * S["model_retain_epochs"],
            obs_shape=obs_shape, obs_dtype=np.float32, action_dim=action_dim,
            action_dtype=np.float32, device=device)

        # Dynamics: their training, one epoch per timing; the epoch is its `learn` pass.
        epochs: list[float] = []
        learn = dynamics.learn

        def timed_learn(*a, **k):
            t0 = time.perf_counter()
            loss = learn(*a, **k)
            epochs.append(time.perf_counter() - t0)
            return loss

        dynamics.learn = timed_learn
        dynamics_logger = logger()
        for _ in range(args.repeats):
            dynamics.train(real_buffer.sample_all(), dynamics_logger, max_epochs=1,
                           max_epochs_since_update=5)
        dynamics_logger.close()
        dynamics.learn = learn
        result["epoch_s"] = min(epochs)

        # One rollout round: their `rollout` from `--starts` real states.
        result["rollout_s"] = math.inf
        for _ in range(args.repeats):
            init_obss = real_buffer.sample(args.starts)["observations"].cpu().numpy()
            t0 = time.perf_counter()
            transitions, info = policy.rollout(init_obss, args.length)
            result["rollout_s"] = min(result["rollout_s"], time.perf_counter() - t0)
            fake_buffer.add_batch(**transitions)
        result["rollout_length"] = info["num_transitions"] / args.starts

        # Their step without the rollout: buffer samples and `MOPOPolicy.learn`.
        n_real = int(S["batch_size"] * S["real_ratio"])
        n_updates = min(args.steps - 1, 200)
        policy.train()
        best = math.inf
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            for _ in range(n_updates):
                policy.learn({"real": real_buffer.sample(n_real),
                              "fake": fake_buffer.sample(S["batch_size"] - n_real)})
            best = min(best, time.perf_counter() - t0)
        result["updates_per_s"] = n_updates / best

        # End to end: their trainer, one epoch of --steps steps and one rollout round.
        trainer = kit.MBPolicyTrainer(
            policy=policy, eval_env=_NoEvaluation(obs_shape[0]), real_buffer=real_buffer,
            fake_buffer=fake_buffer, logger=None,
            rollout_setting=(args.steps, args.starts, args.length), epoch=1,
            step_per_epoch=args.steps, batch_size=S["batch_size"],
            real_ratio=S["real_ratio"], eval_episodes=0, lr_scheduler=lr_scheduler)
        elapsed = math.inf
        for _ in range(args.repeats):
            trainer.logger = logger()
            t0 = time.perf_counter()
            trainer.train()
            elapsed = min(elapsed, time.perf_counter() - t0)
        result["steps_per_s"] = args.steps / elapsed
    result["log"] = str(log_path)
    return result


def gemm_gflops(dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 5) -> float:
    """The machine's matrix-product rate right now: a ``[n, n] @ [n, n]`` product, fastest
    of ``repeats``. Measured at the start and the end of a run, it shows how fast the
    shared VM was during it, so that runs made in different phases can be compared."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    a @ b
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def count_flops(data_path: Path, model_path: Path, args) -> dict[str, float]:
    """Floating-point operations of one rollout round and of one SAC update (P = 1).

    Counted by ``torch.utils.flop_counter`` (matrix products only: the elementwise work
    is small beside them), so that the steps/s figures can be read against the arithmetic
    they need. The counts do not depend on the precision.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from offline_mbrl.train import Trainer

    config = trainer_config(1, "float32", False, data_path, model_path, args, "bench-flops")
    trainer = Trainer(config, overwrite=True, progress=False)
    trainer.train_epoch(steps=5)
    with FlopCounterMode(display=False) as counter:
        trainer._rollout_round(lambda n: trainer.dataset.sample(n, trainer.rngs["data"]))
    rollout = counter.get_total_flops()
    trainer.total_updates = 1  # updates only
    with FlopCounterMode(display=False) as counter:
        trainer.train_epoch(steps=10)
    update = counter.get_total_flops() / 10
    trainer.close()
    return {"rollout": rollout, "update": update, "per_round": rollout + args.steps * update}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transitions", type=int, default=200_000)
    parser.add_argument("--starts", type=int, default=50_000, help="rollout starts per seed")
    parser.add_argument("--length", type=int, default=5)
    parser.add_argument("--steps", type=int, default=1000,
                        help="gradient steps per end-to-end measurement (one rollout round)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 6])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS),
                        help="precision settings: float32; bf16-rollouts (--rollout_dtype "
                             "bfloat16); bf16-all (and --precision bfloat16 for the update)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--modes", nargs="+", default=["eager", "compiled"],
                        choices=["eager", "compiled"], help="eager and/or --compile runs")
    parser.add_argument("--no-plain", action="store_true", help="skip the plain reference loop")
    parser.add_argument("--repeats", type=int, default=2,
                        help="timed repetitions of every figure; the fastest is reported "
                             "(other processes can only slow a run down)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads before anything runs (default: torch's "
                             "choice, e.g. from OMP_NUM_THREADS); the recorded peer figures "
                             "are compared only at the thread count they were recorded at")
    parser.add_argument("--peer", type=Path, default=None, metavar="DIR",
                        help="a local checkout of OfflineRL-Kit (never vendored): measure "
                             "its MOPO loop in this run, at the same settings and threads")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.peer is not None and not (args.peer / "offlinerlkit" / "__init__.py").is_file():
        parser.error(f"--peer {args.peer}: no offlinerlkit package there (expected a checkout "
                     "of https://github.com/yihaosun1124/OfflineRL-Kit)")

    from offline_mbrl.data.d4rl import write_d4rl_hdf5
    from offline_mbrl.models.io import save_environment_model
    from offline_mbrl.models.training import (
        EnvironmentModelConfiguration,
        train_environment_model,
    )

    console = Console(width=150 if args.peer is None else 200)
    work = Path(tempfile.mkdtemp(prefix="ombrl-bench-"))
    os.environ["OMBRL_DATA_DIR"] = str(work / "experiments")
    dataset = synthetic_dataset(args.transitions)
    data_path = write_d4rl_hdf5(dataset, work / "synthetic.hdf5", compress=False)
    load = os.getloadavg()[0]
    gemm_before = (gemm_gflops(), gemm_gflops(torch.bfloat16))

    model_config = EnvironmentModelConfiguration(max_number_of_training_epochs=1,
                                                 device=args.device)
    epoch_s = math.inf
    for _ in range(args.repeats):  # like every figure: the fastest of --repeats
        start = time.perf_counter()
        model, metrics = train_environment_model(dataset, model_config, "hopper-medium-v2",
                                                 progress=False)
        epoch_s = min(epoch_s, float(metrics.get("epoch_time_s",
                                                 time.perf_counter() - start)))
    model_path = save_environment_model(model, work / "model.pt", {
        "dataset_name": dataset.name, "dataset_hash": dataset.content_hash()})

    plain = None if args.no_plain else time_plain(model, dataset, args.starts, args.length,
                                                    args.steps, args.repeats)
    flops = count_flops(data_path, model_path, args)
    ours = {(P, setting, mode): time_ours(P, setting, mode == "compiled", data_path,
                                          model_path, args)
            for mode in args.modes for P in args.sizes for setting in args.settings}

    peer = None if args.peer is None else time_peer(args.peer, dataset, work, args)

    def ratio(value: float, reference: float | None) -> str:
        return "" if reference is None or math.isnan(value) else f"{value / reference:.2f}×"

    # The recorded peer: its figures at this run's thread count, or (shown, never divided
    # into this run's) those at 2 threads, the one count with every figure recorded.
    threads = torch.get_num_threads()
    recorded_at = threads if threads in PEER_RECORDED else 2
    recorded = PEER_RECORDED[recorded_at]
    footnotes: dict[str, str] = {}

    def plural(n: int) -> str:
        return f"{n} thread{'' if n == 1 else 's'}"

    def peer_cells(key: str, value: float, seconds: bool, peer_value: float | None = None
                   ) -> list[str]:
        """The recorded peer's figure and the ratio to it; with --peer, the measured
        peer's figure and the ratio to it. ``seconds``: lower is better."""

        def compare(reference: float) -> str:
            return (f"{reference / value:.2f}× faster" if seconds
                    else f"{value / reference:.2f}×")

        figure = recorded.get(key)
        if figure is None:
            footnotes["†"] = (f"† Not recorded at {plural(threads)}; the figures recorded at "
                              "other thread counts are not divided into this run's (use "
                              "--peer DIR to measure the peer in this run).")
            cells = ["—†", "—†"]
        elif recorded_at != threads:
            footnotes["‡"] = (f"‡ This run used {plural(threads)} and the peer was recorded "
                              f"at {' and '.join(plural(n) for n in sorted(PEER_RECORDED))} "
                              "only: no ratio to a figure recorded at another thread count "
                              "(use --threads, or --peer DIR to measure the peer in this run).")
            cells = [f"{figure:g}", "—‡"]
        else:
            cells = [f"{figure:g}", compare(figure)]
        if peer is not None:
            cells += ["", ""] if peer_value is None else [
                f"{peer_value:.2f}" if seconds else f"{peer_value:.0f}", compare(peer_value)]
        return cells

    table = Table(title=f"Pessimistic offline loop ({args.device}, torch {torch.__version__}, "
                        f"{plural(threads)}, {platform.processor() or 'cpu'}, "
                        f"load {load:.1f}; best of {args.repeats})")
    columns = ["figure", "ours", "plain", "ours / plain",
               f"peer (recorded at {plural(recorded_at)})", "ours / recorded peer"]
    if peer is not None:
        columns += ["peer (measured)", "ours / measured peer"]
    for column in [*columns, "target"]:
        table.add_column(column)
    blank_peer = [""] * (len(columns) - 4)
    table.add_row(f"dynamics epoch on {args.transitions // 1000}k (s)", f"{epoch_s:.1f}", "", "",
                  *peer_cells("epoch_s", epoch_s, True, peer and peer["epoch_s"]),
                  f"≤ {TARGETS['epoch_s']:.0f}")
    plain_rollout = plain["rollout_s"] if plain else None
    for (P, setting, mode), r in ours.items():
        if P == 1 and setting != "bf16-all":  # the update's precision does not change it
            table.add_row(f"{args.starts // 1000}k × {args.length} rollout, "
                          f"{SETTINGS[setting][0]}, {mode} (s); "
                          f"mean length {r['rollout_length']:.2f}",
                          f"{r['rollout_s']:.2f}",
                          f"{plain_rollout:.2f}" if plain_rollout else "",
                          f"{plain_rollout / r['rollout_s']:.2f}× faster" if plain_rollout
                          else "",
                          *peer_cells("rollout_s", r["rollout_s"], True,
                                      peer and peer["rollout_s"]),
                          f"≤ {TARGETS['rollout_s']:.0f}")
    if plain:
        table.add_row("plain loop: SAC updates/s, end to end steps/s", "",
                      f"{plain['updates_per_s']:.0f}, {plain['steps_per_s']:.0f}", "",
                      *blank_peer, "")
    for (P, setting, mode), r in ours.items():
        target = TARGETS["p1"] if P == 1 else TARGETS["p6"] if P == 6 else None
        table.add_row(f"SAC seed-updates/s without rollouts, P={P}, {SETTINGS[setting][1]} "
                      f"update, {mode}",
                      f"{r['updates_per_s'] * P:.0f}", "",
                      ratio(r["updates_per_s"] * P, plain["updates_per_s"] if plain else None),
                      *peer_cells("sac_steps_per_s", r["updates_per_s"] * P, False,
                                  peer and peer["updates_per_s"]), "")
        table.add_row(f"end to end, P={P}, {setting}, {mode} (seed-steps/s)",
                      f"{r['seed_steps_per_s']:.0f}", "",
                      ratio(r["seed_steps_per_s"], plain["steps_per_s"] if plain else None),
                      *peer_cells("end_to_end", r["seed_steps_per_s"], False,
                                  peer and peer["steps_per_s"]),
                      f"≥ {target:.0f}" if target else "")
    gemm_after = (gemm_gflops(), gemm_gflops(torch.bfloat16))
    console.print(table)
    for note in footnotes.values():
        console.print(note)
    if peer is not None:
        console.print(
            f"Peer measured from {args.peer.resolve()} (OfflineRL-Kit's MOPO, same settings, "
            f"{plural(threads)}): mean rollout length {peer['rollout_length']:.2f}; "
            f"stand-ins for modules not installed: {', '.join(peer['stood_in']) or 'none'}; "
            f"its log: {peer['log']}.")
    console.print(
        f"Matrix-product rate of the machine (2048² products): float32 {gemm_before[0]:.0f} "
        f"GFLOP/s before the run and {gemm_after[0]:.0f} after; bf16 {gemm_before[1]:.0f} and "
        f"{gemm_after[1]:.0f}.")
    gflop = flops["per_round"] / 1e9
    console.print(
        f"Arithmetic per {args.steps} steps and one rollout round, per seed: {gflop:.0f} GFLOP "
        f"({flops['rollout'] / 1e9:.0f} in the rollout, {flops['update'] / 1e9:.3f} per "
        f"update). The one-seed target of {TARGETS['p1']:.0f} steps/s needs "
        f"{gflop * TARGETS['p1'] / args.steps:.0f} GFLOP/s sustained; the figures above "
        "ran at:")
    for (P, setting, mode), r in ours.items():
        console.print(f"  P={P}, {setting}, {mode}: "
                      f"{gflop * r['seed_steps_per_s'] / args.steps:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
