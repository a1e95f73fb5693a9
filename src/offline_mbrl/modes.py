"""The registry of training modes: every list of modes in the package derives from it.

A mode is a frozen :class:`ModeSpec`: which agent learns, whether it learns online or from
a dataset, whether an environment model generates synthetic data, and which pessimism the
rollouts apply. The command line's choices, the configuration's validation, the trainer,
``load_agent``, plotting, tuning and the hyperparameter table read it from here.

Adding a mode is one agent file (``agents/<name>.py``) and one :func:`register` call below,
or in the user's own code before the configuration is built::

    from offline_mbrl.modes import ModeSpec, register
    register(ModeSpec("my-mode", agent="my_package.agents:MyAgent", online=False))

The agent is named by its import path, so that this module imports no agent (and agents,
which read the configuration, can import it freely).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Literal

PessimismKind = Literal["none", "penalty", "partitioning"]
Uncertainty = Literal["aleatoric", "epistemic", "bellman"]


@dataclass(frozen=True)
class Bounds:
    """A closed range ``[low, high]`` a sweep draws one hyperparameter from: integers, or
    floats on a linear or log scale."""

    low: float
    high: float
    log: bool = False
    integer: bool = False


@dataclass(frozen=True)
class ModeSpec:
    """One training mode."""

    name: str
    """What ``--mode`` takes."""
    agent: str
    """The agent class as ``module:Class``; it follows the :class:`~offline_mbrl.agents.base.
    Agent` protocol."""
    online: bool
    """Learns from environment interaction (else from a dataset)."""
    model_based: bool = False
    """An environment model generates synthetic transitions for the agent."""
    pessimism: PessimismKind = "none"
    """What rollouts do with the model's uncertainty: subtract it from the reward
    (``penalty``), end the rollout where it is too high (``partitioning``), or nothing."""
    uncertainty: Uncertainty | None = None
    """Which uncertainty the pessimism reads: the ensemble's ``aleatoric`` or ``epistemic``
    uncertainty of the next state, or the ``bellman`` inconsistency of its members' Bellman
    targets under the agent's critic (MOBILE; see :mod:`offline_mbrl.rollouts`)."""
    default_updates: int = 500_000
    """Gradient updates of an offline run when ``--epochs`` is not given."""
    precisions: tuple[str, ...] = ("float32", "bfloat16")
    """``--precision`` values the agent supports."""
    summary: str = ""
    """One line for ``--help`` and the README."""
    table_agent_field: str | None = None
    """The agent field the hyperparameter table's ``value`` column sets for this mode, unless
    given (COMBO's ``combo_weight``); without one, the value is the mode's pessimism. The
    table's rollout length applies to every mode with rows there."""
    search: tuple[tuple[str, Bounds], ...] = ()
    """What ``ombrl tune`` searches besides the rollout length (model-based modes) and a
    pessimism derived from the model's uncertainty statistics: ``(field, range)`` pairs,
    agent fields written ``agent.<name>``. A pessimism listed here takes this range instead
    of the derived one."""

    @property
    def pessimistic(self) -> bool:
        """Whether rollouts apply a penalty or partitioning."""
        return self.pessimism != "none"

    @property
    def pessimism_field(self) -> str | None:
        """The configuration field of this mode's pessimism value (λ or threshold)."""
        return {"penalty": "pessimism", "partitioning": "ood_threshold"}.get(self.pessimism)

    @property
    def tuned_fields(self) -> tuple[str, ...]:
        """The configuration fields ``ombrl tune`` searches, in order (empty for modes it
        cannot tune: online ones, and offline ones with no pessimism or search range)."""
        if self.online:
            return ()
        searched = tuple(name for name, _ in self.search)
        pessimism = (self.pessimism_field,) if self.pessimism_field else ()
        if not pessimism and not searched:
            return ()
        fields = ("rollout_length",) if self.model_based else ()
        return tuple(dict.fromkeys(fields + pessimism + searched))

    def agent_class(self) -> Any:
        """The agent class, imported on first use."""
        module, _, name = self.agent.partition(":")
        return getattr(importlib.import_module(module), name)


MODES: dict[str, ModeSpec] = {}
"""Every registered mode by name, in registration order."""


def register(spec: ModeSpec) -> ModeSpec:
    """Add ``spec`` to the registry (replacing a mode of the same name)."""
    if spec.pessimistic and spec.uncertainty is None:
        raise ValueError(f"mode {spec.name!r}: a pessimistic mode names its uncertainty")
    if spec.pessimistic and not spec.model_based:
        raise ValueError(f"mode {spec.name!r}: pessimism needs an environment model")
    MODES[spec.name] = spec
    return spec


def get_mode(name: str) -> ModeSpec:
    """The spec of mode ``name``; a :class:`KeyError` names the known modes."""
    try:
        return MODES[name]
    except KeyError:
        raise KeyError(f"unknown mode {name!r}: choose one of {', '.join(MODES)}") from None


