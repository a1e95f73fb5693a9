from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from offline_mbrl.data import load_d4rl_hdf5, load_dataset
from offline_mbrl.data.resolve import (
    D4RL_BASE_URL,
    d4rl_file_name,
    d4rl_url,
    resolve_dataset_path,
)
from offline_mbrl.envs.registry import all_dataset_names
from offline_mbrl.errors import UserError

NAME = "hopper-medium-replay-v2"


def test_d4rl_file_names_and_url(monkeypatch: pytest.MonkeyPatch) -> None:
    assert d4rl_file_name(NAME) == "hopper_medium_replay-v2.hdf5"
    assert d4rl_file_name("halfcheetah-medium-expert-v2") == "halfcheetah_medium_expert-v2.hdf5"
    assert d4rl_file_name("walker2d-random-v2") == "walker2d_random-v2.hdf5"
    assert len({d4rl_file_name(n) for n in all_dataset_names()}) == 15
    monkeypatch.delenv("OMBRL_D4RL_URL", raising=False)
    assert d4rl_url(NAME) == f"{D4RL_BASE_URL}/gym_mujoco_v2/hopper_medium_replay-v2.hdf5"
    monkeypatch.setenv("OMBRL_D4RL_URL", "http://127.0.0.1:8/mirror/")
    assert d4rl_url(NAME) == "http://127.0.0.1:8/mirror/gym_mujoco_v2/hopper_medium_replay-v2.hdf5"


