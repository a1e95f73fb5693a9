"""``ombrl datasets uncertainty``: statistics of a tiny dataset under a tiny trained model."""

from __future__ import annotations

import json

import pytest

from offline_mbrl.data.collect import collect_random
from offline_mbrl.data.commands import main
from offline_mbrl.data.d4rl import write_d4rl_hdf5
from offline_mbrl.models.io import save_environment_model
from offline_mbrl.models.statistics import compute_uncertainty_statistics, statistics_path
from offline_mbrl.models.training import EnvironmentModelConfiguration, train_environment_model

# The module fixtures are costly: the suite's two workers (make test) run these tests on one.
pytestmark = pytest.mark.xdist_group("uncertainty")

NAME = "hopper-random-v2"
TINY_MODEL = EnvironmentModelConfiguration(n_networks=3, n_hidden_layers=1, n_hidden_units=16,
                                           reward_n_hidden_units=8,
                                           max_number_of_training_epochs=2)


def _train_and_save(dataset, path):
    model, metrics = train_environment_model(dataset, TINY_MODEL, NAME, progress=False)
    save_environment_model(model, path, {"config": TINY_MODEL.model_dump(mode="json"),
                                         "dataset_name": dataset.name,
                                         "dataset_hash": dataset.content_hash(),
                                         "validation": metrics})
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 300-transition random Hopper dataset and a tiny model trained on it."""
    root = tmp_path_factory.mktemp("uncertainty")
    (root / "datasets").mkdir()
    dataset = collect_random(NAME, 300, seed=0)
    write_d4rl_hdf5(dataset, root / "datasets" / f"{NAME}.hdf5")
    model = _train_and_save(dataset, root / "models" / f"{NAME}-model.pt")
    return root, dataset, model


@pytest.fixture()
def env(tiny, monkeypatch):
    root, _, _ = tiny
    use_directories(root, monkeypatch)
    return root


def use_directories(root, monkeypatch) -> None:
    """Datasets and models under ``root``, no downloads, wide tables."""
    monkeypatch.setenv("OMBRL_DATASETS_DIR", str(root / "datasets"))
    monkeypatch.setenv("OMBRL_MODELS_DIR", str(root / "models"))
    monkeypatch.setenv("OMBRL_OFFLINE", "1")
    monkeypatch.setenv("COLUMNS", "200")


def one_line_error(capsys) -> str:
    """The captured error output, checked to be one ``error:`` line."""
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_prints_statistics_and_caches_them(env, tiny, capsys):
    _, dataset, model = tiny
    model_path = env / "models" / f"{NAME}-model.pt"
    cache = statistics_path(model_path)
    cache.unlink(missing_ok=True)
    expected = compute_uncertainty_statistics(model, dataset)

    assert main(["datasets", "uncertainty", NAME]) == 0
    out = capsys.readouterr().out
    for kind in ("aleatoric", "epistemic"):
        row = next(line for line in out.splitlines() if kind in line)
        s = expected[kind]
        cells = [c.strip() for c in row.strip("│┃ ").split("│")]
        assert cells == [kind, f"{s['mean']:.6g}", f"{s['std']:.6g}", f"{s['max']:.6g}",
                         f"{expected['max_reward'] / s['max']:.6g}"]
    assert f"R_max (largest dataset reward) = {expected['max_reward']:.6g}" in out
    assert f"computed: {cache}" in out
    saved = json.loads(cache.read_text())
    assert saved["epistemic"] == pytest.approx(expected["epistemic"])
    assert saved["n_samples"] == 300

    # The second call reads the file; --refresh recomputes it.
    stamp = cache.stat().st_mtime_ns
    assert main(["datasets", "uncertainty", NAME]) == 0
    assert f"cached: {cache}" in capsys.readouterr().out
    assert cache.stat().st_mtime_ns == stamp
    assert main(["datasets", "uncertainty", NAME, "--refresh"]) == 0
    assert f"computed: {cache}" in capsys.readouterr().out
    assert cache.stat().st_mtime_ns != stamp


def test_missing_model_says_how_to_train_it(env, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMBRL_MODELS_DIR", str(tmp_path / "empty"))
    assert main(["datasets", "uncertainty", NAME]) == 2
    err = one_line_error(capsys)
    assert f"no environment model for {NAME}" in err
    assert f"ombrl train-model --env_name {NAME}" in err
    assert main(["datasets", "uncertainty", NAME, "--model", str(tmp_path / "nope.pt")]) == 2
    assert "nope.pt" in one_line_error(capsys)


def test_explicit_model_and_dataset(env, tmp_path, capsys):
    other = collect_random(NAME, 200, seed=1)
    other_file = tmp_path / "other.hdf5"
    write_d4rl_hdf5(other, other_file)
    other_model = tmp_path / "other-model.pt"
    _train_and_save(other, other_model)
    assert main(["datasets", "uncertainty", NAME, "--dataset", str(other_file),
                 "--model", str(other_model)]) == 0
    out = capsys.readouterr().out
    assert "200 samples" in out and statistics_path(other_model).is_file()

    # The default model belongs to the other dataset: refused with the fix.
    assert main(["datasets", "uncertainty", NAME, "--dataset", str(other_file)]) == 2
    assert "trained on dataset" in one_line_error(capsys)
