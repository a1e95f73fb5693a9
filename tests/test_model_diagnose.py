"""``ombrl model diagnose``: ranking statistics, simulator replay and the command end to end."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
from tests.test_uncertainty_command import one_line_error, use_directories

from offline_mbrl.cli import main as ombrl_main
from offline_mbrl.data.collect import collect_random
from offline_mbrl.data.d4rl import write_d4rl_hdf5
from offline_mbrl.models.commands import main
from offline_mbrl.models.diagnose import (
    JSON_FILE,
    KINDS,
    PNG_FILE,
    auroc,
    average_ranks,
    calibration_bins,
    diagnose,
    episode_stops,
    held_out_rows,
    high_error_auroc,
    open_simulator,
    replay,
    replay_starts,
    spearman,
    write_diagnosis,
)
from offline_mbrl.models.io import save_environment_model
from offline_mbrl.models.training import EnvironmentModelConfiguration, train_environment_model

# The module fixtures are costly: the suite's two workers (make test) run these tests on one.
pytestmark = pytest.mark.xdist_group("diagnose")

NAME = "hopper-random-v2"
TINY_MODEL = EnvironmentModelConfiguration(n_networks=3, n_hidden_layers=1, n_hidden_units=16,
                                           reward_n_hidden_units=8,
                                           max_number_of_training_epochs=2)
CALIBRATION_DECILES = 10
SMALL = ["--horizon", "3", "--samples", "400", "--starts", "100"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 3000-transition random Hopper dataset, its file and a tiny model trained on it."""
    root = tmp_path_factory.mktemp("diagnose")
    (root / "datasets").mkdir()
    dataset = collect_random(NAME, 3000, seed=0)
    write_d4rl_hdf5(dataset, root / "datasets" / f"{NAME}.hdf5")
    model, metrics = train_environment_model(dataset, TINY_MODEL, NAME, progress=False)
    metadata = {"config": TINY_MODEL.model_dump(mode="json"), "dataset_name": NAME,
                "dataset_hash": dataset.content_hash(), "validation": metrics}
    path = save_environment_model(model, root / "models" / f"{NAME}-model.pt", metadata)
    return root, dataset, model, path, metadata


@pytest.fixture()
def env(tiny, monkeypatch):
    root = tiny[0]
    use_directories(root, monkeypatch)
    return root


def _check_scores(summary: dict) -> None:
    """Correlations finite in [-1, 1], AUROCs in [0, 1], one-step and pooled multi-step."""
    parts = [summary["one_step"], summary["multi_step"]["pooled"]]
    for part in parts:
        for kind in KINDS:
            rho, area = part[kind]["spearman"], part[kind]["auroc_high_error"]
            assert rho is not None and math.isfinite(rho) and -1.0 <= rho <= 1.0
            assert area is not None and math.isfinite(area) and 0.0 <= area <= 1.0
            bins = part[kind]["calibration"]
            assert len(bins["predicted"]) == len(bins["error"]) == CALIBRATION_DECILES


# ------------------------------------------------------------------ ranking statistics
def test_average_ranks_share_ties():
    assert average_ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    assert average_ranks(np.array([5.0, 5.0, 5.0])).tolist() == [2.0, 2.0, 2.0]


def test_spearman_exact_values():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert spearman(x, 10 * x) == pytest.approx(1.0, abs=1e-12)
    assert spearman(x, np.exp(x)) == pytest.approx(1.0, abs=1e-12)  # ranks, not values
    assert spearman(x, -x) == pytest.approx(-1.0, abs=1e-12)
    # Ties: ranks [1, 2.5, 2.5, 4] against [1, 2, 3, 4] give 4.5 / sqrt(4.5 · 5).
    assert spearman(np.array([1.0, 2.0, 2.0, 3.0]), x) == pytest.approx(3 / math.sqrt(10))
    assert math.isnan(spearman(np.ones(4), x))
    assert math.isnan(spearman(x[:1], x[:1]))


def test_auroc_exact_values():
    scores = np.array([0.1, 0.2, 0.3, 0.4])
    labels = np.array([False, False, True, True])
    assert auroc(scores, labels) == 1.0
    assert auroc(-scores, labels) == 0.0
    assert auroc(np.zeros(4), labels) == 0.5
    # Positives 0.4 and 0.8 against negatives 0.1 and 0.4: 1 + 0.5 + 1 + 1 of 4 pairs.
    assert auroc(np.array([0.1, 0.4, 0.4, 0.8]), labels) == 0.875
    assert math.isnan(auroc(scores, np.zeros(4, dtype=bool)))
    # The 10 largest of 0..99 lie above the 90th percentile.
    error = np.arange(100.0)
    assert high_error_auroc(error, error) == 1.0
    assert high_error_auroc(-error, error) == 0.0


def test_calibration_bins_are_deciles_of_the_prediction():
    predicted = np.arange(100.0)[::-1].copy()
    bins = calibration_bins(predicted, 2 * predicted)
    assert bins["count"] == [10] * 10
    assert bins["predicted"] == [4.5 + 10 * i for i in range(10)]
    assert bins["error"] == [2 * v for v in bins["predicted"]]


