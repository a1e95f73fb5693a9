"""The compiled path gives the eager path's results (CPU here; benchmarks/gpu_check.py on CUDA)."""

import math

import pytest
import torch

from offline_mbrl.agents import SAC
from offline_mbrl.agents.cql import CQL
from offline_mbrl.agents.iql import IQL
from offline_mbrl.compiling import compiler
from offline_mbrl.config import AgentConfiguration
from offline_mbrl.data.buffer import TransitionLayout
from offline_mbrl.models.ensemble import EnvironmentModel
from offline_mbrl.rng import PopulationRNG
from offline_mbrl.rollouts import Pessimism, rollout, rollout_step

# Compiling takes tens of seconds a test: the suite's workers (make test) start these first.
pytestmark = pytest.mark.long

CPU = torch.device("cpu")


@pytest.mark.parametrize(("agent_class", "precision"), [
    # CQL's losses are SAC's plus its regulariser, and its random draws (the proposals after
    # the policy's) happen inside the graph too: in float32 it stands for SAC as well, whose
    # compiled float32 update test_modes also runs end to end.
    (SAC, "bfloat16"), (CQL, "float32"), (IQL, "float32")])
def test_compiled_sac_update_matches_eager(agent_class, precision):
    config = AgentConfiguration(n_hidden_layers=2, n_hidden_units=32, batch_size=16, alpha="auto",
                                precision=precision, cql_n_actions=3)
    # Inductor may keep a fused bf16 intermediate in float32: agreement to bf16 rounding.
    tol = {"rtol": 1e-4, "atol": 1e-5} if precision == "float32" else {"rtol": 2e-2,
                                                                        "atol": 1e-3}
    eager = agent_class(5, 2, -torch.ones(2), torch.ones(2), (0, 1), config)
    compiled = agent_class(5, 2, -torch.ones(2), torch.ones(2), (0, 1), config)
    compiled.compile_update(compiler(CPU))
    assert set(eager.state_dict()["actor"]) == set(compiled.state_dict()["actor"])
    rng_a, rng_b = PopulationRNG((0, 1)), PopulationRNG((0, 1))
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        batch = {"obs": torch.randn(2, 16, 5, generator=g),
                 "action": torch.rand(2, 16, 2, generator=g) * 2 - 1,
                 "reward": torch.randn(2, 16, generator=g),
                 "next_obs": torch.randn(2, 16, 5, generator=g),
                 "terminated": torch.zeros(2, 16)}
        m_eager = eager.update(batch, rng_a)
        m_compiled = compiled.update(batch, rng_b)
        for key in m_eager:
            torch.testing.assert_close(m_compiled[key], m_eager[key], **tol)
    for a, b in zip(eager.parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(a, b, **tol)
    obs = torch.randn(2, 7, 5)
    torch.testing.assert_close(compiled.act(obs), eager.act(obs), **tol)


def small_rollout_setup():
    model = EnvironmentModel(3, 2, n_networks=3, n_hidden_layers=1, n_hidden_units=8,
                             reward_n_hidden_units=8, env_name="Pendulum-v1").eval()
    agent = SAC(3, 2, -torch.ones(2), torch.ones(2), (0, 1),
                AgentConfiguration(n_hidden_layers=1, n_hidden_units=8))
    pessimism = Pessimism("penalty", "epistemic", torch.tensor([3, 3]), torch.tensor([1.0, 0.5]),
                          torch.tensor([math.inf, math.inf]), 5.0)
    return model, agent, pessimism, torch.randn(2, 10, 3), TransitionLayout(3, 2)


def test_compiled_rollout_step_matches_eager():
    model, agent, pessimism, start, layout = small_rollout_setup()
    eager = rollout(model, agent, start, pessimism, layout, PopulationRNG((0, 1)), chunk=8)
    compiled = rollout(model, agent, start, pessimism, layout, PopulationRNG((0, 1)), chunk=8,
                       step_fn=compiler(CPU)(rollout_step))
    assert torch.equal(eager.valid, compiled.valid)
    torch.testing.assert_close(compiled.rows, eager.rows, rtol=1e-4, atol=1e-5)


def test_compiled_bf16_step_keeps_the_networks_eager_and_matches():
    """CPU bf16: the networks run eagerly between compiled graphs, with eager's results."""
    model, agent, pessimism, start, layout = small_rollout_setup()
    fast = model.for_rollouts(torch.bfloat16)
    fast.eager_networks = True
    fast.resolve_termination_fn()
    explained = torch._dynamo.explain(rollout_step)(
        fast, agent, start, torch.tensor(0), torch.tensor(0), pessimism, PopulationRNG((0, 1)))
    assert explained.graph_break_count >= 1
    eager = rollout(fast, agent, start, pessimism, layout, PopulationRNG((0, 1)), chunk=8,
                    dtype=torch.bfloat16)
    compiled = rollout(fast, agent, start, pessimism, layout, PopulationRNG((0, 1)), chunk=8,
                       dtype=torch.bfloat16, step_fn=compiler(CPU)(rollout_step))
    assert torch.equal(eager.valid, compiled.valid)
    torch.testing.assert_close(compiled.rows, eager.rows, rtol=1e-4, atol=1e-5)
