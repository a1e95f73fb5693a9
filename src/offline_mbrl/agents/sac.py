"""Soft actor-critic (Haarnoja et al., 2018) for a population of ``P`` independent agents.

All ``P`` actors are one :class:`BatchedMLP` with ``P`` groups; all ``2P`` critics
(twin Q per member) are one :class:`BatchedMLP` with ``2P`` groups laid out member-major
(``[p, q1], [p, q2], ...``). One call to :meth:`SAC.update` is one gradient step for
every member. Each loss is a small function below returning one value per member; the
update sums them over members and differentiates with autograd, so each member's gradient
is exactly the gradient of its own loss: member ``p`` trains as a single agent with seed
``p`` would. Algorithms built on SAC (CQL, COMBO, MOBILE) add terms to these losses.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from offline_mbrl.agents.base import ActionScaler, Batch
from offline_mbrl.config import AgentConfiguration
from offline_mbrl.models.layers import BatchedMLP, member_generators
from offline_mbrl.rng import PopulationRNG

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0
_ACTOR_SALT, _CRITIC_SALT = 11, 23

LossFunction = Callable[[Any, Batch, torch.Tensor, dict[str, torch.Tensor]],
                        tuple[torch.Tensor, dict[str, torch.Tensor]]]
"""``(agent, batch, noise, extra) -> (scalar loss, [P] metrics)``: what :meth:`SAC.update`
differentiates."""
NoisyLossFunction = Callable[[Any, Batch, PopulationRNG, torch.Tensor],
                             tuple[torch.Tensor, dict[str, torch.Tensor]]]
"""``(agent, batch, rng, first_draw) -> (scalar loss, [P] metrics)``: a
:data:`LossFunction` with its random draws (see :func:`drawing_noise`)."""


def drawing_noise(loss_function: LossFunction) -> NoisyLossFunction:
    """``loss_function`` drawing its own noise: the policy's at draw ``first_draw`` of
    ``rng`` and the extra draws (:meth:`SAC.extra_noise`) after it.

    The draws are pure functions of the draw numbers, so compiled with the losses they
    fuse into the graph's first kernels; the caller moves ``rng``'s counter
    (:meth:`SAC.draws_per_update`), which keeps the compiled function free of mutation.
    """
    def losses(agent: Any, batch: Batch, rng: PopulationRNG, first_draw: torch.Tensor
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        B = batch["obs"].shape[1]
        noise = agent.policy_noise(rng, first_draw, B)
        extra = agent.extra_noise(rng, first_draw + agent.policy_draws, B)
        return loss_function(agent, batch, noise, extra)

    return losses


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


def critic_loss(q: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``[P]`` squared TD error: ``q [P, 2, B]`` (twin critics) against ``target [P, B]``,
    averaged over the batch and summed over the twins."""
    return (q - target[:, None]).square().mean(dim=2).sum(dim=1)


def actor_loss(q_new: torch.Tensor, log_prob: torch.Tensor, alpha: torch.Tensor
               ) -> torch.Tensor:
    """``[P]`` policy loss ``mean(α log π(a|s) − min_k Q_k(s, a))`` for ``a ~ π(s)``.

    Shapes: ``q_new [P, 2, B]``, ``log_prob [P, B]``, ``alpha [P, 1]``.
    """
    return (alpha * log_prob - q_new.amin(dim=1)).mean(dim=1)


