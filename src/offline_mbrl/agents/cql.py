"""Conservative Q-learning for a population: CQL(H) on top of SAC.

Kumar, Zhou, Tucker and Levine, "Conservative Q-Learning for Offline Reinforcement
Learning", NeurIPS 2020. The critic's loss gains, per twin,

    α_cql · ( T · log Σ_a exp(Q(s, a) / T) − Q(s, a_data) ),

which pushes Q down on the actions the policy and a uniform proposal would take and up on
the dataset's, so that the policy cannot exploit overestimated values of actions the data
never tried. The log-sum-exp over the continuous action box is estimated by importance
sampling, as in the paper's code: ``n`` uniform actions (density 2^-act_dim on the unit
box), ``n`` policy actions at ``s`` and ``n`` at ``s'`` (each over its log-density), all
evaluated at ``s``. Everything else is SAC (:mod:`offline_mbrl.agents.sac`): the regulariser
is one more loss term, differentiated with the rest.
"""

from __future__ import annotations

import math

import torch

from offline_mbrl.agents.base import Batch
from offline_mbrl.agents.sac import SAC, squashed_gaussian
from offline_mbrl.rng import PopulationRNG


def conservative_penalty(q_data: torch.Tensor, q_sampled: torch.Tensor,
                         log_density: torch.Tensor, temperature: float, weight: float
                         ) -> torch.Tensor:
    """``[P]`` CQL(H)'s regulariser, summed over the twin critics.

    Args:
        q_data: ``[P, 2, B]`` Q at the dataset's actions, or ``[P, 2, 1]`` their mean where
            the rows pushed up are not the states pushed down (COMBO): the difference of
            means is then the mean of the broadcast difference.
        q_sampled: ``[P, 2, B, N]`` Q at ``N`` sampled actions per state.
        log_density: ``[P, 1, B, N]`` log-density of each sampled action under the
            distribution it was drawn from (importance weights of the log-sum-exp).
        temperature, weight: ``T`` and ``α_cql``.
    """
    soft_max = temperature * torch.logsumexp((q_sampled - log_density) / temperature, dim=-1)
    return weight * (soft_max - q_data).mean(dim=2).sum(dim=1)


class CQL(SAC):
    """``P`` CQL agents trained in lockstep; arguments as for :class:`SAC`, with
    ``config.cql_weight``, ``config.cql_n_actions`` and ``config.cql_temperature``."""

    extra_draws = 2

    def extra_noise(self, rng: PopulationRNG, draw: torch.Tensor | int, batch_size: int
                    ) -> dict[str, torch.Tensor]:
        """Standard normal noise for ``2·B·n`` policy samples (at ``s`` and ``s'``) and
        ``B·n`` uniform actions in the unit box."""
        n, A = self.config.cql_n_actions, self.act_dim
        return {
            "normal": rng.block_normal(draw, 0, 2 * batch_size * n, A),
            "uniform": rng.block_uniform(draw + 1, 0, batch_size * n, A) * 2 - 1,
        }

    def critic_regularizer(self, batch: Batch, q: torch.Tensor,
                           extra: dict[str, torch.Tensor]
                           ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        q_sampled, log_density = self.sampled_q(batch["obs"], batch["next_obs"], extra)
        penalty = conservative_penalty(q, q_sampled, log_density, self.config.cql_temperature,
                                       self.config.cql_weight)
        return penalty, {"LossCQL": penalty.detach()}

    def sampled_q(self, obs: torch.Tensor, next_obs: torch.Tensor,
                  extra: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Q at the proposal's actions, the terms of the log-sum-exp over actions.

        Args:
            obs, next_obs: ``[P, B, obs_dim]``; the policy's actions at ``next_obs`` are
                evaluated at ``obs``, as in the paper's code.
            extra: the draws of :meth:`extra_noise` for ``B`` states.

        Returns:
            ``q_sampled [P, 2, B, 3n]`` (uniform, policy at ``s``, policy at ``s'``) and
            ``log_density [P, 1, B, 3n]`` of each action under its proposal.
        """
        P, B, obs_dim = obs.shape
        n = self.config.cql_n_actions
        repeat = lambda x: x.unsqueeze(2).expand(P, B, n, obs_dim).reshape(P, B * n, obs_dim)  # noqa: E731
        obs_n = repeat(obs)
        with torch.no_grad():
            mean, log_std = self.policy(torch.cat([obs_n, repeat(next_obs)], dim=1))
            policy_actions, log_prob = squashed_gaussian(mean, log_std, extra["normal"])
        uniform_log_density = torch.full((P, B * n), self.act_dim * math.log(0.5),
                                         device=obs.device)
        # Rows: uniform | policy at s | policy at s', each B·n, state-major.
        actions = torch.cat([extra["uniform"], policy_actions], dim=1)
        log_density = torch.cat([uniform_log_density, log_prob], dim=1)
        q_sampled = self.q_values(obs_n.repeat(1, 3, 1), actions)  # [P, 2, 3·B·n]
        q_sampled = q_sampled.view(P, 2, 3, B, n).permute(0, 1, 3, 2, 4).reshape(P, 2, B, 3 * n)
        log_density = log_density.view(P, 3, B, n).permute(0, 2, 1, 3).reshape(P, 1, B, 3 * n)
        return q_sampled, log_density
