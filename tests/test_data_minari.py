from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from offline_mbrl.data import OfflineDataset
from offline_mbrl.data.minari_io import (
    default_minari_id,
    export_minari,
    import_minari,
    load_minari,
    local_minari_ids,
)
from offline_mbrl.errors import UserError

minari = pytest.importorskip("minari")


def _chained_dataset(rows: int = 45, seed: int = 0) -> OfflineDataset:
    """Hopper-shaped rows: episode ends at 9 (terminal) and 24 (timeout), a partial tail."""
    rng = np.random.default_rng(seed)
    states = rng.normal(size=(rows + 1, 11)).astype(np.float32)
    observations, next_observations = states[:-1].copy(), states[1:].copy()
    terminals = np.zeros(rows, dtype=bool)
    timeouts = np.zeros(rows, dtype=bool)
    terminals[9] = True
    timeouts[24] = True
    for end in (9, 24):
        next_observations[end] = rng.normal(size=11)
    return OfflineDataset(
        observations=observations,
        actions=rng.uniform(-1, 1, size=(rows, 3)).astype(np.float32),
        rewards=rng.normal(size=rows).astype(np.float32),
        next_observations=next_observations,
        terminals=terminals,
        timeouts=timeouts,
        infos={"qpos": rng.normal(size=(rows, 6)), "qvel": rng.normal(size=(rows, 6))},
        metadata={"protocol": "d4rl-random", "seed": 4, "big": np.zeros(3)},
        name="hopper-random-v2",
    )


def _assert_same(a: OfflineDataset, b: OfflineDataset) -> None:
    for key in ("observations", "actions", "rewards", "next_observations", "terminals",
                "timeouts"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)
        assert getattr(a, key).dtype == getattr(b, key).dtype, key
    assert a.infos.keys() == b.infos.keys()
    for key in a.infos:
        np.testing.assert_array_equal(a.infos[key], b.infos[key])


def test_round_trip(data_env) -> None:
    ds = _chained_dataset()
    path = export_minari(ds, "test/hopper/random-v0", env_id="hopper-random-v2")
    assert path == data_env["minari"] / "test/hopper/random-v0"
    assert (path / "data" / "main_data.hdf5").is_file()

    # Minari's own reader sees the episodes with n + 1 observations each.
    native = minari.load_dataset("test/hopper/random-v0", download=False)
    assert native.total_episodes == 3 and native.total_steps == 45
    episodes = list(native.iterate_episodes())
    assert [len(e) for e in episodes] == [10, 15, 20]
    np.testing.assert_array_equal(episodes[1].observations[:15], ds.observations[10:25])
    np.testing.assert_array_equal(episodes[1].observations[15], ds.next_observations[24])
    np.testing.assert_array_equal(episodes[0].terminations, ds.terminals[:10])
    np.testing.assert_array_equal(episodes[1].truncations, ds.timeouts[10:25])
    np.testing.assert_array_equal(episodes[2].rewards, ds.rewards[25:])
    assert native.spec.env_spec is not None and native.spec.env_spec.id == "Hopper-v4"

    back = load_minari("test/hopper/random-v0")
    _assert_same(ds, back)
    assert back.name == "minari:test/hopper/random-v0"
    assert back.metadata["protocol"] == "d4rl-random" and back.metadata["seed"] == 4
    assert "big" not in back.metadata  # arrays do not go into Minari's JSON metadata
    assert back.metadata["env_id"] == "Hopper-v4"
    assert local_minari_ids() == ["test/hopper/random-v0"]


def test_rows_that_do_not_chain_become_episodes(data_env) -> None:
    ds = _chained_dataset()
    ds.next_observations[30] += 1.0  # an unflagged boundary, as in some D4RL files
    export_minari(ds, "test/gap-v0")
    native = minari.load_dataset("test/gap-v0", download=False)
    assert [len(e) for e in native.iterate_episodes()] == [10, 15, 6, 14]
    assert native.spec.env_spec is not None  # taken from the dataset's name
    _assert_same(ds, load_minari("minari:test/gap-v0"))


def test_without_environment(data_env) -> None:
    ds = _chained_dataset()
    ds.name = "custom"
    export_minari(ds, "test/custom-v1")
    native = minari.load_dataset("test/custom-v1", download=False)
    assert native.spec.env_spec is None
    assert native.observation_space.shape == (11,)
    _assert_same(ds, load_minari("test/custom-v1"))


def test_errors(data_env) -> None:
    ds = _chained_dataset()
    export_minari(ds, "test/dup-v0")
    with pytest.raises(UserError, match="'test/dup-v0' already exists"):
        export_minari(ds, "test/dup-v0")
    with pytest.raises(UserError, match="is not a Minari dataset id"):
        export_minari(ds, "no version")
    with pytest.raises(UserError, match=r"'nothing/here-v0' is not stored under .*minari-root"):
        load_minari("nothing/here-v0")
    with pytest.raises(UserError, match="dims 11/3 but HalfCheetah-v4 has 17/6"):
        export_minari(ds, "test/wrong-v0", env_id="halfcheetah-random-v2")


def test_default_id() -> None:
    assert default_minari_id("hopper-medium-replay-v2") == "ombrl/hopper/medium-replay-v2"
    with pytest.raises(UserError, match="not a D4RL dataset name"):
        default_minari_id("Hopper-v5")


def test_missing_minari_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "minari", None)
    with pytest.raises(UserError, match=r"pip install 'offline_mbrl\[minari\]'"):
        import_minari()
    with pytest.raises(UserError, match="Minari is not installed"):
        load_minari("x/y-v0")


def test_listing_does_not_create_the_root(data_env) -> None:
    assert local_minari_ids() == []
    assert not Path(data_env["minari"]).exists()
