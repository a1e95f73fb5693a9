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
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from offline_mbrl.agents.adam import GroupedAdam
from offline_mbrl.agents.base import ActionScaler, Batch
from offline_mbrl.config import AgentConfiguration
from offline_mbrl.models.layers import BatchedMLP, member_generators
from offline_mbrl.rng import PopulationRNG

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0
_ACTOR_SALT, _CRITIC_SALT = 11, 23


def squashed_log_prob(noise: torch.Tensor, log_std: torch.Tensor, pre_tanh: torch.Tensor
                      ) -> torch.Tensor:
    """``[P, R]`` log-density of ``tanh(pre_tanh)`` under the squashed Gaussian.

    Args:
        noise, log_std, pre_tanh: ``[P, R, act_dim]`` with
            ``pre_tanh = mean + exp(log_std) · noise``.
    """
    log_prob = (-0.5 * noise.square() - log_std).sum(-1) - 0.5 * math.log(2 * math.pi) * (
        noise.shape[-1])
    # log(1 - tanh(u)^2) written in a form that stays finite for large |u|.
    return log_prob - (2.0 * (math.log(2.0) - pre_tanh - nn.functional.softplus(-2.0 * pre_tanh))
                       ).sum(-1)


def squashed_gaussian(mean: torch.Tensor, log_std: torch.Tensor, noise: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Reparameterised tanh-Gaussian sample and its log-probability.

    Args:
        mean, log_std, noise: ``[P, B, act_dim]``; ``noise`` is standard normal.

    Returns:
        ``action [P, B, act_dim]`` in ``(-1, 1)`` and ``log_prob [P, B]``.
    """
    pre_tanh = mean + log_std.exp() * noise
    return torch.tanh(pre_tanh), squashed_log_prob(noise, log_std, pre_tanh)


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
        device: where the agent lives. Weights are drawn on the CPU first, so a member
            starts from the same weights on every device.
    """

    def __init__(self, obs_dim: int, act_dim: int, action_low: Any, action_high: Any,
                 seeds: tuple[int, ...], config: AgentConfiguration,
                 device: str | torch.device = "cpu") -> None:
        super().__init__()
        self.config = config
        self.n_members = len(seeds)
        # The hidden layers' products run in this dtype in updates and when acting alike.
        self.dtype = getattr(torch, config.precision)
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
        # Optimizers are made for the parameters where they will live.
        self.to(device)
        self._make_optimizers()
        # For the Polyak step; listed after the move, which may replace parameter objects.
        self._target_params = list(self.critic_target.parameters())
        self._critic_params = list(self.critic.parameters())
        self._gradients: Callable[[SAC, Batch, PopulationRNG, torch.Tensor], dict[str, Any]] = (
            sac_gradients)

    def compile_update(self, compile_fn: Callable[[Any], Any]) -> None:
        """Run the gradient computation of :meth:`update` through ``compile_fn``
        (``torch.compile``; see :mod:`offline_mbrl.compiling`). Optimizer steps stay eager."""
        compiled = compile_fn(sac_gradients)

        def gradients(agent: SAC, batch: Batch, rng: PopulationRNG, draw: torch.Tensor
                      ) -> dict[str, Any]:
            # Columns of packed rows are strided views; inductor's kernels run about 30%
            # slower on them than on contiguous copies, which cost a few microseconds.
            return compiled(agent, {k: v.contiguous() for k, v in batch.items()}, rng, draw)

        self._gradients = gradients

    @property
    def update_compiled(self) -> bool:
        """Whether :meth:`update` runs its gradient computation compiled."""
        return self._gradients is not sac_gradients

    def _make_optimizers(self) -> None:
        lr = self.config.lr
        # Adam is elementwise, so one optimizer over batched weights keeps members independent;
        # fused: one kernel per step instead of several per parameter (measured 6-8% faster).
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=lr, fused=True)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=lr, fused=True)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=lr, fused=True)
        self._adam = GroupedAdam([self.critic_optimizer, self.actor_optimizer]
                                 + ([self.alpha_optimizer] if self.auto_alpha else []))

    # ----------------------------------------------------------------- networks
    def _policy(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.actor(obs, self.dtype).chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def q_values(self, obs: torch.Tensor, unit_action: torch.Tensor,
                 critic: BatchedMLP | None = None, dtype: torch.dtype | None = None
                 ) -> torch.Tensor:
        """``obs [P,B,obs_dim], unit_action [P,B,act_dim] -> Q [P, 2, B]``; ``dtype``: that
        of the hidden layers' products (see :meth:`BatchedMLP.forward_saving_inputs`)."""
        P, B, _ = obs.shape
        x = torch.cat([obs, unit_action], dim=-1)
        x = x.unsqueeze(1).expand(P, 2, B, x.shape[-1]).reshape(2 * P, B, x.shape[-1])
        return (critic or self.critic)(x, dtype).view(P, 2, B)

    @property
    def alpha(self) -> torch.Tensor:
        """``[P]`` entropy temperatures."""
        return self.log_alpha.exp()

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = True,
            rng: PopulationRNG | None = None, noise: torch.Tensor | None = None
            ) -> torch.Tensor:
        """``obs [P, n, obs_dim] -> action [P, n, act_dim]`` in environment units.

        Stochastic actions take their standard normal ``noise [P, n, act_dim]`` as given,
        or draw it from ``rng``.
        """
        mean, log_std = self._policy(obs)
        if deterministic:
            return self.scaler.to_env(torch.tanh(mean))
        if noise is None:
            if rng is None:
                raise ValueError("stochastic actions need a PopulationRNG or noise")
            noise = rng.normal(*mean.shape[1:])
        # The log-probability is not needed to act: tanh of the reparameterised sample.
        return self.scaler.to_env(torch.tanh(torch.addcmul(mean, log_std.exp(), noise)))

    # ----------------------------------------------------------------- update
    def update(self, batch: Batch, rng: PopulationRNG) -> dict[str, torch.Tensor]:
        """One SAC step for every member, differentiated by hand.

        Both losses are taken at the current parameters and both networks then step
        (the simultaneous update of the original SAC implementation), which lets one
        actor pass serve the policy and the target and one critic pass serve the
        critic loss and the policy loss. ``tests/test_sac.py`` checks every gradient
        against autograd.

        Args:
            batch: ``obs [P,B,obs_dim]``, ``action [P,B,act_dim]`` (environment units),
                ``reward [P,B]``, ``next_obs [P,B,obs_dim]``, ``terminated [P,B]``.
            rng: per-member noise for the reparameterised policy samples.

        Returns:
            ``[P]`` tensors: LossQ, LossPi, LossAlpha, Alpha, QMean, LogPi.
        """
        with torch.no_grad():
            grads = self._gradients(self, batch, rng, rng.next_draw())
        metrics = grads.pop("metrics")
        self._adam.step([*grads["critic"], *grads["actor"],
                         *(grads["alpha"] if self.auto_alpha else [])])
        with torch.no_grad():
            torch._foreach_lerp_(self._target_params, self._critic_params,
                                 1.0 - self.config.polyak)
        return metrics

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
        self._adam.reset()  # the optimizers hold new state tensors now


