"""Implicit Q-learning for a population, on SAC's networks.

Kostrikov, Nair and Levine, "Offline Reinforcement Learning with Implicit Q-Learning",
ICLR 2022. IQL never evaluates a Q-function at an action the dataset did not take, so the
policy cannot exploit overestimated values of unseen actions. It learns

- a state value ``V(s)``, by expectile regression (expectile ``τ``) of the target critic's
  ``min_k Q_k(s, a)`` at the dataset's actions: with ``τ > 0.5``, ``V(s)`` approaches an
  upper expectile of Q over the actions the data took in ``s``, an in-sample stand-in for
  ``max_a Q(s, a)``;
- twin critics ``Q(s, a)``, by regression to ``r + γ (1 − terminated) V(s')``: the TD
  target reads ``V`` and never queries the policy;
- the policy, by advantage-weighted regression: it maximises
  ``min(exp(β (Q(s, a) − V(s))), 100) · log π(a|s)`` at the dataset's actions (``Q`` the
  target critic's, as in the paper's code).

The paper's defaults for the D4RL MuJoCo locomotion datasets (hopper, halfcheetah,
walker2d; medium, medium-replay and medium-expert alike) are ``τ = 0.7`` and ``β = 3.0``,
which are the configuration's defaults (``iql_expectile``, ``iql_temperature``); it uses
``τ = 0.9, β = 10`` on AntMaze and ``τ = 0.7, β = 0.5`` on Kitchen and Adroit.

Reuse of :class:`~offline_mbrl.agents.sac.SAC`: :class:`IQL` subclasses it and keeps its
batched twin critics with their Polyak-averaged target, its actor and ``act``, its update
step (one fused Adam step over every network, then the target update) and its
``--compile`` path; it adds one :class:`~offline_mbrl.models.layers.BatchedMLP` value
network with ``P`` groups and replaces SAC's losses by :func:`iql_losses`.

Policy: the tanh-squashed Gaussian with a state-dependent log-std of SAC's actor, one of
the paper's two options (its locomotion runs use a Gaussian with a tanh mean and a
state-independent log-std). Its log-density at a dataset action is
:func:`~offline_mbrl.agents.sac.squashed_log_prob` at ``atanh(a)``, with the action moved
``ACTION_EPSILON`` inside the unit box so that ``atanh`` stays finite, as the paper's code
clips dataset actions. Acting deterministically returns ``tanh(mean)``.

The three losses are taken at the current parameters and summed; each reaches only its
own network (value, critics, actor), so one Adam step over the sum is a separate step of
each. The actor's advantage and the critic's target therefore read ``V`` from before this
step's value update, where the paper's code steps ``V`` first. Entropy temperatures play no
part: ``alpha`` is ignored. Not reproduced from the paper: the actor's cosine learning-rate
decay and the rescaling of locomotion rewards by ``1000 / (max return − min return)``.
"""

from __future__ import annotations

from typing import Any

import torch

from offline_mbrl.agents.base import Batch
from offline_mbrl.agents.sac import (
    SAC,
    LossFunction,
    adam_implementation,
    critic_loss,
    squashed_log_prob,
)
from offline_mbrl.config import AgentConfiguration
from offline_mbrl.models.layers import BatchedMLP, member_generators
from offline_mbrl.rng import PopulationRNG

ACTION_EPSILON = 1e-5
"""Dataset actions are moved this far inside ``[-1, 1]`` before ``atanh``."""
_VALUE_SALT = 41


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """Elementwise asymmetric squared error ``|τ − 1(u < 0)| · u²`` of ``diff`` ``u`` (any
    shape): positive errors weigh ``τ``, negative ones ``1 − τ``."""
    return (expectile - (diff < 0).to(diff.dtype)).abs() * diff.square()


def value_loss(q: torch.Tensor, v: torch.Tensor, expectile: float) -> torch.Tensor:
    """``[P]`` expectile regression of ``V(s)`` to ``min_k Q_k(s, a)``, averaged over the
    batch.

    Args:
        q: ``[P, 2, B]`` the target twin critics at the dataset's actions (no gradient).
        v: ``[P, B]`` the value network at the dataset's states.
        expectile: ``τ`` in ``(0, 1)``.
    """
    return expectile_loss(q.amin(dim=1) - v, expectile).mean(dim=1)


def value_target(reward: torch.Tensor, terminated: torch.Tensor, next_v: torch.Tensor,
                 gamma: float) -> torch.Tensor:
    """``[P, B]`` critic target ``r + γ (1 − terminated) V(s')``; all inputs ``[P, B]``."""
    return reward + gamma * (1.0 - terminated) * next_v


def advantage_weights(advantage: torch.Tensor, temperature: float, clip: float
                      ) -> torch.Tensor:
    """``[P, B]`` actor weights ``min(exp(β · A), clip)`` of ``advantage [P, B]`` (no
    gradient); the clip keeps a few large advantages from dominating the batch."""
    return torch.exp(temperature * advantage).clamp(max=clip)


