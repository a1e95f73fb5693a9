"""Hostile input: names that leave their directory, bad config files, impossible targets."""

import json

import pytest

from offline_mbrl.cli import train_main
from offline_mbrl.errors import UserError
from offline_mbrl.models.io import default_model_path
from offline_mbrl.paths import child_path

TINY = ["--env_name", "Pendulum-v1", "--mode", "sac", "--epochs", "1", "--steps_per_epoch",
        "40", "--random_steps", "20", "--init_steps", "20", "--test_episodes", "1",
        "--hidden_units", "16", "--hidden_layers", "1", "--batch_size", "16", "--no-progress"]


@pytest.fixture()
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("OMBRL_DATA_DIR", str(tmp_path / "root" / "experiments"))
    monkeypatch.setenv("OMBRL_MODELS_DIR", str(tmp_path / "root" / "models"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("name", ["../../escape", "../victim", "/tmp/abs", "~/x", "a/../../b",
                                  ".", ""])
def test_experiment_names_cannot_leave_the_data_directory(name, data_dir, capsys):
    victim = data_dir / "root" / "victim"
    victim.mkdir(parents=True)
    (victim / "keep.txt").write_text("user data")
    before = sorted(p.relative_to(data_dir) for p in data_dir.rglob("*"))
    assert train_main([*TINY, "--exp_name", name, "--overwrite"]) == 2
    assert "--exp_name" in one_line(capsys)
    assert sorted(p.relative_to(data_dir) for p in data_dir.rglob("*")) == before
    assert (victim / "keep.txt").read_text() == "user data"


def test_nested_plain_names_stay_inside(tmp_path):
    assert child_path(tmp_path, "group/run", "experiment name", "--exp_name") == \
        tmp_path / "group" / "run"
    with pytest.raises(UserError, match="--env_name"):
        default_model_path("../../outside")


@pytest.mark.parametrize("content", ["[1, 2]", '"str"', '{"agent": "str"}'])
def test_config_files_of_the_wrong_shape_get_one_line(content, data_dir, capsys):
    path = data_dir / "config.json"
    path.write_text(content)
    assert train_main([*TINY, "--config", str(path)]) == 2
    line = one_line(capsys)
    assert "--config" in line or "'agent'" in line


def test_config_json_of_a_run_is_a_valid_config_file(data_dir, capsys):
    assert train_main(TINY) == 0
    run = data_dir / "root" / "experiments" / "Pendulum-v1-sac" / "Pendulum-v1-sac-s0"
    config = json.loads((run / "config.json").read_text())
    config["resolved"] = {"rollout_length": {"value": [5], "source": "flag"}}
    (data_dir / "c.json").write_text(json.dumps(config))
    assert train_main([*TINY, "--config", str(data_dir / "c.json"), "--exp_name", "again"]) == 0
