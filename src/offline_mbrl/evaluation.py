"""Evaluate a population of policies in the real environment, and record videos.

:func:`evaluate_population` runs ``P · episodes`` environments side by side and asks the
policy for all their actions in one call per step. Environment ``(p, e)`` is reset with seed
``seed · 10_000 + e``: the start states depend on the episode index only, so every member
of a population, and a single-member evaluation with the same seed, start from the same
states.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import imageio.v2 as imageio
import numpy as np
import torch
from PIL import Image

from offline_mbrl.envs.registry import get_env_spec, make_env, make_vector_env
from offline_mbrl.envs.scores import normalized_score
from offline_mbrl.errors import UserError

# Episode ``e`` of an evaluation with seed ``s`` starts from ``reset(seed=s · SEED_STRIDE + e)``.
SEED_STRIDE = 10_000

RENDER_DEPS_HINT = (
    "run scripts/install_render_deps.sh as root (apt-get install -y libegl1 libegl-mesa0 "
    "libgl1-mesa-dri libgbm1) and set MUJOCO_GL=egl"
)

# GIF frame delays are whole centiseconds and viewers slow down delays under 20 ms, so a GIF
# keeps every k-th frame, with k the smallest stride that gives at least this delay.
_GIF_MIN_FRAME_MS = 20.0


@dataclass
class EvaluationResult:
    """Returns and lengths of the first episode of every environment.

    Attributes:
        returns: ``[P, episodes]`` undiscounted episode returns (float64).
        lengths: ``[P, episodes]`` episode lengths in steps (int64).
        family: :attr:`EnvSpec.family` of the environment, used for normalised scores.
    """

    returns: np.ndarray
    lengths: np.ndarray
    family: str | None = None

    @property
    def n_members(self) -> int:
        return int(self.returns.shape[0])

    @property
    def episodes(self) -> int:
        return int(self.returns.shape[1])

    def summary(self, family: str | None = None) -> dict[str, np.ndarray]:
        """Per-member statistics, each an array ``[P]``.

        Keys: ``mean_return``, ``std_return`` (population std, ``ddof=0``), ``min_return``,
        ``max_return``, ``mean_length``, ``normalized_score`` (of the mean return; NaN for an
        environment without D4RL reference returns).

        Args:
            family: overrides :attr:`family` for the normalised score.
        """
        family = self.family if family is None else family
        mean_return = self.returns.mean(axis=1)
        if family is None:
            score = np.full_like(mean_return, np.nan)
        else:
            score = np.asarray(normalized_score(family, mean_return), dtype=float)
        return {
            "mean_return": mean_return,
            "std_return": self.returns.std(axis=1),
            "min_return": self.returns.min(axis=1),
            "max_return": self.returns.max(axis=1),
            "mean_length": self.lengths.mean(axis=1),
            "normalized_score": score,
        }

    def as_metrics(self, member: int = 0, family: str | None = None) -> dict[str, float]:
        """One member's statistics as plain floats, keyed like the ``progress.txt`` columns."""
        if not -self.n_members <= member < self.n_members:
            raise IndexError(f"member {member} out of range for {self.n_members} members")
        stats = self.summary(family)
        return {
            "AverageTestEpRet": float(stats["mean_return"][member]),
            "StdTestEpRet": float(stats["std_return"][member]),
            "MaxTestEpRet": float(stats["max_return"][member]),
            "MinTestEpRet": float(stats["min_return"][member]),
            "TestEpLen": float(stats["mean_length"][member]),
            "NormalizedTestScore": float(stats["normalized_score"][member]),
        }


def _check_positive(name: str, value: int) -> None:
    if value < 1:
        raise UserError(f"{name} must be at least 1, got {value}: pass a positive integer")


def _check_seed(seed: int) -> None:
    if seed < 0:
        raise UserError(f"seed must be non-negative, got {seed}: pass a seed >= 0")


def evaluate_population(
    env_name: str,
    policy: Callable[[torch.Tensor], torch.Tensor],
    n_members: int,
    episodes: int,
    seed: int,
    max_episode_length: int = 1000,
    device: str | torch.device = "cpu",
) -> EvaluationResult:
    """Run ``episodes`` episodes for each of ``n_members`` policies, all environments at once.

    Args:
        env_name: a D4RL name or Gymnasium id (see :func:`get_env_spec`).
        policy: deterministic; maps observations ``[P, episodes, obs_dim]`` (float32, on
            ``device``) to actions ``[P, episodes, act_dim]`` within the action bounds. It is
            called once per step, under ``torch.no_grad()``, with every environment's latest
            observation, including those of finished episodes, whose actions are ignored.
        n_members: ``P``.
        episodes: episodes per member, at most ``SEED_STRIDE``.
        seed: episode ``e`` (for every member) starts from ``reset(seed=seed · 10_000 + e)``.
        max_episode_length: episodes are cut after this many steps; the environment's own
            time limit (1000 steps for the MuJoCo tasks, 200 for Pendulum-v1) still applies.
        device: where the observations are put for the policy.

    Returns:
        :class:`EvaluationResult` with ``returns`` and ``lengths`` of shape ``[P, episodes]``.

    Raises:
        UserError: unknown environment, or a non-positive count or negative seed.
    """
    spec = get_env_spec(env_name)
    _check_evaluation_counts(n_members, episodes, max_episode_length, seed)
    envs = make_vector_env(env_name, n_members * episodes)
    try:
        returns, lengths = _run_episodes(
            envs, policy, n_members, episodes, seed, max_episode_length, device
        )
    finally:
        envs.close()
    return EvaluationResult(
        returns=returns.reshape(n_members, episodes),
        lengths=lengths.reshape(n_members, episodes),
        family=spec.family,
    )


