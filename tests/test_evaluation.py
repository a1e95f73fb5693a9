"""Population evaluation against plain Gymnasium loops, and video recording."""

from __future__ import annotations

import gc
import math
import os
from collections.abc import Callable

import gymnasium as gym
import imageio.v3 as iio
import numpy as np
import pytest
import torch

from offline_mbrl import evaluation
from offline_mbrl.errors import UserError
from offline_mbrl.evaluation import (
    SEED_STRIDE,
    EvaluationResult,
    evaluate_population,
    record_video,
)

ACT_DIM = {"Pendulum-v1": 1, "Hopper-v5": 3}


def _reference(
    gym_id: str,
    act: Callable[[np.ndarray], np.ndarray],
    seed: int,
    episodes: int,
    max_episode_length: int = 1000,
) -> tuple[np.ndarray, np.ndarray]:
    """Returns and lengths of ``episodes`` episodes run one by one in plain Gymnasium."""
    returns, lengths = np.zeros(episodes), np.zeros(episodes, dtype=np.int64)
    for episode in range(episodes):
        env = gym.make(gym_id)
        obs, _ = env.reset(seed=seed * SEED_STRIDE + episode)
        for _ in range(max_episode_length):
            obs, reward, terminated, truncated, _ = env.step(act(obs))
            returns[episode] += float(reward)
            lengths[episode] += 1
            if terminated or truncated:
                break
        env.close()
    return returns, lengths


