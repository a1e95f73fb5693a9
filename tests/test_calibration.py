"""The model and pessimism calibrated to the seed, and evaluation on the datasets' own dynamics."""

import math

import numpy as np
import pytest
import torch
from tests.test_rollouts import ACT, OBS, small_agent

from offline_mbrl.config import TrainerConfiguration
from offline_mbrl.data.buffer import PopulationBuffer, TransitionLayout
from offline_mbrl.data.collect import collect_random
from offline_mbrl.data.d4rl import is_published_d4rl
from offline_mbrl.data.dataset import OfflineDataset
from offline_mbrl.data.info import dataset_info
from offline_mbrl.envs.registry import evaluation_env_id, get_env_spec, make_env
from offline_mbrl.hyperparameters import fallback_pessimism
from offline_mbrl.models.ensemble import EnvironmentModel
from offline_mbrl.models.io import save_environment_model
from offline_mbrl.models.statistics import largest_reward, uncertainty_statistics
from offline_mbrl.models.training import EnvironmentModelConfiguration, train_environment_model
from offline_mbrl.rng import PopulationRNG
from offline_mbrl.rollouts import Pessimism, rollout

TINY_MODEL = EnvironmentModelConfiguration(
    n_networks=3, n_hidden_layers=1, n_hidden_units=16, reward_n_hidden_units=8,
    max_number_of_training_epochs=2)


def _dataset(n: int, obs_dim: int = 11, act_dim: int = 3, name: str = "hopper-medium-replay-v2",
             metadata: dict | None = None) -> OfflineDataset:
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((n, obs_dim), dtype=np.float32)
    return OfflineDataset(
        observations=obs, actions=rng.uniform(-1, 1, (n, act_dim)).astype(np.float32),
        rewards=rng.standard_normal(n).astype(np.float32),
        next_observations=obs + 0.1, terminals=np.zeros(n, dtype=bool),
        timeouts=np.zeros(n, dtype=bool), name=name, metadata=metadata or {})


def test_r_max_is_the_largest_reward_not_the_largest_magnitude():
    # The seed's R_max is max(rewards); a large negative reward must not inflate it.
    assert largest_reward(np.array([-7.0, 1.0, 3.0])) == 3.0
    # Where no reward is positive, -R_max would be a bonus: the reward range stands in.
    assert largest_reward(np.array([-3.0, -1.0])) == 2.0


def test_derived_pessimism_puts_the_edge_of_the_known_at_the_99th_percentile():
    u = {"mean": 0.01, "std": 0.02, "p99": 0.2, "max": 5.0}
    assert fallback_pessimism("epistemic-partitioning", u, 3.0) == 0.2
    # A transition at the edge loses R_max, what partitioning gives unknown transitions.
    assert fallback_pessimism("aleatoric-penalty", u, 3.0) == pytest.approx(15.0)


def test_published_d4rl_files_are_recognised_by_content_not_name():
    published = _dataset(402_000)
    assert is_published_d4rl(published, "hopper-medium-replay-v2")
    # The same name on data recorded here, on other row counts or on other dimensions:
    recorded = _dataset(402_000, metadata={"protocol": "d4rl-medium-replay"})
    assert not is_published_d4rl(recorded, "hopper-medium-replay-v2")
    assert not is_published_d4rl(_dataset(120_000), "hopper-medium-replay-v2")
    assert not is_published_d4rl(published, "walker2d-medium-replay-v2")
    assert not is_published_d4rl(published, None)


def test_d4rl_names_run_on_the_models_d4rl_was_recorded_with():
    assert get_env_spec("walker2d-medium-replay-v2").gym_id == "Walker2d-v4"
    v4 = make_env("walker2d-medium-v2").unwrapped.model
    v5 = make_env("Walker2d-v5").unwrapped.model
    # v5 changed the left foot's friction; the D4RL names must not evaluate on it.
    assert not np.array_equal(v4.geom_friction, v5.geom_friction)
    # Data recorded here is evaluated on the environment id it carries.
    assert evaluation_env_id("walker2d-medium-v2", "Walker2d-v5") == "Walker2d-v5"
    assert evaluation_env_id("walker2d-medium-v2", None) == "Walker2d-v4"
    assert evaluation_env_id("walker2d-medium-v2", "Hopper-v5") == "Walker2d-v4"  # other family
    ds = collect_random("hopper-random-v2", 20, seed=0)
    assert ds.metadata["env_id"] == "Hopper-v4"
    assert dataset_info(ds)["evaluation_env"] == "Hopper-v4"
    ds.metadata["env_id"] = "Hopper-v5"
    assert dataset_info(ds)["evaluation_env"] == "Hopper-v5"


