"""MOBILE: the model-Bellman inconsistency on hand-made tensors, in rollouts, in
populations and in the resolved configuration."""

import dataclasses
import itertools
import math

import pytest
import torch
from tests.test_modes import config, dirs, hopper_dataset  # noqa: F401 (fixtures)
from tests.test_rollouts import ACT, OBS, small_agent, small_model

from offline_mbrl.agents.base import split_member_state
from offline_mbrl.data.buffer import TransitionLayout
from offline_mbrl.data.d4rl import PUBLISHED_ROWS, write_d4rl_hdf5
from offline_mbrl.modes import get_mode
from offline_mbrl.rng import PopulationRNG
from offline_mbrl.rollouts import Pessimism, bellman_inconsistency, rollout
from offline_mbrl.train import Trainer

GAMMA = 0.5


def test_mobile_is_a_penalty_mode_on_the_bellman_inconsistency():
    spec = get_mode("mobile")
    assert (spec.pessimism, spec.uncertainty, spec.pessimism_field) == (
        "penalty", "bellman", "pessimism")
    assert spec.model_based and not spec.online


# ----------------------------------------------------------------- the penalty
def test_penalty_is_zero_when_members_agree():
    reward = torch.full((3, 2, 4), 1.5)
    next_q = torch.full((3, 2, 4), -7.0)
    terminated = torch.zeros(3, 2, 4, dtype=torch.bool)
    assert torch.equal(bellman_inconsistency(reward, terminated, next_q, GAMMA),
                       torch.zeros(2, 4))


def test_penalty_grows_with_disagreement():
    reward = torch.zeros(3, 1)
    terminated = torch.zeros(3, 1, dtype=torch.bool)
    spreads = [bellman_inconsistency(reward, terminated, torch.tensor([[5.0 - d], [5.0],
                                                                       [5.0 + d]]), GAMMA)
               for d in (0.0, 1.0, 2.0, 4.0)]
    assert spreads[0].item() == 0.0
    assert all(a < b for a, b in itertools.pairwise(spreads))
    # Disagreement in the rewards counts as disagreement in the next values does.
    assert bellman_inconsistency(torch.tensor([[0.0], [1.0], [2.0]]), terminated,
                                 torch.zeros(3, 1), GAMMA) > 0


def test_penalty_exact_three_member_value():
    # y = r + γ Q̂ = [1 + 5, 2 + 10, 3 + 15] = [6, 12, 18]: mean 12, sample std 6.
    reward = torch.tensor([1.0, 2.0, 3.0])
    next_q = torch.tensor([10.0, 20.0, 30.0])
    terminated = torch.zeros(3, dtype=torch.bool)
    u = bellman_inconsistency(reward, terminated, next_q, GAMMA)
    assert u.item() == pytest.approx(6.0)


def test_terminated_members_use_the_reward_only():
    reward = torch.tensor([1.0, 2.0, 3.0])
    next_q = torch.tensor([10.0, 20.0, 30.0])
    # Member 1's next state is terminal: y = [6, 2, 18].
    terminated = torch.tensor([False, True, False])
    u = bellman_inconsistency(reward, terminated, next_q, GAMMA)
    assert u.item() == pytest.approx(math.sqrt((
        (6 - 26 / 3) ** 2 + (2 - 26 / 3) ** 2 + (18 - 26 / 3) ** 2) / 2))
    # Float 0/1 flags mean the same as bools; all terminal: the rewards' spread alone.
    assert bellman_inconsistency(reward, terminated.float(), next_q, GAMMA).item() == (
        pytest.approx(u.item()))
    everything = bellman_inconsistency(reward, torch.ones(3, dtype=torch.bool), next_q, GAMMA)
    assert everything.item() == pytest.approx(1.0)


def test_one_member_has_no_inconsistency():
    u = bellman_inconsistency(torch.ones(1, 5), torch.zeros(1, 5, dtype=torch.bool),
                              torch.randn(1, 5), GAMMA)
    assert torch.equal(u, torch.zeros(5))


# ----------------------------------------------------------------- rollouts
def mobile(lengths=(1, 1), penalty=(0.0, 0.0), gamma=GAMMA):
    n = len(lengths)
    return Pessimism("penalty", "bellman", torch.tensor(lengths), torch.tensor(penalty),
                     torch.full((n,), math.inf), 5.0, gamma)


