"""Offline-to-online fine-tuning: ``--pretrained_agent_path`` with ``--n_samples_from_dataset``.

Unit tests of how dataset rows seed the replay buffer, the flag checks, and a learning test:
an offline SAC agent continued online on Pendulum keeps its score in its first online epoch
and ends far above online SAC from scratch after the same number of environment steps.
"""

import json

import numpy as np
import pytest
import torch
from tests.test_learning import pendulum_dataset  # noqa: F401 (fixture)

from offline_mbrl import TrainerConfiguration
from offline_mbrl.errors import UserError
from offline_mbrl.rng import PopulationRNG
from offline_mbrl.run_setup import dataset_rows_for_replay, resolve_random_steps
from offline_mbrl.train import Trainer


def test_all_rows_go_to_every_member_in_order():
    rows = torch.arange(12.0).view(6, 2)
    seeded = dataset_rows_for_replay(rows, -1, capacity=10, rng=PopulationRNG((0, 1)))
    assert seeded.shape == (2, 6, 2)
    torch.testing.assert_close(seeded[0], rows)
    torch.testing.assert_close(seeded[1], rows)
    # Asking for more rows than the dataset has takes all of them.
    torch.testing.assert_close(
        dataset_rows_for_replay(rows, 100, capacity=10, rng=PopulationRNG((0,)))[0], rows)


def test_a_subset_is_distinct_rows_in_order_and_member_p_is_seed_p():
    rows = torch.arange(200.0).view(100, 2)
    population = dataset_rows_for_replay(rows, 30, capacity=50, rng=PopulationRNG((4, 7)))
    assert population.shape == (2, 30, 2)
    for member in population:
        first = member[:, 0]
        assert len(set(first.tolist())) == 30  # no row twice
        assert bool((first[1:] > first[:-1]).all())  # dataset order
        torch.testing.assert_close(member[:, 1], member[:, 0] + 1)  # whole rows
    assert not torch.equal(population[0], population[1])  # each seed its own subset
    single = dataset_rows_for_replay(rows, 30, capacity=50, rng=PopulationRNG((7,)))
    torch.testing.assert_close(population[1], single[0])


def test_rows_beyond_the_buffer_are_refused():
    with pytest.raises(UserError, match="real_buffer_size"):
        dataset_rows_for_replay(torch.zeros(20, 3), -1, capacity=10, rng=PopulationRNG((0,)))


def test_random_steps_default_to_none_after_a_pretrained_agent():
    base = {"env_name": "Pendulum-v1", "mode": "sac"}
    assert resolve_random_steps(TrainerConfiguration(**base))[0] == 10000
    steps, resolved = resolve_random_steps(
        TrainerConfiguration(**base, pretrained_agent_path="somewhere"))
    assert steps == 0 and resolved["random_steps"]["source"] == "pretrained agent"
    assert resolve_random_steps(TrainerConfiguration(
        **base, pretrained_agent_path="somewhere", random_steps=50))[0] == 50


@pytest.mark.parametrize(("settings", "message"), [
    ({"mode": "offline-sac", "env_name": "hopper-medium-replay-v2"}, "online replay buffer"),
    ({"mode": "sac", "env_name": "Pendulum-v1"}, "needs a dataset"),
])
def test_dataset_seeding_needs_an_online_mode_and_a_dataset(settings, message, tmp_path,
                                                            monkeypatch):
    monkeypatch.setenv("OMBRL_DATA_DIR", str(tmp_path))
    with pytest.raises(UserError, match=message):
        Trainer(TrainerConfiguration(**settings, n_samples_from_dataset=10), progress=False)
    assert not any(tmp_path.iterdir())


def returns_per_epoch(config: TrainerConfiguration) -> np.ndarray:
    """``[epochs, P]`` test returns of every member after every epoch."""
    history: list[list[float]] = []
    Trainer(config, progress=False).run(
        on_epoch=lambda _, rows: history.append([r["AverageTestEpRet"] for r in rows]))
    return np.array(history)


# Pendulum returns lie in about [-1700, -100] (a random policy: about -1200). The offline
# agent is offline SAC on the swing-up controller's mixed-quality data, the best of three
# seeds; both online runs then take 1,500 environment steps as three seeds. The fine-tuned
# run acts with the offline policy from its first step (no random actions) on a buffer that
# starts with 2,000 dataset rows; from scratch, SAC acts randomly for its first 500 steps.
@pytest.mark.long
def test_an_offline_agent_continued_online_keeps_its_score_and_beats_sac_from_scratch(
        tmp_path, monkeypatch, pendulum_dataset):  # noqa: F811
    monkeypatch.setenv("OMBRL_DATA_DIR", str(tmp_path / "experiments"))
    offline = returns_per_epoch(TrainerConfiguration(
        env_name="Pendulum-v1", mode="offline-sac", dataset=str(pendulum_dataset),
        offline_epochs=3, steps_per_epoch=1000, test_episodes=5, seeds=(0, 1, 2),
        experiment_name="offline"))[-1]
    best_seed = int(offline.argmax())
    offline_score = float(offline[best_seed])
    assert offline_score > -600, offline  # an agent worth continuing

    online = dict(env_name="Pendulum-v1", mode="sac", online_epochs=3, steps_per_epoch=500,
                  init_steps=200, test_episodes=5, seeds=(3, 4, 5))
    fine_tuned = returns_per_epoch(TrainerConfiguration(
        **online, experiment_name="fine-tuned", dataset=str(pendulum_dataset),
        n_samples_from_dataset=2000,
        pretrained_agent_path=str(tmp_path / "experiments" / "offline" /
                                  f"offline-s{best_seed}"))).mean(axis=1)
    scratch = returns_per_epoch(TrainerConfiguration(
        **online, experiment_name="scratch", random_steps=500)).mean(axis=1)
    print("offline", offline, "fine-tuned", fine_tuned, "scratch", scratch)
    assert fine_tuned[0] > offline_score - 250, (offline_score, fine_tuned)  # no collapse
    assert fine_tuned.min() > -700, fine_tuned
    assert fine_tuned[-1] > scratch[-1] + 300, (fine_tuned, scratch)
    config = json.loads((tmp_path / "experiments" / "fine-tuned" / "fine-tuned-s3" /
                         "config.json").read_text())
    assert "pretrained agent" in json.dumps(config)