def weighted_actor_loss(weights: torch.Tensor, log_prob: torch.Tensor) -> torch.Tensor:
    """``[P]`` advantage-weighted regression loss ``−mean(w · log π(a|s))``; ``weights`` and
    ``log_prob`` (of the dataset's actions) ``[P, B]``."""
    return -(weights * log_prob).mean(dim=1)


def dataset_log_prob(mean: torch.Tensor, log_std: torch.Tensor, unit_action: torch.Tensor
                     ) -> torch.Tensor:
    """``[P, B]`` log-density of ``unit_action [P, B, act_dim]`` (in ``[-1, 1]``) under the
    tanh-squashed Gaussian of ``mean, log_std [P, B, act_dim]`` (before the squashing)."""
    pre_tanh = torch.atanh(unit_action.clamp(-1.0 + ACTION_EPSILON, 1.0 - ACTION_EPSILON))
    return squashed_log_prob((pre_tanh - mean) / log_std.exp(), log_std, pre_tanh)


class IQL(SAC):
    """``P`` IQL agents trained in lockstep; arguments as for :class:`SAC`, with
    ``config.iql_expectile``, ``config.iql_temperature`` and ``config.iql_advantage_clip``.

    :meth:`update` returns ``[P]`` metrics LossQ, LossV, LossPi, QMean, VMean, LogPi (of the
    dataset's actions) and AdvWeight (the mean actor weight).
    """

    def __init__(self, obs_dim: int, act_dim: int, action_low: Any, action_high: Any,
                 seeds: tuple[int, ...], config: AgentConfiguration,
                 device: str | torch.device = "cpu") -> None:
        super().__init__(obs_dim, act_dim, action_low, action_high, seeds, config, device)
        hidden = (config.n_hidden_units,) * config.n_hidden_layers
        self.value = BatchedMLP(self.n_members, obs_dim, 1, hidden)
        # Drawn on the CPU, as SAC's networks are, so that a member starts alike everywhere.
        self.value.reset_parameters(member_generators(seeds, _VALUE_SALT))
        self.value.to(device)
        # SAC's optimizer covers its actor, critic and temperature; IQL trains the actor,
        # the critic and the value network, with one fused step as SAC does.
        trained = [*self.actor.parameters(), *self.critic.parameters(),
                   *self.value.parameters()]
        self.optimizer = torch.optim.Adam(trained, lr=config.lr,
                                          **adam_implementation(self.log_alpha.device))

    def state_values(self, obs: torch.Tensor) -> torch.Tensor:
        """``obs [P, B, obs_dim] -> V [P, B]``."""
        return self.value(obs, self.dtype).squeeze(-1)

    # ------------------------------------------------------------ SAC's hooks
    def loss_function(self) -> LossFunction:
        return iql_losses

    policy_draws = 0

    def policy_noise(self, rng: PopulationRNG, draw: torch.Tensor | int, batch_size: int
                     ) -> torch.Tensor:
        """IQL's losses sample no actions: an empty ``[P, 0, act_dim]``, and no draw."""
        return torch.empty(self.n_members, 0, self.act_dim, device=self.log_alpha.device)

    # ----------------------------------------------------------------- state
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        """SAC's state plus the value network's."""
        return {**super().state_dict(), "value": self.value.state_dict()}

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> Any:  # type: ignore[override]
        super().load_state_dict(state, strict)
        self.value.load_state_dict(state["value"])


def iql_losses(agent: IQL, batch: Batch, noise: torch.Tensor,
               extra: dict[str, torch.Tensor] | None = None
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The sum over members of the value, critic and actor losses, and ``[P]`` metrics.

    Shapes: ``P`` members, ``B`` rows of ``batch`` (see :meth:`SAC.update`); ``noise`` and
    ``extra`` are unused (IQL samples no actions).
    """
    obs = batch["obs"]
    unit_action = agent.scaler.to_unit(batch["action"])
    config = agent.config
    # Targets of the three regressions: no graph.
    with torch.no_grad():
        q_target = agent.q_values(obs, unit_action, agent.critic_target)  # [P, 2, B]
        target = value_target(batch["reward"], batch["terminated"],
                              agent.state_values(batch["next_obs"]), config.gamma)
    v = agent.state_values(obs)
    loss_v = value_loss(q_target, v, config.iql_expectile)
    weights = advantage_weights(q_target.amin(dim=1) - v.detach(), config.iql_temperature,
                                config.iql_advantage_clip)
    q = agent.q_values(obs, unit_action)
    loss_q = critic_loss(q, target)
    mean, log_std = agent.policy(obs)
    log_prob = dataset_log_prob(mean, log_std, unit_action)
    loss_pi = weighted_actor_loss(weights, log_prob)
    metrics = {
        "LossQ": loss_q.detach(),
        "LossV": loss_v.detach(),
        "LossPi": loss_pi.detach(),
        "QMean": q.detach().mean(dim=(1, 2)),
        "VMean": v.detach().mean(dim=1),
        "LogPi": log_prob.detach().mean(dim=1),
        "AdvWeight": weights.mean(dim=1),
    }
    return (loss_q + loss_v + loss_pi).sum(), metrics
