"""The semantics of pessimism and synthetic rollouts, proven on small hand-made cases."""

import math

import pytest
import torch

from offline_mbrl.agents import SAC
from offline_mbrl.agents.base import split_member_state
from offline_mbrl.config import AgentConfiguration
from offline_mbrl.data.buffer import TransitionLayout
from offline_mbrl.models.ensemble import EnvironmentModel
from offline_mbrl.models.uncertainty import uncertainty
from offline_mbrl.rng import PopulationRNG
from offline_mbrl.rollouts import Pessimism, apply_pessimism, rollout, rollout_step

OBS, ACT = 3, 2


def pessimism(kind, unc="epistemic", lengths=(1, 1), penalty=(0.0, 0.0),
              threshold=(math.inf, math.inf), max_reward=5.0):
    return Pessimism(kind, unc, torch.tensor(lengths), torch.tensor(penalty),
                     torch.tensor(threshold), max_reward)


def test_penalty_subtracts_exactly_lambda_times_u():
    reward = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    u = torch.tensor([[0.5, 0.25], [1.0, 0.0]])
    terminated = torch.tensor([[False, True], [False, False]])
    out, term, unknown = apply_pessimism(reward, terminated, u,
                                         pessimism("penalty", penalty=(2.0, 10.0)))
    assert out.tolist() == [[0.0, 1.5], [-7.0, 4.0]]
    assert torch.equal(term, terminated) and not unknown.any()


def test_partitioning_terminates_exactly_above_threshold_with_minus_rmax():
    reward = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    u = torch.tensor([[0.1, 0.2, 0.3], [0.1, 0.2, 0.3]])
    terminated = torch.tensor([[False, False, True], [False, False, False]])
    out, term, unknown = apply_pessimism(reward, terminated, u,
                                         pessimism("partitioning", threshold=(0.2, 0.05)))
    # Member 0: only 0.3 > 0.2 (0.2 itself is not above); member 1: everything.
    assert unknown.tolist() == [[False, False, True], [True, True, True]]
    assert out.tolist() == [[1.0, 2.0, -5.0], [-5.0, -5.0, -5.0]]
    assert term.tolist() == [[False, False, True], [True, True, True]]


def test_no_pessimism_leaves_predictions():
    reward = torch.tensor([[1.0]])
    out, term, _ = apply_pessimism(reward, torch.tensor([[False]]), torch.tensor([[9.0]]),
                                   pessimism("none", lengths=(1,)))
    assert out.tolist() == [[1.0]] and not term.any()


@pytest.mark.parametrize(("mode", "kind", "unc"), [
    ("aleatoric-penalty", "penalty", "aleatoric"),
    ("epistemic-penalty", "penalty", "epistemic"),
    ("aleatoric-partitioning", "partitioning", "aleatoric"),
    ("epistemic-partitioning", "partitioning", "epistemic"),
    ("mbpo", "none", "epistemic"),
    ("mobile", "penalty", "bellman"),
])
def test_modes_map_to_their_pessimism(mode, kind, unc):
    p = Pessimism.from_mode(mode, torch.ones(1), torch.zeros(1), torch.zeros(1), 1.0)
    assert (p.kind, p.uncertainty if kind != "none" else "epistemic") == (kind, unc)


def small_model():
    model = EnvironmentModel(OBS, ACT, n_networks=3, n_hidden_layers=1, n_hidden_units=8,
                             reward_n_hidden_units=8, seed=0)
    model.termination_fn = lambda o, a, n: torch.zeros(n.shape[:-1], dtype=torch.bool)
    return model.eval()


def small_agent(P=2):
    return SAC(OBS, ACT, -torch.ones(ACT), torch.ones(ACT), tuple(range(P)),
               AgentConfiguration(n_hidden_layers=1, n_hidden_units=8))


def run(p, start, n_active=None, seed_offset=0):
    P = start.shape[0]
    return rollout(small_model(), small_agent(P), start, p, TransitionLayout(OBS, ACT),
                   PopulationRNG(tuple(range(seed_offset, seed_offset + P))), n_active)


def test_rollouts_start_at_the_given_states_and_respect_lengths():
    start = torch.randn(2, 4, OBS)
    batch = run(pessimism("none", lengths=(1, 3)), start)
    rows = batch.rows.view(2, 3, 4, -1)
    assert torch.equal(rows[:, 0, :, :OBS], start)  # step 0 observations are the starts
    assert batch.valid.view(2, 3, 4).sum(dim=(1, 2)).tolist() == [4, 12]
    # Each step continues from the previous next_obs.
    layout = TransitionLayout(OBS, ACT)
    torch.testing.assert_close(rows[1, 1, :, layout.slices["obs"]],
                               rows[1, 0, :, layout.slices["next_obs"]])


def test_n_active_limits_starts_per_member():
    batch = run(pessimism("none", lengths=(2, 2)), torch.randn(2, 5, OBS),
                n_active=torch.tensor([5, 2]))
    assert batch.valid.sum(dim=1).tolist() == [10, 4]


def test_partitioning_ends_rollouts_at_the_first_unknown_step():
    batch = run(pessimism("partitioning", lengths=(4, 4), threshold=(0.0, 0.0)),
                torch.randn(2, 6, OBS))
    assert batch.valid.sum(dim=1).tolist() == [6, 6]  # one transition per rollout
    layout = TransitionLayout(OBS, ACT)
    first = layout.unpack(batch.rows[:, :6])
    assert (first["reward"] == -5.0).all() and (first["terminated"] == 1.0).all()
    assert batch.stats["RolloutUnknownFraction"].tolist() == [1.0, 1.0]


