"""The state of an environment's episode in progress, as checkpoint-safe values.

Online training stops and resumes between epochs, in the middle of episodes. A resumed run
must continue those episodes, not start new ones: this module reads and restores what a
Gymnasium environment's next steps and resets depend on.

* MuJoCo environments: ``qpos``, ``qvel`` and the simulation time;
* classic-control environments with a ``state`` array (Pendulum, ...): that array;
* every environment: the steps elapsed under its time limit and its random generator
  (which draws the initial states of later episodes).

An environment with none of these (an unknown custom one) restarts its episode on resume:
:func:`episode_state` returns ``None`` for it, and the caller resets it instead.
"""

from __future__ import annotations

import json
from typing import Any

import gymnasium as gym
import numpy as np
import torch


def _time_limit(env: Any) -> Any:
    while env is not None:
        if isinstance(env, gym.wrappers.TimeLimit):
            return env
        env = getattr(env, "env", None)
    return None


def episode_state(env: gym.Env) -> dict[str, Any] | None:
    """What the next steps of ``env``'s current episode depend on, or ``None`` if unknown."""
    core: Any = env.unwrapped
    state: dict[str, Any] = {}
    data = getattr(core, "data", None)
    if data is not None and hasattr(core, "set_state"):
        state["qpos"] = torch.as_tensor(np.array(data.qpos, dtype=np.float64))
        state["qvel"] = torch.as_tensor(np.array(data.qvel, dtype=np.float64))
        state["time"] = float(data.time)
    elif isinstance(getattr(core, "state", None), np.ndarray):
        state["state"] = torch.as_tensor(np.array(core.state, dtype=np.float64))
    else:
        return None
    limit = _time_limit(env)
    state["elapsed_steps"] = int(limit._elapsed_steps or 0) if limit is not None else 0
    # JSON, because the PCG64 state holds integers beyond 64 bits.
    state["np_random"] = json.dumps(core.np_random.bit_generator.state)
    return state


def restore_episode(env: gym.Env, state: dict[str, Any]) -> None:
    """Put ``env`` (already reset once) back into the episode ``state`` describes."""
    core: Any = env.unwrapped
    if "qpos" in state:
        core.set_state(state["qpos"].numpy(), state["qvel"].numpy())
        core.data.time = state["time"]
    else:
        core.state = state["state"].numpy().copy()
    limit = _time_limit(env)
    if limit is not None:
        limit._elapsed_steps = state["elapsed_steps"]
    core.np_random.bit_generator.state = json.loads(state["np_random"])