# ------------------------------------------------------------- held-out rows, simulator
def test_held_out_rows_follow_the_models_split(tiny):
    _, dataset, _, _, metadata = tiny
    rows, source = held_out_rows(dataset, metadata, seed=0)
    assert source == "model validation split"
    assert rows.size == round(len(dataset) * TINY_MODEL.validation_fraction)
    # Without a recorded split: a seeded random 10%.
    random_rows, random_source = held_out_rows(dataset, {}, seed=3)
    assert "random 10%" in random_source and random_rows.size == len(dataset) // 10
    assert np.array_equal(random_rows, held_out_rows(dataset, {}, seed=3)[0])
    assert not np.array_equal(random_rows, held_out_rows(dataset, {}, seed=4)[0])


def test_replaying_the_datasets_actions_reproduces_its_next_observations(tiny):
    """Setting the simulator to a row's qpos/qvel and replaying the actions that follow gives
    the dataset's own next observations and rewards: the basis of the multi-step error."""
    _, dataset, _, _, _ = tiny
    env, gym_id = open_simulator(NAME, dataset)
    stops = episode_stops(dataset)
    try:
        assert gym_id == "Hopper-v4"
        for row in (0, 5, 777, 1500, 2990):
            steps = min(4, int(stops[row]) - row)
            obs, rewards = replay(env, dataset.infos["qpos"][row], dataset.infos["qvel"][row],
                                  dataset.actions[row: row + steps])
            assert obs.shape[0] == steps
            np.testing.assert_allclose(obs, dataset.next_observations[row: row + steps],
                                       atol=1e-5)
            np.testing.assert_allclose(rewards, dataset.rewards[row: row + steps], atol=1e-5)
        # A start two rows before its episode's end replays two steps, the last terminal.
        end = int(np.flatnonzero(dataset.terminals)[3])
        replays = replay_starts(env, dataset, np.array([end - 1, 10]), horizon=4)
        assert replays.steps.tolist() == [2, 4]
        assert np.isnan(replays.observations[0, 2:]).all()
        assert replays.first_step_mismatch < 1e-5
    finally:
        env.close()


# --------------------------------------------------------------------- the diagnosis
def test_diagnose_measures_errors_and_rankings(tiny, tmp_path):
    _, dataset, model, path, metadata = tiny
    summary = diagnose(model, dataset, name=NAME, model_path=path, model_metadata=metadata,
                       horizon=3, samples=400, starts=100, seed=0)
    assert summary["held_out"] == {"source": "model validation split", "rows": 600}
    assert summary["one_step"]["samples"] == 400
    multi = summary["multi_step"]
    assert not multi["skipped"] and multi["simulator"] == "Hopper-v4"
    assert multi["starts"] == 100 and multi["first_step_max_abs_diff_from_dataset"] < 1e-5
    counts = [row["n"] for row in multi["per_horizon"]]
    assert [row["h"] for row in multi["per_horizon"]] == [1, 2, 3]
    assert counts[0] == 100 and counts == sorted(counts, reverse=True)
    assert multi["steps"] == sum(counts)
    assert all(row["error"]["mean"] > 0 for row in multi["per_horizon"])
    png, json_file = write_diagnosis(summary, tmp_path / "out")
    assert png.stat().st_size > 0
    saved = json.loads(json_file.read_text())
    _check_scores(saved)
    assert saved["model_file_sha256"] and saved["horizon"] == 3


def test_command_writes_png_and_json(env, tiny, tmp_path, capsys):
    out = tmp_path / "diag"
    assert ombrl_main(["model", "diagnose", NAME, "--out", str(out), *SMALL]) == 0
    stdout = capsys.readouterr().out
    assert "model diagnosis of hopper-random-v2" in stdout and "wrote" in stdout
    assert (out / PNG_FILE).stat().st_size > 0
    summary = json.loads((out / JSON_FILE).read_text())
    _check_scores(summary)
    assert summary["model"] == str(tiny[3])
    assert summary["dataset_source"].endswith(f"{NAME}.hdf5")
    assert len(summary["multi_step"]["per_horizon"]) == 3
    # The default output directory lies next to the model.
    assert main(["diagnose", NAME, *SMALL]) == 0
    assert (env / "models" / f"{NAME}-model-diagnose" / JSON_FILE).is_file()


def test_dataset_without_states_skips_multi_step_with_a_warning(env, tiny, tmp_path, capsys):
    _, dataset, _, path, _ = tiny
    bare = tmp_path / "bare.hdf5"
    write_d4rl_hdf5(replace(dataset, infos={}), bare)
    out = tmp_path / "bare-diag"
    assert main(["diagnose", NAME, "--dataset", str(bare), "--model", str(path),
                 "--out", str(out), *SMALL]) == 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("warning: ") and "\n" not in err and "infos/qpos" in err
    summary = json.loads((out / JSON_FILE).read_text())
    assert summary["multi_step"]["skipped"] is True
    assert "infos/qpos" in summary["multi_step"]["reason"]
    assert (out / PNG_FILE).is_file()


def test_missing_model_and_bad_counts_are_one_line_errors(env, tmp_path, monkeypatch, capsys):
    assert main(["diagnose", NAME, "--horizon", "0"]) == 2
    assert "--horizon must be at least 1" in one_line_error(capsys)
    monkeypatch.setenv("OMBRL_MODELS_DIR", str(tmp_path / "empty"))
    assert main(["diagnose", NAME]) == 2
    err = one_line_error(capsys)
    assert f"no environment model for {NAME}" in err
    assert f"ombrl train-model --env_name {NAME}" in err
