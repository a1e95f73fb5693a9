"""Summaries of a dataset, and the datasets found on this machine."""

from __future__ import annotations

import numpy as np

from offline_mbrl.data.d4rl import episode_segments
from offline_mbrl.data.dataset import OfflineDataset
from offline_mbrl.data.minari_io import local_minari_ids, minari_root
from offline_mbrl.data.resolve import d4rl_cache_dir, d4rl_file_name, datasets_dir
from offline_mbrl.envs.registry import all_dataset_names, evaluation_env_id, get_env_spec
from offline_mbrl.envs.scores import D4RL_REFERENCE_RETURNS, normalized_score
from offline_mbrl.errors import UserError


def _family(dataset: OfflineDataset, env_name: str | None) -> str | None:
    for candidate in (env_name, dataset.metadata.get("env_name"), dataset.name,
                      dataset.metadata.get("env_id")):
        if isinstance(candidate, str) and candidate:
            try:
                return get_env_spec(candidate).family
            except UserError:
                continue
    return None


def _evaluation_env(dataset: OfflineDataset, env_name: str | None) -> str | None:
    name = env_name or dataset.name
    try:
        return evaluation_env_id(name, dataset.metadata.get("env_id"))
    except UserError:
        return None


def _stats(values: np.ndarray) -> dict[str, float | None]:
    if values.size == 0:
        return {"mean": None, "std": None, "min": None, "max": None}
    return {"mean": float(values.mean()), "std": float(values.std()),
            "min": float(values.min()), "max": float(values.max())}


def dataset_info(ds: OfflineDataset, env_name: str | None = None) -> dict[str, object]:
    """Counts and statistics of a dataset.

    Args:
        ds: the dataset.
        env_name: its environment, for the normalised score; by default taken from the
            dataset's name or metadata.

    Returns:
        A flat dict: ``name``, ``transitions``, ``episodes``, ``complete_episodes``,
        ``return_mean/std/min/max`` (over complete episodes; ``None`` when there are none),
        ``score_mean/std/min/max`` (D4RL normalised, ``None`` without references),
        ``terminals``, ``timeouts``, ``obs_dim``, ``act_dim``, ``obs_min``, ``obs_max``,
        ``action_min``, ``action_max`` (per-dimension lists), and the dataset's scalar
        ``metadata`` entries under ``metadata``.
    """
    segments = episode_segments(ds)
    if segments:
        starts = np.array([a for a, _, _ in segments])
        complete = np.array([c for _, _, c in segments])
        sums = np.add.reduceat(np.asarray(ds.rewards, dtype=np.float64), starts)
        returns = sums[complete]
    else:
        returns = np.zeros(0)
    info: dict[str, object] = {
        "name": ds.name,
        "transitions": len(ds),
        "episodes": len(segments),
        "complete_episodes": int(returns.size),
    }
    info.update({f"return_{k}": v for k, v in _stats(returns).items()})
    family = _family(ds, env_name)
    if family in D4RL_REFERENCE_RETURNS and returns.size:
        scores = np.asarray(normalized_score(family, returns), dtype=np.float64)
        info.update({f"score_{k}": v for k, v in _stats(scores).items()})
    else:
        info.update({f"score_{k}": None for k in ("mean", "std", "min", "max")})
    empty = len(ds) == 0
    info.update({
        "terminals": int(np.count_nonzero(ds.terminals)),
        "timeouts": int(np.count_nonzero(ds.timeouts)),
        "obs_dim": ds.obs_dim,
        "act_dim": ds.act_dim,
        "obs_min": [] if empty else ds.observations.min(axis=0).tolist(),
        "obs_max": [] if empty else ds.observations.max(axis=0).tolist(),
        "action_min": [] if empty else ds.actions.min(axis=0).tolist(),
        "action_max": [] if empty else ds.actions.max(axis=0).tolist(),
        "evaluation_env": _evaluation_env(ds, env_name),
        "metadata": {k: v for k, v in ds.metadata.items()
                     if isinstance(v, (str, int, float, bool))},
    })
    return info


def list_local_datasets() -> list[tuple[str, str, str]]:
    """Datasets on this machine, as ``(name, path, source)``.

    ``source`` is ``ombrl`` (``$OMBRL_DATASETS_DIR/*.hdf5``), ``d4rl`` (d4rl's download
    cache, named by their D4RL name when the file name is one of d4rl's) or ``minari``
    (named ``minari:<id>``). Partial downloads (``*.part``) are not listed.
    """
    found: list[tuple[str, str, str]] = []
    own = datasets_dir()
    if own.is_dir():
        found.extend((p.stem, str(p), "ombrl") for p in sorted(own.glob("*.hdf5")))
    cache = d4rl_cache_dir()
    if cache.is_dir():
        by_file = {d4rl_file_name(name): name for name in all_dataset_names()}
        found.extend((by_file.get(p.name, p.stem), str(p), "d4rl")
                     for p in sorted(cache.glob("*.hdf5")))
    root = minari_root()
    found.extend((f"minari:{dataset_id}", str(root / dataset_id), "minari")
                 for dataset_id in local_minari_ids())
    return found
