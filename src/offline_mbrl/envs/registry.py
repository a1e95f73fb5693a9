"""Map D4RL-style names (``hopper-medium-replay-v2``) to Gymnasium MuJoCo environments.

The seed README uses D4RL names everywhere, even for online training. The D4RL v2 datasets
were recorded on gym's ``*-v3`` environments; Gymnasium's ``*-v4`` environments load the
same MuJoCo models through the maintained ``mujoco`` bindings, so D4RL names run on them
and scores stay comparable with published ones. ``*-v5`` changed the models (Walker2d's
left foot friction), so data recorded on v5 is evaluated on v5: a dataset's own
``env_id`` (see :func:`dataset_env_id`) takes precedence over this table.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Any

import gymnasium as gym

from offline_mbrl.errors import UserError

D4RL_ENVS: dict[str, str] = {
    "hopper": "Hopper-v4",
    "halfcheetah": "HalfCheetah-v4",
    "walker2d": "Walker2d-v4",
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
        gym_id: the Gymnasium id that is instantiated (``Hopper-v4``).
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


def _make(gym_id: str, **kwargs: Any) -> gym.Env:
    with warnings.catch_warnings():
        # The v4 environments are kept on purpose (see the module docstring).
        warnings.filterwarnings("ignore", message=".*is out of date.*")
        return gym.make(gym_id, **kwargs)


def evaluation_env_id(name: str, recorded_env_id: object = None) -> str:
    """The Gymnasium id a dataset's policies are evaluated on.

    Data recorded by this library carries the id it was recorded on (``env_id`` in its
    metadata), which is used when it is registered and of the same family as ``name``;
    published D4RL files carry none and run on ``name``'s environment (``*-v4``).
    """
    spec = get_env_spec(name)
    if isinstance(recorded_env_id, str) and recorded_env_id in gym.registry \
            and get_env_spec(recorded_env_id).family == spec.family:
        return recorded_env_id
    return spec.gym_id


def make_env(name: str, render_mode: str | None = None, **kwargs: object) -> gym.Env:
    """Instantiate the Gymnasium environment behind ``name`` (with its default time limit)."""
    spec = get_env_spec(name)
    return _make(spec.gym_id, render_mode=render_mode, **kwargs)


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
        [lambda: _make(spec.gym_id, **kwargs) for _ in range(n)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
