"""The compiled path gives the eager path's results (CPU here; benchmarks/gpu_check.py on CUDA)."""

import torch

from offline_mbrl.agents import SAC
from offline_mbrl.config import AgentConfiguration
from offline_mbrl.rng import PopulationRNG
from offline_mbrl.train import compile_networks


def test_compiled_sac_matches_eager():
    config = AgentConfiguration(hidden_layers=2, hidden_units=32, batch_size=16)
    eager = SAC(5, 2, -torch.ones(2), torch.ones(2), (0, 1), config)
    compiled = SAC(5, 2, -torch.ones(2), torch.ones(2), (0, 1), config)
    compile_networks(compiled, torch.device("cpu"))
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
        for key in ("LossQ", "LossPi"):
            torch.testing.assert_close(m_compiled[key], m_eager[key], rtol=1e-4, atol=1e-5)
    obs = torch.randn(2, 7, 5)
    torch.testing.assert_close(compiled.act(obs), eager.act(obs), rtol=1e-4, atol=1e-5)
