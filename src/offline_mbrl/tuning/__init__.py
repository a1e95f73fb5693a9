"""Hyperparameter tuning of the pessimistic modes (``ombrl tune``).

:mod:`~offline_mbrl.tuning.search_space` holds the seed's search space and needs no extra
packages; :mod:`~offline_mbrl.tuning.tune` runs sweeps with Ray Tune and Optuna, the
optional extra ``pip install 'offline_mbrl[tune]'``.
"""

from offline_mbrl.tuning.search_space import (
    ROLLOUT_LENGTH_RANGE,
    Bounds,
    optuna_space,
    pessimism_parameter,
    ray_space,
    search_bounds,
)

__all__ = ["ROLLOUT_LENGTH_RANGE", "Bounds", "optuna_space", "pessimism_parameter",
           "ray_space", "search_bounds"]
