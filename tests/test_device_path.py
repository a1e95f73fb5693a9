"""The per-step path keeps every tensor on the training device, checked without a GPU.

A run on CUDA fails where the code creates a tensor without ``device=`` and mixes it
with device tensors, or reads a value back to the host. PyTorch's ``meta`` device fails
in the same places (an op mixing meta and CPU tensors raises, and so does ``.item()``:
meta tensors have no values), so running the hot path on it catches both on a CPU-only
machine. What it cannot catch are CUDA-only kernels and CUDA graphs:
``benchmarks/gpu_check.py`` covers those on a GPU.
"""

import importlib
import math

import pytest
import torch

from offline_mbrl.agents import SAC, BehavioralCloning
from offline_mbrl.config import AgentConfiguration
from offline_mbrl.data.buffer import DatasetSampler, PopulationBuffer, TransitionLayout
from offline_mbrl.models.ensemble import EnvironmentModel
from offline_mbrl.rng import PopulationRNG
from offline_mbrl.rollouts import Pessimism, rollout_step
from offline_mbrl.train import EpochMetrics

P, B, OBS, ACT = 3, 16, 11, 3
META = torch.device("meta")
# The module, which ``torch.optim``'s attributes do not expose under this name.
optimizer_module = importlib.import_module("torch.optim.optimizer")
SMALL = {"n_hidden_layers": 2, "n_hidden_units": 16}


@pytest.fixture(autouse=True)
def fused_adam_on_meta(monkeypatch):
    # The fused Adam kernel has a meta implementation; only the optimizer's device
    # check in Python does not list the meta device.
    supported = optimizer_module._get_fused_kernels_supported_devices
    monkeypatch.setattr(optimizer_module, "_get_fused_kernels_supported_devices",
                        lambda: [*supported(), "meta"])


def meta_batch():
    return {"obs": torch.randn(P, B, OBS, device=META),
            "action": torch.rand(P, B, ACT, device=META) * 2 - 1,
            "reward": torch.randn(P, B, device=META),
            "next_obs": torch.randn(P, B, OBS, device=META),
            "terminated": torch.zeros(P, B, device=META)}


def test_meta_device_catches_what_cuda_would():
    # The premise of this file: both kinds of mistake fail on the meta device.
    with pytest.raises(RuntimeError, match="device"):
        torch.ones(3, device=META) + torch.ones(3)
    with pytest.raises(RuntimeError):
        torch.ones((), device=META).item()


@pytest.mark.parametrize(("cls", "precision"), [(SAC, "float32"), (SAC, "bfloat16"),
                                                (BehavioralCloning, "float32")])
def test_agent_updates_stay_on_the_device(cls, precision):
    config = AgentConfiguration(**SMALL, precision=precision)
    agent = cls(OBS, ACT, -torch.ones(ACT), torch.ones(ACT), tuple(range(P)), config, META)
    rng = PopulationRNG(range(P), device=META)
    metrics = EpochMetrics()
    for _ in range(2):  # the second step runs with the optimizer state the first made
        step_metrics = agent.update(meta_batch(), rng)
        metrics.add(step_metrics)
    assert all(v.device == META and v.shape == (P,) for v in step_metrics.values())
    assert all(p.device == META for p in agent.parameters())
    assert agent.act(torch.randn(P, 5, OBS, device=META)).device == META


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("kind", "unc"), [("penalty", "epistemic"), ("penalty", "aleatoric"),
                                           ("partitioning", "epistemic"),
                                           ("partitioning", "aleatoric"), ("none", "epistemic")])
def test_rollout_step_stays_on_the_device(kind, unc, dtype):
    agent = SAC(OBS, ACT, -torch.ones(ACT), torch.ones(ACT), tuple(range(P)),
                AgentConfiguration(**SMALL), META)
    model = EnvironmentModel(OBS, ACT, n_networks=5, n_hidden_layers=2, n_hidden_units=16,
                             reward_n_hidden_units=8, env_name="hopper-medium-v2")
    # Two elites of five: the rollout copy selects members on the device.
    model.elites = torch.tensor([1, 3])
    model = model.to(META).eval().for_rollouts(dtype)
    model.resolve_termination_fn()
    pessimism = Pessimism(kind, unc, torch.full((P,), 5, device=META),
                          torch.ones(P, device=META), torch.full((P,), math.inf, device=META),
                          1.0)
    rng = PopulationRNG(range(P), device=META)
    result = rollout_step(model, agent, torch.randn(P, 8, OBS, device=META),
                          torch.tensor(3, device=META), torch.tensor(0, device=META),
                          pessimism, rng)
    for value in result:
        assert value.device == META and value.shape[:2] == (P, 8)


def test_buffers_add_and_sample_on_the_device():
    layout = TransitionLayout(OBS, ACT)
    rng = PopulationRNG(range(P), device=META)
    buffer = PopulationBuffer(P, 100, layout, device=META)
    rows = torch.randn(P, 40, layout.width, device=META)
    buffer.add(rows)
    buffer.add(rows, torch.ones(P, 40, dtype=torch.bool, device=META))
    assert buffer.sample(B, rng).shape == (P, B, layout.width)
    dataset = DatasetSampler(torch.randn(500, layout.width, device=META))
    assert dataset.sample(B, rng).device == META
