"""Tests for offline_mbrl.models.ensemble: shapes, loss, batched layers, sampling."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from offline_mbrl.models.ensemble import (
    LOGVAR_BOUND_REGULARIZER,
    EnsembleOutput,
    EnvironmentModel,
    Normalizer,
    gaussian_nll,
    sample_next,
    soft_clamp_logvar,
)
from offline_mbrl.models.layers import BatchedMLP

OBS_DIM, ACT_DIM = 3, 2


def small_model(**kwargs: object) -> EnvironmentModel:
    options: dict = {"n_networks": 4, "n_hidden_layers": 2, "n_hidden_units": 16,
                     "reward_n_hidden_units": 8}
    options.update(kwargs)
    return EnvironmentModel(OBS_DIM, ACT_DIM, **options)


def hand_normalizer() -> Normalizer:
    norm = Normalizer(2, 1)
    norm.obs_mean.copy_(torch.tensor([1.0, -1.0]))
    norm.obs_std.copy_(torch.tensor([2.0, 4.0]))
    norm.delta_mean.copy_(torch.tensor([0.5, 0.0]))
    norm.delta_std.copy_(torch.tensor([0.1, 2.0]))
    norm.reward_mean.fill_(1.0)
    norm.reward_std.fill_(3.0)
    norm.obs_low.copy_(torch.tensor([-10.0, -10.0]))
    norm.obs_high.copy_(torch.tensor([10.0, 10.0]))
    norm.reward_low.fill_(-5.0)
    norm.reward_high.fill_(5.0)
    return norm


@pytest.mark.parametrize("kind", ["probabilistic", "deterministic"])
def test_forward_shapes(kind: str) -> None:
    model = small_model(type=kind)
    obs, action = torch.randn(5, OBS_DIM), torch.randn(5, ACT_DIM)
    out = model(obs, action)
    assert isinstance(out, EnsembleOutput)
    assert out.delta_mean.shape == out.delta_logvar.shape == (4, 5, OBS_DIM)
    assert out.reward_mean.shape == out.reward_logvar.shape == (4, 5)
    # One batch per member gives the same result as the shared batch, member by member.
    per_member = model(obs.expand(4, 5, OBS_DIM), action.expand(4, 5, ACT_DIM))
    for a, b in zip(out, per_member, strict=True):
        torch.testing.assert_close(a, b)
    if kind == "deterministic":
        assert torch.isneginf(out.delta_logvar).all() and torch.isneginf(out.reward_logvar).all()
    else:
        assert torch.isfinite(out.delta_logvar).all()
    with pytest.raises(ValueError, match="expected inputs"):
        model(obs.expand(3, 5, OBS_DIM), action.expand(3, 5, ACT_DIM))


def test_gaussian_nll_closed_form() -> None:
    gen = torch.Generator().manual_seed(0)
    mean, logvar, target = (torch.randn(3, 4, 5, generator=gen) for _ in range(3))
    expected = -torch.distributions.Normal(mean, torch.exp(0.5 * logvar)).log_prob(target)
    torch.testing.assert_close(gaussian_nll(mean, logvar, target), expected)
    # One hand-computed value: N(0, e) at 1 -> 0.5·(log 2π + 1 + 1/e).
    value = gaussian_nll(torch.tensor(0.0), torch.tensor(1.0), torch.tensor(1.0))
    assert float(value) == pytest.approx(0.5 * (math.log(2 * math.pi) + 1 + math.exp(-1)))


def test_loss_matches_closed_form() -> None:
    model = small_model()
    with torch.no_grad():
        model.max_logvar.add_(torch.rand_like(model.max_logvar))
    obs, action = torch.randn(6, OBS_DIM), torch.randn(6, ACT_DIM)
    delta_t, reward_t = torch.randn(6, OBS_DIM), torch.randn(6)
    out = model(obs, action)
    total, per_member = model.loss(out, delta_t, reward_t)
    for e in range(4):
        var = torch.cat([out.delta_logvar[e], out.reward_logvar[e, :, None]], 1).exp()
        mean = torch.cat([out.delta_mean[e], out.reward_mean[e, :, None]], 1)
        target = torch.cat([delta_t, reward_t[:, None]], 1)
        nll = 0.5 * (torch.log(2 * math.pi * var) + (target - mean) ** 2 / var)
        torch.testing.assert_close(per_member[e], nll.mean())
    # The seed's loss, written out: mean over members, batch and dimensions of
    # mse·exp(-logvar) + logvar, plus 0.01·(mean max_logvar - mean min_logvar). The model's
    # total is E/2 times it plus the NLL's constant, so Adam takes the same steps.
    logvar = torch.cat([out.delta_logvar, out.reward_logvar[..., None]], -1)
    mean = torch.cat([out.delta_mean, out.reward_mean[..., None]], -1)
    target = torch.cat([delta_t, reward_t[:, None]], 1)
    seed_loss = (((mean - target) ** 2 * torch.exp(-logvar)).mean() + logvar.mean()
                 + 0.01 * model.max_logvar.mean() - 0.01 * model.min_logvar.mean())
    n = model.n_networks
    torch.testing.assert_close(total, n / 2 * seed_loss + n / 2 * math.log(2 * math.pi))
    assert LOGVAR_BOUND_REGULARIZER == 0.005
    total.backward()
    assert model.max_logvar.grad is not None and model.min_logvar.grad is not None

    det = small_model(type="deterministic")
    out = det(obs, action)
    total, per_member = det.loss(out, delta_t, reward_t)
    expected = ((out.delta_mean - delta_t) ** 2).sum((1, 2)) + ((out.reward_mean - reward_t) ** 2
                                                               ).sum(1)
    torch.testing.assert_close(per_member, expected / (6 * (OBS_DIM + 1)))
    torch.testing.assert_close(total, per_member.sum())


def test_soft_clamp_stays_within_learned_bounds() -> None:
    raw = torch.linspace(-100, 100, 201)
    max_lv, min_lv = torch.tensor(0.5), torch.tensor(-10.0)
    out = soft_clamp_logvar(raw, max_lv, min_lv)
    # The outer softplus overshoots the upper bound by softplus(-(max - min)) ~ 3e-5.
    assert (out <= 0.5 + 1e-4).all() and (out >= -10.0).all()
    assert torch.all(out[1:] >= out[:-1])  # monotone
    # Far inside the bounds it is (nearly) the identity.
    assert float(soft_clamp_logvar(torch.tensor(-4.0), max_lv, min_lv)) == pytest.approx(-4.0,
                                                                                         abs=0.02)


def _separate_mlp(batched: BatchedMLP, member: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    linears = batched.linears()
    for i, lin in enumerate(linears):
        layer = nn.Linear(lin.in_features, lin.out_features)
        with torch.no_grad():
            layer.weight.copy_(lin.weight[member].T)
            layer.bias.copy_(lin.bias[member, 0])
        layers.append(layer)
        if i < len(linears) - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def test_batched_members_equal_separate_linear_networks() -> None:
    model = small_model()
    x = torch.randn(7, OBS_DIM + ACT_DIM, dtype=torch.float64)
    model = model.double()
    batched_dyn = model.dynamics(x.expand(4, 7, -1))
    batched_rew = model.reward_net(x.expand(4, 7, -1))
    weights = torch.randn_like(batched_dyn)
    (batched_dyn * weights).sum().backward()  # through the in-place ReLUs
    for e in range(4):
        dyn = _separate_mlp(model.dynamics, e).double()
        rew = _separate_mlp(model.reward_net, e).double()
        out = dyn(x)
        torch.testing.assert_close(batched_dyn[e], out, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(batched_rew[e], rew(x), rtol=1e-12, atol=1e-12)
        (out * weights[e]).sum().backward()
        for lin, sep in zip(model.dynamics.linears(), dyn[::2], strict=True):
            torch.testing.assert_close(lin.weight.grad[e], sep.weight.grad.T)
            torch.testing.assert_close(lin.bias.grad[e, 0], sep.bias.grad)


def test_member_initialisation_is_per_member_and_seeded() -> None:
    a, b = small_model(n_networks=3, seed=1), small_model(n_networks=5, seed=1)
    for la, lb in zip(a.dynamics.linears(), b.dynamics.linears(), strict=True):
        assert torch.equal(la.weight, lb.weight[:3])  # member e does not depend on E
    w = a.dynamics.linears()[0].weight
    assert not torch.equal(w[0], w[1])  # different initialisations
    c = small_model(n_networks=3, seed=2)
    assert not torch.equal(c.dynamics.linears()[0].weight, w)


def test_normalizer_fit_and_targets() -> None:
    norm = Normalizer(2, 1)
    obs = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    next_obs = obs + torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    action = torch.tensor([[1.0], [1.0]])
    reward = torch.tensor([1.0, 3.0])
    norm.fit(obs, action, next_obs, reward, margin=0.5)
    torch.testing.assert_close(norm.obs_mean, torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(norm.obs_std, torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(norm.action_std, torch.tensor([1.0]))  # constant column
    torch.testing.assert_close(norm.delta_mean, torch.tensor([2.0, 0.0]))
    torch.testing.assert_close(norm.delta_std, torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(norm.reward_std, torch.tensor(1.0))
    # Range of obs ∪ next_obs: [0, 5] x [1, 3], widened by half the width (at least 1).
    torch.testing.assert_close(norm.obs_low, torch.tensor([-2.5, 0.0]))
    torch.testing.assert_close(norm.obs_high, torch.tensor([7.5, 4.0]))
    delta, rew = norm.targets(obs, next_obs, reward)
    torch.testing.assert_close(delta, torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
    torch.testing.assert_close(rew, torch.tensor([-1.0, 1.0]))


def test_sample_next_exact_values() -> None:
    norm = hand_normalizer()
    # E=2 members, B=2 samples, obs_dim=2.
    outputs = EnsembleOutput(
        delta_mean=torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[2.0, 1.0], [-1.0, 0.5]]]),
        delta_logvar=torch.log(torch.tensor([[[4.0, 4.0], [1.0, 1.0]], [[1.0, 1.0], [9.0, 9.0]]])),
        reward_mean=torch.tensor([[0.0, 1.0], [2.0, -1.0]]),
        reward_logvar=torch.log(torch.tensor([[1.0, 1.0], [4.0, 4.0]])),
    )
    obs = torch.tensor([[0.0, 1.0], [2.0, 2.0]])
    member_idx = torch.tensor([1, 0])
    noise = torch.tensor([[1.0, -1.0, 0.5], [0.0, 2.0, -1.0]])
    next_obs, reward = sample_next(outputs, obs, member_idx, noise, norm)
    # Sample 0, member 1: delta = (2 + 1·1, 1 - 1·1) = (3, 0) normalised
    #   -> raw (0.5 + 0.1·3, 0 + 2·0) = (0.8, 0); next_obs = (0.8, 1).
    #   reward = 2 + 2·0.5 = 3 -> 1 + 3·3 = 10, clipped to 5.
    # Sample 1, member 0: delta = (0 + 1·0, 0 + 1·2) = (0, 2) -> raw (0.5, 4); next (2.5, 6).
    #   reward = 1 + 1·(-1) = 0 -> 1.
    torch.testing.assert_close(next_obs, torch.tensor([[0.8, 1.0], [2.5, 6.0]]))
    torch.testing.assert_close(reward, torch.tensor([5.0, 1.0]))
    # Zero noise gives the chosen member's mean.
    mean_obs, mean_rew = sample_next(outputs, obs, member_idx, torch.zeros(2, 3), norm)
    torch.testing.assert_close(mean_obs, torch.tensor([[0.7, 3.0], [2.5, 2.0]]))
    torch.testing.assert_close(mean_rew, torch.tensor([5.0, 4.0]))


def test_sample_next_is_always_finite_and_clipped() -> None:
    norm = hand_normalizer()
    huge = torch.tensor([[[1e30, float("nan")]], [[float("-inf"), 0.0]]])
    outputs = EnsembleOutput(huge, torch.zeros(2, 1, 2), torch.tensor([[float("nan")], [1e30]]),
                             torch.zeros(2, 1))
    for member in (0, 1):
        next_obs, reward = sample_next(outputs, torch.zeros(1, 2), torch.tensor([member]),
                                       torch.zeros(1, 3), norm)
        assert torch.isfinite(next_obs).all() and torch.isfinite(reward).all()
        assert (next_obs.abs() <= 10).all() and (reward.abs() <= 5).all()


def test_deterministic_sample_ignores_noise() -> None:
    model = small_model(type="deterministic")
    obs, action = torch.randn(5, OBS_DIM), torch.randn(5, ACT_DIM)
    out = model(obs, action)
    idx = torch.tensor([0, 1, 2, 3, 0])
    a = model.sample_next(out, obs, idx, torch.randn(5, OBS_DIM + 1))
    b = model.sample_next(out, obs, idx, torch.zeros(5, OBS_DIM + 1))
    torch.testing.assert_close(a, b)


def test_sample_respects_elites_and_generator() -> None:
    model = small_model()
    obs, action = torch.randn(64, OBS_DIM), torch.randn(64, ACT_DIM)
    model.set_elites([2])
    gen = torch.Generator().manual_seed(5)
    next_obs, reward, terminated, outputs = model.sample(obs, action, gen)
    assert next_obs.shape == (64, OBS_DIM) and reward.shape == (64,)
    assert terminated.dtype == torch.bool and not terminated.any()  # no env name
    # Replay the draws: member index first, then the noise.
    replay = torch.Generator().manual_seed(5)
    torch.randint(1, (64,), generator=replay)
    noise = torch.randn(64, OBS_DIM + 1, generator=replay)
    expected = model.sample_next(outputs, obs, torch.full((64,), 2), noise)
    torch.testing.assert_close((next_obs, reward), expected)
    again = model.sample(obs, action, torch.Generator().manual_seed(5))
    torch.testing.assert_close(again[0], next_obs)
    with pytest.raises(ValueError):
        model.set_elites([4])
    with pytest.raises(ValueError):
        model.set_elites([1, 1])


def test_sample_draws_members_among_elites_only() -> None:
    model = small_model()
    with torch.no_grad():  # (nearly) zero variance: a sample identifies its member
        model.max_logvar.fill_(-60.0)
        model.min_logvar.fill_(-70.0)
    model.set_elites([1, 3])
    obs, action = torch.randn(500, OBS_DIM), torch.randn(500, ACT_DIM)
    next_obs, *_ = model.sample(obs, action, torch.Generator().manual_seed(0))
    out = model(obs, action)
    means = torch.stack([
        model.sample_next(out, obs, torch.full((500,), e), torch.zeros(500, OBS_DIM + 1))[0]
        for e in range(4)
    ])  # [E, B, obs_dim]
    member = (means - next_obs).abs().sum(-1).argmin(0)
    assert set(member.tolist()) == {1, 3}


def test_terminated_uses_the_environment_rule() -> None:
    model = EnvironmentModel(11, 3, n_networks=2, n_hidden_layers=1, n_hidden_units=8,
                             reward_n_hidden_units=8, env_name="hopper-medium-v2")
    next_obs = torch.zeros(3, 11)
    next_obs[:, 0] = torch.tensor([1.25, 0.5, 1.25])  # height 0.5 < 0.7 terminates
    next_obs[2, 1] = 0.5  # torso angle beyond 0.2 terminates
    done = model.terminated(torch.zeros(3, 11), torch.zeros(3, 3), next_obs)
    assert done.tolist() == [False, True, True]
    model.termination_fn = lambda o, a, n: n[:, 0] > 1.0
    assert model.terminated(torch.zeros(3, 11), torch.zeros(3, 3), next_obs).tolist() == [
        True, False, True]


def test_predict_in_batches_matches_forward() -> None:
    model = small_model()
    obs, action = torch.randn(23, OBS_DIM), torch.randn(23, ACT_DIM)
    whole = model(obs, action)
    chunked = model.predict_in_batches(obs.numpy(), action.numpy(), batch_size=5)
    for a, b in zip(whole, chunked, strict=True):
        torch.testing.assert_close(a, b)
