"""Termination functions against Gymnasium v5's own ``terminated``."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from offline_mbrl.envs.termination import (
    get_termination_fn,
    halfcheetah_termination,
    hopper_termination,
    no_termination,
    walker2d_termination,
)
from offline_mbrl.errors import UserError

# Per environment: rule, healthy z range, healthy angle range, and the ranges the perturbed
# start states are drawn from (wide enough to cross every bound).
ENVS = {
    "Hopper-v5": (hopper_termination, (0.7, math.inf), (-0.2, 0.2), (0.5, 1.5), (-0.4, 0.4)),
    "Walker2d-v5": (walker2d_termination, (0.8, 2.0), (-1.0, 1.0), (0.6, 2.2), (-1.4, 1.4)),
}


def _unclipped_obs(env: gym.Env) -> np.ndarray:
    """The observation without Gymnasium's ±10 velocity clipping."""
    return np.concatenate([env.data.qpos[1:], env.data.qvel])


def _random_state(
    env: gym.Env, rng: np.random.Generator, z_range: tuple, angle_range: tuple
) -> tuple[np.ndarray, np.ndarray]:
    """A start state around the healthy bounds, sometimes with a joint angle or a velocity
    near ±100 (the Hopper state-range bound)."""
    model = env.model
    qpos = env.init_qpos.copy()
    qpos[1] = rng.uniform(*z_range)
    qpos[2] = rng.uniform(*angle_range)
    qpos[3:] = rng.uniform(model.jnt_range[3:, 0] - 0.2, model.jnt_range[3:, 1] + 0.2)
    qvel = rng.normal(size=model.nv) * rng.choice([0.1, 1.0, 5.0, 40.0])
    u = rng.uniform()
    if u < 0.05:
        qpos[rng.integers(3, model.nq)] = rng.choice([-1, 1]) * rng.uniform(95, 105)
    elif u < 0.10:
        qvel[rng.integers(0, model.nv)] = rng.choice([-1, 1]) * rng.uniform(100, 300)
    return qpos, qvel


def _collect_transitions(gym_id: str, n: int, seed: int):
    """``n`` steps with random actions, from natural rollouts and from perturbed states.

    Returns next_obs [n, obs_dim], next_obs without velocity clipping, terminated [n], and
    qpos/qvel after each step.
    """
    _, _, _, z_range, angle_range = ENVS[gym_id]
    env = gym.make(gym_id).unwrapped
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    rows: list[tuple] = []
    continue_rollout = False
    for _ in range(n):
        if not continue_rollout:
            env.set_state(*_random_state(env, rng, z_range, angle_range))
        action = rng.uniform(-1.0, 1.0, size=env.action_space.shape)
        next_obs, _, terminated, _, _ = env.step(action)
        rows.append(
            (next_obs, _unclipped_obs(env), terminated, env.data.qpos.copy(), env.data.qvel.copy())
        )
        continue_rollout = not terminated and rng.uniform() < 0.8
    env.close()
    return tuple(np.array(column) for column in zip(*rows, strict=True))