def test_statistics_cache_follows_the_model_file(tmp_path):
    data = _dataset(200, obs_dim=OBS, act_dim=ACT, name="toy")
    model = EnvironmentModel(OBS, ACT, n_networks=3, n_hidden_layers=1, n_hidden_units=8,
                             reward_n_hidden_units=8).eval()
    path = save_environment_model(model, tmp_path / "toy-model.pt")
    first = uncertainty_statistics(model, data, path)
    assert uncertainty_statistics(model, data, path) == first  # cached
    # A model retrained to the same path gets its own statistics.
    retrained = EnvironmentModel(OBS, ACT, n_networks=3, n_hidden_layers=1, n_hidden_units=8,
                                 reward_n_hidden_units=8, seed=1).eval()
    save_environment_model(retrained, path)
    second = uncertainty_statistics(retrained, data, path)
    assert second["model_hash"] != first["model_hash"]
    assert second["epistemic"]["max"] != first["epistemic"]["max"]


def test_warm_retraining_continues_from_the_current_weights():
    data = _dataset(300, obs_dim=OBS, act_dim=ACT, name="toy")
    model, _ = train_environment_model(data, TINY_MODEL, progress=False)
    frozen = TINY_MODEL.model_copy(update={"lr": 1e-12, "max_number_of_training_epochs": 1})
    warm, _ = train_environment_model(data, frozen, progress=False, initial=model)
    cold, _ = train_environment_model(data, frozen, progress=False)
    first = lambda m: m.dynamics.linears()[0].weight  # noqa: E731
    torch.testing.assert_close(first(warm), first(model), rtol=0, atol=1e-6)
    assert not torch.allclose(first(cold), first(model), atol=1e-3)


def test_model_training_drops_rows_that_cross_an_episode_reset():
    data = _dataset(300, obs_dim=OBS, act_dim=ACT, name="toy",
                    metadata={"reset_next_observation_rows": np.array([10, 20, 30])})
    _, metrics = train_environment_model(data, TINY_MODEL, progress=False)
    assert metrics["n_train"] + metrics["n_val"] == 297


def test_help_names_the_real_rollout_length_fallback():
    help_text = TrainerConfiguration.model_fields["rollout_length"].description
    assert "max_rollout_length" in help_text and "else 5" not in help_text


def test_rollouts_end_where_the_termination_function_fires():
    model = EnvironmentModel(OBS, ACT, n_networks=3, n_hidden_layers=1, n_hidden_units=8,
                             reward_n_hidden_units=8, seed=0).eval()
    # Fires for every transition whose first observation entry starts positive.
    model.termination_fn = lambda o, a, n: o[..., 0] > 0
    start = torch.tensor([[[1.0, 0, 0], [-1.0, 0, 0]]])  # [P=1, N=2, obs]
    p = Pessimism("none", "epistemic", torch.tensor([3]), torch.zeros(1),
                  torch.full((1,), math.inf), 1.0)
    layout = TransitionLayout(OBS, ACT)
    batch = rollout(model, small_agent(1), start, p, layout, PopulationRNG((0,)))
    valid = batch.valid.view(1, 3, 2)
    rows = layout.unpack(batch.rows.view(1, 3, 2, -1))
    # The first start terminates at once: one row, flagged; the second goes on.
    assert valid[0, :, 0].tolist() == [True, False, False]
    assert rows["terminated"][0, 0, 0] == 1.0 and rows["terminated"][0, 0, 1] == 0.0
    assert bool(valid[0, 1, 1])


def test_synthetic_data_stays_until_capacity_then_oldest_goes_first():
    layout = TransitionLayout(1, 1)
    buffer = PopulationBuffer(1, 4, layout, torch.device("cpu"))
    for value in range(6):
        row = layout.pack(torch.full((1, 1, 1), float(value)), torch.zeros(1, 1, 1),
                          torch.zeros(1, 1), torch.zeros(1, 1, 1), torch.zeros(1, 1))
        buffer.add(row)
    kept = layout.unpack(buffer.state_dict()["rows"][0])["obs"].flatten().tolist()
    assert kept == [2.0, 3.0, 4.0, 5.0]  # the last `capacity` rounds' rows, oldest first
