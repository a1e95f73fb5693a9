"""IQL: its losses on hand-made tensors, their wiring to the networks, populations, and what
the advantage weights do to the policy."""

import math

import torch
from tests.test_sac import SMALL, make_batch

from offline_mbrl.agents.iql import (
    IQL,
    advantage_weights,
    dataset_log_prob,
    expectile_loss,
    iql_losses,
    value_loss,
    value_target,
    weighted_actor_loss,
)
from offline_mbrl.agents.sac import critic_loss
from offline_mbrl.rng import PopulationRNG


def make_agent(seeds=(0, 1), **config):
    return IQL(3, 2, -torch.ones(2), torch.ones(2), seeds, SMALL.model_copy(update=config))


def test_expectile_loss_hand_made_and_asymmetric():
    diff = torch.tensor([2.0, -2.0, 0.5, 0.0])
    torch.testing.assert_close(expectile_loss(diff, 0.7), torch.tensor([2.8, 1.2, 0.175, 0.0]))
    # Errors of either sign weigh τ : 1 − τ; τ = 0.5 is half the squared error.
    torch.testing.assert_close(expectile_loss(diff, 0.9)[0] / expectile_loss(diff, 0.9)[1],
                               torch.tensor(9.0))
    torch.testing.assert_close(expectile_loss(diff, 0.5), 0.5 * diff.square())


def test_expectile_loss_is_minimised_at_the_expectile():
    # Over the samples {0, 1} the τ-expectile m solves τ (1 − m) = (1 − τ) m: m = τ.
    samples = torch.tensor([0.0, 1.0])
    m = torch.tensor(0.7, requires_grad=True)
    expectile_loss(samples - m, 0.7).mean().backward()
    assert m.grad is not None and abs(m.grad.item()) < 1e-6
    loss = lambda x: expectile_loss(samples - x, 0.7).mean()  # noqa: E731
    assert loss(0.7) < loss(0.69) and loss(0.7) < loss(0.71) and loss(0.7) < loss(0.5)


def test_value_loss_regresses_v_to_the_smaller_twin():
    q = torch.tensor([[[1.0, 5.0], [3.0, 2.0]]])  # [P=1, twins, B=2]: min = [1, 2]
    v = torch.tensor([[2.0, 0.0]])
    # u = min Q − V = [−1, 2]: mean(0.3 · 1, 0.7 · 4) = 1.55.
    torch.testing.assert_close(value_loss(q, v, 0.7), torch.tensor([1.55]))


def test_value_target_hand_made():
    target = value_target(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 1.0]]),
                          torch.tensor([[10.0, 10.0]]), gamma=0.9)
    # 1 + 0.9 · 10 = 10; terminal: reward only.
    torch.testing.assert_close(target, torch.tensor([[10.0, 2.0]]))


def test_actor_weights_are_clipped_and_weight_the_log_likelihood():
    advantage = torch.tensor([[0.0, 1.0, 10.0, 1000.0]])
    weights = advantage_weights(advantage, temperature=3.0, clip=100.0)
    torch.testing.assert_close(weights, torch.tensor([[1.0, math.exp(3.0), 100.0, 100.0]]))
    assert torch.isfinite(weights).all()
    loss = weighted_actor_loss(torch.tensor([[1.0, 2.0]]), torch.tensor([[-1.0, -3.0]]))
    torch.testing.assert_close(loss, torch.tensor([3.5]))  # −mean(−1, −6)
    # β = 0 weighs every action alike: behavioral cloning by maximum likelihood.
    torch.testing.assert_close(advantage_weights(advantage, 0.0, 100.0), torch.ones(1, 4))


def test_dataset_log_prob_is_the_change_of_variables_and_finite_at_the_bounds():
    mean = torch.tensor([[[0.3, -1.2]]])
    log_std = torch.tensor([[[-0.5, 0.2]]])
    action = torch.tensor([[[0.4, -0.9]]])
    u = torch.atanh(action)
    normal = torch.distributions.Normal(mean, log_std.exp())
    expected = (normal.log_prob(u) - torch.log(1 - action**2)).sum(-1)
    torch.testing.assert_close(dataset_log_prob(mean, log_std, action), expected,
                               rtol=1e-5, atol=1e-5)
    assert torch.isfinite(dataset_log_prob(mean, log_std, torch.tensor([[[1.0, -1.0]]]))).all()


