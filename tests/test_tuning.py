"""``ombrl tune``: the search space, the objective, and a tiny sweep on a loopback Ray."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import re
import sys
from pathlib import Path

import pytest
import torch

from offline_mbrl.cli import COMMANDS, build_train_parser, config_from_args
from offline_mbrl.config import TrainerConfiguration
from offline_mbrl.data.collect import collect_random
from offline_mbrl.data.d4rl import write_d4rl_hdf5
from offline_mbrl.errors import UserError
from offline_mbrl.logging import read_progress
from offline_mbrl.train import Trainer
from offline_mbrl.tuning.commands import config_from_tune_args, main, parse_overrides
from offline_mbrl.tuning.search_space import Bounds, search_bounds
from offline_mbrl.tuning.tune import objective, row_score, trial_config

# One embedded Ray at a time: the suite's two workers (make test) run these tests on one, with
# the benchmark's Ray test.
pytestmark = pytest.mark.xdist_group("ray")

NAME = "hopper-random-v2"
STATS = {"aleatoric": {"mean": 0.01, "std": 0.02, "max": 0.5},
         "epistemic": {"mean": 0.1, "std": 0.3, "max": 4.0},
         "max_reward": 2.0}
TINY = ["--set", "agent.n_hidden_layers=1", "agent.n_hidden_units=16", "agent.batch_size=32",
        "max_episode_length=30", "rollout_every=10", "n_parallel_rollouts=4",
        "env_model.n_networks=3", "env_model.n_hidden_layers=1", "env_model.n_hidden_units=16",
        "env_model.reward_n_hidden_units=8", "env_model.max_number_of_training_epochs=2"]
LENGTHS = Bounds(1, 20, integer=True)


# ---------------------------------------------------------------------- search space
@pytest.mark.parametrize(("mode", "expected"), [
    ("aleatoric-partitioning", {"rollout_length": LENGTHS,
                                "ood_threshold": Bounds(0.01, 0.5, log=True)}),
    ("epistemic-partitioning", {"rollout_length": LENGTHS,
                                "ood_threshold": Bounds(0.1, 4.0, log=True)}),
    ("aleatoric-penalty", {"rollout_length": LENGTHS, "pessimism": Bounds(0.0, 4.0)}),
    ("epistemic-penalty", {"rollout_length": LENGTHS, "pessimism": Bounds(0.0, 0.5)}),
    # MOBILE's β: a fixed log range around its authors' per-dataset values, whatever the
    # model's statistics (the Bellman inconsistency is measured in Q-values, not by them).
    ("mobile", {"rollout_length": LENGTHS, "pessimism": Bounds(0.05, 10.0, log=True)}),
    # The conservative modes' weights: fixed ranges from their registry lines, around the
    # papers' values; a model-free mode has no rollout length.
    ("cql", {"agent.cql_weight": Bounds(0.5, 20.0, log=True)}),
    ("iql", {"agent.iql_expectile": Bounds(0.5, 0.95),
             "agent.iql_temperature": Bounds(0.5, 10.0, log=True)}),
    ("combo", {"rollout_length": LENGTHS, "agent.combo_weight": Bounds(0.1, 10.0, log=True)}),
])
def test_search_bounds_from_statistics(mode, expected):
    assert search_bounds(mode, STATS) == expected


def test_search_bounds_refuses_empty_ranges():
    for mode in ("offline-sac", "behavioral-cloning", "sac", "mbpo"):
        with pytest.raises(UserError, match="no pessimism or conservatism to tune"):
            search_bounds(mode, STATS)
    flat = {**STATS, "epistemic": {"mean": 0.3, "std": 0.0, "max": 0.3}}
    with pytest.raises(UserError, match="range \\[mean, max\\] is empty"):
        search_bounds("epistemic-partitioning", flat)
    with pytest.raises(UserError, match="positive largest reward"):
        search_bounds("epistemic-penalty", {**STATS, "max_reward": -1.0})


def test_library_spaces():
    optuna = pytest.importorskip("optuna", reason="optuna is not installed (extra 'tune')")
    pytest.importorskip("ray.tune", reason="ray[tune] is not installed (extra 'tune')")
    from optuna.distributions import FloatDistribution, IntDistribution
    from ray.tune.search.sample import LogUniform, Uniform

    from offline_mbrl.tuning.search_space import optuna_space, ray_space

    assert optuna.__version__
    bounds = search_bounds("aleatoric-partitioning", STATS)
    assert optuna_space(bounds) == {"rollout_length": IntDistribution(1, 20),
                                    "ood_threshold": FloatDistribution(0.01, 0.5, log=True)}
    space = ray_space(search_bounds("epistemic-penalty", STATS))
    length, penalty = space["rollout_length"], space["pessimism"]
    assert (length.lower, length.upper) == (1, 21)  # Ray's upper bound is exclusive
    assert (penalty.lower, penalty.upper) == (0.0, 0.5)
    assert isinstance(penalty.get_sampler(), Uniform)
    threshold = ray_space(bounds)["ood_threshold"]
    assert (threshold.lower, threshold.upper) == (0.01, 0.5)
    assert isinstance(threshold.get_sampler(), LogUniform)


# ---------------------------------------------------------------------- objective, flags
def test_objective_is_mean_over_members_and_last_k():
    def row(score, ret=0.0):
        return {"NormalizedTestScore": score, "AverageTestEpRet": ret}

    history = [[row(0.0), row(100.0)], [row(1.0), row(3.0)], [row(5.0), row(7.0)]]
    assert objective(history, last_k=2) == pytest.approx(4.0)
    assert objective(history, last_k=3) == pytest.approx(116 / 6)
    assert objective(history, last_k=10) == pytest.approx(116 / 6)
    assert row_score(row(math.nan, ret=-150.0)) == -150.0  # no D4RL references
    with pytest.raises(UserError, match="last_k"):
        objective(history, last_k=0)


def test_flags_and_set_overrides():
    assert parse_overrides(["agent.n_hidden_units=16", "alpha_x=auto", "seeds=[1, 2]"]) == {
        "agent": {"n_hidden_units": 16}, "alpha_x": "auto", "seeds": [1, 2]}
    with pytest.raises(UserError, match="KEY=VALUE"):
        parse_overrides(["agent.n_hidden_units"])
    with pytest.raises(UserError, match="nested keys"):
        parse_overrides(["foo.bar=1"])
    from offline_mbrl.tuning.commands import build_parser

    args = build_parser().parse_args(["--env_name", NAME, "--mode", "epistemic-penalty",
                                      "--seeds", "0", "1", "--epochs", "3",
                                      "--steps_per_epoch", "7", "--test_episodes", "2",
                                      "--set", "agent.n_hidden_units=16", "agent.alpha=auto",
                                      "--set", "max_episode_length=30"])
    config = config_from_tune_args(args)
    assert config.seeds == (0, 1) and config.offline_epochs == 3 and config.epochs == 3
    assert config.steps_per_epoch == 7 and config.test_episodes == 2
    assert config.agent.n_hidden_units == 16 and config.agent.alpha == "auto"
    assert config.max_episode_length == 30
    args = build_parser().parse_args(["--env_name", NAME, "--mode", "epistemic-penalty",
                                      "--set", "no_such_field=1"])
    with pytest.raises(UserError, match="no_such_field"):
        config_from_tune_args(args)
    trial = trial_config(config.model_dump(mode="json"), "sweep", 4,
                         {"rollout_length": 7, "pessimism": 0.25})
    assert trial.experiment_name == "sweep-trial4"
    assert trial.rollout_length == (7,) and trial.pessimism == (0.25,)
    # Agent fields join the agent group and keep its other values.
    trial = trial_config(config.model_dump(mode="json"), "sweep", 5,
                         {"agent.iql_expectile": 0.8, "agent.iql_temperature": 2.0})
    assert (trial.agent.iql_expectile, trial.agent.iql_temperature) == (0.8, 2.0)
    assert trial.agent.n_hidden_units == 16 and trial.agent.alpha == "auto"
    assert "tune" in COMMANDS


def test_conservative_modes_are_tuned_through_their_agent_fields(tmp_path):
    from offline_mbrl.tuning.commands import build_parser
    from offline_mbrl.tuning.tune import TrialOutcome, write_best

    args = build_parser().parse_args(["--env_name", NAME, "--mode", "cql",
                                      "--set", "agent.n_hidden_units=16"])
    config = config_from_tune_args(args)
    best = TrialOutcome(trial=3, params={"agent.cql_weight": 2.5}, score=1.0, epochs=2,
                        status="completed", run_dirs=[tmp_path / "run"])
    best_file = write_best(tmp_path / "best.json", best, config, last_k=3)
    assert json.loads(best_file.read_text())["hyperparameters"] == {
        "agent": {"cql_weight": 2.5}}
    # A --config file's agent settings survive the tuned agent field.
    base = tmp_path / "config.json"
    base.write_text(json.dumps({"agent": {"n_hidden_units": 16, "cql_weight": 9.0}}))
    train_args = build_train_parser().parse_args(
        ["--env_name", NAME, "--mode", "cql", "--config", str(base),
         "--hyperparameters", str(best_file)])
    trained = config_from_args(train_args)
    assert trained.agent.cql_weight == 2.5 and trained.agent.n_hidden_units == 16


def test_sweep_options_are_checked_before_any_work(tmp_path):
    pytest.importorskip("ray.tune", reason="ray[tune] is not installed (extra 'tune')")
    pytest.importorskip("optuna", reason="optuna is not installed (extra 'tune')")
    from offline_mbrl.tuning.tune import TuneOptions, tune_hyperparameters

    config = TrainerConfiguration(env_name=NAME, mode="epistemic-penalty", offline_epochs=2)
    cases = [(TuneOptions(asha=True, grace_period=3), "grace_period"),
             (TuneOptions(trials=0), "--trials"),
             (TuneOptions(exp_name="../x"), "plain directory name")]
    for options, message in cases:
        with pytest.raises(UserError, match=message):
            tune_hyperparameters(config, dataclasses.replace(options, root=tmp_path))
    with pytest.raises(UserError, match="what the sweep tunes"):
        tune_hyperparameters(config.model_copy(update={"pessimism": (1.0,)}), TuneOptions())
    # An agent field the sweep tunes counts as set by hand when it was given, whatever
    # its value (here the default).
    combo = TrainerConfiguration(env_name=NAME, mode="combo", agent={"combo_weight": 0.5})
    with pytest.raises(UserError, match=r"agent\.combo_weight is what the sweep tunes"):
        tune_hyperparameters(combo, TuneOptions(root=tmp_path))
    with pytest.raises(UserError, match="no pessimism or conservatism to tune"):
        tune_hyperparameters(TrainerConfiguration(env_name=NAME, mode="offline-sac"),
                             TuneOptions(root=tmp_path))
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("missing", ["ray", "optuna"])
def test_missing_extra_is_one_line(missing, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, missing, None)  # makes `import <missing>` fail
    code = main(["--env_name", NAME, "--mode", "epistemic-penalty", "--trials", "2"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith("error: ") and err.endswith("pip install 'offline_mbrl[tune]'")


# ---------------------------------------------------------------------- tiny runs
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tuning")
    (root / "datasets").mkdir()
    write_d4rl_hdf5(collect_random(NAME, 400, seed=0), root / "datasets" / f"{NAME}.hdf5")
    return root


@contextlib.contextmanager
def _environment(root: Path, models: Path | None = None):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMBRL_DATASETS_DIR", str(root / "datasets"))
        mp.setenv("OMBRL_MODELS_DIR", str(models or root / "models"))
        mp.setenv("OMBRL_DATA_DIR", str(root / "experiments"))
        mp.setenv("OMBRL_OFFLINE", "1")
        mp.setenv("COLUMNS", "300")
        yield


def test_epoch_hook_sees_each_epoch_after_its_checkpoint(tiny_data, tmp_path):
    seen = []
    with _environment(tiny_data, models=tmp_path / "models"):
        config = TrainerConfiguration(
            env_name=NAME, mode="epistemic-penalty", offline_epochs=2, steps_per_epoch=10,
            test_episodes=1, max_episode_length=20, rollout_every=10,
            n_parallel_rollouts=4, seeds=(0, 1), rollout_length=(2,),
            pessimism=(0.5,), agent={"n_hidden_layers": 1, "n_hidden_units": 8, "batch_size": 16},
            env_model={"n_networks": 2, "n_hidden_layers": 1, "n_hidden_units": 8,
                       "reward_n_hidden_units": 8, "max_number_of_training_epochs": 1,
                       "seed": 1})
        trainer = Trainer(config, progress=False, root=tmp_path)
        trainer.run(on_epoch=lambda epoch, rows: seen.append(
            (epoch, len(rows), all((d / "checkpoint.pt").is_file() for d in trainer.run_dirs),
             torch.load(trainer.run_dirs[0] / "checkpoint.pt", weights_only=True)
             ["counters"]["epoch"])))
    assert seen == [(1, 2, True, 1), (2, 2, True, 2)]


def test_epoch_hook_can_stop_training(tiny_data, tmp_path):
    with _environment(tiny_data, models=tmp_path / "models"):
        config = TrainerConfiguration(
            env_name=NAME, mode="offline-sac", offline_epochs=5, steps_per_epoch=5,
            test_episodes=1, max_episode_length=20,
            agent={"n_hidden_layers": 1, "n_hidden_units": 8, "batch_size": 16})
        trainer = Trainer(config, progress=False, root=tmp_path)
        rows = trainer.run(on_epoch=lambda epoch, rows: epoch == 2)
    assert rows[0]["Epoch"] == 2 and trainer.epoch == 2


@pytest.fixture(scope="module")
def loopback_ray():
    """One embedded Ray for this module, bound to 127.0.0.1; shut down at the end."""
    pytest.importorskip("ray.tune", reason="ray[tune] is not installed: the sweep needs the "
                        "'tune' extra (pip install 'offline_mbrl[tune]')")
    pytest.importorskip("optuna", reason="optuna is not installed: the sweep needs the 'tune' "
                        "extra (pip install 'offline_mbrl[tune]')")
    from offline_mbrl.tuning.tune import init_ray

    started = init_ray(num_cpus=2)
    import ray

    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def sweep(loopback_ray, tiny_data, listening_sockets):
    storage = tiny_data / "tuning"
    argv = ["--env_name", NAME, "--mode", "epistemic-partitioning", "--trials", "2",
            "--seeds", "0", "1", "--epochs", "2", "--steps_per_epoch", "20",
            "--test_episodes", "1", "--asha", "--exp_name", "sweep", "--storage_path",
            str(storage), "--no-progress", *TINY]
    out, err = io.StringIO(), io.StringIO()
    with _environment(tiny_data), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        code = main(argv)
    listening = listening_sockets(os.getpid())
    return {"code": code, "out": out.getvalue(), "err": err.getvalue(), "root": tiny_data,
            "storage": storage, "listening": listening, "argv": argv}


def _table_rows(out: str) -> dict[int, list[str]]:
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if len(cells) == 7 and re.fullmatch(r"\d+( \*)?", cells[0]):
            rows[int(cells[0].split()[0])] = cells
    return rows


def test_ray_listens_on_loopback_only(sweep):
    assert sweep["listening"], "no listening Ray sockets found"
    for address in sweep["listening"]:
        host = address.rsplit(":", 1)[0]
        assert host in ("127.0.0.1", "::ffff:127.0.0.1"), sweep["listening"]
    import ray

    assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}


def test_sweep_results_table_and_run_dirs(sweep):
    assert sweep["code"] == 0, sweep["err"]
    out, root = sweep["out"], sweep["root"]
    stats = json.loads((root / "models" / f"{NAME}-model.uncertainty.json").read_text())
    bounds = search_bounds("epistemic-partitioning", stats)
    low, high = bounds["ood_threshold"].low, bounds["ood_threshold"].high
    assert f"ood_threshold log-uniform in [{low:.4g}, {high:.4g}]" in out
    header = next(line for line in out.splitlines() if "rollout_length" in line and "┃" in line)
    assert [c.strip() for c in header.strip("┃ ").split("┃")] == [
        "trial", "rollout_length", "ood_threshold", "epochs", "score", "status",
        "run directory"]
    rows = _table_rows(out)
    assert sorted(rows) == [0, 1]
    model_path = str((root / "models" / f"{NAME}-model.pt").resolve())
    for k, cells in rows.items():
        exp_dir = root / "experiments" / f"sweep-trial{k}"
        assert cells[6] == str(exp_dir.resolve())
        epochs = int(cells[3].split("/")[0])
        assert cells[3].endswith("/2") and 1 <= epochs <= 2
        assert cells[5] in ("completed", "stopped early")
        for seed in (0, 1):
            run_dir = exp_dir / f"sweep-trial{k}-s{seed}"
            config = json.loads((run_dir / "config.json").read_text())
            assert config["seed"] == seed and config["experiment_name"] == f"sweep-trial{k}"
            assert config["pretrained_env_model_path"] == model_path
            assert 1 <= config["rollout_length"][0] <= 20
            assert low <= config["ood_threshold"][0] <= high
            assert f"{config['rollout_length'][0]}" == cells[1]
            assert f"{config['ood_threshold'][0]:.4g}" == cells[2]
            assert (run_dir / "checkpoint.pt").is_file()
            assert read_progress(run_dir / "progress.txt")["Epoch"] == \
                list(map(float, range(1, epochs + 1)))
    assert any(cells[5] == "completed" for cells in rows.values())


def test_best_hyperparameters_file_is_accepted(sweep):
    assert sweep["code"] == 0, sweep["err"]
    best_file = sweep["storage"] / "sweep" / "best_hyperparameters.json"
    best = json.loads(best_file.read_text())
    assert best["mode"] == "epistemic-partitioning" and best["env_name"] == NAME
    assert set(best["hyperparameters"]) == {"rollout_length", "ood_threshold"}
    rows = _table_rows(sweep["out"])
    starred = [k for k, cells in rows.items() if cells[0].endswith("*")]
    assert starred == [best["trial"]]
    assert f"{best['score']:.4g}" == rows[best["trial"]][4]
    assert rows[best["trial"]][5] == "completed"
    args = build_train_parser().parse_args(["--env_name", NAME, "--mode",
                                            "epistemic-partitioning", "--hyperparameters",
                                            str(best_file)])
    config = config_from_args(args)
    assert config.rollout_length == tuple(best["hyperparameters"]["rollout_length"])
    assert config.ood_threshold == tuple(best["hyperparameters"]["ood_threshold"])
    run = json.loads((sweep["root"] / "experiments" / f"sweep-trial{best['trial']}" /
                      f"sweep-trial{best['trial']}-s0" / "config.json").read_text())
    assert run["ood_threshold"] == best["hyperparameters"]["ood_threshold"]


def test_existing_sweep_is_not_clobbered(sweep, capsys):
    assert sweep["code"] == 0, sweep["err"]
    with _environment(sweep["root"]):
        assert main(sweep["argv"]) == 2
    err = capsys.readouterr().err.strip()
    assert "already exists: pass --overwrite" in err and "\n" not in err


@pytest.fixture(scope="module")
def combo_sweep(sweep):
    """A one-trial sweep of COMBO (after ``sweep``, whose environment model it reuses): a
    model-based mode whose conservatism is an agent field."""
    storage = sweep["root"] / "tuning"
    argv = ["--env_name", NAME, "--mode", "combo", "--trials", "1", "--seeds", "0",
            "--epochs", "1", "--steps_per_epoch", "10", "--test_episodes", "1",
            "--exp_name", "combo-sweep", "--storage_path", str(storage), "--no-progress", *TINY]
    out, err = io.StringIO(), io.StringIO()
    with _environment(sweep["root"]), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        code = main(argv)
    return {"code": code, "out": out.getvalue(), "err": err.getvalue()}


def test_combo_sweep_tunes_its_agent_field(combo_sweep, sweep):
    assert combo_sweep["code"] == 0, combo_sweep["err"]
    out = combo_sweep["out"]
    assert "agent.combo_weight log-uniform in [0.1, 10]" in out
    best = json.loads((sweep["root"] / "tuning" / "combo-sweep" /
                       "best_hyperparameters.json").read_text())
    assert best["mode"] == "combo" and set(best["hyperparameters"]) == {"rollout_length", "agent"}
    weight = best["hyperparameters"]["agent"]["combo_weight"]
    assert 0.1 <= weight <= 10.0
    run = json.loads((sweep["root"] / "experiments" / "combo-sweep-trial0" /
                      "combo-sweep-trial0-s0" / "config.json").read_text())
    assert run["agent"]["combo_weight"] == weight
    assert run["rollout_length"] == best["hyperparameters"]["rollout_length"]
    assert [f"{weight:.4g}"] == [cells[2] for cells in _table_rows(out).values()]
