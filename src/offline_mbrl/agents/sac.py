"""Soft actor-critic for a population of ``P`` independent agents.

All ``P`` actors are one :class:`BatchedMLP` with ``P`` groups; all ``2P`` critics
(twin Q per member) are one :class:`BatchedMLP` with ``2P`` groups laid out member-major
(``[p, q1], [p, q2], ...``). One call to :meth:`SAC.update` is one gradient step for
every member. Losses are summed over members, so each member's gradient is exactly the
gradient of its own loss: member ``p`` trains as a single agent with seed ``p`` would.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from offline_mbrl.agents.base import ActionScaler, Batch
from offline_mbrl.config import AgentConfiguration
from offline_mbrl.models.layers import BatchedMLP, member_generators
from offline_mbrl.rng import PopulationRNG

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0
_ACTOR_SALT, _CRITIC_SALT = 11, 23


def squashed_gaussian(mean: torch.Tensor, log_std: torch.Tensor, noise: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Reparameterised tanh-Gaussian sample and its log-probability.

    Args:
        mean, log_std, noise: ``[P, B, act_dim]``; ``noise`` is standard normal.

    Returns:
        ``action [P, B, act_dim]`` in ``(-1, 1)`` and ``log_prob [P, B]``.
    """
    pre_tanh = mean + log_std.exp() * noise
    log_prob = (-0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
    # log(1 - tanh(u)^2) written in a form that stays finite for large |u|.
    log_prob = log_prob - (2 * (math.log(2.0) - pre_tanh - nn.functional.softplus(-2 * pre_tanh))
                           ).sum(-1)
    return torch.tanh(pre_tanh), log_prob


def td_target(reward: torch.Tensor, terminated: torch.Tensor, next_q: torch.Tensor,
              next_log_prob: torch.Tensor, alpha: torch.Tensor, gamma: float) -> torch.Tensor:
    """Soft Bellman target ``r + γ (1 − d) (min Q' − α log π')``.

    Shapes: ``[P, B]`` for all but ``alpha [P, 1]``.
    """
    return reward + gamma * (1.0 - terminated) * (next_q - alpha * next_log_prob)


class SAC(nn.Module):
    """``P`` SAC agents trained in lockstep.

    Args:
        obs_dim, act_dim: environment dimensions.
        action_low, action_high: ``[act_dim]`` bounds of the environment's action box.
        seeds: one seed per member; sets each member's initial weights.
        config: hyperparameters shared by all members.
    """

    def __init__(self, obs_dim: int, act_dim: int, action_low: Any, action_high: Any,
                 seeds: tuple[int, ...], config: AgentConfiguration) -> None:
        super().__init__()
        self.config = config
        self.n_members = len(seeds)
        self.obs_dim, self.act_dim = obs_dim, act_dim
        hidden = (config.hidden_units,) * config.hidden_layers
        P = self.n_members
        self.actor = BatchedMLP(P, obs_dim, 2 * act_dim, hidden)
        self.actor.reset_parameters(member_generators(seeds, _ACTOR_SALT))
        self.critic = BatchedMLP(2 * P, obs_dim + act_dim, 1, hidden)
        critic_seeds = [s * 2 + k for s in seeds for k in range(2)]
        self.critic.reset_parameters(member_generators(critic_seeds, _CRITIC_SALT))
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.scaler = ActionScaler(torch.as_tensor(action_low), torch.as_tensor(action_high))
        self.auto_alpha = config.alpha == "auto"
        initial_alpha = 1.0 if self.auto_alpha else float(config.alpha)
        self.log_alpha = nn.Parameter(
            torch.full((P,), math.log(initial_alpha) if initial_alpha > 0 else -math.inf),
            requires_grad=self.auto_alpha)
        self.target_entropy = -float(act_dim)
        self._make_optimizers()

    def _make_optimizers(self) -> None:
        lr = self.config.lr
        # Adam is elementwise, so one optimizer over batched weights keeps members independent;
        # fused: one kernel per step instead of several per parameter (measured 6-8% faster).
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=lr, fused=True)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=lr, fused=True)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=lr, fused=True)

    # ----------------------------------------------------------------- networks
    def _policy(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.actor(obs).chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def q_values(self, obs: torch.Tensor, unit_action: torch.Tensor,
                 critic: BatchedMLP | None = None) -> torch.Tensor:
        """``obs [P,B,obs_dim], unit_action [P,B,act_dim] -> Q [P, 2, B]``."""
        P, B, _ = obs.shape
        x = torch.cat([obs, unit_action], dim=-1)
        x = x.unsqueeze(1).expand(P, 2, B, x.shape[-1]).reshape(2 * P, B, x.shape[-1])
        return (critic or self.critic)(x).view(P, 2, B)

    @property
    def alpha(self) -> torch.Tensor:
        """``[P]`` entropy temperatures."""
        return self.log_alpha.exp()

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = True,
            rng: PopulationRNG | None = None) -> torch.Tensor:
        """``obs [P, n, obs_dim] -> action [P, n, act_dim]`` in environment units."""
        mean, log_std = self._policy(obs)
        if deterministic:
            return self.scaler.to_env(torch.tanh(mean))
        if rng is None:
            raise ValueError("stochastic actions need a PopulationRNG")
        noise = rng.normal(*mean.shape[1:])
        unit_action, _ = squashed_gaussian(mean, log_std, noise)
        return self.scaler.to_env(unit_action)

    # ----------------------------------------------------------------- update
    def update(self, batch: Batch, rng: PopulationRNG) -> dict[str, torch.Tensor]:
        """One SAC step for every member.

        Args:
            batch: ``obs [P,B,obs_dim]``, ``action [P,B,act_dim]`` (environment units),
                ``reward [P,B]``, ``next_obs [P,B,obs_dim]``, ``terminated [P,B]``.
            rng: per-member noise for the reparameterised policy samples.

        Returns:
            ``[P]`` tensors: LossQ, LossPi, LossAlpha, Alpha, QMean, LogPi.
        """
        obs, next_obs = batch["obs"], batch["next_obs"]
        unit_action = self.scaler.to_unit(batch["action"])
        B = obs.shape[1]
        alpha = self.alpha.detach()[:, None]
        # One draw for both policy samples: fewer small kernels per update.
        next_noise, noise = rng.normal(2, B, self.act_dim).unbind(1)

        with torch.no_grad():
            next_mean, next_log_std = self._policy(next_obs)
            next_action, next_log_prob = squashed_gaussian(next_mean, next_log_std, next_noise)
            next_q = self.q_values(next_obs, next_action, self.critic_target).min(dim=1).values
            target = td_target(batch["reward"], batch["terminated"], next_q, next_log_prob,
                               alpha, self.config.gamma)

        q = self.q_values(obs, unit_action)
        loss_q = (q - target[:, None]).pow(2).mean(dim=2).sum(dim=1)  # [P]
        self.critic_optimizer.zero_grad(set_to_none=True)
        loss_q.sum().backward()
        self.critic_optimizer.step()

        mean, log_std = self._policy(obs)
        new_action, log_prob = squashed_gaussian(mean, log_std, noise)
        self.critic.requires_grad_(False)
        q_pi = self.q_values(obs, new_action).min(dim=1).values
        self.critic.requires_grad_(True)
        loss_pi = (alpha * log_prob - q_pi).mean(dim=1)  # [P]
        self.actor_optimizer.zero_grad(set_to_none=True)
        loss_pi.sum().backward()
        self.actor_optimizer.step()

        log_prob_mean = log_prob.detach().mean(dim=1)
        if self.auto_alpha:
            loss_alpha = -(self.log_alpha * (log_prob_mean + self.target_entropy))
            self.alpha_optimizer.zero_grad(set_to_none=True)
            loss_alpha.sum().backward()
            self.alpha_optimizer.step()
        else:
            loss_alpha = torch.zeros_like(loss_pi)

        with torch.no_grad():
            target_params = list(self.critic_target.parameters())
            torch._foreach_lerp_(target_params, list(self.critic.parameters()),
                                 1.0 - self.config.polyak)

        return {
            "LossQ": loss_q.detach(),
            "LossPi": loss_pi.detach(),
            "LossAlpha": loss_alpha.detach(),
            "Alpha": alpha[:, 0],
            "QMean": q.detach().mean(dim=(1, 2)),
            "LogPi": log_prob_mean,
        }

    # ----------------------------------------------------------------- state
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        """Networks, targets, temperature and all optimizer states (population tensors)."""
        return {
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "alpha_optimizer": self.alpha_optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> Any:  # type: ignore[override]
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.alpha_optimizer.load_state_dict(state["alpha_optimizer"])
