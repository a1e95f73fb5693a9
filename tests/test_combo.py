"""COMBO: which rows its conservative term pushes down and up, on hand-made tensors, what it
does to a critic, and the mode end to end (population, batch split)."""

import dataclasses
import json
import math

import pytest
import torch
from tests.test_modes import TINY_AGENT, config, dirs, hopper_dataset  # noqa: F401 (fixtures)
from tests.test_sac import SMALL, make_batch

from offline_mbrl.agents.combo import COMBO
from offline_mbrl.agents.cql import CQL
from offline_mbrl.agents.sac import SAC
from offline_mbrl.data.d4rl import PUBLISHED_ROWS, write_d4rl_hdf5
from offline_mbrl.errors import UserError
from offline_mbrl.rng import PopulationRNG
from offline_mbrl.train import Trainer


def combo_agent(seeds=(0,), **update):
    return COMBO(3, 2, -torch.ones(2), torch.ones(2), seeds, SMALL.model_copy(update=update))


def state_valued(agent, n_samples=4):
    """Make ``agent.sampled_q`` hand-made: every sampled action at state ``s`` has Q equal
    to ``s[0]`` and log-density 0, and the states it was given are recorded."""
    seen = []

    def sampled_q(obs, next_obs, extra):
        seen.append(obs)
        P, B, _ = obs.shape
        q_sampled = obs[..., 0][:, None, :, None].expand(P, 2, B, n_samples)
        return q_sampled, torch.zeros(P, 1, B, n_samples)

    agent.sampled_q = sampled_q
    return seen


@pytest.mark.parametrize("states", ["model", "mixed"])
def test_term_pushes_down_at_its_states_and_up_at_real_rows(states):
    """Rows 0-1 real, 2-3 model-generated. With every sampled Q at state s equal to s[0]
    (log-density 0), T · log Σ exp(Q/T) over 4 samples is s[0] + T log 4."""
    agent = combo_agent(combo_weight=2.0, combo_states=states)
    agent.use_batch_split(2, 2)
    seen = state_valued(agent)
    obs = torch.tensor([[[1.0, 0, 0], [2.0, 0, 0], [3.0, 0, 0], [5.0, 0, 0]]],
                       requires_grad=True)  # [P=1, B=4, 3]
    q = torch.tensor([[[1.0, 2.0, 10.0, 10.0], [0.0, 4.0, -7.0, 7.0]]],
                     requires_grad=True)  # [P, twins, B]
    batch = {"obs": obs, "next_obs": torch.zeros(1, 4, 3)}
    penalty, metrics = agent.critic_regularizer(batch, q, {})

    down = [3.0, 5.0] if states == "model" else [1.0, 2.0, 3.0, 5.0]
    push_down = sum(down) / len(down) + math.log(4)
    # Twin 1's real rows average 1.5, twin 2's 2; the model rows' Q never enters.
    expected = 2.0 * ((push_down - 1.5) + (push_down - 2.0))
    torch.testing.assert_close(penalty, torch.tensor([expected]))
    torch.testing.assert_close(metrics["LossCOMBO"], penalty.detach())
    assert seen[0].shape == (1, len(down), 3)

    penalty.sum().backward()
    # Up at the real rows' dataset actions: the loss falls as their Q rises.
    assert (q.grad[..., :2] < 0).all()
    torch.testing.assert_close(q.grad[..., :2], torch.full((1, 2, 2), -2.0 / 2))
    assert (q.grad[..., 2:] == 0).all()
    # Down at the states of the push-down term: the loss rises with their Q.
    state_grad = obs.grad[0, :, 0]
    assert (state_grad[2:] > 0).all()
    if states == "model":
        assert (state_grad[:2] == 0).all()
    else:
        assert (state_grad[:2] > 0).all()


def test_all_real_rows_make_it_cqls_term():
    """Without a split every row is real, and with the mixed states COMBO's term is CQL's
    (the same draws, the same log-sum-exp) at weight β."""
    combo = combo_agent((0, 1), combo_weight=3.0)
    cql = CQL(3, 2, -torch.ones(2), torch.ones(2), (0, 1), SMALL.model_copy(
        update={"cql_weight": 3.0}))
    batch = make_batch(2, B=8, obs_dim=3)
    q = cql.q_values(batch["obs"], batch["action"])
    terms = [agent.critic_regularizer(batch, q, agent.extra_noise(PopulationRNG((0, 1)), 0, 8))[0]
             for agent in (combo, cql)]
    torch.testing.assert_close(terms[0], terms[1])


def test_model_states_draw_proposals_for_the_model_rows_only():
    agent = combo_agent(combo_states="model", cql_n_actions=3)
    with pytest.raises(ValueError, match="use_batch_split"):
        agent.extra_noise(PopulationRNG((0,)), 0, 8)
    agent.use_batch_split(5, 3)
    extra = agent.extra_noise(PopulationRNG((0,)), 0, 8)
    assert extra["normal"].shape == (1, 2 * 3 * 3, 2)  # policy at s and s', 3 rows, n = 3
    assert extra["uniform"].shape == (1, 3 * 3, 2)
    metrics = agent.update(make_batch(1, B=8), PopulationRNG((0,)))
    assert torch.isfinite(metrics["LossCOMBO"]).all()


def test_a_split_without_the_rows_it_needs_is_refused():
    with pytest.raises(UserError, match="real_ratio"):
        combo_agent().use_batch_split(0, 32)
    with pytest.raises(UserError, match="model-generated"):
        combo_agent(combo_states="model").use_batch_split(32, 0)
    combo_agent().use_batch_split(32, 0)  # mixed states need no model rows


