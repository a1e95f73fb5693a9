"""offline_mbrl: offline model-based reinforcement learning with batched populations.

Quick use::

    from offline_mbrl import TrainerConfiguration, train, load_agent

    train(TrainerConfiguration(env_name="Pendulum-v1", mode="sac", online_epochs=5))
    agent = load_agent("data/experiments/Pendulum-v1-sac/Pendulum-v1-sac-s0")
    action = agent.act(obs, deterministic=True)
"""

from offline_mbrl.runtime import set_wait_policy

set_wait_policy()  # before torch is imported (below), or OpenMP never reads it

from offline_mbrl.config import AgentConfiguration, TrainerConfiguration  # noqa: E402
from offline_mbrl.errors import UserError  # noqa: E402
from offline_mbrl.policy import LoadedAgent, load_agent  # noqa: E402
from offline_mbrl.train import Trainer, train  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "AgentConfiguration",
    "LoadedAgent",
    "Trainer",
    "TrainerConfiguration",
    "UserError",
    "load_agent",
    "train",
]
