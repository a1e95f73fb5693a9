from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from offline_mbrl.data import OfflineDataset, dataset_info, load_d4rl_hdf5, write_d4rl_hdf5
from offline_mbrl.data import d4rl as d4rl_module
from offline_mbrl.data.d4rl import derive_transitions, env_dims, episode_segments
from offline_mbrl.errors import UserError


def test_loads_every_key(tmp_path: Path, data_make_file) -> None:
    path = tmp_path / "hopper.hdf5"
    raw = data_make_file(path, rows=40)
    ds = load_d4rl_hdf5(path, env_name="hopper-medium-v2")
    assert len(ds) == 40 and ds.name == "hopper-medium-v2"
    for key in ("observations", "actions", "rewards", "next_observations"):
        assert getattr(ds, key).dtype == np.float32
        np.testing.assert_array_equal(getattr(ds, key), raw[key])
    assert ds.terminals.dtype == bool and ds.timeouts.dtype == bool
    np.testing.assert_array_equal(ds.terminals, raw["terminals"])
    np.testing.assert_array_equal(ds.timeouts, raw["timeouts"])
    np.testing.assert_array_equal(ds.infos["qpos"], raw["infos/qpos"])
    assert ds.metadata["algorithm"] == "SAC"
    assert ds.metadata["iteration"] == 7
    np.testing.assert_array_equal(ds.metadata["policy/fc0/weight"], np.ones((2, 3)))


def test_rewards_stored_as_column(tmp_path: Path, data_make_file) -> None:
    path = tmp_path / "f.hdf5"
    raw = data_make_file(path, rows=10)
    with h5py.File(path, "a") as f:
        del f["rewards"]
        f.create_dataset("rewards", data=raw["rewards"][:, None])
    np.testing.assert_array_equal(load_d4rl_hdf5(path).rewards, raw["rewards"])


@pytest.mark.parametrize("key", ["observations", "actions", "rewards", "terminals", "timeouts"])
def test_missing_key(tmp_path: Path, data_make_file, key: str) -> None:
    path = tmp_path / "broken.hdf5"
    data_make_file(path)
    with h5py.File(path, "a") as f:
        del f[key]
    with pytest.raises(UserError, match=f"broken.hdf5: missing key '{key}'") as err:
        load_d4rl_hdf5(path)
    assert "\n" not in str(err.value)


def test_unequal_lengths(tmp_path: Path, data_make_file) -> None:
    path = tmp_path / "short.hdf5"
    raw = data_make_file(path, rows=20)
    with h5py.File(path, "a") as f:
        del f["actions"]
        f.create_dataset("actions", data=raw["actions"][:15])
    with pytest.raises(UserError, match=r"short.hdf5: 'actions' has 15 rows but 'observations' "
                                        r"has 20"):
        load_d4rl_hdf5(path)


def test_unequal_info_length(tmp_path: Path, data_make_file) -> None:
    path = tmp_path / "info.hdf5"
    data_make_file(path, rows=20)
    with h5py.File(path, "a") as f:
        del f["infos/qpos"]
        f.create_dataset("infos/qpos", data=np.zeros((19, 6)))
    with pytest.raises(UserError, match=r"info.hdf5: 'infos/qpos' has 19 rows"):
        load_d4rl_hdf5(path)


@pytest.mark.parametrize("key,value", [("observations", np.nan), ("rewards", np.inf),
                                       ("next_observations", -np.inf), ("actions", np.nan)])
def test_non_finite(tmp_path: Path, data_make_file, key: str, value: float) -> None:
    path = tmp_path / "nan.hdf5"
    raw = data_make_file(path, rows=20)
    bad = raw[key].copy()
    bad[7] = value
    with h5py.File(path, "a") as f:
        del f[key]
        f.create_dataset(key, data=bad)
    with pytest.raises(UserError, match=rf"nan.hdf5: '{key}' has non-finite values "
                                        r"\(first at row 7\)"):
        load_d4rl_hdf5(path)


def test_wrong_observation_dim(tmp_path: Path, data_make_file) -> None:
    path = tmp_path / "cheetah.hdf5"
    data_make_file(path, obs_dim=17, act_dim=6)
    with pytest.raises(UserError, match=r"cheetah.hdf5: 'observations' have 17 dimensions but "
                                        r"Hopper-v4 \(for hopper-medium-v2\) has 11"):
        load_d4rl_hdf5(path, env_name="hopper-medium-v2")
    # The right environment accepts it.
    assert load_d4rl_hdf5(path, env_name="halfcheetah-medium-v2").obs_dim == 17