def _check_evaluation_counts(
    n_members: int, episodes: int, max_episode_length: int, seed: int
) -> None:
    """Refuse non-positive counts, a negative seed and more episodes than seeds can tell apart."""
    _check_positive("n_members", n_members)
    _check_positive("episodes", episodes)
    _check_positive("max_episode_length", max_episode_length)
    _check_seed(seed)
    if episodes > SEED_STRIDE:
        raise UserError(
            f"episodes must be at most {SEED_STRIDE} (start states are seeded with "
            f"seed * {SEED_STRIDE} + episode), got {episodes}: evaluate fewer episodes"
        )


def _run_episodes(
    envs: gym.vector.SyncVectorEnv,
    policy: Callable[[torch.Tensor], torch.Tensor],
    n_members: int,
    episodes: int,
    seed: int,
    max_episode_length: int,
    device: str | torch.device,
) -> tuple[np.ndarray, np.ndarray]:
    """Reset ``envs`` (``P · episodes`` of them) and step them until every episode has ended.

    Returns:
        ``returns`` (float64) and ``lengths`` (int64), each ``[P · episodes]``, member-major.
    """
    n_envs = n_members * episodes
    returns = np.zeros(n_envs, dtype=np.float64)
    lengths = np.zeros(n_envs, dtype=np.int64)
    active = np.ones(n_envs, dtype=bool)
    seeds: list[int | None] = [seed * SEED_STRIDE + e for _ in range(n_members)
                               for e in range(episodes)]
    obs, _ = envs.reset(seed=seeds)
    obs = np.array(obs, dtype=np.float32)
    act_shape = (n_members, episodes, *(envs.single_action_space.shape or ()))
    for _ in range(max_episode_length):
        actions = _policy_actions(policy, obs, act_shape, device)
        _step_active(envs, actions, active, obs, returns, lengths)
        if not active.any():
            break
    return returns, lengths


def _policy_actions(
    policy: Callable[[torch.Tensor], torch.Tensor],
    obs: np.ndarray,
    act_shape: tuple[int, ...],
    device: str | torch.device,
) -> np.ndarray:
    """One policy call for every environment.

    Args:
        obs: ``[P · episodes, obs_dim]`` latest observations.
        act_shape: ``(P, episodes, *action_shape)``, what the policy must return.

    Returns:
        ``[P · episodes, *action_shape]`` actions on the CPU.

    Raises:
        ValueError: the policy returned actions of another shape.
    """
    n_members, episodes = act_shape[:2]
    obs_t = torch.from_numpy(obs).to(device).reshape(n_members, episodes, obs.shape[-1])
    with torch.no_grad():
        action_t = policy(obs_t)
    if tuple(action_t.shape) != act_shape:
        raise ValueError(
            f"policy returned actions of shape {tuple(action_t.shape)}, "
            f"expected {act_shape}"
        )
    return action_t.detach().cpu().numpy().reshape(n_members * episodes, *act_shape[2:])


def _step_active(
    envs: gym.vector.SyncVectorEnv,
    actions: np.ndarray,
    active: np.ndarray,
    obs: np.ndarray,
    returns: np.ndarray,
    lengths: np.ndarray,
) -> None:
    """Step every environment whose episode goes on, updating the ``[P · episodes]`` arrays
    ``active``, ``obs``, ``returns`` and ``lengths`` in place."""
    # Finished environments are not stepped at all: SyncVectorEnv.step would step
    # every environment and autoreset the finished ones into episodes we discard.
    for i in np.flatnonzero(active):
        next_obs, reward, terminated, truncated, _ = envs.envs[i].step(actions[i])
        returns[i] += float(reward)
        lengths[i] += 1
        obs[i] = next_obs
        if terminated or truncated:
            active[i] = False


def _ffmpeg_available() -> bool:
    """Whether imageio can write MP4 (needs the ``imageio-ffmpeg`` package and its binary)."""
    try:
        # Imported here: the ImportError is the answer when imageio-ffmpeg is missing, and
        # MP4 videos then fall back to GIFs.
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return False
    return True


def _is_mujoco_env(gym_id: str) -> bool:
    return "mujoco" in str(gym.spec(gym_id).entry_point)