def test_losses_read_the_networks_as_the_paper_says():
    """Each loss recomputed from the agent's networks: V against the target critic's smaller
    twin, the critics against r + γ (1 − d) V(s'), the actor weighted by exp(β (Q − V))."""
    agent = make_agent(iql_expectile=0.8, iql_temperature=2.0)
    with torch.no_grad():  # a target critic apart from the online one
        for p in agent.critic_target.parameters():
            p.add_(0.1)
    batch = make_batch(2, obs_dim=3)
    _, metrics = iql_losses(agent, batch, torch.empty(2, 0, 2))
    unit = batch["action"]  # the action box is [-1, 1]
    with torch.no_grad():
        q_target = agent.q_values(batch["obs"], unit, agent.critic_target)
        v = agent.state_values(batch["obs"])
        target = (batch["reward"] + 0.99 * (1 - batch["terminated"])
                  * agent.state_values(batch["next_obs"]))
        q = agent.q_values(batch["obs"], unit)
        mean, log_std = agent.policy(batch["obs"])
        weights = torch.exp(2.0 * (q_target.amin(dim=1) - v)).clamp(max=100.0)
        log_prob = dataset_log_prob(mean, log_std, unit)
    torch.testing.assert_close(metrics["LossV"], value_loss(q_target, v, 0.8))
    torch.testing.assert_close(metrics["LossQ"], critic_loss(q, target))
    torch.testing.assert_close(metrics["LossPi"], -(weights * log_prob).mean(dim=1))
    torch.testing.assert_close(metrics["AdvWeight"], weights.mean(dim=1))


def test_update_moves_actor_critic_value_and_target_but_draws_no_noise():
    agent = make_agent()
    before = {k: v.clone() for k, v in agent.named_parameters()}
    target_before = [p.clone() for p in agent.critic_target.parameters()]
    rng = PopulationRNG((0, 1))
    agent.update(make_batch(2, obs_dim=3), rng)
    for name in ("actor", "critic", "value"):
        moved = [not torch.equal(p, before[k]) for k, p in agent.named_parameters()
                 if k.startswith(name + ".")]
        assert moved and all(moved), name
    assert torch.equal(agent.log_alpha, before["log_alpha"])
    assert all(not torch.equal(a, b) for a, b in zip(agent.critic_target.parameters(),
                                                     target_before, strict=True))
    assert torch.equal(rng.counter, PopulationRNG((0, 1)).counter)


def test_population_member_equals_single_run():
    """Member p of a population trains exactly as a single agent with seed p."""
    seeds = (3, 4, 5)
    population = make_agent(seeds)
    single = make_agent((4,))
    rng_pop, rng_single = PopulationRNG(seeds), PopulationRNG((4,))
    for step in range(5):
        batch = make_batch(3, seed=step)
        member_batch = {k: v[1:2] for k, v in batch.items()}
        m_pop = population.update(batch, rng_pop)
        m_single = single.update(member_batch, rng_single)
        for key in m_single:
            torch.testing.assert_close(m_pop[key][1:2], m_single[key], rtol=1e-5, atol=1e-6)
    obs = torch.randn(1, 4, 3)
    torch.testing.assert_close(population.act(obs.expand(3, 4, 3))[1], single.act(obs)[0],
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(population.state_values(obs.expand(3, 4, 3))[1],
                               single.state_values(obs)[0], rtol=1e-5, atol=1e-6)


def test_advantage_weights_steer_the_policy_to_the_better_action():
    """One-step episodes where the dataset tries a = +0.5 (reward 1) and a = −0.5 (reward 0)
    equally often: β = 0 clones their average, β = 3 leans to the rewarded action, and the
    expectile puts V between the two returns, on the upper one's side."""
    g = torch.Generator().manual_seed(0)
    B = 64
    # Each state twice, once with each action, so that V(s) cannot tell the actions apart.
    obs = torch.randn(1, B // 2, 3, generator=g).repeat_interleave(2, dim=1)
    sign = torch.arange(B).remainder(2).float() * 2 - 1  # −1, +1, −1, ...
    batch = {"obs": obs, "action": (0.5 * sign)[None, :, None].expand(1, B, 2),
             "reward": (sign > 0).float()[None], "next_obs": obs,
             "terminated": torch.ones(1, B)}
    actions, values = {}, {}
    for beta in (0.0, 3.0):
        # A fast target critic, so that V (regressed to it) settles within the test.
        agent = make_agent((0,), iql_temperature=beta, lr=3e-3, polyak=0.9)
        rng = PopulationRNG((0,))
        for _ in range(300):
            agent.update(batch, rng)
        actions[beta] = agent.act(obs).mean().item()
        values[beta] = agent.state_values(obs).mean().item()
    assert abs(actions[0.0]) < 0.1, actions
    assert actions[3.0] > 0.3, actions
    # V is the 0.7-expectile of Q ∈ {0, 1} taken equally often: 0.7. The actor's loss never
    # reaches the value network or the critics, so V is the same whatever β.
    assert abs(values[3.0] - 0.7) < 0.05, values
    assert values[0.0] == values[3.0]