def _constant_policy(values: list[float], act_dim: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Member ``p`` always plays ``values[p]`` in every action dimension."""
    table = torch.tensor(values, dtype=torch.float32)[:, None, None]

    def policy(obs: torch.Tensor) -> torch.Tensor:
        return table.expand(obs.shape[0], obs.shape[1], act_dim).clone()

    return policy


def _feedback_policy(
    gain: torch.Tensor, bias: torch.Tensor, scale: float
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``scale · tanh(obs[..., :act_dim] · gain_p + bias_p)`` with gain/bias ``[P, 1, act_dim]``.

    Elementwise only, so each member's actions are bit-identical whatever the batch.
    """
    act_dim = gain.shape[-1]

    def policy(obs: torch.Tensor) -> torch.Tensor:
        return scale * torch.tanh(obs[..., :act_dim] * gain + bias)

    return policy


@pytest.mark.parametrize("gym_id", ["Pendulum-v1", "Hopper-v5"])
def test_constant_policy_matches_plain_loop(gym_id: str) -> None:
    act_dim, values, seed = ACT_DIM[gym_id], [0.5, -0.25], 3
    result = evaluate_population(gym_id, _constant_policy(values, act_dim), 2, 3, seed)
    assert result.returns.shape == (2, 3) and result.lengths.shape == (2, 3)
    assert result.lengths.dtype == np.int64
    for member, value in enumerate(values):
        action = np.full(act_dim, value, dtype=np.float32)
        returns, lengths = _reference(gym_id, lambda obs, a=action: a, seed, 3)
        np.testing.assert_allclose(result.returns[member], returns, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(result.lengths[member], lengths)
    if gym_id == "Pendulum-v1":
        assert (result.lengths == 200).all()  # Pendulum's own time limit still applies
        assert result.family == "Pendulum-v1"
    else:
        # Only each environment's first episode counts, and they end at different steps.
        assert (result.lengths < 1000).all() and len(np.unique(result.lengths)) > 1
        assert result.family == "hopper"


@pytest.mark.parametrize("gym_id", ["Pendulum-v1", "Hopper-v5"])
def test_members_are_independent(gym_id: str) -> None:
    act_dim, seed, episodes = ACT_DIM[gym_id], 7, 2
    scale = 2.0 if gym_id == "Pendulum-v1" else 1.0
    generator = torch.Generator().manual_seed(0)
    gain = torch.randn(3, 1, act_dim, generator=generator)
    bias = 0.3 * torch.randn(3, 1, act_dim, generator=generator)
    population = evaluate_population(gym_id, _feedback_policy(gain, bias, scale), 3, episodes, seed)
    for member in range(3):
        alone = evaluate_population(
            gym_id,
            _feedback_policy(gain[member : member + 1], bias[member : member + 1], scale),
            1,
            episodes,
            seed,
        )
        np.testing.assert_array_equal(population.returns[member], alone.returns[0])
        np.testing.assert_array_equal(population.lengths[member], alone.lengths[0])

        single = _feedback_policy(gain[member, 0], bias[member, 0], scale)

        def act(obs: np.ndarray, single=single) -> np.ndarray:
            return single(torch.from_numpy(obs.astype(np.float32))).numpy()

        returns, lengths = _reference(gym_id, act, seed, episodes)
        np.testing.assert_allclose(population.returns[member], returns, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(population.lengths[member], lengths)
    assert len(np.unique(population.returns)) == population.returns.size


def test_one_policy_call_per_step_for_every_member_and_episode() -> None:
    # No stalls: all P x episodes environments step together, so an evaluation costs as
    # many batched policy calls as its longest episode has steps (Pendulum: always 200).
    calls: list[tuple[int, ...]] = []
    constant = _constant_policy([0.5, -0.5], 1)

    def policy(obs: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(obs.shape))
        return constant(obs)

    result = evaluate_population("Pendulum-v1", policy, 2, 3, seed=1)
    assert (result.lengths == 200).all()
    assert calls == [(2, 3, 3)] * 200


def test_start_states_depend_on_episode_only() -> None:
    same = evaluate_population("Hopper-v5", _constant_policy([0.1, 0.1], 3), 2, 3, seed=5)
    np.testing.assert_array_equal(same.returns[0], same.returns[1])
    assert len(np.unique(same.returns[0])) == 3  # but episodes differ from each other
    alone = evaluate_population("Hopper-v5", _constant_policy([0.1], 3), 1, 3, seed=5)
    np.testing.assert_array_equal(alone.returns[0], same.returns[0])
    other_seed = evaluate_population("Hopper-v5", _constant_policy([0.1], 3), 1, 3, seed=6)
    assert not np.array_equal(other_seed.returns, alone.returns)


def test_max_episode_length_is_honoured() -> None:
    calls: list[tuple] = []
    constant = _constant_policy([1.0, -1.0], 1)

    def policy(obs: torch.Tensor) -> torch.Tensor:
        calls.append((tuple(obs.shape), obs.dtype))
        return constant(obs)

    result = evaluate_population("Pendulum-v1", policy, 2, 3, seed=0, max_episode_length=17)
    assert (result.lengths == 17).all()
    assert calls == [((2, 3, 3), torch.float32)] * 17  # one batched call per step
    for member, value in enumerate([1.0, -1.0]):
        action = np.full(1, value, dtype=np.float32)
        returns, _ = _reference("Pendulum-v1", lambda obs, a=action: a, 0, 3, 17)
        np.testing.assert_allclose(result.returns[member], returns, rtol=0, atol=1e-6)

    # Hopper with zero torques survives well past 25 steps.
    hopper = evaluate_population("Hopper-v5", _constant_policy([0.0], 3), 1, 2, 0, 25)
    assert (hopper.lengths == 25).all()


def test_bad_arguments() -> None:
    policy = _constant_policy([0.0], 1)
    for kwargs in (
        {"n_members": 0},
        {"episodes": 0},
        {"seed": -1},
        {"max_episode_length": 0},
        {"episodes": SEED_STRIDE + 1},
    ):
        arguments = {"n_members": 1, "episodes": 1, "seed": 0, **kwargs}
        with pytest.raises(UserError) as info:
            evaluate_population("Pendulum-v1", policy, **arguments)
        assert "\n" not in str(info.value) and ": " in str(info.value)
    with pytest.raises(UserError, match="unknown environment"):
        evaluate_population("no-such-env-v0", policy, 1, 1, 0)
    with pytest.raises(ValueError, match=r"expected \(2, 1, 1\)"):
        evaluate_population("Pendulum-v1", lambda obs: torch.zeros(2, 1, 2), 2, 1, 0)


def test_summary_and_metrics() -> None:
    result = EvaluationResult(
        returns=np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 9.0]]),
        lengths=np.array([[10, 20, 30], [1, 1, 1]]),
        family="hopper",
    )
    stats = result.summary()
    np.testing.assert_array_equal(stats["mean_return"], [2.0, 6.0])
    np.testing.assert_allclose(stats["std_return"], [math.sqrt(2 / 3), math.sqrt(14 / 3)])
    np.testing.assert_array_equal(stats["min_return"], [1.0, 4.0])
    np.testing.assert_array_equal(stats["max_return"], [3.0, 9.0])
    np.testing.assert_array_equal(stats["mean_length"], [20.0, 1.0])
    low, high = -20.272305, 3234.3
    np.testing.assert_allclose(
        stats["normalized_score"], [100 * (2 - low) / (high - low), 100 * (6 - low) / (high - low)]
    )
    metrics = result.as_metrics(1)
    assert metrics == {
        "AverageTestEpRet": 6.0,
        "StdTestEpRet": pytest.approx(math.sqrt(14 / 3)),
        "MaxTestEpRet": 9.0,
        "MinTestEpRet": 4.0,
        "TestEpLen": 1.0,
        "NormalizedTestScore": pytest.approx(100 * (6 - low) / (high - low)),
    }
    assert all(type(value) is float for value in metrics.values())
    assert math.isnan(result.as_metrics(0, family="Pendulum-v1")["NormalizedTestScore"])
    assert np.isnan(
        EvaluationResult(result.returns, result.lengths).summary()["normalized_score"]
    ).all()
    with pytest.raises(IndexError):
        result.as_metrics(2)


