"""Default (rollout length, pessimism) per mode and dataset.

The table starts from the seed project's tuned values (``tuned_hyperparameters.csv``,
found on the original D4RL v2 files): ``value`` is the penalty coefficient λ for
``*-penalty`` modes and the uncertainty threshold for ``*-partitioning`` modes.
Datasets without an entry use the configuration's ``max_virtual_rollout_length`` and,
for the pessimism, values derived from the dataset's own uncertainty statistics (see
:func:`fallback_pessimism`).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from offline_mbrl.errors import UserError


@dataclass(frozen=True)
class Tuned:
    rollout_length: int
    value: float


def tuned_table() -> dict[tuple[str, str], Tuned]:
    """``{(mode, dataset): Tuned}`` from the packaged CSV."""
    text = resources.files("offline_mbrl").joinpath("tuned_hyperparameters.csv").read_text()
    table = {}
    for row in csv.DictReader(text.splitlines()):
        table[(row["mode"], row["dataset"])] = Tuned(int(row["rollout_length"]),
                                                     float(row["value"]))
    return table


def lookup(mode: str, dataset_name: str | None) -> Tuned | None:
    if dataset_name is None:
        return None
    return tuned_table().get((mode, dataset_name))


def fallback_pessimism(mode: str, u_mean: float, u_max: float, max_reward: float) -> float:
    """Pessimism for untuned datasets, from the dataset's uncertainty statistics.

    Partitioning: the largest uncertainty seen on the dataset, so that only state-action
    pairs less certain than every real transition count as unknown. Penalty: half the top
    of the seed's search range ``R_max / u_max``, i.e. the most uncertain dataset sample
    loses half of ``R_max``.
    """
    if mode.endswith("partitioning"):
        return u_max
    return 0.5 * max_reward / max(u_max, 1e-12)


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
