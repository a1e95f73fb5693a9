from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from offline_mbrl.data import load_d4rl_hdf5, write_d4rl_hdf5
from offline_mbrl.data.collect import COLLECTORS, collect, collect_random, rollout_policy
from offline_mbrl.errors import UserError


@pytest.fixture(scope="module")
def data_hopper_random():
    return collect_random("hopper-random-v2", size=300, seed=0)


def test_random_hopper_rows(data_hopper_random) -> None:
    ds = data_hopper_random
    assert len(ds) == 300 and ds.obs_dim == 11 and ds.act_dim == 3
    assert ds.observations.dtype == np.float32 and ds.terminals.dtype == bool
    assert np.all(np.abs(ds.actions) <= 1.0) and ds.actions.std() > 0.4
    # Random Hopper falls within ~20 steps: several terminated episodes, no time-outs.
    assert ds.terminals.sum() >= 5 and not ds.timeouts.any()
    # Within an episode each row continues the previous one.
    ends = ds.terminals | ds.timeouts
    chained = ~ends[:-1]
    np.testing.assert_array_equal(ds.next_observations[:-1][chained], ds.observations[1:][chained])
    # After a termination the next row starts near Hopper's initial pose (height 1.25).
    starts = np.flatnonzero(ends[:-1]) + 1
    np.testing.assert_allclose(ds.infos["qpos"][starts, 1], 1.25, atol=0.01)
    # qpos/qvel describe the state of observations[i]: Hopper observes qpos[1:] and clip(qvel).
    assert ds.infos["qpos"].shape == (300, 6) and ds.infos["qvel"].shape == (300, 6)
    np.testing.assert_allclose(ds.observations[:, :5], ds.infos["qpos"][:, 1:], rtol=1e-6,
                               atol=1e-6)
    np.testing.assert_allclose(ds.observations[:, 5:], np.clip(ds.infos["qvel"], -10, 10),
                               rtol=1e-6, atol=1e-6)


def test_metadata(data_hopper_random) -> None:
    meta = data_hopper_random.metadata
    assert meta["protocol"] == "d4rl-random" and meta["env_id"] == "Hopper-v4"
    assert meta["seed"] == 0 and meta["size"] == 300 and meta["max_episode_steps"] == 1000
    assert isinstance(meta["gymnasium_version"], str) and isinstance(meta["mujoco_version"], str)
    ds = data_hopper_random
    ends = np.flatnonzero(ds.terminals | ds.timeouts)
    returns = [ds.rewards[a + 1:b + 1].sum(dtype=np.float64)
               for a, b in zip(np.concatenate(([-1], ends[:-1])), ends, strict=True)]
    assert meta["policy_episodes"] == len(returns)
    assert meta["policy_return_mean"] == pytest.approx(np.mean(returns), rel=1e-5)
    assert meta["policy_return_max"] == pytest.approx(np.max(returns), rel=1e-5)


def test_deterministic_in_seed(data_hopper_random) -> None:
    again = collect_random("hopper-random-v2", size=300, seed=0)
    assert again.content_hash() == data_hopper_random.content_hash()
    np.testing.assert_array_equal(again.infos["qpos"], data_hopper_random.infos["qpos"])
    other = collect_random("hopper-random-v2", size=300, seed=1)
    assert other.content_hash() != data_hopper_random.content_hash()


def test_file_is_accepted_by_the_loader(tmp_path: Path, data_hopper_random) -> None:
    path = write_d4rl_hdf5(data_hopper_random, tmp_path / "hopper-random-v2.hdf5")
    back = load_d4rl_hdf5(path, env_name="hopper-random-v2")
    assert back.content_hash() == data_hopper_random.content_hash()
    np.testing.assert_array_equal(back.timeouts, data_hopper_random.timeouts)
    np.testing.assert_array_equal(back.infos["qvel"], data_hopper_random.infos["qvel"])
    assert back.metadata["protocol"] == "d4rl-random"


def test_time_limit_sets_timeouts() -> None:
    calls: list[tuple[int, ...]] = []

    def zero_policy(obs: np.ndarray) -> np.ndarray:
        calls.append(obs.shape)
        return np.zeros((obs.shape[0], 6), dtype=np.float32)

    seen: list[int] = []
    ds = rollout_policy("halfcheetah-random-v2", zero_policy, size=50, seed=3,
                        protocol="test-zero", max_episode_steps=20, progress=seen.append)
    assert set(calls) == {(1, 17)}
    np.testing.assert_array_equal(np.flatnonzero(ds.timeouts), [19, 39])
    assert not ds.terminals.any() and not ds.actions.any()
    assert ds.metadata["protocol"] == "test-zero" and ds.metadata["policy_episodes"] == 2
    assert seen == [50]
    # The row after a time-out starts a new episode (HalfCheetah resets near qpos = 0).
    assert np.abs(ds.infos["qpos"][20]).max() < 0.2


def test_policy_actions_are_clipped_and_checked() -> None:
    ds = rollout_policy("hopper-v2", lambda obs: np.full((1, 3), 5.0), size=5, seed=0,
                        protocol="test")
    np.testing.assert_array_equal(ds.actions, np.ones((5, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"expected \(1, 3\)"):
        rollout_policy("hopper-v2", lambda obs: np.zeros(3), size=5, seed=0, protocol="test")


def test_collect_dispatch() -> None:
    assert COLLECTORS["random"] is collect_random
    assert len(collect("walker2d-random-v2", 10, 0)) == 10
    assert set(COLLECTORS) == {"random", "medium", "expert", "medium-replay", "medium-expert"}
    with pytest.raises(UserError, match="names an environment, not a dataset"):
        collect("hopper-v2", 10, 0)
    with pytest.raises(UserError, match="at least 1"):
        collect_random("hopper-random-v2", 0, 0)
