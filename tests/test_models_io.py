"""Tests for saving, loading and checking environment model files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from offline_mbrl.data.dataset import OfflineDataset
from offline_mbrl.errors import UserError
from offline_mbrl.models.ensemble import EnvironmentModel
from offline_mbrl.models.io import (
    FORMAT,
    check_model_matches,
    default_model_path,
    load_environment_model,
    save_environment_model,
)


def dataset(n: int = 20, obs_dim: int = 3, act_dim: int = 2, seed: int = 0,
            name: str = "hopper-medium-v2") -> OfflineDataset:
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, obs_dim)).astype(np.float32)
    return OfflineDataset(
        observations=obs,
        actions=rng.uniform(-1, 1, (n, act_dim)).astype(np.float32),
        rewards=rng.normal(size=n).astype(np.float32),
        next_observations=(obs + 0.1).astype(np.float32),
        terminals=np.zeros(n, bool), timeouts=np.zeros(n, bool), name=name,
    )


def trained_like_model(kind: str = "probabilistic") -> EnvironmentModel:
    model = EnvironmentModel(3, 2, type=kind, n_networks=3, n_hidden_layers=2,
                             n_hidden_units=16, reward_n_hidden_units=8,
                             env_name="Pendulum-v1", seed=4)
    data = dataset()
    model.normalizer.fit(*(torch.from_numpy(a) for a in (data.observations, data.actions,
                                                          data.next_observations,
                                                          data.rewards)))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.set_elites([0, 2])
    return model


@pytest.mark.parametrize("kind", ["probabilistic", "deterministic"])
def test_save_load_predicts_identically(tmp_path: Path, kind: str) -> None:
    model = trained_like_model(kind)
    data = dataset()
    path = save_environment_model(model, tmp_path / "m" / "model.pt", {
        "config": {"lr": 1e-3}, "dataset_name": data.name,
        "dataset_hash": data.content_hash(), "validation": {"val_mse": 0.5,
                                                             "per_member": np.array([1.0, 2.0])},
    })
    assert path == tmp_path / "m" / "model.pt"
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temporary left over
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT
    loaded, meta = load_environment_model(path)
    assert meta["obs_dim"] == 3 and meta["act_dim"] == 2
    assert meta["env_name"] == "Pendulum-v1" and meta["dataset_hash"] == data.content_hash()
    assert meta["validation"]["per_member"] == [1.0, 2.0]
    assert meta["architecture"]["type"] == kind and meta["library_version"]
    assert loaded.elites.tolist() == [0, 2] and loaded.env_name == "Pendulum-v1"
    obs, action = torch.randn(9, 3), torch.randn(9, 2)
    for a, b in zip(model(obs, action), loaded(obs, action), strict=True):
        assert torch.equal(a, b)
    s1 = model.sample(obs, action, torch.Generator().manual_seed(1))
    s2 = loaded.sample(obs, action, torch.Generator().manual_seed(1))
    for a, b in zip(s1[:3], s2[:3], strict=True):
        assert torch.equal(a, b)


def test_default_model_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("OMBRL_MODELS_DIR", raising=False)
    assert default_model_path("hopper-medium-replay-v2") == Path(
        "data/models/hopper-medium-replay-v2-model.pt")
    monkeypatch.setenv("OMBRL_MODELS_DIR", str(tmp_path))
    assert default_model_path("walker2d-random-v2") == tmp_path / "walker2d-random-v2-model.pt"


def _one_line_error(path: Path, match: str) -> None:
    with pytest.raises(UserError, match=match) as info:
        load_environment_model(path)
    assert "\n" not in str(info.value)


def test_bad_files_give_one_line_errors(tmp_path: Path) -> None:
    _one_line_error(tmp_path / "missing.pt", "no environment model")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a torch file" * 10)
    _one_line_error(garbage, "unreadable")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    _one_line_error(foreign, "not an offline_mbrl environment model")
    model = trained_like_model()
    good = save_environment_model(model, tmp_path / "good.pt", {})
    payload = torch.load(good, weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, tmp_path / "future.pt")
    _one_line_error(tmp_path / "future.pt", "format version 99")
    payload = torch.load(good, weights_only=True)
    payload["metadata"]["architecture"]["n_hidden_units"] = 32
    torch.save(payload, tmp_path / "mismatch.pt")
    _one_line_error(tmp_path / "mismatch.pt", "do not match the architecture")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    _one_line_error(truncated, "unreadable")


def test_check_model_matches(tmp_path: Path) -> None:
    data = dataset()
    meta = {"obs_dim": 3, "act_dim": 2, "dataset_name": data.name,
            "dataset_hash": data.content_hash(), "env_name": "hopper-medium-v2"}
    check_model_matches(meta, data, "hopper-medium-v2")
    check_model_matches({**meta, "dataset_hash": None}, dataset(seed=1), None)
    with pytest.raises(UserError, match="obs_dim=3, act_dim=2 but"):
        check_model_matches(meta, dataset(obs_dim=4), "hopper-medium-v2")
    with pytest.raises(UserError, match="hash"):
        check_model_matches(meta, dataset(seed=1), "hopper-medium-v2")
    with pytest.raises(UserError, match="trained for hopper-medium-v2, not walker2d"):
        check_model_matches(meta, data, "walker2d-medium-v2")