def test_combo_keeps_q_at_model_states_below_sacs():
    """Trained on one fixed batch whose second half plays the model's rows, COMBO's Q at
    random actions in those states falls well below SAC's, and its Q at the real rows'
    dataset actions stays above its Q at random actions there."""
    batch = make_batch(2, B=64, obs_dim=3, seed=3)
    random_actions = torch.rand(2, 32, 2, generator=torch.Generator().manual_seed(9)) * 2 - 1
    model_obs, real_obs = batch["obs"][:, 32:], batch["obs"][:, :32]
    q_model, gap = {}, {}
    for cls in (SAC, COMBO):
        agent = cls(3, 2, -torch.ones(2), torch.ones(2), (0, 1),
                    SMALL.model_copy(update={"lr": 3e-3, "combo_weight": 5.0,
                                             "combo_states": "model"}))
        if cls is COMBO:
            agent.use_batch_split(32, 32)
        rng = PopulationRNG((0, 1))
        for _ in range(100):
            agent.update(batch, rng)
        q_model[cls] = agent.q_estimate(model_obs, random_actions).mean()
        gap[cls] = (agent.q_estimate(real_obs, batch["action"][:, :32]).mean()
                    - agent.q_estimate(real_obs, random_actions).mean())
    assert q_model[COMBO] < q_model[SAC] - 0.3
    assert gap[COMBO] > 0.3 and gap[COMBO] > gap[SAC] + 0.3


def test_the_trainer_tells_combo_its_batch_split(dirs):  # noqa: F811
    trainer = Trainer(config("combo", real_ratio=0.25), progress=False)  # batches of 32
    assert trainer.agent.n_real == 8
    trainer.prepare()
    assert trainer.pessimism.kind == "none"
    assert (trainer.pessimism.penalty == 0).all()
    assert torch.isinf(trainer.pessimism.threshold).all()
    trainer.close()
    with pytest.raises(UserError, match="real_ratio"):
        Trainer(config("combo", real_ratio=0.0, experiment_name="no-real"), progress=False)
    assert not list(dirs.rglob("no-real*")), "a refused run must not create its directories"


def test_population_member_trains_like_a_single_run(dirs):  # noqa: F811
    """Member p of a COMBO population reproduces the single run with seed p."""
    settings = {"real_ratio": 0.5, "agent": {"n_hidden_layers": 1, "n_hidden_units": 16,
                                             "batch_size": 32, "combo_states": "model"}}
    population = Trainer(config("combo", seeds=(0, 1), experiment_name="pop", **settings),
                         progress=False)
    single = Trainer(config("combo", seed=1, experiment_name="one", **settings),
                     progress=False)
    rows_pop, rows_one = population.run(), single.run()
    for key in ("LossQ", "LossPi", "AverageTestEpRet"):
        assert rows_pop[1][key] == pytest.approx(rows_one[0][key], rel=1e-3, abs=1e-4), key
    obs = torch.randn(1, 4, 11)
    torch.testing.assert_close(population.agent.act(obs.expand(2, 4, 11))[1],
                               single.agent.act(obs)[0], rtol=1e-3, atol=1e-4)


def test_beta_and_rollout_length_come_from_the_flag_the_table_or_the_default(
        dirs, hopper_dataset, monkeypatch):  # noqa: F811
    trainer = Trainer(config("combo"), progress=False)  # generated data: no table
    trainer.prepare()
    assert trainer.agent.config.combo_weight == 0.5
    assert trainer.resolved["rollout_length"]["value"] == [15]
    run = json.loads((trainer.run_dirs[0] / "config.json").read_text())
    assert run["resolved"]["agent.combo_weight"] == {"value": 0.5, "source": "default"}
    # The published hopper-medium-v2 file, recognised by content: OfflineRL-Kit's h = 5, β = 5.
    dataset, _ = hopper_dataset
    published = dirs / "published.hdf5"
    write_d4rl_hdf5(dataclasses.replace(dataset, metadata={}), published)
    monkeypatch.setitem(PUBLISHED_ROWS, "hopper-medium-v2", len(dataset))
    on_table = config("combo", env_name="hopper-medium-v2", dataset=str(published),
                      experiment_name="published")
    trainer = Trainer(on_table, progress=False)
    trainer.run()
    assert trainer.agent.config.combo_weight == 5.0
    assert trainer.pessimism.rollout_length.tolist() == [5]
    run = json.loads((trainer.run_dirs[0] / "config.json").read_text())
    assert run["agent"]["combo_weight"] == 5.0
    assert run["resolved"]["agent.combo_weight"]["value"] == 5.0
    assert "OfflineRL-Kit" in run["resolved"]["agent.combo_weight"]["source"]
    # A resume resolves the same value, so the checkpoint's configuration matches.
    resumed = Trainer(on_table.model_copy(update={"offline_epochs": 2}), resume=True,
                      progress=False)
    assert resumed.epoch == 1 and resumed.agent.config.combo_weight == 5.0
    # A flag wins over the table, even at the field's default value.
    flagged = Trainer(config("combo", env_name="hopper-medium-v2", dataset=str(published),
                             experiment_name="flag",
                             agent={**TINY_AGENT, "combo_weight": 0.5}), progress=False)
    assert flagged.agent.config.combo_weight == 0.5
    assert flagged.agent_resolved["agent.combo_weight"]["source"] == "flag"
