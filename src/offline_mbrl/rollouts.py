"""Synthetic rollouts in the environment model: the only place pessimism is applied.

The policy acts, the model predicts, and the two pessimism families act on the
prediction before it reaches any buffer:

* penalty (MOPO-style): ``reward ← reward − λ · u(s, a)``;
* partitioning (MOReL-style): where ``u(s, a) > threshold`` the transition becomes
  terminal with reward ``−R_max`` and the rollout ends.

``u`` is the aleatoric or epistemic uncertainty of the ensemble
(:mod:`offline_mbrl.models.uncertainty`), or MOBILE's model-Bellman inconsistency.
Rollouts also end at the member's rollout length or at a predicted termination. Every
population member has its own start states, policy, rollout length and pessimism values;
all members go through the shared model in one batched call per rollout step.

MOBILE (Sun, Zhang, Jia, Lin, Ye and Yu, "Model-Bellman Inconsistency for Model-based
Offline Reinforcement Learning", ICML 2023) is MOPO's penalty with another ``u``: each
ensemble member ``k`` predicts ``(r_k, s'_k)`` for the synthetic ``(s, a)``, the agent's
target critics value ``s'_k`` at a policy action, and ``u(s, a)`` is the standard deviation
over members of the Bellman targets ``y_k = r_k + γ (1 − d_k) Q̂(s'_k, a'_k)``
(:func:`bellman_inconsistency`). Where the members agree on the value of what follows,
the transition is trusted; where they disagree, its reward is lowered. The rollout reads
the critic only through :meth:`~offline_mbrl.agents.base.CriticAgent.value_estimate`.
Unlike the authors' code, which recomputes the penalty of every sampled synthetic
transition at each critic update from the current critic and the mean of 10 next-state
samples per member (and leaves out ``r_k`` and ``γ``), the penalty here is taken once,
when the transition is generated, from each member's mean prediction; the paper's
definition of ``u`` is the one computed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple, cast

import torch

from offline_mbrl.agents.base import Agent, CriticAgent
from offline_mbrl.data.buffer import TransitionLayout
from offline_mbrl.models.ensemble import (
    EnsembleOutput,
    EnvironmentModel,
    member_means,
    sample_next,
)
from offline_mbrl.models.uncertainty import uncertainty
from offline_mbrl.modes import get_mode
from offline_mbrl.rng import PopulationRNG

PessimismKind = Literal["none", "penalty", "partitioning"]
UncertaintyKind = Literal["aleatoric", "epistemic", "bellman"]


@dataclass(frozen=True)
class Pessimism:
    """How rollouts of each member are made pessimistic.

    Attributes:
        kind: ``none`` (MBPO), ``penalty`` or ``partitioning``.
        uncertainty: which uncertainty drives it (``aleatoric``, ``epistemic`` or
            ``bellman``, MOBILE's model-Bellman inconsistency).
        rollout_length: ``[P]`` long, steps per rollout for each member.
        penalty: ``[P]`` λ for penalty modes.
        threshold: ``[P]`` uncertainty threshold for partitioning modes.
        max_reward: ``R_max``, the largest reward in the dataset (see
            :func:`~offline_mbrl.models.statistics.largest_reward`).
        gamma: the agent's discount factor, for the Bellman targets of ``bellman``.
    """

    kind: PessimismKind
    uncertainty: UncertaintyKind
    rollout_length: torch.Tensor
    penalty: torch.Tensor
    threshold: torch.Tensor
    max_reward: float
    gamma: float = 0.99

    @staticmethod
    def from_mode(mode: str, rollout_length: torch.Tensor, penalty: torch.Tensor,
                  threshold: torch.Tensor, max_reward: float, gamma: float = 0.99
                  ) -> Pessimism:
        """The pessimism of registered mode ``mode`` (see :mod:`offline_mbrl.modes`)."""
        spec = get_mode(mode)
        return Pessimism(spec.pessimism, spec.uncertainty or "epistemic", rollout_length,
                         penalty, threshold, max_reward, gamma)

    @property
    def draws_per_step(self) -> int:
        """Random draws a rollout step makes: policy noise, member choice, model noise,
        and for ``bellman`` the policy noise at every member's next state."""
        bellman = self.kind != "none" and self.uncertainty == "bellman"
        return _DRAWS_PER_STEP + 1 if bellman else _DRAWS_PER_STEP


def apply_pessimism(reward: torch.Tensor, terminated: torch.Tensor, u: torch.Tensor,
                    pessimism: Pessimism) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Make predicted transitions pessimistic.

    Args:
        reward: ``[P, N]`` predicted rewards.
        terminated: ``[P, N]`` bool, predicted terminations.
        u: ``[P, N]`` uncertainty of each transition.
        pessimism: the members' settings.

    Returns:
        ``reward [P, N]``, ``terminated [P, N]`` and ``unknown [P, N]`` (the transitions the
        partitioning declared out of distribution; all false for other kinds).
    """
    unknown = torch.zeros_like(terminated)
    if pessimism.kind == "penalty":
        reward = reward - pessimism.penalty[:, None] * u
    elif pessimism.kind == "partitioning":
        unknown = u > pessimism.threshold[:, None]
        reward = torch.where(unknown, torch.full_like(reward, -pessimism.max_reward), reward)
        terminated = terminated | unknown
    return reward, terminated, unknown


# ----------------------------------------------------------------- penalties
def bellman_inconsistency(reward: torch.Tensor, terminated: torch.Tensor,
                          next_q: torch.Tensor, gamma: float) -> torch.Tensor:
    """MOBILE's uncertainty: the spread of the ensemble members' Bellman targets.

    Args:
        reward: ``[K, ...]`` member ``k``'s predicted reward ``r_k``.
        terminated: ``[K, ...]`` bool, whether ``s'_k`` is terminal (then ``y_k = r_k``).
        next_q: ``[K, ...]`` ``Q̂(s'_k, a'_k)``, the critic's value of member ``k``'s next state.
        gamma: the discount factor.

    Returns:
        ``[...]`` the standard deviation over ``K`` of ``y_k = r_k + γ (1 − d_k) Q̂_k``
        (with Bessel's correction, as the authors' code takes it); 0 with one member.
    """
    if reward.shape[0] < 2:
        return torch.zeros_like(reward[0])
    target = reward + gamma * (1.0 - terminated.to(reward.dtype)) * next_q
    return target.std(dim=0)


def bellman_uncertainty(model: EnvironmentModel, agent: CriticAgent, outputs: EnsembleOutput,
                        obs: torch.Tensor, action: torch.Tensor, members: torch.Tensor | None,
                        noise: torch.Tensor, gamma: float) -> torch.Tensor:
    """:func:`bellman_inconsistency` of the transitions from ``obs [P, N, obs_dim]`` with
    ``action [P, N, act_dim]``, over ``members`` (default all) of the ensemble.

    Each member's mean prediction ``(r_k, s'_k)`` stands for its Bellman target's
    expectation; the agent values ``s'_k`` at actions drawn from ``noise [P, N, K, act_dim]``
    (standard normal). Returns ``[P, N]``.
    """
    P, N, obs_dim = obs.shape
    flat_obs = obs.reshape(P * N, obs_dim)
    next_obs, reward = member_means(outputs, flat_obs, model.normalizer)  # [E, P·N, ...]
    if members is not None:
        next_obs, reward = next_obs[members], reward[members]
    K = next_obs.shape[0]
    terminated = model.terminated(
        flat_obs.expand(K, -1, -1).reshape(K * P * N, obs_dim),
        action.reshape(P * N, -1).expand(K, -1, -1).reshape(K * P * N, -1),
        next_obs.reshape(K * P * N, obs_dim)).view(K, P, N)
    # The agent's rows are member-major [P, K·N]: member p's own critic values its rows.
    agent_obs = next_obs.view(K, P, N, obs_dim).transpose(0, 1).reshape(P, K * N, obs_dim)
    agent_noise = noise.transpose(1, 2).reshape(P, K * N, -1)
    next_q = agent.value_estimate(agent_obs, agent_noise).view(P, K, N).transpose(0, 1)
    return bellman_inconsistency(reward.view(K, P, N), terminated, next_q, gamma)


@dataclass
class RolloutBatch:
    """Transitions of one rollout round.

    Attributes:
        rows: ``[P, H·N, F]`` packed transitions (see :class:`TransitionLayout`).
        valid: ``[P, H·N]`` bool, which rows are real transitions (rollouts that already
            ended, or went past their member's length, leave invalid rows).
        stats: ``[P]`` tensors: mean uncertainty, fraction of unknown transitions, mean
            reward after pessimism, mean rollout length.
    """

    rows: torch.Tensor
    valid: torch.Tensor
    stats: dict[str, torch.Tensor]


ROLLOUT_CHUNK = 2048
"""Rows (starts summed over members) that go through the model together. A few thousand
keep the ensemble's activations cache-resident. Every random draw is addressed by
``(member, step, start)``, so the chunking never changes what a member sees."""

_DRAWS_PER_STEP = 3  # policy noise, ensemble member choice, model noise (see draws_per_step)


class StepResult(NamedTuple):
    """One model step of every rollout in a chunk (``[P, n, ...]`` tensors)."""

    action: torch.Tensor
    reward: torch.Tensor
    next_obs: torch.Tensor
    terminated: torch.Tensor
    uncertainty: torch.Tensor
    unknown: torch.Tensor


def rollout_step(model: EnvironmentModel, agent: Agent, obs: torch.Tensor, draw: torch.Tensor,
                 first: torch.Tensor, pessimism: Pessimism, rng: PopulationRNG) -> StepResult:
    """Act, predict, sample and apply pessimism for ``obs [P, n, obs_dim]``.

    A pure function of its arguments: its randomness is the three draws ``draw``,
    ``draw + 1``, ``draw + 2`` (policy noise, member choice, model noise) at rows
    ``first .. first + n``, both 0-d tensors so that a compiled version of this function
    is reused for every step, and for the ``bellman`` uncertainty ``draw + 3`` (the
    policy noise at every member's next state). ``Trainer`` compiles it under ``--compile``.
    """
    P, N, obs_dim = obs.shape
    elites = model.elites
    # The elites of a ``for_rollouts`` copy are all its members: no selection to make.
    members = elites if elites.numel() < model.n_networks else None
    action = agent.act(obs, deterministic=False,
                       noise=rng.block_normal(draw, first, N, model.act_dim))
    flat_obs, flat_action = obs.reshape(P * N, obs_dim), action.reshape(P * N, -1)
    outputs = model(flat_obs, flat_action)
    member_idx = elites[rng.block_randint(draw + 1, first, N, elites.numel())].view(P * N)
    noise = rng.block_normal(draw + 2, first, N, obs_dim + 1).view(P * N, obs_dim + 1)
    next_obs, reward = sample_next(outputs, flat_obs, member_idx, noise, model.normalizer)
    terminated = model.terminated(flat_obs, flat_action, next_obs).view(P, N)
    next_obs, reward = next_obs.view(P, N, obs_dim), reward.view(P, N)
    if pessimism.kind == "none":
        u = torch.zeros_like(reward)
    elif pessimism.uncertainty == "bellman":
        K = int(members.numel()) if members is not None else model.n_networks
        noise = rng.block_normal(draw + 3, first, N, K * model.act_dim)
        u = bellman_uncertainty(model, cast(CriticAgent, agent), outputs, obs, action,
                                members, noise.view(P, N, K, model.act_dim), pessimism.gamma)
    else:
        u = uncertainty(pessimism.uncertainty, outputs, model.normalizer, members).view(P, N)
    reward, terminated, unknown = apply_pessimism(reward, terminated, u, pessimism)
    return StepResult(action, reward, next_obs, terminated, u, unknown)


StepFn = Callable[..., StepResult]


@torch.no_grad()
def rollout(model: EnvironmentModel, agent: Agent, start_obs: torch.Tensor,
            pessimism: Pessimism, layout: TransitionLayout, rng: PopulationRNG,
            n_active: torch.Tensor | None = None, chunk: int = ROLLOUT_CHUNK,
            dtype: torch.dtype = torch.float32, step_fn: StepFn | None = None
            ) -> RolloutBatch:
    """Roll the policy out in the model from ``start_obs``.

    Args:
        model: the shared environment model.
        agent: the population whose stochastic policies act.
        start_obs: ``[P, N, obs_dim]`` real observations to start from.
        pessimism: per-member rollout lengths and pessimism.
        layout: how transitions are packed.
        rng: per-member randomness (policy noise, member choice, model noise). One
            round reserves its draws up front; start ``n`` of member ``p`` at step ``h``
            always gets the same numbers, whatever ``chunk`` and the population size.
        n_active: ``[P]`` how many of the ``N`` starts each member uses (default all);
            lets members with longer rollouts use fewer starts for the same sample count.
        chunk: rows per model call, all members together (see :data:`ROLLOUT_CHUNK`).
        dtype: ``torch.bfloat16`` runs the model's networks in bf16; sampling,
            uncertainty and pessimism stay in float32. The networks run on
            ``model.for_rollouts(dtype)``, a copy made once per round unless the caller
            passes one (elite members only).
        step_fn: a compiled :func:`rollout_step` for full chunks (the last, shorter chunk
            runs eagerly, so one compilation serves every round).

    Returns:
        A :class:`RolloutBatch` of ``H = max(rollout_length)`` steps.
    """
    P, N, _ = start_obs.shape
    device = start_obs.device
    horizon = int(pessimism.rollout_length.max())
    first_draw = rng.reserve(pessimism.draws_per_step * horizon)
    active = torch.arange(N, device=device)[None, :] < (
        n_active[:, None] if n_active is not None else N)
    active = active.expand(P, N)
    rows = torch.empty(P, horizon, N, layout.width, device=device)
    valid = torch.empty(P, horizon, N, dtype=torch.bool, device=device)
    sums = torch.zeros(3, P, device=device)  # uncertainty, unknown, reward over valid rows
    model = model.for_rollouts(dtype)
    model.resolve_termination_fn()  # before a compiled step sees the model
    per_member = max(1, chunk // P)
    for start in range(0, N, per_member):
        starts = slice(start, min(N, start + per_member))
        full = starts.stop - start == per_member
        fn = step_fn if step_fn is not None and full else rollout_step
        sums += _rollout_chunk(model, agent, start_obs[:, starts].contiguous(),
                               active[:, starts], rows[:, :, starts], valid[:, :, starts],
                               start, first_draw, pessimism, layout, rng, fn)
    count = valid.sum(dim=(1, 2)).clamp(min=1).float()
    n_starts = active.sum(1).float().clamp(min=1)
    stats = {
        "RolloutUncertainty": sums[0] / count,
        "RolloutUnknownFraction": sums[1] / count,
        "RolloutReward": sums[2] / count,
        "RolloutLength": valid.sum(dim=(1, 2)).float() / n_starts,
    }
    return RolloutBatch(rows.view(P, horizon * N, -1), valid.view(P, horizon * N), stats)


def _rollout_chunk(model: EnvironmentModel, agent: Agent, obs: torch.Tensor,
                   alive: torch.Tensor, rows: torch.Tensor, valid: torch.Tensor,
                   first: int, first_draw: int, pessimism: Pessimism,
                   layout: TransitionLayout, rng: PopulationRNG, step_fn: StepFn
                   ) -> torch.Tensor:
    """Rollouts from ``obs [P, n, obs_dim]`` (starts ``first ..`` of the round).

    Writes ``rows [P, H, n, F]`` and ``valid [P, H, n]`` in place and returns the ``[3, P]``
    sums of uncertainty, unknown flags and rewards over valid transitions.
    """
    P = obs.shape[0]
    device = obs.device
    alive = alive.clone()
    sums = torch.zeros(3, P, device=device)
    first_t = torch.tensor(first, device=device)
    for step in range(rows.shape[1]):
        alive &= step < pessimism.rollout_length[:, None]
        draw = torch.tensor(first_draw + pessimism.draws_per_step * step, device=device)
        result = step_fn(model, agent, obs, draw, first_t, pessimism, rng)
        out = rows[:, step]
        out[..., layout.slices["obs"]] = obs
        out[..., layout.slices["action"]] = result.action
        out[..., layout.slices["reward"]] = result.reward.unsqueeze(-1)
        out[..., layout.slices["next_obs"]] = result.next_obs
        out[..., layout.slices["terminated"]] = result.terminated.unsqueeze(-1)
        valid[:, step] = alive
        sums += torch.stack([result.uncertainty, result.unknown.float(), result.reward]
                            ).mul_(alive.float()).sum(dim=2)
        alive &= ~result.terminated
        obs = result.next_obs
        if step_fn is not rollout_step and obs.is_cuda:
            obs = obs.clone()  # a CUDA-graph output, overwritten by the next replay
    return sums
