"""The in-memory form of an offline dataset: D4RL's layout as torch-ready numpy arrays."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np


@dataclass
class OfflineDataset:
    """Transitions ``(obs, action, reward, next_obs, terminal, timeout)``, one row each.

    Attributes:
        observations: ``[N, obs_dim]`` float32.
        actions: ``[N, act_dim]`` float32.
        rewards: ``[N]`` float32.
        next_observations: ``[N, obs_dim]`` float32.
        terminals: ``[N]`` bool, true environment termination (no bootstrapping).
        timeouts: ``[N]`` bool, episode cut by the time limit (bootstrapping allowed).
        infos: optional extra per-row arrays (``qpos``, ``qvel``, ...), length ``N``.
        metadata: free-form attributes (protocol, env id, versions, seed, ...).
        name: dataset name or file it came from, for messages.
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    infos: dict[str, np.ndarray] = field(default_factory=dict)
    metadata: dict[str, object] = field(default_factory=dict)
    name: str = ""

    def __len__(self) -> int:
        return int(self.observations.shape[0])

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.actions.shape[1])

    def content_hash(self) -> str:
        """A short SHA-256 of the transition arrays, used to match saved models to data."""
        digest = hashlib.sha256()
        for array in (self.observations, self.actions, self.rewards, self.next_observations,
                      self.terminals):
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()[:16]
