"""Long learning test on a locally generated hopper dataset (marked slow, not in CI).

Run with ``.venv/bin/pytest -m slow tests/test_learning_slow.py -s``. It generates a
hopper medium-replay dataset under the D4RL protocol (a 30k-step SAC run), trains the
environment model, then an epistemic-penalty agent and the behavioral-cloning baseline
for 30k updates each, and checks that both clearly beat a random policy (normalised
score of a random policy: about 1). The measured scores are printed for the record.
"""

import numpy as np
import pytest

from offline_mbrl import TrainerConfiguration
from offline_mbrl.data.collect import SACCollectionOptions, collect
from offline_mbrl.data.d4rl import write_d4rl_hdf5
from offline_mbrl.train import Trainer

pytestmark = pytest.mark.slow


def test_pessimistic_agent_learns_hopper_medium_replay(tmp_path, monkeypatch):
    for name in ("DATASETS", "MODELS", "DATA"):
        monkeypatch.setenv(f"OMBRL_{name}_DIR", str(tmp_path / name.lower()))
    dataset = collect("hopper-medium-replay-v2", 30_000, seed=0,
                      options=SACCollectionOptions(max_train_steps=30_000,
                                                   steps_per_epoch=5_000, test_episodes=3))
    path = write_d4rl_hdf5(dataset, tmp_path / "hopper-medium-replay-v2.hdf5")
    scores = {}
    for mode in ("epistemic-penalty", "behavioral-cloning"):
        rows = Trainer(TrainerConfiguration(
            env_name="hopper-medium-replay-v2", mode=mode, dataset=str(path), seeds=(0, 1),
            offline_epochs=6, steps_per_epoch=5_000, test_episodes=5, rollout_length=(5,),
            env_model={"max_number_of_training_epochs": 100}), progress=False).run()
        scores[mode] = float(np.mean([r["NormalizedTestScore"] for r in rows]))
    print("hopper medium-replay (30k SAC steps) normalised scores:", scores)
    assert scores["behavioral-cloning"] > 5, scores
    assert scores["epistemic-penalty"] > 5, scores
