"""Renamed configuration fields: the old names still work as flags, file keys, keyword
arguments and in old checkpoints; what is written uses the new names."""

import json

import pytest
import torch
from tests.test_modes import config, dirs, hopper_dataset  # noqa: F401 (fixtures)

from offline_mbrl.checkpoint import check_resumable, save_checkpoint
from offline_mbrl.cli import build_train_parser, config_from_args, train_main
from offline_mbrl.config import AgentConfiguration, TrainerConfiguration
from offline_mbrl.errors import UserError
from offline_mbrl.logging import read_progress
from offline_mbrl.policy import load_agent
from offline_mbrl.renames import AGENT_RENAMED, TRAINER_RENAMED, current_config_names
from offline_mbrl.runs import CHECKPOINT_FILE, CONFIG_FILE, PREVIOUS_CHECKPOINT_FILE
from offline_mbrl.train import Trainer

# Old name -> (value on the command line, value it must give the new field); none is a
# default, so that a name that is dropped on the way shows.
TRAINER_VALUES = {
    "n_parallel_virtual_rollouts": ("7", 7),
    "max_virtual_rollout_length": ("3", 3),
    "virtual_buffer_size": ("5000", 5000),
    "reset_virtual_buffer_after_env_model_training": ("true", True),
}
AGENT_VALUES = {"hidden_layers": ("2", 2), "hidden_units": ("8", 8)}


def test_the_tables_cover_every_renamed_field():
    assert set(TRAINER_VALUES) == set(TRAINER_RENAMED)
    assert set(AGENT_VALUES) == set(AGENT_RENAMED)
    for new in TRAINER_RENAMED.values():
        assert new in TrainerConfiguration.model_fields
    for new in AGENT_RENAMED.values():
        assert new in AgentConfiguration.model_fields
    for old in (*TRAINER_RENAMED, *AGENT_RENAMED):
        assert old not in TrainerConfiguration.model_fields
        assert old not in AgentConfiguration.model_fields


def _parse(*argv):
    return config_from_args(build_train_parser().parse_args(list(argv)))


@pytest.mark.parametrize("old", [*TRAINER_VALUES, *AGENT_VALUES])
def test_each_old_flag_sets_the_new_field(old):
    text, value = {**TRAINER_VALUES, **AGENT_VALUES}[old]
    parsed = _parse(f"--{old}", text)
    if old in TRAINER_RENAMED:
        assert getattr(parsed, TRAINER_RENAMED[old]) == value
    else:
        assert getattr(parsed.agent, AGENT_RENAMED[old]) == value


def test_a_bare_old_boolean_flag_means_true():
    assert _parse("--reset_virtual_buffer_after_env_model_training"
                  ).reset_synthetic_buffer_after_env_model_training is True


def test_help_lists_only_the_new_flags_and_names_the_old(capsys):
    with pytest.raises(SystemExit):
        build_train_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for old, new in {**TRAINER_RENAMED, **AGENT_RENAMED}.items():
        assert f"--{new} " in text
        assert f"old name --{old})" in text
        assert text.count(f"--{old}") == 1  # only in the new flag's help


@pytest.mark.parametrize("option", ["--config", "--hyperparameters"])
def test_each_old_json_key_sets_the_new_field(tmp_path, option):
    values = {old: value for old, (_, value) in TRAINER_VALUES.items()}
    values["agent"] = {old: value for old, (_, value) in AGENT_VALUES.items()}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(values))
    parsed = _parse(option, str(path))
    for old, (_, value) in TRAINER_VALUES.items():
        assert getattr(parsed, TRAINER_RENAMED[old]) == value
    for old, (_, value) in AGENT_VALUES.items():
        assert getattr(parsed.agent, AGENT_RENAMED[old]) == value


def test_a_new_flag_overrides_an_old_key_of_the_file(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"virtual_buffer_size": 5000, "agent": {"hidden_units": 8}}))
    parsed = _parse("--config", str(path), "--synthetic_buffer_size", "6000",
                    "--n_hidden_units", "16")
    assert parsed.synthetic_buffer_size == 6000 and parsed.agent.n_hidden_units == 16


