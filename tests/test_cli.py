"""Smoke tests of the commands with tiny settings, and their handling of bad input."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from offline_mbrl.cli import main as ombrl_main
from offline_mbrl.cli import train_main

SCRIPTS = Path(__file__).resolve().parents[1] / "src" / "offline_mbrl" / "scripts"
TINY = ["--env_name", "Pendulum-v1", "--mode", "sac", "--epochs", "2", "--steps_per_epoch",
        "60", "--random_steps", "30", "--init_steps", "30", "--test_episodes", "1",
        "--n_hidden_units", "16", "--n_hidden_layers", "2", "--batch_size", "16", "--no-progress"]


@pytest.fixture()
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("OMBRL_DATA_DIR", str(tmp_path / "experiments"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "experiments"


def run_script(name, *args, env_extra=None, timeout=300):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, str(SCRIPTS / name), *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_train_writes_run_directories(data_dir):
    assert train_main([*TINY, "--seeds", "0", "1"]) == 0
    for seed in (0, 1):
        run = data_dir / "Pendulum-v1-sac" / f"Pendulum-v1-sac-s{seed}"
        config = json.loads((run / "config.json").read_text())
        assert config["seed"] == seed and config["seeds"] is None
        lines = (run / "progress.txt").read_text().splitlines()
        header = lines[0].split("\t")
        for column in ("Epoch", "AverageTestEpRet", "StdTestEpRet", "MaxTestEpRet",
                       "MinTestEpRet", "TestEpLen", "TotalEnvInteracts", "LossPi", "LossQ",
                       "Time", "NormalizedTestScore"):
            assert column in header
        assert [row.split("\t")[0] for row in lines[1:]] == ["1", "2"]
        assert list((run / "tensorboard").glob("events.out.tfevents.*"))
        state = torch.load(run / "checkpoint.pt", weights_only=True)
        assert state["counters"]["epoch"] == 2
        assert state["replay"]["rows"].shape[0] == 120


def test_existing_run_is_refused_then_overwritten(data_dir, capsys):
    assert train_main(TINY) == 0
    capsys.readouterr()
    assert train_main(TINY) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--resume" in err and "--overwrite" in err
    assert train_main([*TINY, "--overwrite"]) == 0


def test_evaluate_agent_script(data_dir):
    assert train_main(TINY) == 0
    run = data_dir / "Pendulum-v1-sac" / "Pendulum-v1-sac-s0"
    result = run_script("evaluate_agent.py", "--exp_path", str(run), "--episodes", "2",
                        env_extra={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    assert "episode 1: return" in result.stdout and "Evaluation" in result.stdout


@pytest.mark.parametrize(("args", "needle"), [
    (["--env_name", "nope-v0"], "unknown environment"),
    (["--mode", "magic"], "invalid choice"),
    (["--steps_per_epoch", "0"], "steps_per_epoch"),
    (["--device", "cuda:7"], "device"),
    (["--agent_updates_per_step", "-1"], "agent_updates_per_step"),
    (["--alpha", "hot"], "alpha"),
])
def test_bad_input_gives_one_line_and_exit_2(data_dir, args, needle):
    result = run_script("train_agent.py", *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in result.stderr


def test_evaluate_errors(data_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "checkpoint.pt").write_bytes(b"not a checkpoint")
    for path, needle in ((empty, "holds no run"), (corrupt, "corrupt"),
                         (tmp_path / "missing", "does not exist")):
        result = run_script("evaluate_agent.py", "--exp_path", str(path))
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0]


def test_ombrl_dispatch(data_dir, capsys):
    assert ombrl_main(["--help"]) == 0
    assert "datasets" in capsys.readouterr().out
    assert ombrl_main(["frobnicate"]) == 2
    assert ombrl_main(["train", *TINY]) == 0


def test_resume_after_kill_mid_epoch(data_dir):
    args = ["--env_name", "Pendulum-v1", "--mode", "sac", "--epochs", "3", "--steps_per_epoch",
            "400", "--random_steps", "50", "--init_steps", "50", "--test_episodes", "1",
            "--n_hidden_units", "16", "--n_hidden_layers", "2", "--batch_size", "16",
            "--no-progress"]
    env = {**os.environ, "OMBRL_DATA_DIR": str(data_dir)}
    process = subprocess.Popen([sys.executable, str(SCRIPTS / "train_agent.py"), *args],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    progress = data_dir / "Pendulum-v1-sac" / "Pendulum-v1-sac-s0" / "progress.txt"
    deadline = time.time() + 240
    while time.time() < deadline:
        if progress.exists() and len(progress.read_text().splitlines()) >= 2:
            break
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.05)
    time.sleep(0.5)  # well inside epoch 2
    process.send_signal(signal.SIGKILL)
    process.wait()
    rows = progress.read_text().splitlines()
    assert len(rows) - 1 < 3, "the run finished before it could be interrupted"
    result = run_script("train_agent.py", *args, "--resume",
                        env_extra={"OMBRL_DATA_DIR": str(data_dir)})
    assert result.returncode == 0, result.stderr
    epochs = [line.split("\t")[0] for line in progress.read_text().splitlines()[1:]]
    assert epochs == ["1", "2", "3"]
    state = torch.load(progress.parent / "checkpoint.pt", weights_only=True)
    assert state["counters"]["epoch"] == 3
    assert state["counters"]["total_env_steps"] == 1200


def test_non_finite_loss_stops_with_the_step_and_keeps_last_checkpoint(data_dir, monkeypatch):
    from offline_mbrl.config import TrainerConfiguration
    from offline_mbrl.errors import NonFiniteError
    from offline_mbrl.train import Trainer

    config = TrainerConfiguration(env_name="Pendulum-v1", mode="sac", online_epochs=3,
                                  steps_per_epoch=20, random_steps=5, init_steps=5,
                                  test_episodes=1, agent={"n_hidden_layers": 1,
                                                          "n_hidden_units": 8, "batch_size": 8})
    trainer = Trainer(config, progress=False)
    original = trainer.agent.update
    calls = [0]

    def poisoned(batch, rng):
        calls[0] += 1
        metrics = original(batch, rng)
        if calls[0] >= 20:  # the 5th update of epoch 2 (16 updates in epoch 1)
            metrics["LossQ"] = metrics["LossQ"] * float("nan")
        return metrics

    monkeypatch.setattr(trainer.agent, "update", poisoned)
    with pytest.raises(NonFiniteError, match=r"at update 20 .epoch 2.") as error:
        trainer.run()
    assert "\n" not in str(error.value)
    state = torch.load(trainer.run_dirs[0] / "checkpoint.pt", weights_only=True)
    assert state["counters"]["epoch"] == 1


def test_pretrained_agent_initialises_every_member(data_dir):
    from offline_mbrl.config import TrainerConfiguration
    from offline_mbrl.policy import load_agent
    from offline_mbrl.train import Trainer

    small = {"n_hidden_layers": 1, "n_hidden_units": 8, "batch_size": 8}
    base = dict(env_name="Pendulum-v1", mode="sac", online_epochs=1, steps_per_epoch=20,
                random_steps=5, init_steps=5, test_episodes=1, agent=small)
    Trainer(TrainerConfiguration(**base, experiment_name="source"), progress=False).run()
    source = data_dir / "source" / "source-s0"
    trainer = Trainer(TrainerConfiguration(**base, experiment_name="warm", seeds=(3, 4),
                                           pretrained_agent_path=str(source)), progress=False)
    obs = torch.randn(1, 6, 3)
    expected = torch.as_tensor(load_agent(source).act(obs[0].numpy()))
    actions = trainer.agent.act(obs.expand(2, 6, 3))
    torch.testing.assert_close(actions[0], expected)
    torch.testing.assert_close(actions[1], expected)
    with pytest.raises(Exception, match=r"holds no run|does not exist"):
        Trainer(TrainerConfiguration(**base, experiment_name="bad",
                                     pretrained_agent_path=str(data_dir / "nothing")),
                progress=False)
    assert not (data_dir / "bad").exists()  # refused before any run directory was made


def test_main_job_smoke(tmp_path):
    """`ombrl demo` end to end at a tiny scale: dataset, model, both agents, plot, summary."""
    env = {**os.environ, "COLUMNS": "200"}
    result = subprocess.run([sys.executable, "-m", "offline_mbrl.cli", "demo", "--scale",
                             "0.01", "--seeds", "0", "--no-progress"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    results = tmp_path / "data" / "demo" / "results"
    for name in ("summary.md", "summary.csv", "curves.png", "curves.pdf"):
        assert (results / name).stat().st_size > 0
    with (results / "summary.csv").open() as handle:
        summary = {row["mode"]: row for row in csv.DictReader(handle)}
    assert set(summary) == {"aleatoric-penalty", "behavioral-cloning"}
    for mode, row in summary.items():
        # One seed: the final score is the last epoch's, the other the mean of the last three.
        runs = tmp_path / "data" / "demo" / "experiments"
        (progress,) = runs.glob(f"*-{mode}/*/progress.txt")
        with progress.open() as handle:
            scores = [float(r["NormalizedTestScore"])
                      for r in csv.DictReader(handle, delimiter="\t")]
        assert len(scores) == 6
        assert float(row["score_mean"]) == pytest.approx(scores[-1], abs=1e-3)
        assert float(row["last_score_mean"]) == pytest.approx(np.mean(scores[-3:]), abs=1e-3)


def test_a_warning_reaches_the_user_as_one_line(data_dir, capsys, monkeypatch):
    from offline_mbrl import runtime

    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx", "avx2", "fma"}))
    assert train_main([*TINY, "--epochs", "1", "--rollout_dtype", "bfloat16"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "bfloat16" in line]
    assert lines == ["warning: --rollout_dtype bfloat16 on a CPU without bfloat16 products "
                     "(no AVX512-BF16 or AMX): torch emulates them, many times slower than "
                     "float32; drop the flag here"], lines
