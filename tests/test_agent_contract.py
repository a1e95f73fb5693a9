"""Contract shared by every agent of the mode registry: batched update, metrics, save -> load
gives identical actions and identical next updates."""

import pytest
import torch

from offline_mbrl import load_agent
from offline_mbrl.agents import split_member_state, stack_member_states
from offline_mbrl.config import AgentConfiguration
from offline_mbrl.modes import MODES
from offline_mbrl.rng import PopulationRNG

SMALL = AgentConfiguration(n_hidden_layers=2, n_hidden_units=16)


def registry_agents() -> list:
    """One case per agent class of the registered modes and precision it supports."""
    cases = {}
    for spec in MODES.values():
        for precision in spec.precisions:
            cases.setdefault((spec.agent, precision), pytest.param(
                spec.agent_class(), SMALL.model_copy(update={"precision": precision}),
                id=f"{spec.agent.rsplit(':', 1)[1]}-{precision}"))
    return list(cases.values())


AGENTS = registry_agents()


def batch(P, B=16):
    g = torch.Generator().manual_seed(1)
    return {"obs": torch.randn(P, B, 3, generator=g),
            "action": torch.rand(P, B, 2, generator=g) * 2 - 1,
            "reward": torch.randn(P, B, generator=g),
            "next_obs": torch.randn(P, B, 3, generator=g),
            "terminated": torch.zeros(P, B)}


@pytest.mark.parametrize(("cls", "config"), AGENTS)
def test_update_returns_flat_member_metrics(cls, config):
    agent = cls(3, 2, -torch.ones(2), torch.ones(2), (0, 1, 2), config)
    metrics = agent.update(batch(3), PopulationRNG((0, 1, 2)))
    assert "LossPi" in metrics
    for value in metrics.values():
        assert isinstance(value, torch.Tensor) and value.shape == (3,)


@pytest.mark.parametrize(("cls", "config"), AGENTS)
def test_save_load_identical_actions(cls, config, tmp_path):
    agent = cls(3, 2, -torch.ones(2), torch.ones(2), (4, 5), config)
    rng = PopulationRNG((4, 5))
    for _ in range(3):
        agent.update(batch(2), rng)
    path = tmp_path / "agent.pt"
    torch.save(agent.state_dict(), path)
    restored = cls(3, 2, -torch.ones(2), torch.ones(2), (0, 0), config)
    restored.load_state_dict(torch.load(path, weights_only=True))
    obs = torch.randn(2, 10, 3)
    assert torch.equal(agent.act(obs), restored.act(obs))
    # Training continues identically too (optimizer state restored).
    rng_a, rng_b = PopulationRNG((4, 5)), PopulationRNG((4, 5))
    for _ in range(3):
        metrics_a = agent.update(batch(2), rng_a)
        metrics_b = restored.update(batch(2), rng_b)
        assert all(torch.equal(metrics_a[k], metrics_b[k]) for k in metrics_a)
    assert torch.equal(agent.act(obs), restored.act(obs))


@pytest.mark.parametrize(("cls", "config"), AGENTS)
def test_member_split_and_stack_round_trip(cls, config):
    agent = cls(3, 2, -torch.ones(2), torch.ones(2), (1, 2, 3), config)
    agent.update(batch(3), PopulationRNG((1, 2, 3)))
    state = agent.state_dict()
    members = [split_member_state(state, 3, m) for m in range(3)]
    single = cls(3, 2, -torch.ones(2), torch.ones(2), (9,), config)
    single.load_state_dict(members[2])
    obs = torch.randn(1, 5, 3)
    assert torch.equal(single.act(obs)[0], agent.act(obs.expand(3, 5, 3))[2])
    again = cls(3, 2, -torch.ones(2), torch.ones(2), (0, 0, 0), config)
    again.load_state_dict(stack_member_states(members))
    assert torch.equal(again.act(obs.expand(3, 5, 3)), agent.act(obs.expand(3, 5, 3)))


def test_load_agent_from_run_directory(tmp_path, monkeypatch):
    from offline_mbrl import train

    monkeypatch.setenv("OMBRL_DATA_DIR", str(tmp_path))
    train(env_name="Pendulum-v1", mode="sac", online_epochs=1, steps_per_epoch=40,
          random_steps=20, init_steps=20, test_episodes=1, progress=False,
          agent={"n_hidden_units": 16, "n_hidden_layers": 2, "batch_size": 8})
    run = tmp_path / "Pendulum-v1-sac" / "Pendulum-v1-sac-s0"
    agent = load_agent(run)
    obs = torch.zeros(3).numpy()
    action = agent.act(obs)
    assert action.shape == (1,) and -2 <= action[0] <= 2
    assert (agent.act(obs) == action).all()
    assert agent.act(torch.zeros(4, 3).numpy()).shape == (4, 1)


@pytest.mark.parametrize(("cls", "config"), AGENTS)
def test_update_reads_nothing_back_to_the_host(cls, config, host_reads):
    # A host read in the per-step path would stall a GPU once per update.
    agent = cls(3, 2, -torch.ones(2), torch.ones(2), (0, 1), config)
    rng = PopulationRNG((0, 1))
    agent.update(batch(2), rng)  # optimizer state is created at the first step
    with host_reads() as reads:
        agent.update(batch(2), rng)
    assert reads.count == 0