def test_old_and_new_name_with_different_values_is_refused(tmp_path, capsys):
    path = tmp_path / "both.json"
    path.write_text(json.dumps({"virtual_buffer_size": 5000, "synthetic_buffer_size": 6000}))
    assert train_main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "virtual_buffer_size is the old name of synthetic_buffer_size" in err
    with pytest.raises(ValueError, match="old name of n_hidden_units"):
        AgentConfiguration(hidden_units=8, n_hidden_units=16)
    # The same value twice is no conflict.
    assert TrainerConfiguration(virtual_buffer_size=5, synthetic_buffer_size=5
                                ).synthetic_buffer_size == 5


def test_old_keyword_arguments_work_and_only_new_names_are_written():
    made = TrainerConfiguration(n_parallel_virtual_rollouts=7, virtual_buffer_size=1e4,
                                agent={"hidden_layers": 2})
    assert made.n_parallel_rollouts == 7 and made.synthetic_buffer_size == 10_000
    assert made.agent.n_hidden_layers == 2
    dumped = made.model_dump(mode="json")
    assert not set(TRAINER_RENAMED) & set(dumped)
    assert not set(AGENT_RENAMED) & set(dumped["agent"])
    assert TrainerConfiguration(**dumped) == made


def _with_old_names(values):
    """A configuration dict as the seed's names wrote it."""
    new_to_old = {new: old for old, new in TRAINER_RENAMED.items()}
    agent_new_to_old = {new: old for old, new in AGENT_RENAMED.items()}
    old = {new_to_old.get(key, key): value for key, value in values.items()}
    old["agent"] = {agent_new_to_old.get(key, key): value
                    for key, value in values["agent"].items()}
    return old


def test_check_resumable_compares_old_names_under_the_new():
    current = TrainerConfiguration(agent={"n_hidden_units": 8}).model_dump(mode="json")
    saved = _with_old_names(current)
    assert "virtual_buffer_size" in saved and "hidden_units" in saved["agent"]
    assert current_config_names(saved) == current
    state = {"agent_kind": "sac", "obs_dim": 3, "config": saved}
    check_resumable(CHECKPOINT_FILE, state, "sac", 3, lambda seed: current)
    changed = {**current, "synthetic_buffer_size": 10}
    with pytest.raises(UserError, match=r"synthetic_buffer_size \(checkpoint 1000000, now 10\)"):
        check_resumable(CHECKPOINT_FILE, state, "sac", 3, lambda seed: changed)


def test_a_checkpoint_with_the_old_names_resumes(dirs):  # noqa: F811
    settings = {"steps_per_epoch": 20, "synthetic_buffer_size": 5000,
                "reset_synthetic_buffer_after_env_model_training": True,
                "n_parallel_rollouts": 3, "max_rollout_length": 2, "experiment_name": "old"}
    first = Trainer(config("epistemic-penalty", offline_epochs=1, **settings), progress=False)
    first.run()
    run_dir = first.run_dirs[0]
    # Rewrite the run as a version before the renames wrote it.
    for name in (CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE):
        path = run_dir / name
        if path.is_file():
            state = torch.load(path, weights_only=True)
            state["config"] = _with_old_names(state["config"])
            assert "n_parallel_virtual_rollouts" in state["config"]
            save_checkpoint(path, {k: v for k, v in state.items() if k != "format_version"})
    written = json.loads((run_dir / CONFIG_FILE).read_text())
    (run_dir / CONFIG_FILE).write_text(json.dumps(_with_old_names(written)))

    assert load_agent(run_dir).agent is not None  # evaluation reads the old names too

    def as_before(**changes):
        """The resuming configuration, built from the old names."""
        values = config("epistemic-penalty", **{**settings, **changes}).model_dump(mode="json")
        return TrainerConfiguration(**_with_old_names(values))

    resumed = Trainer(as_before(offline_epochs=2), resume=True, progress=False)
    resumed.run()
    assert read_progress(run_dir / "progress.txt")["Epoch"] == [1, 2]
    rewritten = json.loads((run_dir / CONFIG_FILE).read_text())
    assert rewritten["synthetic_buffer_size"] == 5000 and "virtual_buffer_size" not in rewritten
    assert "n_hidden_layers" in rewritten["agent"]
    assert rewritten["resolved"]["rollout_length"]["source"] == "max_rollout_length"

    # A changed setting is still refused, named by its new name.
    with pytest.raises(UserError, match="synthetic_buffer_size"):
        Trainer(as_before(offline_epochs=3, synthetic_buffer_size=6000), resume=True,
                progress=False)