# --- video ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def egl() -> None:
    """Skip when this machine cannot create an EGL context (no libEGL / Mesa drivers)."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        from mujoco.egl import GLContext

        GLContext(16, 16).free()
    except Exception as err:
        pytest.skip(
            f"EGL cannot be initialised here ({type(err).__name__}: {err}); "
            "run scripts/install_render_deps.sh as root"
        )


def _zeros(obs: np.ndarray) -> np.ndarray:
    return np.zeros(3, dtype=np.float32)


def test_record_gif(egl: None, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUJOCO_GL", "egl")
    path = record_video(
        "hopper-medium-v2",
        _zeros,
        tmp_path / "ep.gif",
        seed=0,
        max_episode_length=10,
        width=48,
        height=32,
    )
    assert path == tmp_path / "ep.gif"
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
    frames = iio.imread(path, index=None)
    # 11 frames at 125 fps; a GIF keeps every 3rd (24 ms apart), i.e. steps 0, 3, 6, 9.
    assert frames.shape[0] == 4 and frames.shape[1:3] == (32, 48)
    assert frames[0].std() > 0  # a scene, not a blank frame


@pytest.mark.skipif(not evaluation._ffmpeg_available(), reason="imageio-ffmpeg not installed")
def test_record_mp4(egl: None, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUJOCO_GL", "egl")
    path = record_video(
        "Hopper-v5",
        _zeros,
        tmp_path / "ep.mp4",
        seed=0,
        max_episode_length=5,
        width=64,
        height=64,
    )
    assert path == tmp_path / "ep.mp4"
    frames = iio.imread(path, index=None)
    assert frames.shape == (6, 64, 64, 3)


def test_mp4_falls_back_to_gif(egl: None, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUJOCO_GL", "egl")
    monkeypatch.setattr(evaluation, "_ffmpeg_available", lambda: False)
    with pytest.warns(UserWarning, match="imageio-ffmpeg"):
        path = record_video(
            "Hopper-v5",
            _zeros,
            tmp_path / "ep.mp4",
            seed=0,
            max_episode_length=2,
            width=32,
            height=32,
        )
    assert path == tmp_path / "ep.gif" and path.exists()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_no_gl_context_is_a_user_error(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gymnasium.envs.mujoco import mujoco_rendering

    def no_display(width: int, height: int) -> None:
        raise RuntimeError("Cannot initialize a EGL device display.")

    monkeypatch.setenv("MUJOCO_GL", "egl")
    monkeypatch.setitem(mujoco_rendering._ALL_RENDERERS, "egl", no_display)
    with pytest.raises(UserError) as info:
        record_video("Hopper-v5", _zeros, tmp_path / "ep.gif", seed=0, max_episode_length=2)
    message = str(info.value)
    # Gymnasium's half-built viewer complains in __del__; collect it here, under the filter.
    del info
    gc.collect()
    assert "\n" not in message
    assert "scripts/install_render_deps.sh" in message and "MUJOCO_GL=egl" in message
    assert "Cannot initialize a EGL device display" in message
    assert list(tmp_path.iterdir()) == []
