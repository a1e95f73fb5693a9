"""Every training mode end to end on tiny data, model reuse, and populations."""

import dataclasses
import importlib
import json
import math

import numpy as np
import pytest
import torch

from offline_mbrl.agents import BehavioralCloning
from offline_mbrl.cli import train_main
from offline_mbrl.config import TrainerConfiguration
from offline_mbrl.data.collect import collect_random
from offline_mbrl.data.d4rl import PUBLISHED_ROWS, write_d4rl_hdf5
from offline_mbrl.errors import UserError
from offline_mbrl.logging import read_progress
from offline_mbrl.modes import MODES
from offline_mbrl.train import Trainer

# The package exports a function named `train`, which hides the module attribute.
train_module = importlib.import_module("offline_mbrl.train")
TINY_AGENT = {"n_hidden_layers": 1, "n_hidden_units": 16, "batch_size": 32}
TINY_MODEL = {"n_networks": 3, "n_hidden_layers": 1, "n_hidden_units": 16,
              "reward_n_hidden_units": 8, "max_number_of_training_epochs": 2}


@pytest.fixture(scope="module")
def hopper_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    dataset = collect_random("hopper-random-v2", 400, seed=0)
    write_d4rl_hdf5(dataset, root / "hopper-random-v2.hdf5")
    return dataset, root


