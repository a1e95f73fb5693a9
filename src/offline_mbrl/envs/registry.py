"""Map D4RL-style names (``hopper-medium-replay-v2``) to Gymnasium v5 environments.

The seed README uses D4RL names everywhere, even for online training. The original
D4RL datasets were recorded on ``*-v3`` MuJoCo environments that are no longer
maintained; we run the maintained Gymnasium ``*-v5`` versions, which have the same
observation and action layouts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import gymnasium as gym

from offline_mbrl.errors import UserError

D4RL_ENVS: dict[str, str] = {
    "hopper": "Hopper-v5",
    "halfcheetah": "HalfCheetah-v5",
    "walker2d": "Walker2d-v5",
}
D4RL_KINDS: tuple[str, ...] = ("random", "medium-replay", "medium", "medium-expert", "expert")

_D4RL_NAME = re.compile(
    r"^(?P<env>hopper|halfcheetah|walker2d)(-(?P<kind>random|medium-replay|medium-expert|medium|expert))?-v2$"
)


@dataclass(frozen=True)
class EnvSpec:
    """What a name resolves to.

    Attributes:
        name: the name as given by the user (``hopper-medium-replay-v2``, ``Pendulum-v1``).
        gym_id: the Gymnasium id that is instantiated (``Hopper-v5``).
        family: ``hopper``, ``halfcheetah``, ``walker2d`` for the MuJoCo locomotion tasks,
            otherwise the Gymnasium id itself.
        dataset_kind: the D4RL dataset kind (``medium-replay``), or ``None`` when the name
            does not name a dataset.
    """

    name: str
    gym_id: str
    family: str
    dataset_kind: str | None

    @property
    def dataset_name(self) -> str | None:
        """The D4RL dataset name, e.g. ``hopper-medium-replay-v2``; ``None`` if not a dataset."""
        if self.dataset_kind is None:
            return None
        return f"{self.family}-{self.dataset_kind}-v2"


def all_dataset_names() -> list[str]:
    """The 15 D4RL dataset names this library knows."""
    return [f"{env}-{kind}-v2" for env in D4RL_ENVS for kind in D4RL_KINDS]


def get_env_spec(name: str) -> EnvSpec:
    """Resolve a D4RL name or a Gymnasium id to an :class:`EnvSpec`.

    Raises:
        UserError: the name is neither a known D4RL name nor a registered Gymnasium id.
    """
    match = _D4RL_NAME.match(name)
    if match:
        family = match.group("env")
        return EnvSpec(name, D4RL_ENVS[family], family, match.group("kind"))
    if name in gym.registry:
        lowered = name.split("-")[0].lower()
        family = lowered if lowered in D4RL_ENVS else name
        return EnvSpec(name, name, family, None)
    known = ", ".join(sorted(D4RL_ENVS))
    raise UserError(
        f"unknown environment '{name}': use a D4RL name such as hopper-medium-replay-v2 "
        f"({known} × {', '.join(D4RL_KINDS)}), hopper-v2, or a Gymnasium id such as Hopper-v5"
    )


def make_env(name: str, render_mode: str | None = None, **kwargs: object) -> gym.Env:
    """Instantiate the Gymnasium environment behind ``name`` (with its default time limit)."""
    spec = get_env_spec(name)
    return gym.make(spec.gym_id, render_mode=render_mode, **kwargs)


def episode_limit(name: str, max_episode_length: int) -> int:
    """The shorter of ``max_episode_length`` and the environment's own time limit."""
    own = gym.spec(get_env_spec(name).gym_id).max_episode_steps
    return min(max_episode_length, own) if own else max_episode_length


def make_vector_env(name: str, n: int, max_episode_length: int | None = None
                    ) -> gym.vector.SyncVectorEnv:
    """``n`` copies of the environment stepped in lockstep, resetting on the same step.

    The final observation of an episode is in ``info["final_obs"]``.

    Synchronous: on a 2-core machine the process start-up and pipe traffic of an
    asynchronous vector env cost more than the MuJoCo steps themselves.
    """
    spec = get_env_spec(name)
    kwargs = {} if max_episode_length is None else {
        "max_episode_steps": episode_limit(name, max_episode_length)}
    return gym.vector.SyncVectorEnv(
        [lambda: gym.make(spec.gym_id, **kwargs) for _ in range(n)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