def sac_gradients(agent: SAC, batch: Batch, rng: PopulationRNG, draw: torch.Tensor
                  ) -> dict[str, Any]:
    """Gradients of the critic, policy and temperature losses at the current parameters.

    Shapes: ``P`` members, ``B`` rows, twin critics as ``2P`` groups (member-major).
    The policy noise is draw ``draw`` of ``rng`` (:meth:`PopulationRNG.next_draw`), so
    the function mutates none of its inputs and can be captured as a CUDA graph.

    Returns:
        ``{"critic": [...], "actor": [...], "alpha": [...]}`` gradients in each network's
        parameter order (each member's loss summed, so members stay independent), and
        ``"metrics"``, the ``[P]`` tensors of :meth:`SAC.update`.
    """
    obs, next_obs = batch["obs"], batch["next_obs"]
    P, B, obs_dim = obs.shape
    A = agent.act_dim
    dtype = agent.dtype
    alpha = agent.alpha[:, None]  # [P, 1]
    unit_action = agent.scaler.to_unit(batch["action"])
    noise = rng.block_normal(draw, 0, 2 * B, A)  # rows :B for obs, B: for next_obs

    # Policy at obs (differentiated) and at next_obs (for the target), in one pass.
    out, actor_inputs = agent.actor.forward_saving_inputs(torch.cat([obs, next_obs], dim=1),
                                                              dtype)
    mean, raw_log_std = out.chunk(2, dim=-1)
    log_std = raw_log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
    std = log_std.exp()
    pre_tanh = torch.addcmul(mean, std, noise)
    action, log_prob = torch.tanh(pre_tanh), squashed_log_prob(noise, log_std, pre_tanh)
    new_action, next_action = action[:, :B], action[:, B:]
    log_prob_new, next_log_prob = log_prob[:, :B], log_prob[:, B:]

    next_q = agent.q_values(next_obs, next_action, agent.critic_target, dtype).amin(dim=1)
    target = td_target(batch["reward"], batch["terminated"], next_q, next_log_prob,
                       alpha, agent.config.gamma)

    # Critic at (obs, data action) for its loss and at (obs, new action) for the policy's.
    x = torch.cat([torch.cat([obs, unit_action], dim=-1), torch.cat([obs, new_action], dim=-1)],
                  dim=1)
    x = x.unsqueeze(1).expand(P, 2, 2 * B, x.shape[-1]).reshape(2 * P, 2 * B, x.shape[-1])
    q_all, critic_inputs = agent.critic.forward_saving_inputs(x, dtype)
    q_all = q_all.view(P, 2, 2 * B)
    q, q_new = q_all[..., :B], q_all[..., B:]
    td_error = q - target[:, None]
    loss_q = td_error.square().mean(dim=2).sum(dim=1)  # [P]
    q_new_min, argmin = q_new.min(dim=1)  # [P, B]
    loss_pi = (alpha * log_prob_new - q_new_min).mean(dim=1)  # [P]

    # d loss / d q: the TD rows train the critic; the policy rows reach only its input.
    grad_q = torch.empty_like(q_all)
    grad_q[..., :B] = td_error * (2.0 / B)
    # Only the twin that gave the minimum. Not one_hot: on CPU it reads the index range
    # back to the host twice per call to check it.
    twins = torch.arange(2, device=argmin.device).view(1, 2, 1)
    grad_q[..., B:] = (argmin.unsqueeze(1) == twins) * (-1.0 / B)
    critic_grads, grad_x = agent.critic.backward(
        critic_inputs, grad_q.view(2 * P, 2 * B, 1), weight_rows=slice(0, B),
        input_rows=slice(B, 2 * B))
    assert grad_x is not None
    grad_new_action = grad_x[..., obs_dim:].view(P, 2, B, A).sum(dim=1)

    # Back through the squashed Gaussian: a = tanh(u), u = mean + exp(log_std) · noise,
    # d log π / d u = 2 tanh(u), d log π / d log_std = -1 (per dimension).
    a_new, eps = new_action, noise[:, :B]
    alpha_b = alpha[..., None] / B  # [P, 1, 1]
    grad_u = torch.addcmul(grad_new_action * (1.0 - a_new.square()), alpha_b, 2.0 * a_new)
    grad_log_std = (grad_u * std[:, :B] * eps - alpha_b) * (
        (raw_log_std[:, :B] >= LOG_STD_MIN) & (raw_log_std[:, :B] <= LOG_STD_MAX))
    actor_grads, _ = agent.actor.backward([h[:, :B] for h in actor_inputs],
                                          torch.cat([grad_u, grad_log_std], dim=-1))

    log_prob_mean = log_prob_new.mean(dim=1)
    # loss_alpha = -log α · (mean log π + target entropy), per member.
    entropy_gap = log_prob_mean + agent.target_entropy
    loss_alpha = (-(agent.log_alpha * entropy_gap) if agent.auto_alpha
                  else torch.zeros_like(loss_pi))
    return {
        "critic": critic_grads,
        "actor": actor_grads,
        "alpha": [-entropy_gap],
        "metrics": {
            "LossQ": loss_q,
            "LossPi": loss_pi,
            "LossAlpha": loss_alpha,
            "Alpha": alpha[:, 0],
            "QMean": q.mean(dim=(1, 2)),
            "LogPi": log_prob_mean,
        },
    }

