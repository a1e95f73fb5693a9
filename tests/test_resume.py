"""Resume equals never stopping: a run stopped after an epoch and resumed logs the same rows."""

import math

import pytest
from tests.test_modes import config, dirs, hopper_dataset  # noqa: F401 (fixtures)

from offline_mbrl.logging import read_progress
from offline_mbrl.train import Trainer

EXACT_MODES = ["offline-sac", "behavioral-cloning", "epistemic-penalty",
               "aleatoric-partitioning", "sac", "mbpo", "cql", "iql", "combo", "mobile"]


def _rows(trainer: Trainer) -> list[dict[str, float]]:
    progress = read_progress(trainer.run_dirs[0] / "progress.txt")
    keys = [k for k in progress if k != "Time"]
    return [{k: progress[k][i] for k in keys} for i in range(len(progress["Epoch"]))]


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("mode", EXACT_MODES)
def test_resumed_run_equals_uninterrupted_run(mode, dirs):  # noqa: F811
    epochs = {"offline_epochs": 3, "online_epochs": 3}
    # Rollout rounds and model retraining fall inside epochs, not only at their borders.
    settings = {"steps_per_epoch": 25, "rollout_every": 10, "train_env_model_every": 15}
    whole = Trainer(config(mode, experiment_name="whole", **epochs, **settings), progress=False)
    whole.run()
    first = Trainer(config(mode, experiment_name="split", offline_epochs=1, online_epochs=1,
                           **settings), progress=False)
    first.run()
    resumed = Trainer(config(mode, experiment_name="split", **epochs, **settings), resume=True,
                      progress=False)
    resumed.run()
    expected, got = _rows(whole), _rows(resumed)
    assert len(got) == len(expected) == 3
    for row_expected, row_got in zip(expected, got, strict=True):
        for key, value in row_expected.items():
            assert _same(row_got[key], value), (key, row_got[key], value)


def test_tensorboard_matches_progress_after_a_resume(dirs):  # noqa: F811
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    settings = {"steps_per_epoch": 25, "experiment_name": "tb"}
    trainer = Trainer(config("behavioral-cloning", offline_epochs=2, **settings), progress=False)
    trainer.run()
    # A crash after epoch 3 was logged but before its checkpoint was written:
    stray = SummaryWriter(str(trainer.run_dirs[0] / "tensorboard"))
    stray.add_scalar("test/AverageTestEpRet", 123.0, 75)
    stray.close()
    Trainer(config("behavioral-cloning", offline_epochs=3, **settings), resume=True,
            progress=False).run()
    events = EventAccumulator(str(trainer.run_dirs[0] / "tensorboard"))
    events.Reload()
    steps = [e.step for e in events.Scalars("test/AverageTestEpRet")]
    assert steps == [25, 50, 75]
    progress = read_progress(trainer.run_dirs[0] / "progress.txt")
    values = [e.value for e in events.Scalars("test/AverageTestEpRet")]
    assert values == pytest.approx(progress["AverageTestEpRet"], rel=1e-5)
