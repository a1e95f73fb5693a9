import math

import torch

from offline_mbrl.agents import SAC, BehavioralCloning
from offline_mbrl.agents.sac import (
    actor_loss,
    alpha_loss,
    critic_loss,
    sac_losses,
    squashed_gaussian,
    td_target,
)
from offline_mbrl.config import AgentConfiguration
from offline_mbrl.rng import PopulationRNG

SMALL = AgentConfiguration(n_hidden_layers=2, n_hidden_units=16)


def make_batch(P, B=8, obs_dim=3, act_dim=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "obs": torch.randn(P, B, obs_dim, generator=g),
        "action": torch.rand(P, B, act_dim, generator=g) * 2 - 1,
        "reward": torch.randn(P, B, generator=g),
        "next_obs": torch.randn(P, B, obs_dim, generator=g),
        "terminated": (torch.rand(P, B, generator=g) < 0.2).float(),
    }


def test_td_target_hand_made():
    reward = torch.tensor([[1.0, 2.0]])
    terminated = torch.tensor([[0.0, 1.0]])
    next_q = torch.tensor([[10.0, 10.0]])
    next_log_prob = torch.tensor([[-1.0, -1.0]])
    alpha = torch.tensor([[0.5]])
    target = td_target(reward, terminated, next_q, next_log_prob, alpha, gamma=0.9)
    # 1 + 0.9 * (10 + 0.5) = 10.45; terminal: reward only.
    torch.testing.assert_close(target, torch.tensor([[10.45, 2.0]]))


def test_squashed_gaussian_log_prob_matches_change_of_variables():
    mean = torch.tensor([[[0.3, -1.2]]])
    log_std = torch.tensor([[[-0.5, 0.2]]])
    noise = torch.tensor([[[0.7, -2.0]]])
    action, log_prob = squashed_gaussian(mean, log_std, noise)
    u = mean + log_std.exp() * noise
    normal = torch.distributions.Normal(mean, log_std.exp())
    expected = (normal.log_prob(u) - torch.log(1 - torch.tanh(u) ** 2)).sum(-1)
    torch.testing.assert_close(action, torch.tanh(u))
    torch.testing.assert_close(log_prob, expected, rtol=1e-5, atol=1e-5)


