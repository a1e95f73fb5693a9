"""D4RL normalised score: 0 is a random policy, 100 an expert one."""

from __future__ import annotations

import numpy as np

# (random return, expert return) from D4RL's reference scores.
D4RL_REFERENCE_RETURNS: dict[str, tuple[float, float]] = {
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "walker2d": (1.629008, 4592.3),
}


def normalized_score(family: str, episode_return: float | np.ndarray) -> float | np.ndarray:
    """``100 · (return − min) / (max − min)`` with D4RL's references for ``family``.

    Args:
        family: ``hopper``, ``halfcheetah`` or ``walker2d`` (see :class:`EnvSpec.family`).
        episode_return: one return or an array of returns.

    Returns:
        The normalised score, same shape as ``episode_return``; NaN for environments
        without D4RL references (e.g. ``Pendulum-v1``).
    """
    if family not in D4RL_REFERENCE_RETURNS:
        return np.full_like(np.asarray(episode_return, dtype=float), np.nan)[()]
    low, high = D4RL_REFERENCE_RETURNS[family]
    return 100.0 * (np.asarray(episode_return, dtype=float) - low) / (high - low)
