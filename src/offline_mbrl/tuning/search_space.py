"""What ``ombrl tune`` searches, mode by mode.

Every tunable mode's fields come from the registry (:attr:`~offline_mbrl.modes.ModeSpec.
tuned_fields`):

* the synthetic rollout length of a model-based mode (an integer in 1..20, the seed's);
* the pessimism of ``*-partitioning`` and ``*-penalty`` modes, scaled by the dataset's
  uncertainty statistics under its environment model (the seed's space):

  * ``*-partitioning``: the threshold ``ood_threshold`` of the unknown state-action
    detector, on a log scale between the mean and the maximum uncertainty of the mode's
    kind over the dataset (the mean is usually orders of magnitude below the maximum);
  * ``*-penalty``: the penalty coefficient ``pessimism``, uniform in ``[0, R_max / u_max]``,
    so that the largest coefficient costs the most uncertain dataset sample ``R_max``;

* fixed ranges a mode declares in its registry line (:attr:`~offline_mbrl.modes.ModeSpec.
  search`): MOBILE's β, CQL's α, COMBO's β, IQL's expectile and temperature.

:func:`search_bounds` is pure and holds the numbers; :func:`optuna_space` and
:func:`ray_space` turn them into the distributions of each library (imported lazily).
Parameter names are :class:`~offline_mbrl.config.TrainerConfiguration` fields, or
``agent.<name>`` for :class:`~offline_mbrl.config.AgentConfiguration` fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from offline_mbrl.errors import UserError
from offline_mbrl.modes import MODES, Bounds

__all__ = ["ROLLOUT_LENGTH_RANGE", "Bounds", "check_tunable_mode", "optuna_space",
           "ray_space", "search_bounds", "suggest", "tunable_modes", "tuned_fields"]

ROLLOUT_LENGTH_RANGE = (1, 20)
"""The seed's rollout lengths, both ends included."""


def tunable_modes() -> tuple[str, ...]:
    """The registered modes a sweep can tune."""
    return tuple(name for name, spec in MODES.items() if spec.tuned_fields)


def check_tunable_mode(mode: str) -> None:
    if mode not in tunable_modes():
        raise UserError(f"mode '{mode}' has no pessimism or conservatism to tune: use one of "
                        f"{', '.join(tunable_modes())}")


def tuned_fields(mode: str) -> tuple[str, ...]:
    """The configuration fields a sweep of ``mode`` tunes (``agent.<name>`` for the agent's)."""
    check_tunable_mode(mode)
    return MODES[mode].tuned_fields


def search_bounds(mode: str, stats: Mapping[str, Any],
                  rollout_length: tuple[int, int] = ROLLOUT_LENGTH_RANGE) -> dict[str, Bounds]:
    """The search ranges of ``mode`` for a dataset with uncertainty statistics ``stats``.

    Args:
        mode: a tunable mode, e.g. ``epistemic-partitioning`` or ``cql``.
        stats: as :func:`~offline_mbrl.models.statistics.uncertainty_statistics` returns:
            ``{"aleatoric": {"mean", "std", "max"}, "epistemic": {...}, "max_reward"}``;
            read only for a pessimism without a range of its own in the registry.
        rollout_length: smallest and largest rollout length.

    Returns:
        ``{field: Bounds}`` for every field of :func:`tuned_fields`, e.g.
        ``{"rollout_length": Bounds(1, 20, integer=True), "ood_threshold": Bounds(...)}``.

    Raises:
        UserError: a mode with nothing to tune, or statistics that leave a range empty.
    """
    spec = MODES[mode]
    fields = tuned_fields(mode)
    declared = dict(spec.search)
    bounds: dict[str, Bounds] = {}
    if "rollout_length" in fields:
        low_len, high_len = rollout_length
        if not 1 <= low_len <= high_len:
            raise UserError(f"rollout length range {low_len}..{high_len} is empty: "
                            "use 1 <= low <= high")
        bounds["rollout_length"] = Bounds(low_len, high_len, integer=True)
    parameter = spec.pessimism_field
    if parameter is not None and parameter not in declared:
        bounds[parameter] = _derived_pessimism_bounds(mode, stats)
    bounds.update(declared)
    return bounds


def _derived_pessimism_bounds(mode: str, stats: Mapping[str, Any]) -> Bounds:
    """The seed's range of a pessimistic mode's λ or threshold, from the statistics."""
    spec = MODES[mode]
    kind = str(spec.uncertainty)
    u_mean, u_max = float(stats[kind]["mean"]), float(stats[kind]["max"])
    if spec.pessimism == "partitioning":
        if not 0 < u_mean < u_max:
            raise UserError(f"{kind} uncertainty on the dataset has mean {u_mean:g} and max "
                            f"{u_max:g}, so the log-scale range [mean, max] is empty: retrain "
                            "the environment model (ombrl train-model --overwrite)")
        return Bounds(u_mean, u_max, log=True)
    r_max = float(stats["max_reward"])
    if not u_max > 0 or not r_max > 0:
        raise UserError(f"penalty range [0, R_max / u_max] needs a positive largest reward "
                        f"and uncertainty, got R_max={r_max:g}, u_max={u_max:g}: tune a "
                        "partitioning mode or set --pessimism by hand")
    return Bounds(0.0, r_max / u_max)


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
