"""The SAC-based D4RL kinds (medium, medium-replay, expert, medium-expert) at tiny sizes.

The policies train for 200 environment steps with 20 gradient updates, so they are far below
the target score; what is tested is the protocol's plumbing: row counts, flags, qpos/qvel,
metadata, policy reuse and the stopping rule.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from offline_mbrl.data import load_d4rl_hdf5
from offline_mbrl.data.collect import (
    POLICY_MARKER,
    SACCollectionOptions,
    collect,
    collect_medium_replay,
    ensure_policy,
)
from offline_mbrl.data.commands import main
from offline_mbrl.errors import UserError

# The module fixtures are costly: the suite's two workers (make test) run these tests on one.
pytestmark = pytest.mark.xdist_group("collect-sac")

TINY = ["--size", "200", "--max_train_steps", "200", "--expert_steps", "200",
        "--steps_per_epoch", "100", "--random_steps", "100", "--init_steps", "180",
        "--test_episodes", "2", "--quiet"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    # The networks are tiny: on a shared 2-core machine a second intra-op thread mostly waits
    # for a busy core (an update measured 20x slower with 2 threads than with 1).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _mtime(path: Path) -> int:
    return path.stat().st_mtime_ns


@pytest.fixture(scope="module")
def sac_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """medium, medium-replay, expert, medium-expert of hopper, in that order, via the CLI."""
    root = tmp_path_factory.mktemp("sac-datasets")
    runs: dict = {"root": root}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMBRL_DATASETS_DIR", str(root))
        mp.setenv("COLUMNS", "250")
        medium_dir = root / "policies" / "hopper-medium" / "hopper-medium-s0"
        expert_dir = root / "policies" / "hopper-expert" / "hopper-expert-s0"
        runs["medium_dir"], runs["expert_dir"] = medium_dir, expert_dir
        for kind in ("medium", "medium-replay", "expert", "medium-expert"):
            before = {d: _mtime(d / "checkpoint.pt") for d in (medium_dir, expert_dir)
                      if (d / "checkpoint.pt").exists()}
            code, out, err = _run(["datasets", "collect", f"hopper-{kind}-v2", *TINY])
            assert code == 0, err
            runs[kind] = {
                "out": out, "err": err, "before": before,
                "after": {d: _mtime(d / "checkpoint.pt") for d in before},
                "ds": load_d4rl_hdf5(root / f"hopper-{kind}-v2.hdf5",
                                     env_name=f"hopper-{kind}-v2"),
            }
        yield runs


def _check_common(ds, protocol: str, rows: int) -> None:
    meta = ds.metadata
    assert len(ds) == rows
    assert meta["protocol"] == protocol and meta["env_id"] == "Hopper-v4"
    assert meta["seed"] == 0 and meta["size"] == rows
    assert isinstance(meta["gymnasium_version"], str) and isinstance(meta["mujoco_version"], str)
    assert ds.infos["qpos"].shape == (rows, 6) and ds.infos["qvel"].shape == (rows, 6)
    # qpos/qvel are the state of observations[i] (Hopper observes qpos[1:], clip(qvel)).
    np.testing.assert_allclose(ds.observations[:, :5], ds.infos["qpos"][:, 1:], atol=1e-6)
    np.testing.assert_allclose(ds.observations[:, 5:], np.clip(ds.infos["qvel"], -10, 10),
                               atol=1e-6)
    # Inside an episode every row continues the previous one.
    chained = ~(ds.terminals | ds.timeouts)[:-1]
    np.testing.assert_array_equal(ds.next_observations[:-1][chained],
                                  ds.observations[1:][chained])


def test_medium(sac_runs) -> None:
    run = sac_runs["medium"]
    ds = run["ds"]
    _check_common(ds, "d4rl-medium", 200)
    meta = ds.metadata
    assert meta["policy"] == "sac" and meta["policy_dir"] == str(sac_runs["medium_dir"])
    assert meta["policy_train_env_steps"] == 200 and meta["policy_train_epochs"] == 2
    assert meta["policy_train_updates"] == 21 and meta["policy_max_train_steps"] == 200
    assert meta["target_score"] == 33.0 and meta["target_reached"] is False
    assert np.isfinite(meta["policy_eval_score"]) and meta["policy_eval_episodes"] == 2
    assert meta["policy_episodes"] >= 1 and "policy_return_mean" in meta
    # Stochastic actions, with their log-probabilities as D4RL stores them.
    assert ds.infos["action_log_probs"].shape == (200,)
    assert np.isfinite(ds.infos["action_log_probs"]).all()
    assert ds.terminals.any() and np.abs(ds.actions).max() <= 1.0
    # The cap was hit before the target: one warning line naming the reached score.
    warnings = [line for line in run["err"].splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "below the target 33" in warnings[0]
    assert f"{meta['policy_eval_score']:.1f}" in warnings[0]
    assert "training the medium SAC policy" in run["err"] and "epoch 1" not in run["err"]
    marker = json.loads((sac_runs["medium_dir"] / POLICY_MARKER).read_text())
    assert marker["outcome"]["env_steps"] == 200 and marker["settings"]["target_score"] == 33.0
    assert (sac_runs["medium_dir"] / "progress.txt").is_file()


def test_medium_replay_reuses_the_medium_run(sac_runs) -> None:
    run = sac_runs["medium-replay"]
    ds = run["ds"]
    _check_common(ds, "d4rl-medium-replay", 200)
    assert ds.metadata["policy_train_env_steps"] == len(ds)
    assert ds.metadata["policy_dir"] == str(sac_runs["medium_dir"])
    assert ds.terminals.sum() >= 3  # an untrained Hopper falls within ~50 steps
    # The first 100 steps had uniform random actions over the whole box.
    assert np.abs(ds.actions[:100]).max() > 0.9
    # Not retrained: the checkpoint is untouched and the log says so.
    assert run["before"] and run["before"] == run["after"]
    assert "reusing the medium policy" in run["err"] and "training the" not in run["err"]
    assert "--size does not apply" in run["err"]


def test_expert(sac_runs) -> None:
    run = sac_runs["expert"]
    ds = run["ds"]
    _check_common(ds, "d4rl-expert", 200)
    meta = ds.metadata
    assert meta["policy_dir"] == str(sac_runs["expert_dir"])
    assert meta["policy_train_env_steps"] == 200 and meta.get("target_score") is None
    assert "training the expert SAC policy" in run["err"] and "warning" not in run["err"]


def test_medium_expert_is_medium_then_expert(sac_runs) -> None:
    run = sac_runs["medium-expert"]
    ds = run["ds"]
    medium, expert = sac_runs["medium"]["ds"], sac_runs["expert"]["ds"]
    _check_common(ds, "d4rl-medium-expert", len(medium) + len(expert))
    meta = ds.metadata
    assert meta["medium_rows"] == 200 and meta["expert_rows"] == 200
    assert meta["medium/policy_dir"] == str(sac_runs["medium_dir"])
    assert meta["expert/policy_dir"] == str(sac_runs["expert_dir"])
    # Reused policies and seeded sampling give exactly the medium and expert rows.
    for key in ("observations", "actions", "rewards", "next_observations", "terminals"):
        np.testing.assert_array_equal(getattr(ds, key), np.concatenate(
            [getattr(medium, key), getattr(expert, key)]))
    np.testing.assert_array_equal(ds.infos["action_log_probs"], np.concatenate(
        [medium.infos["action_log_probs"], expert.infos["action_log_probs"]]))
    np.testing.assert_array_equal(ds.timeouts[200:], expert.timeouts)
    # The medium part's unfinished last episode is cut at the seam.
    assert ds.timeouts[199] or ds.terminals[199]
    assert run["before"] == run["after"] and len(run["before"]) == 2
    assert run["err"].count("reusing the") == 2 and "training the" not in run["err"]
    # Different noise streams: the expert's actions are not the medium's replayed.
    assert not np.array_equal(medium.actions, expert.actions)


def test_refuses_to_overwrite(sac_runs, monkeypatch: pytest.MonkeyPatch) -> None:
    root = sac_runs["root"]
    monkeypatch.setenv("OMBRL_DATASETS_DIR", str(root))
    path = root / "hopper-medium-v2.hdf5"
    before = _mtime(path)
    code, _, err = _run(["datasets", "collect", "hopper-medium-v2", *TINY])
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert "--overwrite" in err and _mtime(path) == before
    code, _, err = _run(["datasets", "collect", "hopper-random-v2", "--target_score", "10",
                         "--quiet"])
    assert code == 2 and "applies only to the SAC-based kinds" in err
    assert not (root / "hopper-random-v2.hdf5").exists()


def test_stopping_rule_budget_and_reuse_settings(tmp_path: Path) -> None:
    # No gradient updates (init_steps = budget): only the loop's bookkeeping is exercised.
    base = SACCollectionOptions(max_train_steps=150, steps_per_epoch=100, random_steps=150,
                                init_steps=150, test_episodes=1, policies_dir=tmp_path)
    lines: list[str] = []
    # Any policy beats a target of -1000: training stops after the first epoch.
    reached = SACCollectionOptions(**{**base.__dict__, "target_score": -1000.0})
    ds = collect_medium_replay("hopper-medium-replay-v2", seed=1, options=reached,
                               log=lines.append)
    assert len(ds) == 100 and ds.metadata["target_reached"] is True
    assert ds.metadata["policy_train_epochs"] == 1
    assert not any(line.startswith("warning:") for line in lines)
    # An unreachable target: the budget is exact even when it is not a whole number of epochs.
    policy = ensure_policy("hopper-medium-v2", "medium", seed=2, options=base)
    assert policy.outcome["env_steps"] == 150 and policy.outcome["epochs"] == 2
    with pytest.warns(RuntimeWarning, match="reached normalised score .* below the target 33"):
        replay = collect("hopper-medium-replay-v2", 1, 2, options=base)
    assert len(replay) == 150 and replay.metadata["target_reached"] is False
    # A finished run with other settings is not silently reused or replaced...
    other = SACCollectionOptions(**{**base.__dict__, "target_score": 50.0})
    with pytest.raises(UserError, match=r"target_score 33.0 \(now 50.0\).*--retrain"):
        ensure_policy("hopper-medium-v2", "medium", seed=2, options=other)
    # ...unless asked to.
    retrained = ensure_policy("hopper-medium-v2", "medium", seed=2,
                              options=SACCollectionOptions(**{**other.__dict__,
                                                              "retrain": True}))
    assert not retrained.reused and retrained.settings["target_score"] == 50.0
    with pytest.raises(UserError, match="at least 1"):
        collect("hopper-medium-expert-v2", 0, 2, options=base)
