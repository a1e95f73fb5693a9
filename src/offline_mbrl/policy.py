"""Load a trained agent from its run directory and act with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from offline_mbrl.agents import SAC, BehavioralCloning
from offline_mbrl.checkpoint import load_checkpoint
from offline_mbrl.config import AgentConfiguration
from offline_mbrl.errors import UserError
from offline_mbrl.models.training import resolve_device
from offline_mbrl.modes import agent_class_of
from offline_mbrl.rng import PopulationRNG
from offline_mbrl.runs import find_checkpoint


class LoadedAgent:
    """A single trained policy; needs nothing but its run directory.

    Attributes:
        config: the run's configuration as saved in the checkpoint (a dict).
        agent: the underlying one-member :class:`SAC` or :class:`BehavioralCloning`.
    """

    def __init__(self, agent: SAC | BehavioralCloning, config: dict[str, Any],
                 device: torch.device) -> None:
        self.agent = agent.eval()
        self.config = config
        self.device = device
        # Stochastic actions come from the agent's own sampler, on a stream of the run's seed.
        self._rng = PopulationRNG((int(config["seed"]),), device, stream=99)

    @property
    def env_name(self) -> str:
        return str(self.config["env_name"])

    def act(self, obs: np.ndarray | torch.Tensor, deterministic: bool = True) -> np.ndarray:
        """``obs [obs_dim]`` or ``[n, obs_dim]`` -> action ``[act_dim]`` or ``[n, act_dim]``.

        Stochastic actions draw from a stream seeded with the run's seed.
        """
        obs_t = torch.as_tensor(np.asarray(obs, dtype=np.float32), device=self.device)
        single = obs_t.dim() == 1
        obs_t = obs_t.reshape(1, -1, obs_t.shape[-1])
        action = self.agent.act(obs_t, deterministic=deterministic, rng=self._rng)
        action_np = action[0].cpu().numpy()
        return action_np[0] if single else action_np


def load_agent(path: str | Path, device: str = "cpu") -> LoadedAgent:
    """Load the agent of a run directory (or a ``checkpoint.pt`` file).

    Raises:
        UserError: no run there, or the checkpoint is corrupt.
    """
    torch_device = resolve_device(device)
    state = load_checkpoint(find_checkpoint(path), map_location=torch_device)
    if state.get("kind") != "agent-run":
        raise UserError(f"{path} is not an agent checkpoint: "
                        "pass a run directory of train_agent.py")
    config = state["config"]
    try:
        cls = agent_class_of(state["agent_kind"])
    except KeyError as error:
        raise UserError(f"{path}: {error.args[0]}; register its mode before loading it") \
            from None
    agent = cls(state["obs_dim"], state["act_dim"], state["action_low"], state["action_high"],
                (int(config["seed"]),), AgentConfiguration(**config["agent"]), torch_device)
    try:
        agent.load_state_dict(state["agent"])
    except (KeyError, RuntimeError) as error:
        raise UserError(f"checkpoint {path} does not match its configuration "
                        f"({str(error).splitlines()[0][:100]}): retrain the run") from None
    return LoadedAgent(agent, config, torch_device)