LEGACY_AGENT_KINDS = {"sac": "offline_mbrl.agents.sac:SAC",
                      "bc": "offline_mbrl.agents.bc:BehavioralCloning"}
"""What checkpoints written before the registry call their agents."""


def agent_class_of(kind: str) -> Any:
    """The agent class a checkpoint's ``agent_kind`` names: one of the registered modes'
    agents (never an arbitrary import path from a file), or a legacy short name."""
    path = LEGACY_AGENT_KINDS.get(kind, kind)
    for spec in MODES.values():
        if spec.agent == path:
            return spec.agent_class()
    raise KeyError(f"agent {kind!r} belongs to no registered mode")


def same_agent(a: Any, b: Any) -> bool:
    """Whether two checkpoints' ``agent_kind`` values name the same agent class."""
    return LEGACY_AGENT_KINDS.get(a, a) == LEGACY_AGENT_KINDS.get(b, b)


def mode_names(**conditions: Any) -> tuple[str, ...]:
    """Names of the modes whose attributes equal ``conditions`` (e.g. ``online=True``)."""
    return tuple(name for name, spec in MODES.items()
                 if all(getattr(spec, k) == v for k, v in conditions.items()))


def pessimistic_modes() -> tuple[str, ...]:
    """Names of the modes whose rollouts apply pessimism."""
    return tuple(name for name, spec in MODES.items() if spec.pessimistic)


_SAC = "offline_mbrl.agents.sac:SAC"
register(ModeSpec("sac", _SAC, online=True, summary="soft actor-critic in the environment"))
register(ModeSpec("mbpo", _SAC, online=True, model_based=True,
                  summary="SAC on real and model-generated data (Janner et al., 2019)"))
register(ModeSpec("offline-sac", _SAC, online=False,
                  summary="SAC on the dataset alone"))
register(ModeSpec("behavioral-cloning", "offline_mbrl.agents.bc:BehavioralCloning",
                  online=False, default_updates=250_000, precisions=("float32",),
                  summary="regress the dataset's actions"))
for _kind, _what in (("penalty", "reward minus λ × uncertainty (MOPO-style)"),
                     ("partitioning", "rollouts end past a threshold (MOReL-style)")):
    for _uncertainty in ("aleatoric", "epistemic"):
        register(ModeSpec(f"{_uncertainty}-{_kind}", _SAC, online=False, model_based=True,
                          pessimism=_kind, uncertainty=_uncertainty,  # type: ignore[arg-type]
                          summary=f"offline SAC on model rollouts: {_what}, "
                                  f"{_uncertainty} uncertainty"))
# Beyond the seed.
# Search ranges span the papers' values on the D4RL locomotion datasets with room on either
# side: CQL's α 5 (its code's value on the gym tasks), COMBO's β 0.5 to 5, IQL's τ 0.7 and
# β 3 (0.9 and 10 on AntMaze).
register(ModeSpec("cql", "offline_mbrl.agents.cql:CQL", online=False, default_updates=1_000_000,
                  search=(("agent.cql_weight", Bounds(0.5, 20.0, log=True)),),
                  summary="conservative Q-learning, CQL(H) on SAC (Kumar et al., 2020)"))
register(ModeSpec("iql", "offline_mbrl.agents.iql:IQL", online=False, default_updates=1_000_000,
                  search=(("agent.iql_expectile", Bounds(0.5, 0.95)),
                          ("agent.iql_temperature", Bounds(0.5, 10.0, log=True))),
                  summary="implicit Q-learning: expectile value, advantage-weighted actor "
                          "(Kostrikov et al., 2022)"))
register(ModeSpec("combo", "offline_mbrl.agents.combo:COMBO", online=False, model_based=True,
                  default_updates=1_000_000, table_agent_field="combo_weight",
                  search=(("agent.combo_weight", Bounds(0.1, 10.0, log=True)),),
                  summary="COMBO: SAC on real and model data, Q pushed down at sampled actions "
                          "and up at the dataset's (Yu et al., 2021)"))
# MOBILE (Sun, Zhang, Jia, Lin, Ye and Yu, "Model-Bellman Inconsistency for Model-based
# Offline Reinforcement Learning", ICML 2023): MOPO's reward penalty with the spread of the
# ensemble members' Bellman targets as its uncertainty; the agent is plain SAC, the penalty
# lives in the rollouts. Its β is searched on a log scale around the authors' per-dataset
# values (0.1 to 5 in their configs/gym), widened twofold at each end: the Bellman
# inconsistency is a spread of Q-values under the agent's critic, which no dataset statistic
# measures before training, so its range cannot come from the model's statistics.
register(ModeSpec("mobile", _SAC, online=False, model_based=True, pessimism="penalty",
                  uncertainty="bellman", search=(("pessimism", Bounds(0.05, 10.0, log=True)),),
                  summary="offline SAC on model rollouts: reward minus β × the spread of the "
                          "ensemble's Bellman targets (MOBILE, Sun et al., 2023)"))
