"""Long learning test on a locally generated hopper dataset (marked slow, not in CI).

Run with ``.venv/bin/pytest -m slow tests/test_learning_slow.py -s`` (about 5 minutes on
2 CPU cores). It runs the main job's offline pipeline (:mod:`offline_mbrl.pipeline`): a
hopper medium-replay dataset generated under the D4RL protocol (the replay buffer of a
15k-step SAC run), the environment model, an epistemic-penalty population and the
behavioral-cloning baseline (two seeds each), and checks that both clearly beat a random
policy, whose normalised score on hopper is about 1.

Recorded on 2026-11-24 (2-core CPU): epistemic-penalty 7.0 ± 2.8, behavioral cloning
7.0 ± 0.3 (normalised score, mean ± std over 2 seeds); the dataset's SAC policy itself
reached 7-8 after 15k steps, so both recover the level of their data. On 2026-12-01, with
the hand-differentiated simultaneous SAC update: epistemic-penalty 7.52, behavioral
cloning 7.60 (means over 2 seeds), in 4 min 56 s; after the policy-noise stream changed
(draw numbers taken eagerly), 3.39 and 7.53: the pessimistic score moves a lot with the
random stream at this size. Six seeds of the same pipeline (``ombrl demo --seeds 0 1 2 3 4
5``, 2026-12-01) gave epistemic-penalty 7.7 ± 1.9 (8.2, 3.6, 7.5, 9.4, 8.9, 8.7: one seed
falls back to 3.6 in its last epochs) and BC 6.3 ± 2.3; with ``--precision bfloat16`` the
same six seeds (same data and model) scored 8.3 ± 2.1 (9.2, 3.7, 8.8, 9.7, 9.2, 9.1). The
two-seed ``make demo`` from a fresh clone the same afternoon gave 3.5 ± 0.1 (seeds 0 and 1
scored 8.3 and 3.8 one epoch before the end). Why seed 0 differs between the two (checked
at 14:20 UTC): the six-seed run's dataset, generated at 11:19 UTC from a working tree
between two commits, is not the file that fresh clones generate (those of 10:30 and 13:45
UTC were byte-identical). On the six-seed data, seed 0 trained alone with the final code
scored 6.4, 8.1, 3.6, 8.2, 3.7 and 9.8 over its six epochs: a policy's test episodes flip
between a fall after about 60 steps (~3.5) and one about twice as long (~8-10) from one
epoch to the next, so the final evaluation catches either. In a population of two, seed 0
matched the single run's epoch-1 mean LossQ to 2e-5 and LossPi to 1e-3 (BLAS rounds a
batched product differently for another group count, and test returns amplify it); its
return after that epoch was 165 against 189. The demo summary now also gives each member's
mean over its last three evaluations.
"""

import csv

import pytest

from offline_mbrl.pipeline import run_pipeline

pytestmark = pytest.mark.slow


def test_pessimistic_agent_and_bc_learn_hopper_medium_replay(tmp_path):
    assert run_pipeline(tmp_path, "epistemic-penalty", seeds=(0, 1), scale=1.0,
                        progress=False) == 0
    with (tmp_path / "results" / "summary.csv").open() as handle:
        # The mean of each member's last three evaluations: the last one alone flips.
        scores = {row["mode"]: float(row["last_score_mean"])
                  for row in csv.DictReader(handle)}
    print("hopper medium-replay (15k SAC steps) normalised scores:", scores)
    assert scores["behavioral-cloning"] > 3, scores
    assert scores["epistemic-penalty"] > 3, scores
