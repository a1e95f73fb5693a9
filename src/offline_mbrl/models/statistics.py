"""Uncertainty statistics of a model over every sample of its dataset.

They set the scale of pessimism: the seed tunes partitioning thresholds on a log scale
between the mean and the maximum uncertainty, and penalty coefficients in
``[0, R_max / u_max]``. Results are cached next to the model file, keyed by the
dataset's content hash.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from offline_mbrl.data.dataset import OfflineDataset
from offline_mbrl.models.ensemble import EnvironmentModel
from offline_mbrl.models.uncertainty import dataset_uncertainty


def compute_uncertainty_statistics(model: EnvironmentModel, dataset: OfflineDataset
                                   ) -> dict[str, Any]:
    """Mean, std and max of aleatoric and epistemic uncertainty over all dataset pairs.

    Returns:
        ``{"aleatoric": {"mean", "std", "max"}, "epistemic": {...}, "max_reward",
        "n_samples", "dataset_hash"}`` with plain floats.
    """
    stats: dict[str, Any] = {}
    for kind in ("aleatoric", "epistemic"):
        u = dataset_uncertainty(model, dataset.observations, dataset.actions, kind)
        u = u.double().cpu().numpy()
        stats[kind] = {"mean": float(u.mean()), "std": float(u.std()), "max": float(u.max())}
    # Largest reward magnitude (the largest reward on the locomotion datasets; see train.py).
    stats["max_reward"] = float(np.max(np.abs(dataset.rewards)))
    stats["n_samples"] = len(dataset)
    stats["dataset_hash"] = dataset.content_hash()
    return stats


def statistics_path(model_path: str | Path) -> Path:
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + ".uncertainty.json")


def uncertainty_statistics(model: EnvironmentModel, dataset: OfflineDataset,
                           model_path: str | Path | None = None, refresh: bool = False
                           ) -> dict[str, Any]:
    """Cached :func:`compute_uncertainty_statistics` (cache beside ``model_path``)."""
    cache = statistics_path(model_path) if model_path is not None else None
    if cache is not None and cache.is_file() and not refresh:
        try:
            cached = json.loads(cache.read_text())
            if cached.get("dataset_hash") == dataset.content_hash():
                return cached
        except (OSError, json.JSONDecodeError):
            pass  # recompute a damaged cache
    stats = compute_uncertainty_statistics(model, dataset)
    if cache is not None:
        tmp = cache.with_name(cache.name + ".tmp")
        tmp.write_text(json.dumps(stats, indent=2) + "\n")
        os.replace(tmp, cache)
    return stats
