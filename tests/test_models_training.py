"""Tests for environment model training and the train_environment_model script."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np
import pytest
import torch

from offline_mbrl.data.dataset import OfflineDataset
from offline_mbrl.errors import UserError
from offline_mbrl.models.io import load_environment_model
from offline_mbrl.models.training import (
    EnvironmentModelConfiguration,
    default_patience,
    make_model_config,
    resolve_device,
    split_indices,
    train_environment_model,
    validation_mse,
)
from offline_mbrl.models.uncertainty import dataset_uncertainty
from offline_mbrl.scripts import train_environment_model as script

# The module fixtures are costly: the suite's two workers (make test) run these tests on one.
pytestmark = pytest.mark.xdist_group("models-training")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "src" / "offline_mbrl" / "scripts" / "train_environment_model.py"
SMALL = {"n_networks": 3, "n_hidden_layers": 2, "n_hidden_units": 32,
         "reward_n_hidden_units": 16}


def linear_dataset(n: int = 400, seed: int = 0, noise_only: bool = False,
                   obs_dim: int = 3, act_dim: int = 2) -> OfflineDataset:
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, obs_dim)).astype(np.float32)
    action = rng.uniform(-1, 1, (n, act_dim)).astype(np.float32)
    if noise_only:
        delta = rng.normal(size=(n, obs_dim))
        reward = rng.normal(size=n)
    else:
        delta = 0.3 * obs[:, ::-1] + 0.2 * action.sum(1, keepdims=True)
        reward = obs.sum(1) - action[:, 0]
    return OfflineDataset(obs, action, reward.astype(np.float32),
                          (obs + delta).astype(np.float32), np.zeros(n, bool),
                          np.zeros(n, bool), name="synthetic")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # Small matrices: a second thread costs more in hand-offs than it saves, and far more
    # when other processes compete for the two CI cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def hopper_dataset(n: int = 3000, seed: int = 0) -> OfflineDataset:
    """Transitions of Hopper-v5 under a noisy open-loop policy (mostly short episodes)."""
    env = gym.make("Hopper-v5")
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {k: [] for k in ("obs", "action", "reward", "next", "term", "trunc")}
    obs, _ = env.reset(seed=seed)
    bias = rng.uniform(-0.5, 0.5, 3)
    while len(rows["obs"]) < n:
        action = np.clip(bias + 0.5 * rng.standard_normal(3), -1, 1).astype(np.float32)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        for key, value in zip(rows, (obs, action, reward, next_obs, terminated, truncated),
                              strict=True):
            rows[key].append(value)
        obs = next_obs
        if terminated or truncated:
            obs, _ = env.reset()
            bias = rng.uniform(-0.5, 0.5, 3)
    env.close()
    return OfflineDataset(
        np.asarray(rows["obs"], np.float32), np.asarray(rows["action"], np.float32),
        np.asarray(rows["reward"], np.float32), np.asarray(rows["next"], np.float32),
        np.asarray(rows["term"], bool), np.asarray(rows["trunc"], bool),
        name="hopper-test",
    )


def auroc(negatives: torch.Tensor, positives: torch.Tensor) -> float:
    """P(positive score > negative score), ties counted half (Mann-Whitney U / n_pos·n_neg)."""
    scores = torch.cat([negatives, positives]).double()
    order = scores.argsort()
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    # Average ranks over ties.
    for value in scores.unique():
        tie = scores == value
        if int(tie.sum()) > 1:
            ranks[tie] = ranks[tie].mean()
    n_pos, n_neg = len(positives), len(negatives)
    u = float(ranks[n_neg:].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def test_auroc_rank_formula() -> None:
    assert auroc(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0])) == 1.0
    assert auroc(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 0.0
    assert auroc(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 4.0])) == 0.75
    assert auroc(torch.tensor([1.0]), torch.tensor([1.0])) == 0.5


def test_configuration_defaults_and_validation() -> None:
    config = EnvironmentModelConfiguration()
    assert (config.type, config.n_networks, config.n_hidden_layers, config.n_hidden_units,
            config.reward_n_hidden_units, config.lr, config.batch_size) == (
        "probabilistic", 7, 4, 200, 64, 1e-3, 256)
    assert config.training_patience is None and config.n_elites is None
    assert config.validation_fraction == 0.2 and config.seed == 0 and config.device == "cpu"
    for name, field in EnvironmentModelConfiguration.model_fields.items():
        assert field.description, f"{name} has no description"
    with pytest.raises(Exception, match="frozen"):
        config.lr = 1.0  # type: ignore[misc]
    with pytest.raises(UserError, match="n_elites"):
        make_model_config(n_networks=3, n_elites=4)
    with pytest.raises(UserError, match="batch_size"):
        make_model_config(batch_size=0)
    with pytest.raises(UserError, match=r"not available|invalid device"):
        resolve_device("cuda:7" if torch.cuda.is_available() else "cuda")
    with pytest.raises(UserError, match="invalid device"):
        resolve_device("gpu-please")


def test_default_patience() -> None:
    assert default_patience("hopper-medium-expert-v2") == 10
    assert default_patience("walker2d-medium-replay-v2") == 100
    assert default_patience("halfcheetah-medium-v2") == 30
    assert default_patience("hopper-random-v2") == 30
    assert default_patience("") == 30


def test_split_is_fixed_and_disjoint() -> None:
    train, val = split_indices(100, 0.2, seed=0, dataset_hash="abcdef0123456789")
    assert len(val) == 20 and len(train) == 80
    assert sorted(torch.cat([train, val]).tolist()) == list(range(100))
    again = split_indices(100, 0.2, seed=0, dataset_hash="abcdef0123456789")
    assert torch.equal(train, again[0])
    other = split_indices(100, 0.2, seed=1, dataset_hash="abcdef0123456789")
    assert not torch.equal(val, other[1])
    with pytest.raises(UserError, match="at least 2"):
        split_indices(1, 0.2, seed=0)


def test_training_limits_metrics_and_best_weights(tmp_path: Path) -> None:
    data = linear_dataset()
    config = EnvironmentModelConfiguration(**SMALL, max_number_of_training_epochs=4,
                                           n_elites=2, seed=3)
    model, metrics = train_environment_model(data, config, "Pendulum-v1",
                                             log_dir=tmp_path / "tb", progress=False)
    assert metrics["epochs"] == 4 and metrics["batches"] == 4 * 2  # 320 rows / 256
    assert metrics["n_train"] == 320 and metrics["n_val"] == 80
    assert len(metrics["val_mse_per_member"]) == 3 and len(metrics["elites"]) == 2
    assert model.elites.tolist() == metrics["elites"]
    per_member = metrics["val_mse_per_member"]
    assert max(per_member[e] for e in metrics["elites"]) <= min(
        per_member[e] for e in range(3) if e not in metrics["elites"])
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())
    # The returned weights are each member's best: recomputing the validation error on the
    # same split gives the reported numbers.
    _train_idx, val_idx = split_indices(len(data), 0.2, 3, data.content_hash())
    norm = model.normalizer
    obs, act, nxt, rew = (torch.from_numpy(a)[val_idx] for a in (
        data.observations, data.actions, data.next_observations, data.rewards))
    delta, reward = norm.targets(obs, nxt, rew)
    recomputed = validation_mse(model, norm.inputs(obs, act), delta, reward)
    torch.testing.assert_close(recomputed, torch.tensor(per_member), rtol=1e-5, atol=1e-6)
    # Deterministic and batch-limited training.
    det_config = EnvironmentModelConfiguration(**SMALL, type="deterministic",
                                               max_number_of_training_batches=3)
    _, det_metrics = train_environment_model(data, det_config, None, progress=False)
    assert det_metrics["batches"] == 3 and det_metrics["epochs"] == 2


def test_bfloat16_training_learns() -> None:
    data = linear_dataset(n=600)
    config = EnvironmentModelConfiguration(**SMALL, precision="bfloat16",
                                           max_number_of_training_epochs=30)
    model, metrics = train_environment_model(data, config, None, progress=False)
    assert metrics["val_mse"] < 0.5 * metrics["val_mse_mean_predictor"]
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_training_is_reproducible() -> None:
    data = linear_dataset(n=300)
    config = EnvironmentModelConfiguration(**SMALL, max_number_of_training_epochs=2)
    a, _ = train_environment_model(data, config, None, progress=False)
    b, _ = train_environment_model(data, config, None, progress=False)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name


def test_early_stopping_on_unpredictable_data() -> None:
    data = linear_dataset(n=600, noise_only=True)
    config = EnvironmentModelConfiguration(
        **{**SMALL, "n_networks": 2}, lr=1e-2, training_patience=2,
        max_number_of_training_epochs=60)
    _, metrics = train_environment_model(data, config, None, progress=False)
    assert metrics["stopped_early"] and metrics["epochs"] < 60
    assert metrics["patience"] == 2
    assert max(metrics["best_epoch_per_member"]) == metrics["epochs"] - 2


def test_non_finite_dataset_is_a_user_error() -> None:
    data = linear_dataset(n=50)
    data.rewards[3] = np.nan
    with pytest.raises(UserError, match="non-finite"):
        train_environment_model(data, EnvironmentModelConfiguration(**SMALL), None,
                                progress=False)


@pytest.fixture(scope="module")
def hopper_data() -> OfflineDataset:
    return hopper_dataset()


def test_quality_on_hopper(hopper_data: OfflineDataset) -> None:
    config = EnvironmentModelConfiguration(
        n_networks=5, n_hidden_layers=3, n_hidden_units=64, reward_n_hidden_units=32,
        max_number_of_training_epochs=15, training_patience=10, seed=0)
    model, metrics = train_environment_model(hopper_data, config, "Hopper-v5", progress=False)
    # Clearly better than always predicting the mean delta and reward.
    assert metrics["val_mse"] < 0.4 * metrics["val_mse_mean_predictor"], metrics
    # Epistemic uncertainty separates data from far-away actions.
    _, val_idx = split_indices(len(hopper_data), 0.2, 0, hopper_data.content_hash())
    obs = torch.from_numpy(hopper_data.observations)[val_idx]
    action = torch.from_numpy(hopper_data.actions)[val_idx]
    gen = torch.Generator().manual_seed(1)
    far_actions = 4.0 * torch.sign(torch.randn(action.shape, generator=gen)) + torch.randn(
        action.shape, generator=gen)
    inside = dataset_uncertainty(model, obs, action, "epistemic")
    outside = dataset_uncertainty(model, obs, far_actions, "epistemic")
    assert auroc(inside, outside) > 0.8
    far_obs = obs + 5.0 * torch.from_numpy(hopper_data.observations.std(0)) * torch.randn(
        obs.shape, generator=gen)
    assert auroc(inside, dataset_uncertainty(model, far_obs, action, "epistemic")) > 0.8
    # Rollouts in the model stay finite.
    state = obs[:256]
    for _ in range(50):
        state, reward, _, _ = model.sample(state, 5 * torch.randn(256, 3, generator=gen), gen)
        assert torch.isfinite(state).all() and torch.isfinite(reward).all()


def write_hopper_file(path: Path, data: OfflineDataset) -> None:
    with h5py.File(path, "w") as f:
        for key in ("observations", "actions", "rewards", "next_observations", "terminals",
                    "timeouts"):
            f.create_dataset(key, data=getattr(data, key))


def test_script_trains_saves_and_refuses_to_overwrite(
    tmp_path: Path, hopper_data: OfflineDataset, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("OMBRL_MODELS_DIR", str(tmp_path / "models"))
    file = tmp_path / "hopper.hdf5"
    small = OfflineDataset(*(getattr(hopper_data, k)[:600] for k in (
        "observations", "actions", "rewards", "next_observations", "terminals", "timeouts")))
    write_hopper_file(file, small)
    argv = ["--env_name", "hopper-medium-replay-v2", "--dataset", str(file), "--max_epochs", "2",
            "--n_networks", "2", "--seed", "1", "--no-download", "--no-progress"]
    assert script.main(argv) == 0
    out = capsys.readouterr().out
    path = tmp_path / "models" / "hopper-medium-replay-v2-model.pt"
    assert "validation MSE" in out and str(path) in out.replace("\n", "")
    model, meta = load_environment_model(path)
    assert meta["dataset_hash"] == small.content_hash() and meta["config"]["seed"] == 1
    assert meta["validation"]["epochs"] == 2 and model.n_networks == 2
    assert model.env_name == "hopper-medium-replay-v2"

    assert script.main(argv) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err and err.count("\n") == 1
    assert script.main([*argv, "--overwrite", "--out", str(tmp_path / "x.pt")]) == 0
    assert (tmp_path / "x.pt").is_file()
    capsys.readouterr()
    assert script.main(["--env_name", "hopper-medium-replay-v2", "--dataset",
                        str(tmp_path / "nope.hdf5"), "--out", str(tmp_path / "y.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert script.main(["--env_name", "no-such-env-v0", "--no-download"]) == 2
    assert script.main(["--env_name", "hopper-medium-v2", "--n_networks", "0",
                        "--no-download"]) == 2
    assert "n_networks" in capsys.readouterr().err


@pytest.mark.parametrize("how", ["file", "module"])
def test_script_runs_as_file_and_module(how: str) -> None:
    command = [str(SCRIPT)] if how == "file" else [
        "-m", "offline_mbrl.scripts.train_environment_model"]
    env = {**os.environ, "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, *command, "--help"], capture_output=True,
                            text=True, cwd=ROOT, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--env_name" in result.stdout and "--overwrite" in result.stdout