def test_default_directories(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from offline_mbrl.data.resolve import d4rl_cache_dir, datasets_dir

    monkeypatch.delenv("OMBRL_DATASETS_DIR", raising=False)
    monkeypatch.delenv("D4RL_DATASET_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert datasets_dir() == Path("data/datasets")
    assert d4rl_cache_dir() == tmp_path / ".d4rl" / "datasets"


@pytest.mark.parametrize("name,reason", [
    ("hopper-v2", "names an environment, not a dataset"),
    ("Hopper-v5", "names an environment, not a dataset"),
    ("hopper-mediocre-v2", "is not a D4RL dataset"),
    ("ant-medium-v2", "is not a D4RL dataset"),
])
def test_unknown_names(data_env, name: str, reason: str) -> None:
    with pytest.raises(UserError, match=f"'{name}' {reason}: use one of") as err:
        resolve_dataset_path(name)
    assert "\n" not in str(err.value)


def test_resolution_order(data_env, data_make_file) -> None:
    own = data_env["ombrl"] / f"{NAME}.hdf5"
    cached = data_env["d4rl"] / "hopper_medium_replay-v2.hdf5"
    explicit = data_env["ombrl"].parent / "elsewhere.hdf5"
    for path in (own, cached, explicit):
        path.parent.mkdir(parents=True, exist_ok=True)
        data_make_file(path)

    assert resolve_dataset_path(NAME, dataset=str(explicit)) == explicit
    assert resolve_dataset_path(NAME) == own
    own.unlink()
    assert resolve_dataset_path(NAME) == cached
    assert resolve_dataset_path(NAME, dataset="minari:some/id-v0") == "minari:some/id-v0"
    assert resolve_dataset_path("minari:some/id-v0") == "minari:some/id-v0"
    with pytest.raises(UserError, match=r"dataset file .*nope.hdf5 does not exist"):
        resolve_dataset_path(NAME, dataset=str(explicit.parent / "nope.hdf5"))


def test_local_minari_dataset_is_used_before_download(data_env, data_make_file) -> None:
    pytest.importorskip("minari")
    from offline_mbrl.data.minari_io import export_minari

    rng = np.random.default_rng(0)
    from offline_mbrl.data import OfflineDataset

    states = rng.normal(size=(21, 11)).astype(np.float32)
    ds = OfflineDataset(states[:-1], rng.uniform(-1, 1, (20, 3)).astype(np.float32),
                        np.ones(20, np.float32), states[1:], np.zeros(20, bool),
                        np.zeros(20, bool), name=NAME)
    export_minari(ds, "ombrl/hopper/medium-replay-v2")
    assert resolve_dataset_path(NAME) == "minari:ombrl/hopper/medium-replay-v2"
    loaded = load_dataset(NAME)
    assert loaded.name == NAME
    np.testing.assert_array_equal(loaded.next_observations, ds.next_observations)
    with pytest.raises(UserError, match="'observations' have 11 dimensions but HalfCheetah-v4"):
        load_dataset("halfcheetah-random-v2", dataset="minari:ombrl/hopper/medium-replay-v2")
    # A D4RL file in d4rl's cache comes first.
    cached = data_env["d4rl"] / "hopper_medium_replay-v2.hdf5"
    cached.parent.mkdir(parents=True)
    data_make_file(cached)
    assert resolve_dataset_path(NAME) == cached


def test_offline_and_no_download_errors(data_env, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserError, match="downloads are disabled") as err:
        resolve_dataset_path(NAME, allow_download=False)
    message = str(err.value)
    assert "\n" not in message
    for hint in ("hopper_medium_replay-v2.hdf5", "--dataset PATH", "minari:<id>",
                 f"ombrl datasets download {NAME}", f"ombrl datasets collect {NAME}"):
        assert hint in message
    monkeypatch.setenv("OMBRL_OFFLINE", "1")
    with pytest.raises(UserError, match=f"no local data for {NAME} and OMBRL_OFFLINE is set"):
        load_dataset(NAME)


def test_download_when_nothing_is_local(data_env, data_make_file, data_http_server,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    source = data_env["ombrl"].parent / "published.hdf5"
    raw = data_make_file(source, rows=50)
    data_http_server.files["/offline_rl/gym_mujoco_v2/hopper_medium_replay-v2.hdf5"] = (
        source.read_bytes())
    monkeypatch.setenv("OMBRL_D4RL_URL", f"{data_http_server.base_url}/offline_rl")
    ds = load_dataset(NAME)
    np.testing.assert_array_equal(ds.observations, raw["observations"])
    assert (data_env["ombrl"] / f"{NAME}.hdf5").is_file()
    assert len(data_http_server.requests) == 1
    # The second time it is local: no request.
    assert resolve_dataset_path(NAME) == data_env["ombrl"] / f"{NAME}.hdf5"
    assert len(data_http_server.requests) == 1


def test_failed_download_says_what_to_do(data_env) -> None:
    with pytest.raises(UserError, match=r"could not download http://127.0.0.1:9/offline_rl/"
                                        r"gym_mujoco_v2/hopper_medium_replay-v2.hdf5: .*"
                                        r"ombrl datasets collect hopper-medium-replay-v2"):
        load_dataset(NAME)


def test_load_dataset_checks_dimensions(data_env, data_make_file) -> None:
    path = data_env["ombrl"] / "walker2d-medium-v2.hdf5"
    path.parent.mkdir(parents=True)
    data_make_file(path, obs_dim=11, act_dim=3)
    with pytest.raises(UserError, match="'observations' have 11 dimensions but Walker2d-v4"):
        load_dataset("walker2d-medium-v2")
    # An explicit file may be given for any environment name; the dims still count.
    ds = load_dataset("Hopper-v5", dataset=str(path))
    assert len(ds) == len(load_d4rl_hdf5(path))
    with pytest.raises(UserError, match="unknown environment 'Hoppr-v5'"):
        load_dataset("Hoppr-v5", dataset=str(path))


def test_list_local_datasets(data_env, data_make_file) -> None:
    from offline_mbrl.data.info import list_local_datasets

    assert list_local_datasets() == []
    own = data_env["ombrl"] / "hopper-random-v2.hdf5"
    cached = data_env["d4rl"] / "walker2d_medium_expert-v2.hdf5"
    other = data_env["d4rl"] / "something_else.hdf5"
    for path in (own, cached, other):
        path.parent.mkdir(parents=True, exist_ok=True)
        data_make_file(path)
    (data_env["ombrl"] / "hopper-medium-v2.hdf5.part").write_bytes(b"partial")
    assert list_local_datasets() == [
        ("hopper-random-v2", str(own), "ombrl"),
        ("something_else", str(other), "d4rl"),
        ("walker2d-medium-expert-v2", str(cached), "d4rl"),
    ]