def alpha_loss(log_alpha: torch.Tensor, log_prob: torch.Tensor, target_entropy: float
               ) -> torch.Tensor:
    """``[P]`` temperature loss ``−log α · (mean log π + target entropy)``; ``log_alpha [P]``,
    ``log_prob [P, B]`` (its gradient does not flow: only α learns from this loss)."""
    return -(log_alpha * (log_prob.detach().mean(dim=1) + target_entropy))


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
        hidden = (config.n_hidden_units,) * config.n_hidden_layers
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
        # The optimizer is made for the parameters where they will live.
        self.to(device)
        # Adam is elementwise, so one optimizer over batched weights keeps members
        # independent; one optimizer over all three losses' parameters is one fused step.
        trained = [*self.actor.parameters(), *self.critic.parameters()]
        if self.auto_alpha:
            trained.append(self.log_alpha)
        self.optimizer = torch.optim.Adam(trained, lr=config.lr,
                                          **adam_implementation(self.log_alpha.device))
        self._losses: NoisyLossFunction = drawing_noise(self.loss_function())
        self._compiled = False

    def compile_update(self, compile_fn: Callable[[Any], Any]) -> None:
        """Run the loss computation of :meth:`update` (its random draws, forward and
        backward) through ``compile_fn`` (``torch.compile``; see
        :mod:`offline_mbrl.compiling`). The optimizer step stays eager: Adam's fused
        kernel is one call already."""
        compiled = compile_fn(drawing_noise(self.loss_function()))

        def losses(agent: SAC, batch: Batch, rng: PopulationRNG, first_draw: torch.Tensor
                   ) -> tuple[torch.Tensor, dict[str, Any]]:
            # Columns of packed rows are strided views; inductor's kernels run slower on
            # them than on contiguous copies, which cost a few microseconds.
            return compiled(agent, {k: v.contiguous() for k, v in batch.items()}, rng,
                            first_draw)

        self._losses = losses
        self._compiled = True

    @property
    def update_compiled(self) -> bool:
        """Whether :meth:`update` runs its loss computation compiled."""
        return self._compiled

    # ----------------------------------------------------------------- networks
    def policy(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``obs [P, B, obs_dim] -> (mean, log_std)``, each ``[P, B, act_dim]``, of the
        Gaussian before the tanh squashing."""
        mean, log_std = self.actor(obs, self.dtype).chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def q_values(self, obs: torch.Tensor, unit_action: torch.Tensor,
                 critic: BatchedMLP | None = None, dtype: torch.dtype | None = None,
                 frozen: bool = False) -> torch.Tensor:
        """``obs [P,B,obs_dim], unit_action [P,B,act_dim] -> Q [P, 2, B]`` (both twins).

        Args:
            critic: the online critic (default) or the target.
            dtype: that of the hidden layers' products (default the agent's precision).
            frozen: the critic's parameters enter detached, so that a loss differentiates
                through the critic's input only.
        """
        P, B, _ = obs.shape
        return (critic or self.critic)(twin_inputs(obs, unit_action), dtype or self.dtype,
                                       frozen=frozen).view(P, 2, B)

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
        mean, log_std = self.policy(obs)
        if deterministic:
            return self.scaler.to_env(torch.tanh(mean))
        if noise is None:
            if rng is None:
                raise ValueError("stochastic actions need a PopulationRNG or noise")
            noise = rng.normal(*mean.shape[1:])
        # The log-probability is not needed to act: tanh of the reparameterised sample.
        return self.scaler.to_env(torch.tanh(torch.addcmul(mean, log_std.exp(), noise)))

    @torch.no_grad()
    def q_estimate(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """``[P, B]`` the smaller twin's Q-value of ``obs [P, B, obs_dim]`` and ``action``
        ``[P, B, act_dim]`` (environment units): what uncertainty penalties that look at
        the critic (MOBILE's) read, without reaching into the agent."""
        return self.q_values(obs, self.scaler.to_unit(action)).amin(dim=1)

    @torch.no_grad()
    def value_estimate(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``[P, B]`` the smaller target twin's Q-value of ``obs [P, B, obs_dim]`` at the
        policy's action for standard normal ``noise [P, B, act_dim]``: the ``Q̂(s', a')`` of
        a TD target without its entropy term (MOBILE's Bellman targets read it)."""
        mean, log_std = self.policy(obs)
        action = torch.tanh(torch.addcmul(mean, log_std.exp(), noise))
        return self.q_values(obs, action, self.critic_target).amin(dim=1)

    # ----------------------------------------------------------------- update
    def update(self, batch: Batch, rng: PopulationRNG) -> dict[str, torch.Tensor]:
        """One SAC step for every member.

        All three losses are taken at the current parameters and then every network
        steps (the simultaneous update of the original SAC implementation).

        Args:
            batch: ``obs [P,B,obs_dim]``, ``action [P,B,act_dim]`` (environment units),
                ``reward [P,B]``, ``next_obs [P,B,obs_dim]``, ``terminated [P,B]``.
            rng: per-member noise for the reparameterised policy samples.

        Returns:
            ``[P]`` tensors: LossQ, LossPi, LossAlpha, Alpha, QMean, LogPi.
        """
        first_draw = rng.next_draws(self.draws_per_update())
        loss, metrics = self._losses(self, batch, rng, first_draw)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            for target, online in zip(self.critic_target.parameters(),
                                      self.critic.parameters(), strict=True):
                target.lerp_(online, 1.0 - self.config.polyak)
        return metrics

    # ------------------------------------------------- hooks for SAC-based methods
    def loss_function(self) -> LossFunction:
        """The loss computation :meth:`update` differentiates (and ``--compile`` compiles):
        :func:`sac_losses`; methods with other losses on SAC's networks return theirs."""
        return sac_losses

    policy_draws: int = 1
    """Draw numbers :meth:`policy_noise` uses per update."""
    extra_draws: int = 0
    """Draw numbers :meth:`extra_noise` uses per update."""

    def draws_per_update(self) -> int:
        """Draw numbers one update takes from its :class:`PopulationRNG`."""
        return self.policy_draws + self.extra_draws

    def policy_noise(self, rng: PopulationRNG, draw: torch.Tensor | int, batch_size: int
                     ) -> torch.Tensor:
        """``[P, 2B, act_dim]`` standard normal noise of the loss computation's policy
        samples (rows ``:B`` at ``obs``, ``B:`` at ``next_obs``), of draw ``draw``."""
        return rng.block_normal(draw, 0, 2 * batch_size, self.act_dim)

    def extra_noise(self, rng: PopulationRNG, draw: torch.Tensor | int, batch_size: int
                    ) -> dict[str, torch.Tensor]:
        """Random draws a subclass's :meth:`critic_regularizer` needs, of draws ``draw ..
        draw + extra_draws - 1``; SAC needs none."""
        return {}

    def critic_regularizer(self, batch: Batch, q: torch.Tensor,
                           extra: dict[str, torch.Tensor]
                           ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """A ``[P]`` term added to the critic loss, given the critic's ``q [P, 2, B]`` at
        the batch's actions, and its ``[P]`` metrics; SAC adds nothing (``None``)."""
        return None, {}

    # ----------------------------------------------------------------- state
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        """Networks, targets, temperature and the optimizer state (population tensors)."""
        return {
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(),
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> Any:  # type: ignore[override]
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.optimizer.load_state_dict(state["optimizer"])


def twin_inputs(obs: torch.Tensor, unit_action: torch.Tensor) -> torch.Tensor:
    """``obs [P, B, obs_dim], unit_action [P, B, act_dim] -> [2P, B, obs_dim + act_dim]``,
    the critic's input with each member's rows once per twin (member-major)."""
    P, B, _ = obs.shape
    x = torch.cat([obs, unit_action], dim=-1)
    return x.unsqueeze(1).expand(P, 2, B, x.shape[-1]).reshape(2 * P, B, x.shape[-1])


def adam_implementation(device: torch.device) -> dict[str, Any]:
    """Adam's fused kernel where torch has one for ``device``, else its foreach path."""
    if device.type in ("cpu", "cuda", "mps", "xpu"):
        return {"fused": True}
    return {"foreach": True}


def sac_losses(agent: SAC, batch: Batch, noise: torch.Tensor,
               extra: dict[str, torch.Tensor] | None = None
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The sum over members of the critic, policy and temperature losses, and metrics.

    Shapes: ``P`` members, ``B`` rows; ``noise [P, 2B, act_dim]`` standard normal (rows
    ``:B`` for the policy at ``obs``, ``B:`` for the target at ``next_obs``); ``extra``:
    the draws of :meth:`SAC.extra_noise` for :meth:`SAC.critic_regularizer`.

    Returns:
        The scalar loss to differentiate, and the ``[P]`` metrics of :meth:`SAC.update`.
    """
    obs, next_obs = batch["obs"], batch["next_obs"]
    B = obs.shape[1]
    alpha = agent.alpha.detach()[:, None]  # [P, 1]

    # The policy at next_obs only feeds the target: no graph, so that the backward pass
    # multiplies the rows at obs only.
    with torch.no_grad():
        mean, log_std = agent.policy(next_obs)
        next_action, next_log_prob = squashed_gaussian(mean, log_std, noise[:, B:])
        next_q = agent.q_values(next_obs, next_action, agent.critic_target).amin(dim=1)
        target = td_target(batch["reward"], batch["terminated"], next_q, next_log_prob,
                           alpha, agent.config.gamma)
    mean, log_std = agent.policy(obs)
    new_action, log_prob_new = squashed_gaussian(mean, log_std, noise[:, :B])

    q = agent.q_values(obs, agent.scaler.to_unit(batch["action"]))
    # The policy loss reaches the critic's input only: its parameters enter detached.
    q_new = agent.q_values(obs, new_action, frozen=True)
    loss_q = critic_loss(q, target)
    regularizer, regularizer_metrics = agent.critic_regularizer(batch, q, extra or {})
    loss_pi = actor_loss(q_new, log_prob_new, alpha)
    loss_alpha = (alpha_loss(agent.log_alpha, log_prob_new, agent.target_entropy)
                  if agent.auto_alpha else torch.zeros_like(loss_pi))
    metrics = {
        "LossQ": loss_q.detach(),
        "LossPi": loss_pi.detach(),
        "LossAlpha": loss_alpha.detach(),
        "Alpha": alpha[:, 0],
        "QMean": q.detach().mean(dim=(1, 2)),
        "LogPi": log_prob_new.detach().mean(dim=1),
        **regularizer_metrics,
    }
    total = loss_q + loss_pi + loss_alpha
    if regularizer is not None:
        total = total + regularizer
    return total.sum(), metrics
