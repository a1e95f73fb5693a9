"""Hyperparameter tuning of the offline modes (``ombrl tune``).

:mod:`~offline_mbrl.tuning.search_space` holds the seed's search space and needs no extra
packages; :mod:`~offline_mbrl.tuning.tune` runs sweeps with Ray Tune and Optuna, the
optional extra ``pip install 'offline_mbrl[tune]'``.
"""

from offline_mbrl.tuning.search_space import (
    ROLLOUT_LENGTH_RANGE,
    Bounds,
    optuna_space,
    ray_space,
    search_bounds,
    tuned_fields,
)

__all__ = ["ROLLOUT_LENGTH_RANGE", "Bounds", "optuna_space", "ray_space", "search_bounds",
           "tuned_fields"]