def test_population_member_equals_single_run():
    """Member p of a population trains exactly as a single agent with seed p."""
    seeds = (3, 4, 5)
    population = SAC(3, 2, -torch.ones(2), torch.ones(2), seeds, SMALL)
    single = SAC(3, 2, -torch.ones(2), torch.ones(2), (4,), SMALL)
    rng_pop, rng_single = PopulationRNG(seeds), PopulationRNG((4,))
    for step in range(5):
        batch = make_batch(3, seed=step)
        member_batch = {k: v[1:2] for k, v in batch.items()}
        m_pop = population.update(batch, rng_pop)
        m_single = single.update(member_batch, rng_single)
        torch.testing.assert_close(m_pop["LossQ"][1:2], m_single["LossQ"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(m_pop["LossPi"][1:2], m_single["LossPi"], rtol=1e-5,
                                   atol=1e-6)
    obs = torch.randn(1, 4, 3)
    torch.testing.assert_close(population.act(obs.expand(3, 4, 3))[1], single.act(obs)[0],
                               rtol=1e-5, atol=1e-6)


def test_fixed_alpha_stays_and_auto_alpha_moves():
    fixed = SAC(3, 2, -torch.ones(2), torch.ones(2), (0,), SMALL)
    auto = SAC(3, 2, -torch.ones(2), torch.ones(2), (0,),
               SMALL.model_copy(update={"alpha": "auto"}))
    rng = PopulationRNG((0,))
    for _ in range(3):
        fixed.update(make_batch(1), rng)
        auto.update(make_batch(1), rng)
    assert math.isclose(fixed.alpha.item(), 0.2, rel_tol=1e-6)
    assert auto.alpha.item() != 1.0


def test_target_network_polyak():
    agent = SAC(3, 2, -torch.ones(2), torch.ones(2), (0,), SMALL)
    before_target = [p.clone() for p in agent.critic_target.parameters()]
    agent.update(make_batch(1), PopulationRNG((0,)))
    for target, old, online in zip(agent.critic_target.parameters(), before_target,
                                   agent.critic.parameters(), strict=True):
        torch.testing.assert_close(target, 0.995 * old + 0.005 * online)


def test_actions_within_bounds():
    low, high = torch.tensor([-2.0, 0.0]), torch.tensor([2.0, 1.0])
    for cls in (SAC, BehavioralCloning):
        agent = cls(3, 2, low, high, (0, 1), SMALL)
        action = agent.act(torch.randn(2, 100, 3) * 10, deterministic=False,
                           rng=PopulationRNG((0, 1)))
        assert action.shape == (2, 100, 2)
        assert (action >= low).all() and (action <= high).all()


def test_bc_recovers_linear_policy():
    torch.manual_seed(0)
    true_w = torch.tensor([[0.5, -0.3], [0.2, 0.4], [-0.1, 0.1]])
    agent = BehavioralCloning(3, 2, -torch.ones(2), torch.ones(2), (0,),
                              AgentConfiguration(n_hidden_layers=2, n_hidden_units=64, lr=3e-3))
    rng = PopulationRNG((0,))
    for _ in range(400):
        obs = torch.randn(1, 128, 3)
        agent.update({"obs": obs, "action": obs @ true_w}, rng)
    test_obs = torch.randn(1, 256, 3)
    error = (agent.act(test_obs) - test_obs @ true_w).abs().mean().item()
    assert error < 0.05, error


def test_critic_loss_hand_made():
    q = torch.tensor([[[1.0, 2.0], [0.0, 4.0]]])  # [P=1, twins, B=2]
    target = torch.tensor([[2.0, 2.0]])
    # Twin 1: (1 + 0) / 2; twin 2: (4 + 4) / 2.
    torch.testing.assert_close(critic_loss(q, target), torch.tensor([4.5]))


def test_actor_loss_takes_the_smaller_twin():
    q_new = torch.tensor([[[1.0, 5.0], [3.0, 2.0]]])
    log_prob = torch.tensor([[-1.0, 1.0]])
    alpha = torch.tensor([[0.5]])
    # mean(0.5·(-1) - 1, 0.5·1 - 2) = mean(-1.5, -1.5)
    torch.testing.assert_close(actor_loss(q_new, log_prob, alpha), torch.tensor([-1.5]))


def test_alpha_loss_moves_only_the_temperature():
    log_alpha = torch.tensor([0.5], requires_grad=True)
    log_prob = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss = alpha_loss(log_alpha, log_prob, target_entropy=-2.0)
    torch.testing.assert_close(loss, torch.tensor([-0.5 * (-1.5 - 2.0)]))
    loss.sum().backward()
    torch.testing.assert_close(log_alpha.grad, torch.tensor([3.5]))
    assert log_prob.grad is None


def _textbook_gradients(agent, batch, noise):
    """Textbook SAC by autograd, one loss at a time, all at the current parameters."""
    obs, next_obs = batch["obs"], batch["next_obs"]
    B = obs.shape[1]
    alpha = agent.alpha.detach()[:, None]
    mean, log_std = agent.policy(torch.cat([obs, next_obs], dim=1))
    action, log_prob = squashed_gaussian(mean, log_std, noise)
    with torch.no_grad():
        next_q = agent.q_values(next_obs, action[:, B:], agent.critic_target).min(1).values
        target = td_target(batch["reward"], batch["terminated"], next_q, log_prob[:, B:],
                           alpha, agent.config.gamma)
    q = agent.q_values(obs, agent.scaler.to_unit(batch["action"]))
    loss_q = (q - target[:, None]).pow(2).mean(2).sum(1)
    critic = torch.autograd.grad(loss_q.sum(), list(agent.critic.parameters()))
    q_new = agent.q_values(obs, action[:, :B]).min(1).values
    loss_pi = (alpha * log_prob[:, :B] - q_new).mean(1)
    actor = torch.autograd.grad(loss_pi.sum(), list(agent.actor.parameters()))
    log_alpha = agent.log_alpha.detach().clone().requires_grad_(True)
    loss_alpha = -(log_alpha * (log_prob[:, :B].detach().mean(1) + agent.target_entropy))
    (alpha_grad,) = torch.autograd.grad(loss_alpha.sum(), log_alpha)
    return critic, actor, alpha_grad, loss_q.detach(), loss_pi.detach()


def _update_gradients(agent, batch, noise):
    loss, metrics = sac_losses(agent, batch, noise)
    agent.optimizer.zero_grad()
    loss.backward()
    return ([p.grad for p in agent.critic.parameters()],
            [p.grad for p in agent.actor.parameters()], agent.log_alpha.grad, metrics)


def test_one_backward_gives_each_network_only_its_own_loss_gradient():
    """The summed loss: the critic learns from the TD error only, the actor from the policy
    loss only, the temperature from its own loss; clamped log-stds included."""
    P, B = 3, 16
    for alpha in ("auto", 0.2):
        agent = SAC(5, 2, -2 * torch.ones(2), 2 * torch.ones(2), (0, 1, 2),
                    SMALL.model_copy(update={"alpha": alpha}))
        with torch.no_grad():
            for p in agent.critic_target.parameters():
                p.add_(0.05 * torch.randn_like(p))
            agent.log_alpha.add_(torch.randn(P) * 0.3)
            # One log-std above and one below the clamp range.
            agent.actor.linears()[-1].bias[..., 2:] += torch.tensor([3.0, -25.0])
        batch = make_batch(P, B=B, obs_dim=5)
        batch["action"] = batch["action"] * 2
        noise = PopulationRNG((0, 1, 2)).block_normal(5, 0, 2 * B, 2)
        critic, actor, alpha_grad, loss_q, loss_pi = _textbook_gradients(agent, batch, noise)
        got_critic, got_actor, got_alpha, metrics = _update_gradients(agent, batch, noise)
        for ref, got in [*zip(critic, got_critic, strict=True),
                         *zip(actor, got_actor, strict=True)]:
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)
        if alpha == "auto":
            torch.testing.assert_close(got_alpha, alpha_grad)
        else:
            assert got_alpha is None
        torch.testing.assert_close(metrics["LossQ"], loss_q)
        torch.testing.assert_close(metrics["LossPi"], loss_pi)


def test_mixed_precision_gradients_stay_close_to_float32():
    """bf16 hidden layers: every gradient points where float32's does (cosine > 0.995,
    norm error < 6%: the TD error is a small difference of Q-values that bf16 activations
    move by ~0.1%), and the losses and their inputs agree to bf16 rounding."""
    P, B = 3, 64
    agent = SAC(5, 2, -2 * torch.ones(2), 2 * torch.ones(2), (0, 1, 2), SMALL)
    mixed = SAC(5, 2, -2 * torch.ones(2), 2 * torch.ones(2), (0, 1, 2),
                SMALL.model_copy(update={"precision": "bfloat16"}))
    mixed.load_state_dict(agent.state_dict())
    batch = make_batch(P, B=B, obs_dim=5)
    noise = PopulationRNG((0, 1, 2)).block_normal(5, 0, 2 * B, 2)
    ref_critic, ref_actor, ref_alpha, ref_metrics = _update_gradients(agent, batch, noise)
    got_critic, got_actor, got_alpha, got_metrics = _update_gradients(mixed, batch, noise)
    pairs = [*zip(ref_critic, got_critic, strict=True), *zip(ref_actor, got_actor, strict=True)]
    if agent.auto_alpha:
        pairs.append((ref_alpha, got_alpha))
    for r, g in pairs:
        assert g.dtype == torch.float32 and g.shape == r.shape
        cosine = torch.nn.functional.cosine_similarity(g.flatten(), r.flatten(), dim=0)
        assert cosine > 0.995 and (g - r).norm() < 0.06 * r.norm()
    for name in ("LossQ", "LossPi", "QMean", "LogPi"):
        torch.testing.assert_close(got_metrics[name], ref_metrics[name], rtol=1e-2, atol=1e-3)


def test_q_estimate_is_the_smaller_twin_of_the_environment_action():
    agent = SAC(3, 2, -2 * torch.ones(2), 2 * torch.ones(2), (0, 1), SMALL)
    batch = make_batch(2, obs_dim=3)
    env_action = batch["action"] * 2  # in the [-2, 2] box
    expected = agent.q_values(batch["obs"], batch["action"]).amin(dim=1)
    torch.testing.assert_close(agent.q_estimate(batch["obs"], env_action), expected)
