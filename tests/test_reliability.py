"""Hostile input: names that leave their directory, bad config files, impossible targets."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from offline_mbrl.cli import train_main
from offline_mbrl.errors import UserError
from offline_mbrl.models.io import default_model_path
from offline_mbrl.paths import child_path

TINY = ["--env_name", "Pendulum-v1", "--mode", "sac", "--epochs", "1", "--steps_per_epoch",
        "40", "--random_steps", "20", "--init_steps", "20", "--test_episodes", "1",
        "--n_hidden_units", "16", "--n_hidden_layers", "1", "--batch_size", "16", "--no-progress"]


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


# ------------------------------------------------------------------ resume and its refusals
from tests.test_modes import config, dirs, hopper_dataset  # noqa: E402, F401

from offline_mbrl.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from offline_mbrl.data.d4rl import write_d4rl_hdf5  # noqa: E402
from offline_mbrl.errors import NonFiniteError  # noqa: E402
from offline_mbrl.train import Trainer  # noqa: E402


def _bc(**overrides):
    return config("behavioral-cloning", **{"experiment_name": "bc", **overrides})


def test_leftover_temporary_checkpoints_are_removed_on_the_next_start(dirs):  # noqa: F811
    trainer = Trainer(_bc(offline_epochs=1), progress=False)
    trainer.run()
    stray = trainer.run_dirs[0] / ".checkpoint.pt.abc123.tmp"
    stray.write_bytes(b"half a checkpoint")
    Trainer(_bc(offline_epochs=2), resume=True, progress=False).run()
    assert not stray.exists()


def test_population_killed_while_saving_resumes_from_the_common_epoch(dirs):  # noqa: F811
    trainer = Trainer(_bc(seeds=(0, 1), offline_epochs=2), progress=False)
    trainer.run()
    s0, s1 = trainer.run_dirs
    # Killed after member 0 saved epoch 2, while member 1 saved: it has epoch 1 only.
    (s1 / "checkpoint.pt").unlink()
    resumed = Trainer(_bc(seeds=(0, 1), offline_epochs=3), resume=True, progress=False)
    assert resumed.epoch == 1
    resumed.run()
    assert load_checkpoint(s0 / "checkpoint.pt")["counters"]["epoch"] == 3


def test_population_where_a_member_never_saved_starts_again(dirs):  # noqa: F811
    trainer = Trainer(_bc(seeds=(0, 1), offline_epochs=1), progress=False)
    trainer.run()
    (trainer.run_dirs[1] / "checkpoint.pt").unlink()
    with pytest.warns(UserWarning, match="bc-s1 never saved a checkpoint"):
        resumed = Trainer(_bc(seeds=(0, 1), offline_epochs=2), resume=True, progress=False)
    assert resumed.epoch == 0
    resumed.run()


def test_divergence_before_any_checkpoint_says_so(dirs, monkeypatch):  # noqa: F811
    trainer = Trainer(_bc(offline_epochs=2), progress=False)
    monkeypatch.setattr(trainer.agent, "update", lambda batch, rng: {
        "LossPi": torch.full((1,), float("nan"))})
    with pytest.raises(NonFiniteError, match=r"before any checkpoint was written.*--overwrite"):
        trainer.run()


def test_resume_refuses_fixed_settings_and_applies_the_others(dirs):  # noqa: F811
    Trainer(_bc(offline_epochs=1), progress=False).run()
    with pytest.raises(UserError, match=r"cannot change agent"):
        Trainer(_bc(offline_epochs=2, agent={**config("sac").agent.model_dump(), "lr": 1e6}),
                resume=True, progress=False)
    with pytest.raises(UserError, match="another mode"):
        Trainer(config("offline-sac", experiment_name="bc", offline_epochs=2), resume=True,
                progress=False)
    trainer = Trainer(_bc(offline_epochs=3, test_episodes=2), resume=True, progress=False)
    trainer.prepare()  # records the configuration, as run() does first
    trainer.close()  # its TensorBoard writer's thread would outlive the test's directory
    written = json.loads((trainer.run_dirs[0] / "config.json").read_text())
    assert written["offline_epochs"] == 3 and written["test_episodes"] == 2


def test_target_already_reached_is_one_line_and_leaves_the_run(dirs, capsys):  # noqa: F811
    trainer = Trainer(_bc(offline_epochs=2), progress=False)
    trainer.run()
    before = {p.name: p.stat().st_mtime_ns for p in trainer.run_dirs[0].iterdir()}
    with pytest.raises(UserError, match="already trained 2 epochs"):
        Trainer(_bc(offline_epochs=2), resume=True, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in trainer.run_dirs[0].iterdir()} == before
    assert train_main(["--env_name", "hopper-random-v2", "--mode", "behavioral-cloning",
                       "--epochs", "0", "--no-progress"]) == 2
    assert "--epochs must be at least 1" in one_line(capsys)


def test_empty_dataset_is_one_line_and_creates_nothing(dirs, hopper_dataset):  # noqa: F811
    dataset, _ = hopper_dataset
    empty = dirs / "empty.hdf5"
    write_d4rl_hdf5(dataset.subset(np.arange(0)) if hasattr(dataset, "subset") else
                    _empty_like(dataset), empty)
    with pytest.raises(UserError, match="no transitions"):
        Trainer(_bc(dataset=str(empty)), progress=False)
    assert not (dirs / "experiments").exists()


def _empty_like(dataset):
    import dataclasses

    return dataclasses.replace(
        dataset, **{k: getattr(dataset, k)[:0] for k in (
            "observations", "actions", "rewards", "next_observations", "terminals",
            "timeouts")}, infos={})


def test_checkpoints_of_other_contents_or_sizes_get_one_line(dirs):  # noqa: F811
    trainer = Trainer(_bc(offline_epochs=1), progress=False)
    trainer.run()
    path = trainer.run_dirs[0] / "checkpoint.pt"
    state = load_checkpoint(path)
    with pytest.raises(UserError, match="cannot change agent"):
        Trainer(_bc(offline_epochs=2, agent={**config("sac").agent.model_dump(),
                                             "n_hidden_units": 64}), resume=True, progress=False)
    del state["rngs"]
    save_checkpoint(path, {k: v for k, v in state.items() if k != "format_version"})
    with pytest.raises(UserError, match="does not fit this run"):
        Trainer(_bc(offline_epochs=2), resume=True, progress=False)


def test_evaluate_accepts_a_checkpoint_file(data_dir, capsys):
    import shutil

    from offline_mbrl.cli import evaluate_main

    assert train_main(TINY) == 0
    run = data_dir / "root" / "experiments" / "Pendulum-v1-sac" / "Pendulum-v1-sac-s0"
    copy = data_dir / "elsewhere" / "agent.pt"
    copy.parent.mkdir()
    shutil.copy(run / "checkpoint.pt", copy)
    capsys.readouterr()
    assert evaluate_main(["--exp_path", str(copy), "--episodes", "1"]) == 0
    assert "episode 0: return" in capsys.readouterr().out


def test_openmp_spins_briefly_unless_the_user_chose_a_policy():
    # OpenMP reads GOMP_SPINCOUNT once, when torch loads it: the package must set it
    # before torch is imported, and leave a user's own choice alone.
    code = ("import os, sys, offline_mbrl; "
            "print(os.environ.get('GOMP_SPINCOUNT'), 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}

    def run(**extra: str) -> list[str]:
        return subprocess.run([sys.executable, "-c", code], env={**env, **extra}, check=True,
                              capture_output=True, text=True).stdout.split()

    assert run() == ["1000", "True"]
    assert run(GOMP_SPINCOUNT="5") == ["5", "True"]
    assert run(OMP_WAIT_POLICY="ACTIVE") == ["None", "True"]


@pytest.mark.parametrize(("flags", "warned"), [
    ("fpu avx avx2 fma", True),                 # AVX2 only: bfloat16 is emulated
    ("fpu avx2 avx512f avx512_bf16", False),
    ("fpu avx2 amx_bf16 amx_tile", False),
    (None, False),                              # no /proc/cpuinfo: cannot tell, no warning
])
def test_bfloat16_on_a_cpu_that_emulates_it_is_warned_in_one_line(dirs, monkeypatch,  # noqa: F811
                                                                  flags, warned):
    import warnings

    from offline_mbrl import runtime

    monkeypatch.setattr(runtime, "cpu_flags",
                        lambda: None if flags is None else frozenset(flags.split()))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Trainer(config("offline-sac", rollout_dtype="bfloat16"), progress=False)
        Trainer(config("offline-sac"), progress=False)  # float32: never warned
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)
                and "bfloat16" in str(w.message)]
    assert len(messages) == int(warned), messages
    if warned:
        assert messages[0].startswith("--rollout_dtype bfloat16 on a CPU without bfloat16 "
                                      "products") and "\n" not in messages[0]