def record_video(
    env_name: str,
    policy_single: Callable[[np.ndarray], np.ndarray],
    path: str | os.PathLike[str],
    seed: int,
    max_episode_length: int = 1000,
    *,
    width: int = 480,
    height: int = 480,
) -> Path:
    """Render one episode off-screen and write it as an MP4 or a GIF.

    The episode starts from ``reset(seed=seed · 10_000)``, the start state of episode 0 of
    :func:`evaluate_population` with the same seed. MuJoCo renders through EGL unless
    ``MUJOCO_GL`` says otherwise. Gymnasium imports ``mujoco`` only when the first MuJoCo
    environment is made and reads ``MUJOCO_GL`` only when the first frame is rendered, so
    setting it here is early enough even if MuJoCo environments were made before.

    Args:
        env_name: a D4RL name or Gymnasium id.
        policy_single: deterministic, maps one observation ``[obs_dim]`` to one action
            ``[act_dim]`` within the action bounds.
        path: output file. ``.mp4`` is written as MP4 when ``imageio-ffmpeg`` is installed,
            otherwise as a GIF next to it (suffix ``.gif``); any other suffix gives a GIF.
        seed: see above.
        max_episode_length: the episode is cut after this many steps.
        width, height: frame size in pixels (MuJoCo environments only).

    Returns:
        The path actually written.

    Raises:
        UserError: no OpenGL context can be created, or the environment's renderer has a
            missing dependency.
    """
    os.environ.setdefault("MUJOCO_GL", "egl")
    spec = get_env_spec(env_name)
    _check_positive("max_episode_length", max_episode_length)
    _check_seed(seed)
    path = Path(path)
    as_mp4 = path.suffix.lower() == ".mp4"
    if as_mp4 and not _ffmpeg_available():
        warnings.warn(
            f"imageio-ffmpeg is not installed, writing a GIF instead of {path}: "
            "pip install imageio-ffmpeg for MP4",
            stacklevel=2,
        )
        path, as_mp4 = path.with_suffix(".gif"), False
    size = {"width": width, "height": height} if _is_mujoco_env(spec.gym_id) else {}
    env = make_env(env_name, render_mode="rgb_array", **size)
    try:
        obs, _ = env.reset(seed=seed * SEED_STRIDE)
        first_frame = _render_first_frame(env, spec.gym_id)
        fps = float(env.metadata.get("render_fps") or 30)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written next to the target and renamed, so a crash never leaves a truncated video;
        # the temporary name keeps the suffix because ffmpeg picks the container from it.
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
        try:
            writer = _Mp4Writer(tmp, fps) if as_mp4 else _GifWriter(tmp, fps)
            with writer:
                writer.append(first_frame)
                for _ in range(max_episode_length):
                    obs, _, terminated, truncated, _ = env.step(policy_single(obs))
                    writer.append(np.asarray(env.render()))
                    if terminated or truncated:
                        break
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    finally:
        env.close()
    return path


def _render_first_frame(env: gym.Env, gym_id: str) -> np.ndarray:
    """The first ``render()``, which creates the OpenGL context; failures become UserErrors."""
    try:
        return np.asarray(env.render())
    except gym.error.DependencyNotInstalled as err:
        raise UserError(f"cannot render {gym_id}: {err}") from err
    except Exception as err:
        # The first frame is where the GL context is created; its failures come as
        # RuntimeError, ImportError, OSError, AttributeError or OpenGL's own GLError,
        # depending on which library is missing, and the cause is kept in the message.
        raise UserError(
            f"cannot create an OpenGL context to render {gym_id} "
            f"({type(err).__name__}: {err}): {RENDER_DEPS_HINT}"
        ) from err


class _Mp4Writer:
    """Streams frames to ffmpeg (H.264), so a 1000-step episode is never held in memory."""

    def __init__(self, path: Path, fps: float) -> None:
        self._path, self._fps = path, fps
        self._writer: Any = None

    def __enter__(self) -> _Mp4Writer:
        return self

    def append(self, frame: np.ndarray) -> None:
        if self._writer is None:
            height, width = frame.shape[:2]
            # yuv420p needs even sizes; with them, 1 avoids imageio's resize to multiples of 16.
            block = 1 if height % 2 == 0 and width % 2 == 0 else 16
            self._writer = imageio.get_writer(
                self._path,
                format="FFMPEG",
                fps=self._fps,
                codec="libx264",
                macro_block_size=block,
            )
        self._writer.append_data(frame)

    def __exit__(self, *exc: object) -> None:
        if self._writer is not None:
            self._writer.close()


class _GifWriter:
    """Keeps every ``stride``-th frame as a paletted image and writes the GIF at the end."""

    def __init__(self, path: Path, fps: float) -> None:
        self._path = path
        self._stride = max(1, math.ceil(_GIF_MIN_FRAME_MS * fps / 1000.0))
        self._duration_ms = 1000.0 * self._stride / fps
        self._count = 0
        self._frames: list = []

    def __enter__(self) -> _GifWriter:
        return self

    def append(self, frame: np.ndarray) -> None:
        if self._count % self._stride == 0:
            # Paletted frames take a third of the memory of RGB ones.
            self._frames.append(Image.fromarray(frame).convert("P", palette=Image.Palette.ADAPTIVE))
        self._count += 1

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None or not self._frames:
            return
        first, *rest = self._frames
        first.save(
            self._path,
            format="GIF",
            save_all=True,
            append_images=rest,
            duration=self._duration_ms,
            loop=0,
        )