@pytest.fixture()
def dirs(tmp_path, monkeypatch, hopper_dataset):
    _, datasets = hopper_dataset
    monkeypatch.setenv("OMBRL_DATASETS_DIR", str(datasets))
    monkeypatch.setenv("OMBRL_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("OMBRL_DATA_DIR", str(tmp_path / "experiments"))
    monkeypatch.setenv("OMBRL_OFFLINE", "1")
    return tmp_path


def config(mode, **overrides):
    values = {"env_name": "hopper-random-v2", "mode": mode, "offline_epochs": 1,
              "online_epochs": 1, "steps_per_epoch": 20, "random_steps": 10, "init_steps": 10,
              "test_episodes": 1, "max_episode_length": 30, "rollout_every": 10,
              "n_parallel_rollouts": 4, "train_env_model_every": 15,
              "agent": TINY_AGENT, "env_model": TINY_MODEL}
    values.update(overrides)
    return TrainerConfiguration(**values)


@pytest.mark.parametrize("mode", ["offline-sac", "behavioral-cloning", "epistemic-penalty"])
def test_offline_steps_read_nothing_back_between_rollout_rounds(mode, dirs, host_reads):
    # Host reads happen once per epoch (the finiteness check, the metric means) or per
    # rollout round, never per step: 5 and 25 steps read the same number of values.
    trainer = Trainer(config(mode, seeds=(0, 1), rollout_every=1000), progress=False)
    trainer.train_epoch(steps=3)  # the first rollout round and optimizer state
    counts = []
    for steps in (5, 25):
        with host_reads() as reads:
            trainer.train_epoch(steps=steps)
        counts.append(reads.count)
    assert counts[0] == counts[1]
    trainer.close()


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_runs(mode, dirs):
    trainer = Trainer(config(mode), progress=False)
    rows = trainer.run()
    assert math.isfinite(rows[0]["AverageTestEpRet"])
    online = mode in ("sac", "mbpo")
    assert (rows[0]["TotalEnvInteracts"] > 0) == online  # offline modes never step the env
    if mode == "behavioral-cloning":
        assert isinstance(trainer.agent, BehavioralCloning) and trainer.synthetic is None
    spec = MODES[mode]
    if spec.model_based:
        assert trainer.pessimism is not None and "RolloutLength" in rows[0]
        assert trainer.pessimism.kind == spec.pessimism
        if spec.pessimistic:
            assert trainer.pessimism.uncertainty == spec.uncertainty
    else:
        assert trainer.model is None


def test_rollouts_start_from_dataset_states(dirs, hopper_dataset, monkeypatch):
    dataset, _ = hopper_dataset
    seen = []
    original = train_module.rollout

    def spy(model, agent, start_obs, *args, **kwargs):
        seen.append(start_obs.clone())
        return original(model, agent, start_obs, *args, **kwargs)

    monkeypatch.setattr(train_module, "rollout", spy)
    Trainer(config("epistemic-penalty", seeds=(0, 1)), progress=False).run()
    assert len(seen) == 2  # 20 updates, a round every 10
    known = {tuple(row) for row in dataset.observations.round(5).tolist()}
    for start in seen:
        assert start.shape[0] == 2
        assert not (start == 0).all(dim=-1).any(), "an all-zero start state"
        for row in start.reshape(-1, start.shape[-1]).numpy().round(5).tolist():
            assert tuple(row) in known


def test_tuned_table_and_flags(dirs, hopper_dataset, monkeypatch):
    # A file that carries a D4RL name but was recorded here gets derived values...
    trainer = Trainer(config("aleatoric-partitioning"), progress=False)
    trainer.prepare()
    assert trainer.pessimism.rollout_length.tolist() == [15]
    assert trainer.resolved["ood_threshold"]["source"].startswith("derived")
    # ...while the published file, recognised by its content, gets the seed's tuned values
    # for hopper-random-v2: length 9, threshold 0.00436.
    dataset, _ = hopper_dataset
    published = dirs / "published.hdf5"
    write_d4rl_hdf5(dataclasses.replace(dataset, metadata={}), published)
    monkeypatch.setitem(PUBLISHED_ROWS, "hopper-random-v2", len(dataset))
    trainer = Trainer(config("aleatoric-partitioning", dataset=str(published),
                             experiment_name="published"), progress=False)
    trainer.prepare()
    assert trainer.pessimism.rollout_length.tolist() == [9]
    assert trainer.pessimism.threshold.tolist() == pytest.approx([0.00436])
    assert trainer.resolved["ood_threshold"]["source"] == "table"
    run_config = json.loads((trainer.run_dirs[0] / "config.json").read_text())
    assert run_config["resolved"]["rollout_length"] == {"value": [9], "source": "table"}
    trainer = Trainer(config("aleatoric-penalty", rollout_length=(3,), pessimism=(0.5,),
                             experiment_name="flags"), progress=False)
    trainer.prepare()
    assert trainer.pessimism.rollout_length.tolist() == [3]
    assert trainer.pessimism.penalty.tolist() == [0.5]
    assert trainer.pessimism.max_reward == pytest.approx(float(np.max(
        trainer.offline_dataset.rewards)))


def test_population_may_vary_pessimism_per_member(dirs):
    trainer = Trainer(config("epistemic-penalty", seeds=(0, 1, 2), pessimism=(0.0, 1.0, 2.0),
                             rollout_length=(1, 2, 3)), progress=False)
    trainer.prepare()
    assert trainer.pessimism.penalty.tolist() == [0.0, 1.0, 2.0]
    trainer.run()
    with pytest.raises(UserError, match="one value or one per member"):
        Trainer(config("epistemic-penalty", seeds=(0, 1, 2), pessimism=(0.0, 1.0),
                       experiment_name="bad"), progress=False)


def test_constructing_a_trainer_never_trains_the_model(dirs):
    model_path = dirs / "models" / "hopper-random-v2-model.pt"
    trainer = Trainer(config("epistemic-penalty"), progress=False)
    assert trainer.model is None and not model_path.is_file()
    assert trainer.pessimism is None
    trainer.prepare()  # the explicit step: trains, saves, resolves the pessimism
    assert model_path.is_file() and trainer.pessimism is not None
    assert (trainer.run_dirs[0] / "config.json").is_file()


def test_model_is_trained_once_then_reused(dirs):
    model_path = dirs / "models" / "hopper-random-v2-model.pt"
    Trainer(config("epistemic-penalty"), progress=False).run()
    assert model_path.is_file()
    stamp = model_path.stat().st_mtime_ns
    Trainer(config("aleatoric-penalty"), progress=False).run()
    assert model_path.stat().st_mtime_ns == stamp


def test_mismatched_model_is_refused(dirs):
    Trainer(config("epistemic-penalty"), progress=False).run()
    other = collect_random("hopper-random-v2", 300, seed=1)
    other_path = dirs / "other.hdf5"
    write_d4rl_hdf5(other, other_path)
    with pytest.raises(UserError, match="trained on dataset"):
        Trainer(config("epistemic-penalty", dataset=str(other_path),
                       experiment_name="other"), progress=False)


def test_pretrained_model_path_cli_errors(dirs, capsys):
    missing = dirs / "nothing.pt"
    code = train_main(["--env_name", "hopper-random-v2", "--mode", "epistemic-penalty",
                       "--pretrained_env_model_path", str(missing), "--no-progress"])
    assert code == 2
    assert "no environment model" in capsys.readouterr().err


def test_hyperparameters_file_is_honoured(dirs, tmp_path):
    import json

    path = tmp_path / "best.json"
    path.write_text(json.dumps({"hyperparameters": {"rollout_length": [2],
                                                    "ood_threshold": [0.7]}}))
    from offline_mbrl.cli import build_train_parser, config_from_args

    args = build_train_parser().parse_args(["--env_name", "hopper-random-v2", "--mode",
                                            "epistemic-partitioning", "--hyperparameters",
                                            str(path)])
    resolved = config_from_args(args)
    assert resolved.rollout_length == (2,) and resolved.ood_threshold == (0.7,)


def test_mbpo_refuses_populations(dirs):
    with pytest.raises(UserError, match="one seed"):
        Trainer(config("mbpo", seeds=(0, 1)), progress=False)


def test_progress_columns_for_pessimistic_mode(dirs):
    trainer = Trainer(config("aleatoric-partitioning", ood_threshold=(1e9,)), progress=False)
    trainer.run()
    progress = read_progress(trainer.run_dirs[0] / "progress.txt")
    assert progress["RolloutUnknownFraction"] == [0.0]
    assert torch.isfinite(torch.tensor(progress["LossQ"])).all()


@pytest.mark.parametrize("mode", ["offline-sac", "epistemic-penalty"])
def test_population_member_trains_like_a_single_run(dirs, mode):
    """Member p of a population run reproduces the single run with seed p."""
    population = Trainer(config(mode, seeds=(0, 1), experiment_name="pop"), progress=False)
    single = Trainer(config(mode, seed=1, experiment_name="one"), progress=False)
    rows_pop = population.run()
    rows_one = single.run()
    for key in ("LossQ", "LossPi", "AverageTestEpRet"):
        assert rows_pop[1][key] == pytest.approx(rows_one[0][key], rel=1e-3, abs=1e-4), key
    obs = torch.randn(1, 4, 11)
    torch.testing.assert_close(population.agent.act(obs.expand(2, 4, 11))[1],
                               single.agent.act(obs)[0], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
# On CPUs that emulate bfloat16 the run warns so (tests/test_reliability.py checks it).
@pytest.mark.filterwarnings("ignore:--precision bfloat16 on a CPU without:RuntimeWarning")
def test_compile_flag_compiles_the_update_in_either_precision(dirs, precision):
    """--compile hands the SAC update to torch.compile whatever the precision (on CPU a
    compiled bf16 update used to stay eager); compilation itself waits for the first step."""
    trainer = Trainer(config("epistemic-penalty", compile=True, experiment_name=precision,
                             agent={**TINY_AGENT, "precision": precision}), progress=False)
    assert trainer.agent.update_compiled
    assert trainer.compiled == ("update", "rollout_step")
    trainer.close()


@pytest.mark.long
def test_compiled_pessimistic_run_matches_eager(dirs):
    """--compile end to end (update and rollout step): the same losses as eager, no
    recompilation after the first steps, and a checkpoint that resumes eagerly."""
    import torch._dynamo

    torch._dynamo.reset()
    eager = Trainer(config("epistemic-penalty", seeds=(0, 1), experiment_name="eager"),
                    progress=False)
    compiled = Trainer(config("epistemic-penalty", seeds=(0, 1), experiment_name="compiled",
                              compile=True), progress=False)
    assert "rollout_step" in compiled.compiled
    compiled_frames = []
    for _ in range(2):
        a, b = eager.train_epoch(), compiled.train_epoch()
        compiled_frames.append(torch._dynamo.utils.counters["frames"]["ok"])
        for key in ("LossQ", "LossPi", "QMean"):
            np.testing.assert_allclose(b[key], a[key], rtol=1e-3, atol=1e-4)
    assert compiled_frames[0] > 0 and compiled_frames[1] == compiled_frames[0]  # no recompiles
    for key in compiled.rollout_stats:
        torch.testing.assert_close(compiled.rollout_stats[key], eager.rollout_stats[key],
                                   rtol=1e-4, atol=1e-5)
    compiled.epoch = 1
    compiled.save()
    compiled.close()
    eager.close()
    resumed = Trainer(config("epistemic-penalty", seeds=(0, 1), experiment_name="compiled",
                             offline_epochs=2), resume=True, progress=False)
    assert resumed.epoch == 1 and resumed.total_updates == 40


@pytest.mark.parametrize(("mode", "real_ratio", "n_real"), [
    ("epistemic-penalty", 0.25, 8), ("aleatoric-partitioning", 0.5, 16),
    ("offline-sac", 0.25, 32)])
def test_batches_hold_real_ratio_dataset_rows_then_synthetic_rows(mode, real_ratio, n_real,
                                                                  dirs, hopper_dataset):
    dataset, _ = hopper_dataset
    known = {np.concatenate([o, n]).tobytes()
             for o, n in zip(dataset.observations, dataset.next_observations, strict=True)}
    trainer = Trainer(config(mode, seeds=(0, 1), real_ratio=real_ratio), progress=False)
    seen = []
    update = trainer.agent.update

    def recording_update(batch, rng):
        seen.append({k: v.detach().clone() for k, v in batch.items()})
        return update(batch, rng)

    trainer.agent.update = recording_update
    trainer.train_epoch(steps=15)  # across a rollout round (rollout_every 10)
    assert len(seen) == 15
    for batch in seen:
        assert batch["obs"].shape[:2] == (2, 32)
        rows = torch.cat([batch["obs"], batch["next_obs"]], dim=-1).numpy().astype(np.float32)
        from_data = np.array([[r.tobytes() in known for r in member] for member in rows])
        # The first `real_ratio · batch_size` rows of every member come from the dataset,
        # the rest from model rollouts (whose predicted next states the data never holds).
        assert from_data[:, :n_real].all() and not from_data[:, n_real:].any()
    trainer.close()
