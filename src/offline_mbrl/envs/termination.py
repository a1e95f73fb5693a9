"""Batched termination functions for rollouts in a learned model.

Each function has the signature ``fn(obs, action, next_obs) -> terminated`` with
``obs``/``next_obs`` of shape ``[..., obs_dim]`` and ``action`` of shape ``[..., act_dim]``
(any leading dims, e.g. ``[P, E, B, obs_dim]``); ``terminated`` is a ``bool`` tensor with the
leading dims, on the device of ``next_obs``. Only ``next_obs`` is used; the other arguments
keep one signature for every environment.

The rules are Gymnasium v5's ``is_healthy`` applied to ``next_obs`` (observations exclude the
x position, so ``next_obs[..., 0]`` is the torso height ``qpos[1]`` and ``next_obs[..., 1]``
the torso angle ``qpos[2]``):

* Hopper-v5: terminated unless ``0.7 < z < inf``, ``-0.2 < angle < 0.2`` and every entry of
  ``state_vector()[2:]`` (= ``qpos[2:]`` and ``qvel``, i.e. ``next_obs[..., 1:]``) lies in
  ``(-100, 100)``.
* Walker2d-v5: terminated unless ``0.8 < z < 2`` and ``-1 < angle < 1``.
* HalfCheetah-v5 (and e.g. Pendulum-v1): never terminates.

All inequalities are strict, as in Gymnasium, so a value exactly on a bound terminates; NaN
terminates as well (every comparison with NaN is false, in Gymnasium too).

Velocity clipping: Gymnasium's observation clips ``qvel`` to ``[-10, 10]`` but ``is_healthy``
checks the unclipped ``qvel`` against ``(-100, 100)``. On real environment observations the
velocity part of Hopper's state-range check therefore never fires: a transition that Gymnasium
terminates only because some ``|qvel| >= 100`` is reported as not terminated here (the
observation shows ``±10``). Positions are not clipped, so the check on ``qpos[2:]`` is exact.
Model predictions are not clipped either, so a predicted ``|velocity| >= 100`` does terminate.

Comparisons are exact on the values given, whatever their dtype: a ``float32`` input is
compared with the bound rounded outwards to the nearest ``float32``, which gives the same
answer as comparing its exact value with the ``float64`` bound (``float32(0.8)`` is
``0.800000011920929 > 0.8``, hence healthy for Walker2d's lower height bound).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import torch

from offline_mbrl.envs.registry import get_env_spec

TerminationFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

# Gymnasium v5 defaults (hopper_v5.py / walker2d_v5.py).
HOPPER_OBS_DIM = 11
HOPPER_HEALTHY_STATE_RANGE = (-100.0, 100.0)
HOPPER_HEALTHY_Z_RANGE = (0.7, math.inf)
HOPPER_HEALTHY_ANGLE_RANGE = (-0.2, 0.2)
WALKER2D_OBS_DIM = 17
WALKER2D_HEALTHY_Z_RANGE = (0.8, 2.0)
WALKER2D_HEALTHY_ANGLE_RANGE = (-1.0, 1.0)

# Gymnasium ids (before the version suffix) known to have no termination condition; any
# other environment without a rule of its own gets a warning, not a silent "never".
_NEVER_TERMINATING = frozenset({"Pendulum", "Swimmer", "Reacher", "Pusher", "HumanoidStandup"})


def _float32_bounds(low: float, high: float) -> tuple[float, float]:
    """``(low', high')`` representable in float32 with ``x > low' ⇔ x > low`` and
    ``x < high' ⇔ x < high`` for every float32 ``x``: round ``low`` down and ``high`` up.
    """
    low32 = np.float32(low)
    if float(low32) > low:
        low32 = np.nextafter(low32, np.float32(-np.inf))
    high32 = np.float32(high)
    if float(high32) < high:
        high32 = np.nextafter(high32, np.float32(np.inf))
    return float(low32), float(high32)


def _strictly_within(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``low < x < high`` elementwise, exact for the values in ``x`` (see module docstring)."""
    if x.dtype == torch.float64:
        return (x > low) & (x < high)
    if x.dtype != torch.float32:
        # float16/bfloat16 and integers convert exactly to float64 (integers up to 2**53).
        return _strictly_within(x.to(torch.float64), low, high)
    low32, high32 = _float32_bounds(low, high)
    return (x > low32) & (x < high32)


def _check_obs_dim(name: str, next_obs: torch.Tensor, obs_dim: int) -> None:
    if next_obs.ndim == 0 or next_obs.shape[-1] != obs_dim:
        raise ValueError(
            f"{name} expects next_obs of shape [..., {obs_dim}], got {tuple(next_obs.shape)}"
        )


def hopper_termination(
    obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor
) -> torch.Tensor:
    """Hopper-v5's termination rule on ``next_obs`` ``[..., 11]`` -> ``[...]`` bool.

    See the module docstring for the rule and for the consequence of velocity clipping.
    """
    _check_obs_dim("hopper_termination", next_obs, HOPPER_OBS_DIM)
    z, angle = next_obs[..., 0], next_obs[..., 1]
    healthy_state = _strictly_within(next_obs[..., 1:], *HOPPER_HEALTHY_STATE_RANGE).all(dim=-1)
    healthy = (
        healthy_state
        & _strictly_within(z, *HOPPER_HEALTHY_Z_RANGE)
        & _strictly_within(angle, *HOPPER_HEALTHY_ANGLE_RANGE)
    )
    return ~healthy


def walker2d_termination(
    obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor
) -> torch.Tensor:
    """Walker2d-v5's termination rule on ``next_obs`` ``[..., 17]`` -> ``[...]`` bool."""
    _check_obs_dim("walker2d_termination", next_obs, WALKER2D_OBS_DIM)
    z, angle = next_obs[..., 0], next_obs[..., 1]
    healthy = _strictly_within(z, *WALKER2D_HEALTHY_Z_RANGE) & _strictly_within(
        angle, *WALKER2D_HEALTHY_ANGLE_RANGE
    )
    return ~healthy


def no_termination(obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    """Never terminates: all-``False`` ``[...]`` for ``next_obs`` ``[..., obs_dim]``."""
    return torch.zeros(next_obs.shape[:-1], dtype=torch.bool, device=next_obs.device)


def halfcheetah_termination(
    obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor
) -> torch.Tensor:
    """HalfCheetah-v5 never terminates (episodes end only by the time limit)."""
    return no_termination(obs, action, next_obs)


_BY_FAMILY: dict[str, TerminationFn] = {
    "hopper": hopper_termination,
    "walker2d": walker2d_termination,
    "halfcheetah": halfcheetah_termination,
}


def get_termination_fn(env_name: str) -> TerminationFn:
    """The termination function for a D4RL name or Gymnasium id.

    Hopper and Walker2d get their v5 rules, HalfCheetah and every other environment
    (Pendulum-v1, ...) never terminate. An environment not known to be free of termination
    conditions (e.g. Ant-v5) gets :func:`no_termination` with a warning.

    Raises:
        UserError: the name is unknown (from :func:`get_env_spec`).
    """
    spec = get_env_spec(env_name)
    if spec.family in _BY_FAMILY:
        return _BY_FAMILY[spec.family]
    if spec.gym_id.split("-")[0] not in _NEVER_TERMINATING:
        warnings.warn(
            f"no termination rule for {spec.gym_id}: rollouts in the model will never terminate",
            stacklevel=2,
        )
    return no_termination