@pytest.mark.parametrize("gym_id", sorted(ENVS))
def test_matches_gymnasium_on_transitions(gym_id: str) -> None:
    fn, z_bounds, angle_bounds, _, _ = ENVS[gym_id]
    next_obs, unclipped, terminated, qpos, qvel = _collect_transitions(gym_id, 3000, seed=0)
    n = len(terminated)
    dummy_obs = torch.zeros(n, next_obs.shape[1], dtype=torch.float64)
    dummy_action = torch.zeros(n, 3)

    # Both outcomes, and each cause, in quantity.
    assert terminated.sum() >= 500 and (~terminated).sum() >= 500
    z, angle = qpos[:, 1], qpos[:, 2]
    assert ((z <= z_bounds[0]) | (z >= z_bounds[1])).sum() >= 100
    assert ((angle <= angle_bounds[0]) | (angle >= angle_bounds[1])).sum() >= 100
    velocity_only = (np.abs(qvel) >= 100).any(axis=1)
    assert velocity_only.sum() >= 10

    # The rule applied to the true (unclipped) state is Gymnasium's rule, exactly.
    predicted = fn(dummy_obs, dummy_action, torch.from_numpy(unclipped)).numpy()
    np.testing.assert_array_equal(predicted, terminated)

    # On real observations the only disagreements are the documented ones: Gymnasium
    # terminates on |qvel| >= 100, which the ±10 clipped observation cannot show.
    predicted = fn(dummy_obs, dummy_action, torch.from_numpy(next_obs)).numpy()
    mismatch = predicted != terminated
    np.testing.assert_array_equal(predicted[~velocity_only], terminated[~velocity_only])
    assert (terminated[mismatch] & ~predicted[mismatch] & velocity_only[mismatch]).all()
    if gym_id == "Hopper-v5":
        assert mismatch.sum() > 0
    else:
        assert mismatch.sum() == 0  # Walker2d has no state-range check

    # Leading dims: the same transitions as [2, n/2, obs_dim].
    shaped = fn(None, None, torch.from_numpy(next_obs).reshape(2, n // 2, -1))
    assert shaped.shape == (2, n // 2) and shaped.dtype == torch.bool
    np.testing.assert_array_equal(shaped.reshape(-1).numpy(), predicted)


def _boundary_values(rng: np.random.Generator, bound: float, n: int) -> np.ndarray:
    """Values exactly on, one ulp either side of, and a little either side of ``bound``."""
    offsets = np.concatenate(
        [[0.0, 1e-12, -1e-12, 1e-6, -1e-6], rng.uniform(-0.05, 0.05, size=n - 5)]
    )
    values = bound + offsets
    values[1] = np.nextafter(bound, np.inf)
    values[2] = np.nextafter(bound, -np.inf)
    return values


@pytest.mark.parametrize("gym_id", sorted(ENVS))
def test_matches_is_healthy_on_boundary_states(gym_id: str) -> None:
    """Set states on and next to every bound and compare with ``env.is_healthy`` directly."""
    fn, z_bounds, angle_bounds, _, _ = ENVS[gym_id]
    env = gym.make(gym_id).unwrapped
    env.reset(seed=1)
    rng = np.random.default_rng(1)
    states = []
    for index, bound in [
        (1, z_bounds[0]),
        (1, z_bounds[1]),
        (2, angle_bounds[0]),
        (2, angle_bounds[1]),
    ]:
        if math.isinf(bound):
            continue  # Hopper's z < inf: covered on hand-made tensors
        for value in _boundary_values(rng, bound, 200):
            qpos, qvel = env.init_qpos.copy(), rng.normal(size=env.model.nv)
            qpos[index] = value
            states.append((qpos, qvel))
    # Hopper's state range on a joint angle and on a velocity.
    for value in _boundary_values(rng, 100.0, 100):
        for sign in (1.0, -1.0):
            qpos, qvel = env.init_qpos.copy(), rng.normal(size=env.model.nv)
            qpos[rng.integers(3, env.model.nq)] = sign * value
            states.append((qpos, qvel))
            qpos, qvel = env.init_qpos.copy(), rng.normal(size=env.model.nv)
            qvel[rng.integers(0, env.model.nv)] = sign * value
            states.append((qpos, qvel))

    obs, unclipped, healthy = [], [], []
    for qpos, qvel in states:
        env.set_state(qpos, qvel)
        obs.append(env._get_obs())
        unclipped.append(_unclipped_obs(env))
        healthy.append(env.is_healthy)
    env.close()
    obs, unclipped, healthy = np.array(obs), np.array(unclipped), np.array(healthy)
    assert healthy.sum() >= 300 and (~healthy).sum() >= 300

    predicted = fn(None, None, torch.from_numpy(unclipped)).numpy()
    np.testing.assert_array_equal(predicted, ~healthy)
    clipped_away = (np.abs(unclipped[:, -env.model.nv :]) >= 100).any(axis=1)
    predicted = fn(None, None, torch.from_numpy(obs)).numpy()
    np.testing.assert_array_equal(predicted[~clipped_away], ~healthy[~clipped_away])


def _hopper_obs(z: float = 1.25, angle: float = 0.0, rest: float = 0.0) -> list[float]:
    return [z, angle, *[rest] * 9]


def _walker_obs(z: float = 1.25, angle: float = 0.0) -> list[float]:
    return [z, angle, *[0.0] * 15]


def test_hopper_exact_bounds_are_strict() -> None:
    rows = [
        _hopper_obs(),  # healthy
        _hopper_obs(z=0.7),  # on the z bound
        _hopper_obs(z=0.7000000001),
        _hopper_obs(z=math.inf),  # z < inf is strict too
        _hopper_obs(z=1e300),
        _hopper_obs(angle=0.2),
        _hopper_obs(angle=-0.2),
        _hopper_obs(angle=0.1999999999),
        _hopper_obs(angle=-0.1999999999),
        _hopper_obs(rest=100.0),  # state range on qpos[3:] and qvel
        _hopper_obs(rest=-100.0),
        _hopper_obs(rest=99.99999999),
        _hopper_obs(z=math.nan),
    ]
    expected = [False, True, False, True, False, True, True, False, False, True, True, False, True]
    next_obs = torch.tensor(rows, dtype=torch.float64)
    out = hopper_termination(next_obs, torch.zeros(len(rows), 3), next_obs)
    assert out.dtype == torch.bool
    assert out.tolist() == expected

    one = torch.tensor(_hopper_obs(), dtype=torch.float64)
    single = hopper_termination(one, torch.zeros(3), one)
    assert single.shape == () and not bool(single)
    # One state-vector entry out of range is enough.
    state = torch.tensor(_hopper_obs(), dtype=torch.float64)
    state[7] = -100.0
    assert bool(hopper_termination(None, None, state))


def test_walker2d_exact_bounds_are_strict() -> None:
    rows = [
        _walker_obs(),
        _walker_obs(z=0.8),
        _walker_obs(z=2.0),
        _walker_obs(z=0.8000000001),
        _walker_obs(z=1.9999999999),
        _walker_obs(angle=1.0),
        _walker_obs(angle=-1.0),
        _walker_obs(angle=0.9999999999),
        _walker_obs(angle=-0.9999999999),
        _walker_obs(angle=math.nan),
    ]
    expected = [False, True, True, False, False, True, True, False, False, True]
    next_obs = torch.tensor(rows, dtype=torch.float64).reshape(2, 5, 17)
    out = walker2d_termination(None, None, next_obs)
    assert out.shape == (2, 5)
    assert out.reshape(-1).tolist() == expected
    # Walker2d has no state-range check.
    big = torch.tensor(_walker_obs(), dtype=torch.float64)
    big[2:] = 1e6
    assert not bool(walker2d_termination(None, None, big))


def test_float32_is_compared_by_exact_value() -> None:
    # float32(0.8) = 0.800000011920929 > 0.8 and float32(0.7) = 0.699999988079071 < 0.7.
    walker = torch.tensor([_walker_obs(z=0.8), _walker_obs(z=2.0)], dtype=torch.float32)
    assert walker2d_termination(None, None, walker).tolist() == [
        not (float(np.float32(0.8)) > 0.8),
        not (float(np.float32(2.0)) < 2.0),
    ]
    assert walker2d_termination(None, None, walker).tolist() == [False, True]
    hopper = torch.tensor(
        [_hopper_obs(z=0.7), _hopper_obs(angle=0.2), _hopper_obs(angle=-0.2)], dtype=torch.float32
    )
    assert hopper_termination(None, None, hopper).tolist() == [True, True, True]

    # Every float32 near each bound agrees with the float64 comparison of its value.
    for bound in (0.7, 0.8, 2.0, -0.2, 0.2, -1.0, 1.0, 100.0, -100.0):
        center = np.float32(bound)
        values = [center]
        for direction in (np.inf, -np.inf):
            value = center
            for _ in range(3):
                value = np.nextafter(value, np.float32(direction))
                values.append(value)
        values32 = torch.tensor(np.array(values, dtype=np.float32))
        for fn, column, builder in (
            (walker2d_termination, 0, _walker_obs),
            (walker2d_termination, 1, _walker_obs),
            (hopper_termination, 0, _hopper_obs),
            (hopper_termination, 1, _hopper_obs),
            (hopper_termination, 4, _hopper_obs),
        ):
            base32 = torch.tensor(builder(), dtype=torch.float32).repeat(len(values), 1)
            base32[:, column] = values32
            np.testing.assert_array_equal(
                fn(None, None, base32).numpy(), fn(None, None, base32.double()).numpy()
            )
    # Half precision goes through the exact float64 path.
    half = torch.tensor([_walker_obs(z=0.8)], dtype=torch.float16)
    assert walker2d_termination(None, None, half).tolist() == [not (float(np.float16(0.8)) > 0.8)]


def test_never_terminating_and_leading_dims() -> None:
    next_obs = torch.full((2, 3, 4, 17), 1e9)
    for fn in (halfcheetah_termination, no_termination):
        out = fn(next_obs, torch.zeros(2, 3, 4, 6), next_obs)
        assert out.shape == (2, 3, 4) and out.dtype == torch.bool and not out.any()
    hopper = torch.zeros(2, 3, 4, 11)
    assert hopper_termination(None, None, hopper).shape == (2, 3, 4)
    assert hopper_termination(None, None, hopper).all()  # z = 0 is below 0.7


def test_wrong_obs_dim_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"\[\.\.\., 11\]"):
        hopper_termination(None, None, torch.zeros(4, 17))
    with pytest.raises(ValueError, match=r"\[\.\.\., 17\]"):
        walker2d_termination(None, None, torch.zeros(4, 11))


def test_get_termination_fn(recwarn: pytest.WarningsRecorder) -> None:
    assert get_termination_fn("hopper-medium-replay-v2") is hopper_termination
    assert get_termination_fn("Hopper-v5") is hopper_termination
    assert get_termination_fn("walker2d-expert-v2") is walker2d_termination
    assert get_termination_fn("halfcheetah-random-v2") is halfcheetah_termination
    assert get_termination_fn("Pendulum-v1") is no_termination
    assert len(recwarn) == 0
    with pytest.warns(UserWarning, match="Ant-v5"):
        assert get_termination_fn("Ant-v5") is no_termination
    with pytest.raises(UserError, match="unknown environment"):
        get_termination_fn("no-such-env-v0")
