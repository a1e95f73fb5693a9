"""What every agent offers the training loop, and population state handling."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from offline_mbrl.rng import PopulationRNG

Batch = dict[str, torch.Tensor]
"""Keys ``obs [P,B,obs_dim]``, ``action [P,B,act_dim]``, ``reward [P,B]``,
``next_obs [P,B,obs_dim]``, ``terminated [P,B]`` (float 0/1)."""


class Agent(Protocol):
    """A population of ``n_members`` independent agents updated in one batched step.

    Agents never see an environment model or a buffer: the loop hands them batches.
    """

    n_members: int

    def act(self, obs: torch.Tensor, deterministic: bool = True,
            rng: PopulationRNG | None = None, noise: torch.Tensor | None = None
            ) -> torch.Tensor:
        """``obs [P, n, obs_dim] -> action [P, n, act_dim]`` within the action bounds.

        Stochastic policies use ``noise [P, n, act_dim]`` (standard normal) when given,
        else draw from ``rng``; deterministic ones ignore both.
        """
        ...

    def update(self, batch: Batch, rng: PopulationRNG) -> dict[str, torch.Tensor]:
        """One gradient step for every member; metrics as ``[P]`` tensors (not synced)."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class CriticAgent(Agent, Protocol):
    """An agent with a critic. Rollout penalties that read Q-values (MOBILE's Bellman
    inconsistency, for one) take them through this method, never from the networks."""

    def q_estimate(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """``[P, B]`` Q-values of ``obs [P, B, obs_dim]`` and ``action [P, B, act_dim]``
        (environment units), without gradient."""
        ...

    def value_estimate(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``[P, B]`` the target critics' value of ``obs [P, B, obs_dim]`` at a policy
        action: ``min_j Q̄_j(s, a)`` with ``a ~ π(s)`` drawn from the standard normal
        ``noise [P, B, act_dim]``, without gradient and without an entropy term.

        The caller draws ``noise`` from its own per-member stream (a rollout's), so that a
        population member reads the same values as a single run with its seed. MOBILE's
        Bellman targets of predicted next states read their ``Q̂(s', a')`` here."""
        ...


@runtime_checkable
class MixedBatchAgent(Agent, Protocol):
    """An agent whose losses treat real and model-generated rows apart (COMBO, say).

    In model-based modes every batch is laid out the same way: its first ``n_real`` rows
    are dataset transitions, the other ``n_synthetic`` rows model-generated ones, with
    ``n_real = round(real_ratio · batch_size)`` fixed for the run. The loop tells an agent
    that offers this method the split once, when it builds the agent; the batches
    themselves stay plain tensors, so that agents which do not ask see nothing new. An
    agent never told (one built outside the loop) treats every row as real.
    """

    def use_batch_split(self, n_real: int, n_synthetic: int) -> None:
        """Rows ``:n_real`` of every batch are real, rows ``n_real:`` model-generated."""
        ...


class ActionScaler(torch.nn.Module):
    """Maps between the environment's action box and the agent's ``[-1, 1]`` box."""

    def __init__(self, low: torch.Tensor, high: torch.Tensor) -> None:
        super().__init__()
        low = torch.as_tensor(low, dtype=torch.float32)
        high = torch.as_tensor(high, dtype=torch.float32)
        self.center: torch.Tensor
        self.scale: torch.Tensor
        self.register_buffer("center", (high + low) / 2)
        self.register_buffer("scale", (high - low) / 2)

    def to_env(self, unit_action: torch.Tensor) -> torch.Tensor:
        return self.center + self.scale * unit_action

    def to_unit(self, env_action: torch.Tensor) -> torch.Tensor:
        return ((env_action - self.center) / self.scale).clamp(-1.0, 1.0)


def split_member_state(state: Any, n_members: int, member: int) -> Any:
    """Member ``member``'s slice of a population state (nested dicts/lists of tensors).

    Every population tensor has a leading dimension that is a multiple of ``P`` with
    members outermost (``[P, ...]`` or ``[P·k, ...]``); 0-d tensors and plain values
    (optimizer step counts, hyperparameters) are shared and copied as they are.
    """
    if isinstance(state, torch.Tensor):
        if state.dim() == 0:
            return state.clone()
        if state.shape[0] % n_members:
            raise ValueError(f"tensor of shape {tuple(state.shape)} is not a population tensor")
        k = state.shape[0] // n_members
        return state[member * k:(member + 1) * k].clone()
    if isinstance(state, dict):
        return {key: split_member_state(v, n_members, member) for key, v in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(split_member_state(v, n_members, member) for v in state)
    return state


def stack_member_states(states: list[Any]) -> Any:
    """Inverse of :func:`split_member_state`: concatenate members along dimension 0."""
    first = states[0]
    if isinstance(first, torch.Tensor):
        if first.dim() == 0:
            return first.clone()
        return torch.cat(states, dim=0)
    if isinstance(first, dict):
        return {key: stack_member_states([s[key] for s in states]) for key in first}
    if isinstance(first, list | tuple):
        return type(first)(stack_member_states(list(vs)) for vs in zip(*states, strict=True))
    return first
