"""Uncertainty statistics of a model over every sample of its dataset.

They set the scale of pessimism: the seed tunes partitioning thresholds on a log scale
between the mean and the maximum uncertainty, and penalty coefficients in
``[0, R_max / u_max]``. Results are cached next to the model file, keyed by the
dataset's content hash.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from offline_mbrl.data.dataset import OfflineDataset
from offline_mbrl.files import write_json_atomic
from offline_mbrl.models.ensemble import EnvironmentModel
from offline_mbrl.models.uncertainty import dataset_uncertainty


def compute_uncertainty_statistics(model: EnvironmentModel, dataset: OfflineDataset
                                   ) -> dict[str, Any]:
    """Mean, std, 99th percentile and max of aleatoric and epistemic uncertainty over all
    dataset pairs.

    Returns:
        ``{"aleatoric": {"mean", "std", "p99", "max"}, "epistemic": {...}, "max_reward",
        "n_samples", "dataset_hash"}`` with plain floats.
    """
    stats: dict[str, Any] = {}
    for kind in ("aleatoric", "epistemic"):
        u = dataset_uncertainty(model, dataset.observations, dataset.actions, kind
                                ).double().cpu().numpy()
        stats[kind] = {"mean": float(u.mean()), "std": float(u.std()),
                       "p99": float(np.quantile(u, 0.99)), "max": float(u.max())}
    stats["max_reward"] = largest_reward(dataset.rewards)
    stats["n_samples"] = len(dataset)
    stats["dataset_hash"] = dataset.content_hash()
    return stats


def largest_reward(rewards: np.ndarray) -> float:
    """``R_max``: the largest reward of the data, as the seed takes it (``max(y[:, -1])``).

    It is the reward of partitioning's unknown transitions (``-R_max``) and the scale of the
    penalty coefficient. Where no reward is positive (e.g. Pendulum), ``-R_max`` would be a
    bonus, so the width of the reward range stands in for it.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    if rewards.size == 0:
        return 0.0
    largest = float(rewards.max())
    return largest if largest > 0 else float(rewards.max() - rewards.min())


def file_hash(path: str | Path) -> str:
    """A short SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def statistics_path(model_path: str | Path) -> Path:
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + ".uncertainty.json")


def uncertainty_statistics(model: EnvironmentModel, dataset: OfflineDataset,
                           model_path: str | Path | None = None, refresh: bool = False
                           ) -> dict[str, Any]:
    """Cached :func:`compute_uncertainty_statistics` (cache beside ``model_path``).

    The cache is keyed by the dataset's content and by the model file's content, so that a
    model retrained to the same path gets its own statistics.
    """
    cache = statistics_path(model_path) if model_path is not None else None
    model_hash = file_hash(model_path) if model_path is not None and Path(model_path).is_file() \
        else None
    if cache is not None and cache.is_file() and not refresh:
        try:
            cached = json.loads(cache.read_text())
            if cached.get("dataset_hash") == dataset.content_hash() \
                    and cached.get("model_hash") == model_hash and "p99" in cached["epistemic"]:
                return cached
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            pass  # recompute a damaged or outdated cache
    stats = compute_uncertainty_statistics(model, dataset)
    stats["model_hash"] = model_hash
    if cache is not None:
        write_json_atomic(cache, stats)
    return stats