def test_wrong_action_dim(tmp_path: Path, data_make_file) -> None:
    path = tmp_path / "act.hdf5"
    data_make_file(path, obs_dim=11, act_dim=4)
    with pytest.raises(UserError, match=r"act.hdf5: 'actions' have 4 dimensions"):
        load_d4rl_hdf5(path, env_name="hopper-random-v2")


def test_env_dims_are_cached(tmp_path: Path, data_make_file) -> None:
    path = tmp_path / "f.hdf5"
    data_make_file(path)
    load_d4rl_hdf5(path, env_name="hopper-medium-v2")
    misses = env_dims.cache_info().misses
    load_d4rl_hdf5(path, env_name="hopper-expert-v2")
    assert env_dims.cache_info().misses == misses
    assert env_dims("Hopper-v5") == (11, 3)


def test_not_a_file_and_not_hdf5(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_d4rl_hdf5(tmp_path / "absent.hdf5")
    junk = tmp_path / "junk.hdf5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(UserError, match=r"junk\.hdf5 is not a readable HDF5 file"):
        load_d4rl_hdf5(junk)


def _two_episode_file(path: Path, terminal_and_timeout: bool = False) -> np.ndarray:
    """8 rows: episode A = rows 0-2 (terminal at 2), episode B = rows 3-5 (timeout at 5),
    episode C = rows 6-7 (cut off, no flag). Observation of row i is [i, 10 i]."""
    obs = np.stack([np.arange(8), 10 * np.arange(8)], axis=1).astype(np.float32)
    terminals = np.zeros(8, dtype=bool)
    timeouts = np.zeros(8, dtype=bool)
    terminals[2] = True
    timeouts[5] = True
    if terminal_and_timeout:
        timeouts[2] = True
    with h5py.File(path, "w") as f:
        f["observations"] = obs
        f["actions"] = np.arange(8, dtype=np.float32)[:, None] / 10
        f["rewards"] = np.arange(8, dtype=np.float32) + 100
        f["terminals"] = terminals
        f["timeouts"] = timeouts
        f["infos/qpos"] = np.arange(8, dtype=np.float64)[:, None] * 2
    return obs


@pytest.mark.parametrize("terminal_and_timeout", [False, True])
def test_derived_transitions_exact(tmp_path: Path, terminal_and_timeout: bool) -> None:
    path = tmp_path / "old.hdf5"
    obs = _two_episode_file(path, terminal_and_timeout)
    ds = load_d4rl_hdf5(path)
    # Row 5 (timeout: obs[6] starts episode C) and row 7 (nothing follows) are dropped;
    # row 2 (terminal) is kept, with next_obs = obs[3] as d4rl's qlearning_dataset does.
    keep = [0, 1, 2, 3, 4, 6]
    np.testing.assert_array_equal(ds.observations, obs[keep])
    np.testing.assert_array_equal(ds.next_observations, obs[[1, 2, 3, 4, 5, 7]])
    np.testing.assert_array_equal(ds.rewards, np.array(keep, dtype=np.float32) + 100)
    np.testing.assert_array_equal(ds.actions[:, 0], np.array(keep, dtype=np.float32) / 10)
    np.testing.assert_array_equal(ds.terminals, [False, False, True, False, False, False])
    np.testing.assert_array_equal(ds.timeouts,
                                  [False, False, terminal_and_timeout, False, False, False])
    np.testing.assert_array_equal(ds.infos["qpos"][:, 0], np.array(keep) * 2.0)
    assert ds.metadata["next_observations_derived"] is True
    np.testing.assert_array_equal(ds.metadata["reset_next_observation_rows"], [2])


def test_derive_transitions_edge_cases() -> None:
    keep, nxt = derive_transitions(np.zeros((0, 3)), np.zeros(0, bool), np.zeros(0, bool))
    assert keep.shape == (0,) and nxt.shape == (0, 3)
    obs = np.arange(3, dtype=np.float32)[:, None]
    keep, nxt = derive_transitions(obs, np.zeros(3, bool), np.array([False, True, False]))
    np.testing.assert_array_equal(keep, [0])
    np.testing.assert_array_equal(nxt, [[1.0]])


def _dataset(rows: int = 30, seed: int = 0) -> OfflineDataset:
    rng = np.random.default_rng(seed)
    terminals = np.zeros(rows, dtype=bool)
    terminals[9] = True
    timeouts = np.zeros(rows, dtype=bool)
    timeouts[19] = True
    return OfflineDataset(
        observations=rng.normal(size=(rows, 11)).astype(np.float32),
        actions=rng.uniform(-1, 1, size=(rows, 3)).astype(np.float32),
        rewards=rng.normal(size=rows).astype(np.float32),
        next_observations=rng.normal(size=(rows, 11)).astype(np.float32),
        terminals=terminals,
        timeouts=timeouts,
        infos={"qpos": rng.normal(size=(rows, 6)), "qvel": rng.normal(size=(rows, 6))},
        metadata={"protocol": "d4rl-random", "seed": 3, "ret": 1.5, "tags": ["a", "b"],
                  "policy": {"hidden": 256}, "flag": True},
        name="hopper-random-v2",
    )


def test_write_then_load_round_trip(tmp_path: Path) -> None:
    ds = _dataset()
    path = write_d4rl_hdf5(ds, tmp_path / "sub" / "out.hdf5")
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.hdf5"]
    with h5py.File(path, "r") as f:
        assert {"observations", "actions", "rewards", "next_observations", "terminals",
                "timeouts", "infos", "metadata"} <= set(f.keys())
        assert f["metadata/protocol"][()] == b"d4rl-random"
    back = load_d4rl_hdf5(path, env_name="hopper-random-v2")
    assert back.content_hash() == ds.content_hash()
    np.testing.assert_array_equal(back.timeouts, ds.timeouts)
    for key in ("qpos", "qvel"):
        np.testing.assert_array_equal(back.infos[key], ds.infos[key])
        assert back.infos[key].dtype == np.float64
    assert back.metadata == {"protocol": "d4rl-random", "seed": 3, "ret": 1.5,
                             "tags": ["a", "b"], "policy/hidden": 256, "flag": True}


def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "out.hdf5"
    path.write_bytes(b"previous content")

    def failing_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(d4rl_module.os, "replace", failing_replace)
    with pytest.raises(UserError, match="disk full"):
        write_d4rl_hdf5(_dataset(), path)
    assert path.read_bytes() == b"previous content"
    assert [p.name for p in tmp_path.iterdir()] == ["out.hdf5"]


def test_episode_segments() -> None:
    ds = _dataset(rows=30)
    # Chain rows inside episodes so that only the flags split them...
    ds.next_observations[:-1] = ds.observations[1:]
    assert episode_segments(ds) == [(0, 10, True), (10, 20, True), (20, 30, False)]
    # ...and, when asked, a row that does not continue its predecessor starts a new episode.
    ds.next_observations[24] += 1
    assert episode_segments(ds) == [(0, 10, True), (10, 20, True), (20, 30, False)]
    assert episode_segments(ds, split_on_discontinuity=True) == [
        (0, 10, True), (10, 20, True), (20, 25, False), (25, 30, False)]


def test_dataset_info_exact() -> None:
    ds = _dataset(rows=30)
    ds.rewards[:] = np.arange(30, dtype=np.float32)
    ds.observations[:] = 0.0
    ds.observations[4, 2] = -2.0
    ds.observations[17, 2] = 5.0
    info = dataset_info(ds)
    assert info["transitions"] == 30 and info["episodes"] == 3
    assert info["complete_episodes"] == 2  # the last 10 rows have no end flag
    returns = np.array([sum(range(10)), sum(range(10, 20))], dtype=np.float64)  # 45, 145
    assert info["return_mean"] == pytest.approx(95.0)
    assert info["return_std"] == pytest.approx(50.0)
    assert (info["return_min"], info["return_max"]) == (45.0, 145.0)
    low, high = -20.272305, 3234.3
    assert info["score_mean"] == pytest.approx(100 * (returns.mean() - low) / (high - low))
    assert info["score_max"] == pytest.approx(100 * (145.0 - low) / (high - low))
    assert info["terminals"] == 1 and info["timeouts"] == 1
    assert (info["obs_dim"], info["act_dim"]) == (11, 3)
    assert info["obs_min"][2] == -2.0 and info["obs_max"][2] == 5.0 and info["obs_max"][0] == 0
    np.testing.assert_allclose(info["action_min"], ds.actions.min(axis=0))
    assert info["metadata"]["protocol"] == "d4rl-random" and "policy" not in info["metadata"]
    # Without D4RL references there is no normalised score.
    ds.name = "Pendulum-v1"
    ds.metadata = {}
    assert dataset_info(ds)["score_mean"] is None
    assert dataset_info(ds, env_name="walker2d-medium-v2")["score_mean"] is not None
