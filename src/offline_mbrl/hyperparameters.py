"""Default (rollout length, pessimism) per mode and dataset.

The table starts from the seed project's tuned values (``tuned_hyperparameters.csv``,
found on the original D4RL v2 files): ``value`` is the penalty coefficient λ for
``*-penalty`` modes and the uncertainty threshold for ``*-partitioning`` modes. The
``mobile`` rows are the rollout lengths and penalty coefficients β of the MOBILE authors'
per-dataset configurations (``configs/gym`` of github.com/yihaosun1124/mobile); a row's
optional ``source`` column names where its values come from.
Datasets without an entry use the configuration's ``max_rollout_length`` and,
for the pessimism, values derived from the dataset's own uncertainty statistics (see
:func:`fallback_pessimism`), or a mode's default where no such rule applies
(:data:`DEFAULT_PESSIMISM`).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from offline_mbrl.errors import UserError
from offline_mbrl.modes import get_mode


@dataclass(frozen=True)
class Tuned:
    rollout_length: int
    value: float
    source: str = "table"
    """What ``config.json`` records as the values' source."""


def tuned_table() -> dict[tuple[str, str], Tuned]:
    """``{(mode, dataset): Tuned}`` from the packaged CSV."""
    text = resources.files("offline_mbrl").joinpath("tuned_hyperparameters.csv").read_text()
    table = {}
    for row in csv.DictReader(text.splitlines()):
        source = f"table ({row['source']})" if row.get("source") else "table"
        table[(row["mode"], row["dataset"])] = Tuned(int(row["rollout_length"]),
                                                     float(row["value"]), source)
    return table


def lookup(mode: str, dataset_name: str | None) -> Tuned | None:
    if dataset_name is None:
        return None
    return tuned_table().get((mode, dataset_name))


DEFAULT_PESSIMISM: dict[str, tuple[float, str]] = {
    "bellman": (1.0, "default (MOBILE paper's code: penalty_coef of configs/gym/default.py)"),
}
"""``(value, source)`` by uncertainty kind, for kinds :func:`fallback_pessimism` cannot
derive a value for. MOBILE's Bellman inconsistency depends on the critic, which has not
learned anything when the value is resolved, so no dataset statistic of it exists; its
coefficient β defaults to the authors' default (their per-dataset values span 0.1 to 5)."""

UNKNOWN_QUANTILE = 0.99
"""Dataset-uncertainty quantile that the derived pessimism puts the edge of the known at."""


def fallback_pessimism(mode: str, uncertainty: dict[str, float], max_reward: float) -> float:
    """Pessimism for untuned datasets, from the dataset's uncertainty statistics.

    Both kinds put the edge of the known at ``u_edge``, the dataset's 99th-percentile
    uncertainty (``uncertainty["p99"]``): partitioning uses it as the threshold, so a
    state-action less certain than 99% of the real transitions counts as unknown;
    penalty uses ``λ = R_max / u_edge``, so a transition at that edge loses ``R_max``, the
    reward partitioning gives unknown transitions (``-R_max``), and typical dataset
    transitions lose a small fraction of it. The seed's searches span the mean to the
    maximum (threshold) and ``[0, R_max / u_max]`` (λ); the maximum is set by a handful of
    outliers, so rules anchored on it leave rollouts nearly unpenalised.
    """
    edge = max(float(uncertainty["p99"]), 1e-12)
    if get_mode(mode).pessimism == "partitioning":
        return edge
    return max_reward / edge


def read_hyperparameters_file(path: str | Path) -> dict[str, object]:
    """Read a JSON file of configuration fields (as written by ``ombrl tune``)."""
    try:
        values = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"cannot read hyperparameters file {path} ({error}): pass the JSON "
                        "file written by 'ombrl tune'") from None
    if not isinstance(values, dict):
        raise UserError(f"hyperparameters file {path} must hold a JSON object of fields")
    return values.get("hyperparameters", values)  # type: ignore[return-value]
