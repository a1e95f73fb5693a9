"""Behavioral cloning for a population: regress dataset actions with a bounded policy."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from offline_mbrl.agents.base import ActionScaler, Batch
from offline_mbrl.config import AgentConfiguration
from offline_mbrl.models.layers import BatchedMLP, member_generators
from offline_mbrl.rng import PopulationRNG

_POLICY_SALT = 37


class BehavioralCloning(nn.Module):
    """``P`` deterministic policies ``tanh(MLP(obs))`` scaled to the action box, trained by MSE.

    The loss is taken in the agent's ``[-1, 1]`` action units so that every action
    dimension counts equally whatever the environment's bounds. Arguments as for
    :class:`~offline_mbrl.agents.sac.SAC`.
    """

    def __init__(self, obs_dim: int, act_dim: int, action_low: Any, action_high: Any,
                 seeds: tuple[int, ...], config: AgentConfiguration,
                 device: str | torch.device = "cpu") -> None:
        super().__init__()
        self.config = config
        self.n_members = len(seeds)
        self.obs_dim, self.act_dim = obs_dim, act_dim
        hidden = (config.n_hidden_units,) * config.n_hidden_layers
        self.actor = BatchedMLP(self.n_members, obs_dim, act_dim, hidden)
        self.actor.reset_parameters(member_generators(seeds, _POLICY_SALT))
        self.scaler = ActionScaler(torch.as_tensor(action_low), torch.as_tensor(action_high))
        self.to(device)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=config.lr,
                                                fused=True)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = True,
            rng: PopulationRNG | None = None, noise: torch.Tensor | None = None
            ) -> torch.Tensor:
        """``obs [P, n, obs_dim] -> action [P, n, act_dim]``; BC policies are deterministic."""
        return self.scaler.to_env(torch.tanh(self.actor(obs)))

    def update(self, batch: Batch, rng: PopulationRNG) -> dict[str, torch.Tensor]:
        """One MSE step on ``obs [P,B,obs_dim] → action [P,B,act_dim]``; returns ``LossPi [P]``."""
        target = self.scaler.to_unit(batch["action"])
        prediction = torch.tanh(self.actor(batch["obs"]))
        loss = (prediction - target).pow(2).mean(dim=(1, 2))
        self.actor_optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        self.actor_optimizer.step()
        return {"LossPi": loss.detach()}

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        return {"actor": self.actor.state_dict(),
                "actor_optimizer": self.actor_optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> Any:  # type: ignore[override]
        self.actor.load_state_dict(state["actor"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
