"""The seed's search space for the pessimistic modes.

Tuned are the synthetic rollout length (an integer in 1..20) and the pessimism of the
mode, scaled by the dataset's uncertainty statistics under its environment model:

* ``*-partitioning``: the threshold ``ood_threshold`` of the unknown state-action
  detector, on a log scale between the mean and the maximum uncertainty of the mode's
  kind over the dataset (the mean is usually orders of magnitude below the maximum);
* ``*-penalty``: the penalty coefficient ``pessimism``, uniform in ``[0, R_max / u_max]``,
  so that the largest coefficient costs the most uncertain dataset sample ``R_max``.

:func:`search_bounds` is pure and holds the numbers; :func:`optuna_space` and
:func:`ray_space` turn them into the distributions of each library (imported lazily).
Parameter names are :class:`~offline_mbrl.config.TrainerConfiguration` fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from offline_mbrl.errors import UserError
from offline_mbrl.modes import MODES, pessimistic_modes

ROLLOUT_LENGTH_RANGE = (1, 20)
"""The seed's rollout lengths, both ends included."""


@dataclass(frozen=True)
class Bounds:
    """A closed range ``[low, high]``: integers, or floats on a linear or log scale."""

    low: float
    high: float
    log: bool = False
    integer: bool = False


def pessimism_parameter(mode: str) -> str:
    """The configuration field a mode's pessimism is tuned through."""
    check_tunable_mode(mode)
    field = MODES[mode].pessimism_field
    assert field is not None
    return field


BELLMAN_PENALTY_RANGE = (0.05, 10.0)
"""β of MOBILE's penalty, log scale: the MOBILE authors' per-dataset values (0.1 to 5 in
their configs/gym) widened twofold at each end. The Bellman inconsistency is a spread of
Q-values under the agent's critic, which no dataset statistic measures before training, so
its range cannot come from the model's uncertainty statistics as the others' do."""


def tunable_modes() -> tuple[str, ...]:
    """The modes with a pessimism to tune (rollout length and λ, β or the threshold)."""
    return pessimistic_modes()


def check_tunable_mode(mode: str) -> None:
    if mode not in pessimistic_modes():
        raise UserError(f"mode '{mode}' has no pessimism to tune: use one of "
                        f"{', '.join(tunable_modes())}")


def search_bounds(mode: str, stats: Mapping[str, Any],
                  rollout_length: tuple[int, int] = ROLLOUT_LENGTH_RANGE) -> dict[str, Bounds]:
    """The search ranges of ``mode`` for a dataset with uncertainty statistics ``stats``.

    Args:
        mode: a pessimistic mode, e.g. ``epistemic-partitioning``.
        stats: as :func:`~offline_mbrl.models.statistics.uncertainty_statistics` returns:
            ``{"aleatoric": {"mean", "std", "max"}, "epistemic": {...}, "max_reward"}``.
        rollout_length: smallest and largest rollout length.

    Returns:
        ``{"rollout_length": Bounds(1, 20, integer=True), "ood_threshold" or "pessimism":
        Bounds(...)}``.

    Raises:
        UserError: a mode without pessimism, or statistics that leave the range empty.
    """
    parameter = pessimism_parameter(mode)
    kind = str(MODES[mode].uncertainty)
    low_len, high_len = rollout_length
    if not 1 <= low_len <= high_len:
        raise UserError(f"rollout length range {low_len}..{high_len} is empty: "
                        "use 1 <= low <= high")
    bounds = {"rollout_length": Bounds(low_len, high_len, integer=True)}
    if kind == "bellman":
        bounds[parameter] = Bounds(*BELLMAN_PENALTY_RANGE, log=True)
        return bounds
    u_mean, u_max = float(stats[kind]["mean"]), float(stats[kind]["max"])
    if parameter == "ood_threshold":
        if not 0 < u_mean < u_max:
            raise UserError(f"{kind} uncertainty on the dataset has mean {u_mean:g} and max "
                            f"{u_max:g}, so the log-scale range [mean, max] is empty: retrain "
                            "the environment model (ombrl train-model --overwrite)")
        bounds[parameter] = Bounds(u_mean, u_max, log=True)
    else:
        r_max = float(stats["max_reward"])
        if not u_max > 0 or not r_max > 0:
            raise UserError(f"penalty range [0, R_max / u_max] needs a positive largest reward "
                            f"and uncertainty, got R_max={r_max:g}, u_max={u_max:g}: tune a "
                            "partitioning mode or set --pessimism by hand")
        bounds[parameter] = Bounds(0.0, r_max / u_max)
    return bounds


def optuna_space(bounds: Mapping[str, Bounds]) -> dict[str, Any]:
    """``{name: optuna distribution}`` for ``bounds``."""
    # Imported here: Optuna is the optional extra 'tune', and this module works without it.
    from optuna.distributions import FloatDistribution, IntDistribution

    space: dict[str, Any] = {}
    for name, b in bounds.items():
        if b.integer:
            space[name] = IntDistribution(int(b.low), int(b.high), log=b.log)
        else:
            space[name] = FloatDistribution(b.low, b.high, log=b.log)
    return space


def suggest(trial: Any, bounds: Mapping[str, Bounds]) -> dict[str, Any]:
    """Draw every parameter of ``bounds`` from an Optuna trial (define-by-run)."""
    values: dict[str, Any] = {}
    for name, b in bounds.items():
        if b.integer:
            values[name] = trial.suggest_int(name, int(b.low), int(b.high), log=b.log)
        else:
            values[name] = trial.suggest_float(name, b.low, b.high, log=b.log)
    return values


def ray_space(bounds: Mapping[str, Bounds]) -> dict[str, Any]:
    """``{name: ray.tune domain}`` for ``bounds`` (e.g. for Ray's own searchers)."""
    # Imported here: Ray is the optional extra 'tune', and this module works without it.
    from ray import tune

    space: dict[str, Any] = {}
    for name, b in bounds.items():
        if b.integer:
            # Ray's integer upper bounds are exclusive.
            space[name] = (tune.lograndint if b.log else tune.randint)(int(b.low),
                                                                      int(b.high) + 1)
        else:
            space[name] = (tune.loguniform if b.log else tune.uniform)(b.low, b.high)
    return space