@pytest.mark.parametrize("unc", ["aleatoric", "epistemic"])
def test_penalty_in_rollouts_equals_lambda_times_model_uncertainty(unc):
    start = torch.randn(2, 5, OBS)
    plain = run(pessimism("penalty", unc, lengths=(1, 1), penalty=(0.0, 0.0)), start)
    penalised = run(pessimism("penalty", unc, lengths=(1, 1), penalty=(2.0, 0.5)), start)
    layout = TransitionLayout(OBS, ACT)
    a, b = layout.unpack(plain.rows), layout.unpack(penalised.rows)
    assert torch.equal(a["action"], b["action"])  # same per-member randomness
    model = small_model()
    with torch.no_grad():
        outputs = model(a["obs"].reshape(-1, OBS), a["action"].reshape(-1, ACT))
    u = uncertainty(unc, outputs, model.normalizer, model.elites).view(2, 5)
    assert (u > 0).all()
    torch.testing.assert_close(a["reward"] - b["reward"], torch.tensor([[2.0], [0.5]]) * u)


def test_chunked_rollouts_keep_layout_and_lengths():
    start = torch.randn(2, 5, OBS)
    p = pessimism("none", lengths=(2, 3))
    whole = rollout(small_model(), small_agent(), start, p, TransitionLayout(OBS, ACT),
                    PopulationRNG((0, 1)), n_active=torch.tensor([5, 3]))
    chunked = rollout(small_model(), small_agent(), start, p, TransitionLayout(OBS, ACT),
                      PopulationRNG((0, 1)), n_active=torch.tensor([5, 3]), chunk=2)
    assert torch.equal(whole.valid, chunked.valid)
    assert whole.valid.sum(1).tolist() == [10, 9]
    rows = chunked.rows.view(2, 3, 5, -1)
    assert torch.equal(rows[:, 0, :, :OBS], start)
    assert chunked.stats["RolloutLength"].tolist() == [2.0, 3.0]


def test_bfloat16_rollouts_stay_close_to_float32():
    start = torch.randn(2, 6, OBS)
    p = pessimism("penalty", lengths=(2, 2), penalty=(1.0, 1.0))
    exact = run(p, start)
    fast = rollout(small_model(), small_agent(), start, p, TransitionLayout(OBS, ACT),
                   PopulationRNG((0, 1)), dtype=torch.bfloat16)
    assert torch.equal(exact.valid, fast.valid)
    first = slice(0, 6)  # step 0: same starts, same actions
    torch.testing.assert_close(fast.rows[:, first], exact.rows[:, first], rtol=0.05, atol=0.05)


def test_rollouts_do_not_depend_on_chunking_or_population():
    """Start n of member p gets the same rollout whatever the chunk size and the population."""
    start = torch.randn(3, 7, OBS)
    p = pessimism("penalty", lengths=(3, 3, 3), penalty=(0.5, 0.5, 0.5))
    model, agent, layout = small_model(), small_agent(3), TransitionLayout(OBS, ACT)
    whole = rollout(model, agent, start, p, layout, PopulationRNG((0, 1, 2)))
    chunked = rollout(model, agent, start, p, layout, PopulationRNG((0, 1, 2)), chunk=4)
    assert torch.equal(whole.valid, chunked.valid)
    torch.testing.assert_close(whole.rows, chunked.rows, rtol=1e-6, atol=1e-6)
    single_agent = small_agent(1)
    single_agent.load_state_dict(
        split_member_state(agent.state_dict(), 3, 1))
    single = rollout(model, single_agent, start[1:2],
                     pessimism("penalty", lengths=(3,), penalty=(0.5,), threshold=(math.inf,)),
                     layout, PopulationRNG((1,)), chunk=3)
    torch.testing.assert_close(single.rows[0], whole.rows[1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("unc", ["aleatoric", "epistemic"])
def test_rollouts_compute_only_the_elite_members(unc):
    """The rollout copy keeps the elites only and gives the full model's every output (to
    rounding: BLAS blocks a batched product differently for another group count)."""
    model = EnvironmentModel(OBS, ACT, n_networks=5, n_hidden_layers=1, n_hidden_units=8,
                             reward_n_hidden_units=8, seed=0).eval()
    model.termination_fn = lambda o, a, n: n[..., 0] > 1.0
    assert model.for_rollouts() is model  # every member is an elite
    model.set_elites([0, 2, 3])
    copy = model.for_rollouts()
    assert copy.n_networks == 3 and copy.elites.tolist() == [0, 1, 2]
    assert copy.dynamics.linears()[0].weight.shape[0] == 3
    torch.testing.assert_close(copy.dynamics.linears()[0].weight,
                               model.dynamics.linears()[0].weight[[0, 2, 3]])
    assert model.n_networks == 5  # the original is untouched
    agent, rng = small_agent(2), PopulationRNG((0, 1))
    obs = torch.randn(2, 6, OBS)
    p = pessimism("penalty", unc, lengths=(1, 1), penalty=(1.0, 1.0))
    full = rollout_step(model, agent, obs, torch.tensor(0), torch.tensor(0), p, rng)
    elite = rollout_step(copy, agent, obs, torch.tensor(0), torch.tensor(0), p, rng)
    assert full.uncertainty.gt(0).all()
    for name, a, b in zip(full._fields, full, elite, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=name)
