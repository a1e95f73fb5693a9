"""CQL: the conservative term on hand-made tensors, and what it does to a critic."""

import math

import torch
from tests.test_sac import SMALL, make_batch

from offline_mbrl.agents.cql import CQL, conservative_penalty
from offline_mbrl.agents.sac import SAC
from offline_mbrl.rng import PopulationRNG


def test_conservative_penalty_hand_made():
    q_data = torch.tensor([[[1.0, 2.0], [0.0, 0.0]]])  # [P=1, twins, B=2]
    q_sampled = torch.full((1, 2, 2, 4), 3.0)  # four sampled actions, all Q = 3
    log_density = torch.zeros(1, 1, 2, 4)
    # T · log Σ exp(3 / T) = 3 + T log 4; twin 1: mean(3 + log 4 - 1, 3 + log 4 - 2),
    # twin 2: 3 + log 4; weight 2.
    expected = 2.0 * ((3 + math.log(4) - 1.5) + (3 + math.log(4)))
    got = conservative_penalty(q_data, q_sampled, log_density, temperature=1.0, weight=2.0)
    torch.testing.assert_close(got, torch.tensor([expected]))
    # A sample's log-density divides it out: a likelier proposal counts for less.
    log_density[..., 0] = math.log(2.0)
    lower = conservative_penalty(q_data, q_sampled, log_density, temperature=1.0, weight=2.0)
    assert lower < got


def test_with_zero_weight_the_first_update_is_sac():
    config = SMALL.model_copy(update={"cql_weight": 0.0})
    sac = SAC(3, 2, -torch.ones(2), torch.ones(2), (0, 1), config)
    cql = CQL(3, 2, -torch.ones(2), torch.ones(2), (0, 1), config)
    batch = make_batch(2, obs_dim=3)
    m_sac = sac.update(batch, PopulationRNG((0, 1)))
    m_cql = cql.update(batch, PopulationRNG((0, 1)))
    torch.testing.assert_close(m_cql["LossQ"], m_sac["LossQ"])
    torch.testing.assert_close(m_cql["LossCQL"], torch.zeros(2))
    for a, b in zip(sac.parameters(), cql.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_cql_keeps_q_of_unseen_actions_below_the_datas():
    """Trained on one fixed batch, CQL's Q at random actions falls below SAC's and below its
    own Q at the batch's actions; SAC's critic tells the two apart far less."""
    batch = make_batch(2, B=64, obs_dim=3, seed=3)
    random_actions = torch.rand(2, 64, 2, generator=torch.Generator().manual_seed(9)) * 2 - 1
    q_random, gap = {}, {}
    for cls in (SAC, CQL):
        agent = cls(3, 2, -torch.ones(2), torch.ones(2), (0, 1),
                    SMALL.model_copy(update={"lr": 3e-3}))
        rng = PopulationRNG((0, 1))
        for _ in range(100):
            agent.update(batch, rng)
        q_random[cls] = agent.q_estimate(batch["obs"], random_actions).mean()
        gap[cls] = agent.q_estimate(batch["obs"], batch["action"]).mean() - q_random[cls]
    assert q_random[CQL] < q_random[SAC] - 0.3
    assert gap[CQL] > 0.3 and gap[CQL] > gap[SAC] + 0.3
