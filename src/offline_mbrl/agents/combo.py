"""COMBO for a population: conservative Q-learning on real and model-generated data.

Yu, Kumar, Rafailov, Rajeswaran, Levine and Finn, "COMBO: Conservative Offline Model-Based
Policy Optimization", NeurIPS 2021. Like MBPO and MOPO, COMBO trains SAC on batches that mix
dataset transitions with transitions of short rollouts in a learned model; unlike MOPO it
leaves the model's rewards alone (no uncertainty penalty, no partitioning) and makes the
critic conservative instead. The critic's loss gains, per twin,

    β · ( E_{s~ρ} [ T · log Σ_a exp(Q(s, a) / T) ] − E_{(s,a)~D} [ Q(s, a) ] ),

which pushes Q down at the actions that a uniform proposal and the policy take in the
states of ``ρ``, and up at the dataset's own state-actions. The paper's ``ρ`` is the
state distribution of the policy in the model; its reference implementations read the
whole mixed batch, real and model rows alike (``config.combo_states`` chooses). Where
CQL pushes up every row of its all-real batches, COMBO pushes up the real rows only.

The log-sum-exp over actions is CQL(H)'s, importance-sampled the same way
(:meth:`CQL.sampled_q`, :func:`~offline_mbrl.agents.cql.conservative_penalty`): COMBO
changes only which states the push-down term reads and which rows the push-up term reads.
It learns which rows are real from the loop, once, through :meth:`COMBO.use_batch_split`
(see :class:`~offline_mbrl.agents.base.MixedBatchAgent`): the first ``n_real`` rows of every
batch are dataset transitions.

OfflineRL-Kit's COMBO (``run_example/run_combo.py``) draws half of every batch from the
dataset (``--real_ratio 0.5``) and rolls the model out for 5 steps on hopper and
halfcheetah, 1 on walker2d (``--rollout_length``); the project's defaults for those flags
are MOPO's (0.05, and the configured fallback length), so pass them for that setting.
"""

from __future__ import annotations

import torch

from offline_mbrl.agents.base import Batch
from offline_mbrl.agents.cql import CQL, conservative_penalty
from offline_mbrl.errors import UserError
from offline_mbrl.rng import PopulationRNG


class COMBO(CQL):
    """``P`` COMBO agents trained in lockstep; arguments as for :class:`SAC`, with
    ``config.combo_weight`` (β), ``config.combo_states``, and CQL's ``cql_n_actions`` and
    ``cql_temperature`` for the log-sum-exp."""

    n_real: int | None = None
    """Real rows at the head of every batch (set by :meth:`use_batch_split`); ``None``:
    every row is real, as for an agent trained outside the loop."""

    def use_batch_split(self, n_real: int, n_synthetic: int) -> None:
        """Rows ``:n_real`` of every batch are real, rows ``n_real:`` model-generated."""
        if n_real == 0:
            raise UserError("combo pushes Q up at the batch's real dataset rows, and "
                            "--real_ratio leaves none: raise --real_ratio (the paper uses 0.5)")
        if self.config.combo_states == "model" and n_synthetic == 0:
            raise UserError("combo_states 'model' pushes Q down at model-generated rows, and "
                            "--real_ratio leaves none: lower --real_ratio or use "
                            "--combo_states mixed")
        self.n_real = n_real

    def push_down_rows(self) -> slice:
        """The batch rows whose states the push-down term reads."""
        if self.config.combo_states == "mixed":
            return slice(None)
        if self.n_real is None:
            raise ValueError("combo_states 'model' needs to know which rows are "
                             "model-generated: call use_batch_split before updating")
        return slice(self.n_real, None)

    def extra_noise(self, rng: PopulationRNG, draw: torch.Tensor | int, batch_size: int
                    ) -> dict[str, torch.Tensor]:
        """CQL's proposal draws, for the states of :meth:`push_down_rows` only."""
        return super().extra_noise(rng, draw, len(range(batch_size)[self.push_down_rows()]))

    def critic_regularizer(self, batch: Batch, q: torch.Tensor,
                           extra: dict[str, torch.Tensor]
                           ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        down = self.push_down_rows()
        q_sampled, log_density = self.sampled_q(batch["obs"][:, down],
                                                batch["next_obs"][:, down], extra)
        # The push-up term averages over other rows than the push-down term: its mean
        # enters as one [P, 2, 1] column.
        q_real = q[:, :, :self.n_real].mean(dim=2, keepdim=True)
        penalty = conservative_penalty(q_real, q_sampled, log_density,
                                       self.config.cql_temperature, self.config.combo_weight)
        return penalty, {"LossCOMBO": penalty.detach()}
