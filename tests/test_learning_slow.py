"""Long learning test: the main job's pipeline on a locally generated hopper dataset.

Marked slow (not in CI); run with ``.venv/bin/pytest -m slow tests/test_learning_slow.py
-s`` (several minutes on 2 CPU cores). It runs :mod:`offline_mbrl.pipeline` as ``ombrl
demo`` does: a hopper medium-replay dataset generated under the D4RL protocol (the replay
buffer of a 15k-step SAC run), the environment model, an aleatoric-penalty population and
the behavioral-cloning baseline (two seeds each). Both must clearly beat a random policy
(a normalised score of about 1) and the pessimistic mode must beat behavioral cloning by a
point (the measured margins are in benchmarks/README.md, "The main job").

A seed's score is the mean of its last three evaluations: a hopper policy's test episodes
flip between an early fall and one about twice as long from one epoch to the next, so the
last evaluation alone is noisy. The measured figures are in ``benchmarks/README.md`` (the
main job).
"""

import csv

import pytest

from offline_mbrl.pipeline import run_pipeline

pytestmark = pytest.mark.slow


def test_pessimistic_agent_and_bc_learn_hopper_medium_replay(tmp_path):
    assert run_pipeline(tmp_path, "aleatoric-penalty", seeds=(0, 1), scale=1.0,
                        progress=False) == 0
    with (tmp_path / "results" / "summary.csv").open() as handle:
        # The mean of each member's last three evaluations: the last one alone flips.
        scores = {row["mode"]: float(row["last_score_mean"])
                  for row in csv.DictReader(handle)}
    print("hopper medium-replay (15k SAC steps) normalised scores:", scores)
    assert scores["behavioral-cloning"] > 3, scores
    assert scores["aleatoric-penalty"] > scores["behavioral-cloning"] + 1, scores