def expected_inconsistency(model, agent, obs, action, seeds, gamma):
    """``[P, N]`` u of step 0, member by member: each member's mean prediction, the agent's
    target value at the policy action of the rollout's fourth draw, the sample std."""
    P, N, _ = obs.shape
    K = model.n_networks
    noise = PopulationRNG(seeds).block_normal(3, 0, N, K * ACT).view(P, N, K, ACT)
    norm = model.normalizer
    with torch.no_grad():
        out = model(obs.reshape(-1, OBS), action.reshape(-1, ACT))
    targets = []
    for k in range(K):
        next_obs = (obs.reshape(-1, OBS) + norm.delta_mean
                    + norm.delta_std * out.delta_mean[k]).view(P, N, OBS)
        reward = (norm.reward_mean + norm.reward_std * out.reward_mean[k]).view(P, N)
        targets.append(reward + gamma * agent.value_estimate(next_obs, noise[:, :, k]))
    return torch.stack(targets).std(dim=0)


def test_rollout_stores_reward_minus_beta_times_the_inconsistency():
    start = torch.randn(2, 5, OBS)
    layout = TransitionLayout(OBS, ACT)
    model, agent = small_model(), small_agent(2)
    plain = rollout(model, agent, start, mobile(penalty=(0.0, 0.0)), layout,
                    PopulationRNG((0, 1)))
    penalised = rollout(model, agent, start, mobile(penalty=(2.0, 0.5)), layout,
                        PopulationRNG((0, 1)))
    a, b = layout.unpack(plain.rows), layout.unpack(penalised.rows)
    assert torch.equal(a["action"], b["action"]) and torch.equal(a["next_obs"], b["next_obs"])
    u = expected_inconsistency(model, agent, a["obs"], a["action"], (0, 1), GAMMA)
    assert (u > 0).all()
    torch.testing.assert_close(a["reward"] - b["reward"],
                               torch.tensor([[2.0], [0.5]]) * u,
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(penalised.stats["RolloutUncertainty"], u.mean(dim=1),
                               rtol=1e-5, atol=1e-6)


def test_the_penalty_draws_leave_the_first_step_of_other_modes_unchanged():
    """Step 0 acts and samples with the same draws as a rollout without pessimism; the
    policy noise at the members' next states is a draw of its own."""
    start = torch.randn(2, 4, OBS)
    layout = TransitionLayout(OBS, ACT)
    none = Pessimism("none", "epistemic", torch.tensor([1, 1]), torch.zeros(2),
                     torch.full((2,), math.inf), 5.0)
    plain = rollout(small_model(), small_agent(), start, none, layout, PopulationRNG((0, 1)))
    ours = rollout(small_model(), small_agent(), start, mobile(penalty=(1.0, 1.0)), layout,
                   PopulationRNG((0, 1)))
    a, b = layout.unpack(plain.rows), layout.unpack(ours.rows)
    for key in ("obs", "action", "next_obs", "terminated"):
        assert torch.equal(a[key], b[key]), key
    assert (b["reward"] < a["reward"]).all()
    assert none.draws_per_step == 3 and mobile().draws_per_step == 4


def test_a_member_of_a_population_rolls_out_like_a_single_run():
    """Start n of member p gets the same rollout whatever the chunk size and the population,
    the Bellman penalty included."""
    start = torch.randn(3, 7, OBS)
    p = mobile(lengths=(3, 3, 3), penalty=(0.5, 0.5, 0.5), gamma=0.99)
    model, agent, layout = small_model(), small_agent(3), TransitionLayout(OBS, ACT)
    whole = rollout(model, agent, start, p, layout, PopulationRNG((0, 1, 2)))
    chunked = rollout(model, agent, start, p, layout, PopulationRNG((0, 1, 2)), chunk=4)
    assert torch.equal(whole.valid, chunked.valid)
    torch.testing.assert_close(whole.rows, chunked.rows, rtol=1e-6, atol=1e-6)
    single_agent = small_agent(1)
    single_agent.load_state_dict(split_member_state(agent.state_dict(), 3, 1))
    single = rollout(model, single_agent, start[1:2],
                     mobile(lengths=(3,), penalty=(0.5,), gamma=0.99), layout,
                     PopulationRNG((1,)), chunk=3)
    torch.testing.assert_close(single.rows[0], whole.rows[1], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(single.stats["RolloutUncertainty"][0],
                               whole.stats["RolloutUncertainty"][1], rtol=1e-6, atol=1e-7)


def test_elite_members_only_enter_the_penalty():
    """The full model restricted to its elites and the elite copy rollouts run give the
    same penalty."""
    from offline_mbrl.models.ensemble import EnvironmentModel
    from offline_mbrl.rollouts import rollout_step

    model = EnvironmentModel(OBS, ACT, n_networks=5, n_hidden_layers=1, n_hidden_units=8,
                             reward_n_hidden_units=8, seed=0).eval()
    model.termination_fn = lambda o, a, n: n[..., 0] > 1.0
    model.set_elites([0, 2, 3])
    agent, rng, obs = small_agent(2), PopulationRNG((0, 1)), torch.randn(2, 6, OBS)
    p = mobile(penalty=(1.0, 1.0))
    full = rollout_step(model, agent, obs, torch.tensor(0), torch.tensor(0), p, rng)
    elite = rollout_step(model.for_rollouts(), agent, obs, torch.tensor(0), torch.tensor(0),
                         p, rng)
    assert full.uncertainty.gt(0).all()
    for name, a, b in zip(full._fields, full, elite, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


# ----------------------------------------------------------------- training runs
def test_population_member_trains_like_a_single_run(dirs):  # noqa: F811
    population = Trainer(config("mobile", seeds=(0, 1), experiment_name="pop"), progress=False)
    single = Trainer(config("mobile", seed=1, experiment_name="one"), progress=False)
    rows_pop, rows_one = population.run(), single.run()
    for key in ("LossQ", "LossPi", "AverageTestEpRet", "RolloutUncertainty", "RolloutReward"):
        assert rows_pop[1][key] == pytest.approx(rows_one[0][key], rel=1e-3, abs=1e-4), key
    assert rows_pop[1]["RolloutUncertainty"] > 0


def test_beta_comes_from_the_flag_the_table_or_the_mobile_default(dirs, hopper_dataset,  # noqa: F811
                                                                   monkeypatch):
    import json

    trainer = Trainer(config("mobile"), progress=False)
    trainer.prepare()
    assert trainer.pessimism.uncertainty == "bellman"
    assert trainer.pessimism.penalty.tolist() == [1.0]
    assert trainer.pessimism.gamma == pytest.approx(0.99)
    source = trainer.resolved["pessimism"]["source"]
    assert source.startswith("default (MOBILE paper")
    run_config = json.loads((trainer.run_dirs[0] / "config.json").read_text())
    assert run_config["resolved"]["pessimism"] == {"value": [1.0], "source": source}
    # The published hopper-random-v2 file gets the authors' values: h = 5, β = 5.
    dataset, _ = hopper_dataset
    published = dirs / "published.hdf5"
    write_d4rl_hdf5(dataclasses.replace(dataset, metadata={}), published)
    monkeypatch.setitem(PUBLISHED_ROWS, "hopper-random-v2", len(dataset))
    trainer = Trainer(config("mobile", dataset=str(published), experiment_name="published"),
                      progress=False)
    trainer.prepare()
    assert trainer.pessimism.rollout_length.tolist() == [5]
    assert trainer.pessimism.penalty.tolist() == [5.0]
    assert "MOBILE authors" in trainer.resolved["pessimism"]["source"]
    trainer = Trainer(config("mobile", pessimism=(0.1, 0.5), seeds=(0, 1),
                             experiment_name="flags", agent={"n_hidden_layers": 1,
                                                             "n_hidden_units": 16,
                                                             "batch_size": 32,
                                                             "gamma": 0.9}), progress=False)
    trainer.prepare()
    assert trainer.pessimism.penalty.tolist() == pytest.approx([0.1, 0.5])
    assert trainer.resolved["pessimism"]["source"] == "flag"
    assert trainer.pessimism.gamma == pytest.approx(0.9)


def test_mobile_is_tuned_on_a_fixed_range_of_its_penalty():
    from offline_mbrl.errors import UserError
    from offline_mbrl.tuning.search_space import (
        Bounds,
        check_tunable_mode,
        search_bounds,
        tunable_modes,
    )

    assert "mobile" in tunable_modes() and "offline-sac" not in tunable_modes()
    check_tunable_mode("mobile")
    # No dataset statistic enters β's range (an empty mapping is enough).
    assert search_bounds("mobile", {})["pessimism"] == Bounds(0.05, 10.0, log=True)
    with pytest.raises(UserError, match="no pessimism or conservatism to tune"):
        check_tunable_mode("offline-sac")
