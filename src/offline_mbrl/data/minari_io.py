"""Load and write Minari datasets (the maintained successor of D4RL's format).

Minari is optional (``pip install 'offline_mbrl[minari]'``); nothing here touches the network.
A Minari episode of ``n`` steps stores ``n + 1`` observations, so row ``i`` of an episode is
``(obs[i], action[i], reward[i], next_obs=obs[i+1])``.

Per-row ``infos`` (``qpos``, ``qvel``, ...) are exported with ``n`` entries, aligned with the
actions as D4RL stores them (the state before the step); Minari's own collector stores ``n + 1``
(the reset info first). :func:`load_minari` accepts both and keeps the first ``n``.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from gymnasium import spaces

from offline_mbrl.data.d4rl import env_dims, episode_segments
from offline_mbrl.data.dataset import OfflineDataset
from offline_mbrl.envs.registry import get_env_spec
from offline_mbrl.errors import UserError

INSTALL_HINT = "pip install 'offline_mbrl[minari]'"
METADATA_KEY = "ombrl_metadata"


def import_minari() -> ModuleType:
    """The ``minari`` module, or a :class:`UserError` telling how to install it."""
    try:
        import minari
    except ImportError as exc:
        raise UserError(f"Minari is not installed ({exc}): run `{INSTALL_HINT}`") from exc
    return minari


def minari_root() -> Path:
    """Minari's local root: ``$MINARI_DATASETS_PATH`` or ``~/.minari/datasets``."""
    env = os.environ.get("MINARI_DATASETS_PATH")
    return Path(env) if env else Path.home() / ".minari" / "datasets"


def minari_dataset_exists(dataset_id: str) -> bool:
    """Whether ``dataset_id`` is stored under :func:`minari_root` (no Minari import needed)."""
    return (minari_root() / dataset_id / "data" / "metadata.json").is_file()


def local_minari_ids() -> list[str]:
    """Ids of the Minari datasets under :func:`minari_root`; empty when Minari is missing."""
    root = minari_root()
    if not root.is_dir():
        # Listing through minari would create the directory.
        return []
    try:
        minari = import_minari()
    except UserError:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sorted(minari.list_local_datasets())


def _flatten(tree: object, prefix: str = "") -> dict[str, np.ndarray]:
    if isinstance(tree, dict):
        out: dict[str, np.ndarray] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}/"))
        return out
    return {prefix.rstrip("/"): np.asarray(tree)}


def _plain_metadata(metadata: dict[str, object]) -> dict[str, object]:
    """The JSON-representable entries (arrays such as D4RL's policy weights are left out)."""
    plain: dict[str, object] = {}
    for key, value in metadata.items():
        if isinstance(value, (str, bool, int, float)) or value is None:
            plain[key] = value
        elif isinstance(value, (list, tuple)) and all(
            isinstance(v, (str, bool, int, float)) for v in value
        ):
            plain[key] = list(value)
    return plain


def load_minari(dataset_id: str) -> OfflineDataset:
    """Load a locally stored Minari dataset (never downloads).

    Args:
        dataset_id: e.g. ``ombrl/hopper/medium-replay-v2`` (a ``minari:`` prefix is accepted).

    Returns:
        The transitions of every episode, concatenated in episode order; ``terminals`` and
        ``timeouts`` are Minari's ``terminations`` and ``truncations``. ``infos`` holds the
        per-step array infos present in every episode.

    Raises:
        UserError: Minari missing, dataset not found locally, or not vector observations.
    """
    dataset_id = dataset_id.removeprefix("minari:")
    data = _open_local(dataset_id)
    columns, info_columns = _episode_columns(data, dataset_id)
    if not columns["rewards"]:
        raise UserError(f"Minari dataset '{dataset_id}' has no episodes: re-create it")
    return OfflineDataset(
        observations=np.concatenate(columns["observations"]).astype(np.float32, copy=False),
        actions=np.concatenate(columns["actions"]).astype(np.float32, copy=False),
        rewards=np.concatenate(columns["rewards"]).astype(np.float32, copy=False),
        next_observations=np.concatenate(columns["next_observations"]).astype(np.float32,
                                                                              copy=False),
        terminals=np.concatenate(columns["terminals"]),
        timeouts=np.concatenate(columns["timeouts"]),
        infos={k: np.concatenate(v) for k, v in (info_columns or {}).items()},
        metadata=_loaded_metadata(data, dataset_id),
        name=f"minari:{dataset_id}",
    )


def _open_local(dataset_id: str) -> Any:
    """The ``MinariDataset`` stored locally as ``dataset_id``; a :class:`UserError` if absent."""
    minari = import_minari()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return minari.load_dataset(dataset_id, download=False)
    except FileNotFoundError as exc:
        raise UserError(
            f"Minari dataset '{dataset_id}' is not stored under {minari_root()}: download it with "
            f"`minari download {dataset_id}` or set MINARI_DATASETS_PATH"
        ) from exc
    except ValueError as exc:
        raise UserError(f"cannot load Minari dataset '{dataset_id}': {exc}".rstrip(".") +
                        ": check the id") from exc


def _episode_columns(
    data: Any, dataset_id: str
) -> tuple[dict[str, list[np.ndarray]], dict[str, list[np.ndarray]] | None]:
    """Every episode's rows, as per-episode arrays: ``(columns, info_columns)``.

    An episode of ``n`` steps adds ``observations`` and ``next_observations``
    ``[n, obs_dim]``, ``actions`` ``[n, act_dim]``, ``rewards``, ``terminals`` and ``timeouts``
    ``[n]`` to ``columns``; ``info_columns`` keeps the numeric infos present, with the same
    trailing shape, in every episode (None when there are no episodes).
    """
    columns: dict[str, list[np.ndarray]] = {k: [] for k in (
        "observations", "next_observations", "actions", "rewards", "terminals", "timeouts")}
    info_columns: dict[str, list[np.ndarray]] | None = None
    for episode in data.iterate_episodes():
        obs = episode.observations
        if not isinstance(obs, np.ndarray) or not isinstance(episode.actions, np.ndarray):
            raise UserError(f"Minari dataset '{dataset_id}' has dict or tuple observations or "
                            "actions: only flat Box spaces are supported")
        n = len(episode.rewards)
        obs = obs.reshape(obs.shape[0], -1)
        columns["observations"].append(obs[:n])
        columns["next_observations"].append(obs[1:n + 1])
        columns["actions"].append(episode.actions.reshape(n, -1))
        columns["rewards"].append(np.asarray(episode.rewards).reshape(n))
        columns["terminals"].append(np.asarray(episode.terminations, dtype=bool).reshape(n))
        columns["timeouts"].append(np.asarray(episode.truncations, dtype=bool).reshape(n))
        info_columns = _add_infos(info_columns, episode.infos, n)
    return columns, info_columns


def _add_infos(
    info_columns: dict[str, list[np.ndarray]] | None, infos: object, n: int
) -> dict[str, list[np.ndarray]]:
    """``info_columns`` with one more episode's per-step infos (``n`` steps) appended.

    The first episode sets the keys; a later episode drops every key it lacks or stores with
    another trailing shape. Infos of ``n + 1`` entries (Minari's collector stores the reset
    info first) keep their first ``n``.
    """
    flat = {k: v for k, v in _flatten(infos or {}).items()
            if v.ndim >= 1 and v.shape[0] in (n, n + 1) and v.dtype.kind in "biuf"}
    if info_columns is None:
        return {k: [v[:n]] for k, v in flat.items()}
    for key in list(info_columns):
        if key in flat and flat[key].shape[1:] == info_columns[key][0].shape[1:]:
            info_columns[key].append(flat[key][:n])
        else:
            del info_columns[key]
    return info_columns


def _loaded_metadata(data: Any, dataset_id: str) -> dict[str, object]:
    """This library's metadata stored with the dataset, plus Minari's id, version, algorithm
    and environment id."""
    metadata: dict[str, object] = {}
    raw_metadata = data.storage.metadata
    stored = raw_metadata.get(METADATA_KEY)
    if isinstance(stored, str):
        metadata.update(json.loads(stored))
    elif isinstance(stored, dict):
        metadata.update(stored)
    metadata["minari_id"] = dataset_id
    for key in ("minari_version", "algorithm_name"):
        if isinstance(raw_metadata.get(key), str):
            metadata.setdefault(key, raw_metadata[key])
    if data.spec.env_spec is not None:
        metadata.setdefault("env_id", data.spec.env_spec.id)
    return metadata


def default_minari_id(name: str) -> str:
    """The Minari id :func:`export_minari` uses for a D4RL name: ``ombrl/<env>/<kind>-v2``."""
    spec = get_env_spec(name)
    if spec.dataset_kind is None:
        raise UserError(f"'{name}' is not a D4RL dataset name: pass a Minari id (--minari-id)")
    return f"ombrl/{spec.family}/{spec.dataset_kind}-v2"


def _env_id(dataset: OfflineDataset, env_id: str | None) -> str | None:
    if env_id is not None:
        return get_env_spec(env_id).gym_id
    for candidate in (dataset.metadata.get("env_id"), dataset.metadata.get("env_name"),
                      dataset.name):
        if isinstance(candidate, str) and candidate:
            try:
                return get_env_spec(candidate).gym_id
            except UserError:
                continue
    return None


def export_minari(
    dataset: OfflineDataset, dataset_id: str, env_id: str | None = None
) -> Path:
    """Write ``dataset`` as a local Minari dataset (HDF5 storage) under :func:`minari_root`.

    Episodes are split at ``terminals | timeouts`` and wherever ``next_observations[i]`` is not
    ``observations[i + 1]`` (Minari stores one observation sequence per episode, so rows that
    do not chain must start a new episode to keep every ``next_obs`` exact).

    Args:
        dataset: what to export.
        dataset_id: Minari id with a version, e.g. ``ombrl/hopper/medium-replay-v2``.
        env_id: Gymnasium id (or D4RL name) recorded as the dataset's environment; by default
            taken from the dataset's metadata or name. Without one, only the spaces are stored.

    Returns:
        The dataset's directory.

    Raises:
        UserError: Minari missing, malformed id, or a dataset with that id already exists.
    """
    dataset_id = dataset_id.removeprefix("minari:")
    minari = import_minari()
    target = _new_dataset_dir(dataset_id)
    if len(dataset) == 0:
        raise UserError(f"dataset {dataset.name} is empty: nothing to export")
    gym_id = _env_id(dataset, env_id)
    if gym_id is not None:
        _check_dims(dataset, gym_id)
    buffers = _episode_buffers(dataset)
    try:
        with warnings.catch_warnings():
            # Minari warns about every unset optional field (author, permalink, ...).
            warnings.simplefilter("ignore")
            _create(minari, dataset, dataset_id, gym_id, buffers)
    except ValueError as exc:
        raise UserError(f"cannot create Minari dataset '{dataset_id}': {exc}".rstrip(".") +
                        ": choose another id") from exc
    return target


def _new_dataset_dir(dataset_id: str) -> Path:
    """Where ``dataset_id`` will be stored; a :class:`UserError` if the id is malformed or
    taken."""
    from minari.dataset.minari_dataset import parse_dataset_id  # optional dependency

    try:
        parse_dataset_id(dataset_id)
    except (ValueError, TypeError) as exc:
        raise UserError(f"'{dataset_id}' is not a Minari dataset id: use "
                        "namespace/name-vN, e.g. ombrl/hopper/medium-replay-v2") from exc
    target = minari_root() / dataset_id
    if target.exists():
        raise UserError(f"Minari dataset '{dataset_id}' already exists at {target}: choose "
                        "another id (--minari-id) or delete it with `minari delete`")
    return target


def _check_dims(dataset: OfflineDataset, gym_id: str) -> None:
    """Raise a :class:`UserError` unless ``dataset`` has ``gym_id``'s dimensions."""
    obs_dim, act_dim = env_dims(gym_id)
    if (obs_dim, act_dim) != (dataset.obs_dim, dataset.act_dim):
        raise UserError(
            f"dataset {dataset.name} has obs/action dims {dataset.obs_dim}/{dataset.act_dim} "
            f"but {gym_id} has {obs_dim}/{act_dim}: pass the right env id"
        )


def _episode_buffers(dataset: OfflineDataset) -> list[Any]:
    """One Minari ``EpisodeBuffer`` per episode of ``dataset``.

    An episode of rows ``start:stop`` stores ``stop - start + 1`` observations (the last
    ``next_observations`` row closes it) and ``stop - start`` actions, rewards, flags and infos.
    """
    from minari.data_collector import EpisodeBuffer  # optional dependency

    buffers = []
    segments = episode_segments(dataset, split_on_discontinuity=True)
    for index, (start, stop, _) in enumerate(segments):
        observations = np.concatenate(
            [dataset.observations[start:stop], dataset.next_observations[stop - 1:stop]]
        ).astype(np.float32, copy=False)
        infos = {key: np.asarray(value[start:stop]) for key, value in dataset.infos.items()}
        buffers.append(EpisodeBuffer(
            id=index,
            observations=observations,
            actions=np.asarray(dataset.actions[start:stop], dtype=np.float32),
            rewards=np.asarray(dataset.rewards[start:stop], dtype=np.float32),
            terminations=np.asarray(dataset.terminals[start:stop], dtype=bool),
            truncations=np.asarray(dataset.timeouts[start:stop], dtype=bool),
            infos=_nest(infos) or None,
        ))
    return buffers


def _create(minari: ModuleType, dataset: OfflineDataset, dataset_id: str, gym_id: str | None,
            buffers: list[Any]) -> None:
    """Have Minari write ``buffers`` as ``dataset_id``, with this library's metadata."""
    protocol = dataset.metadata.get("protocol") or dataset.metadata.get("algorithm")
    created = minari.create_dataset_from_buffers(
        dataset_id=dataset_id,
        buffer=buffers,
        env=gym_id,
        observation_space=spaces.Box(-np.inf, np.inf, (dataset.obs_dim,), np.float32),
        action_space=spaces.Box(-np.inf, np.inf, (dataset.act_dim,), np.float32),
        algorithm_name=str(protocol) if protocol else None,
        author="offline_mbrl",
        description=f"{dataset.name} exported by offline_mbrl",
        data_format="hdf5",
    )
    created.storage.update_metadata({METADATA_KEY: _plain_metadata(dataset.metadata)})


def _nest(flat: dict[str, np.ndarray]) -> dict[str, object]:
    """``{'a/b': x}`` -> ``{'a': {'b': x}}`` (Minari stores nested info dicts as groups)."""
    tree: dict[str, object] = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for part in parents:
            node = node.setdefault(part, {})  # type: ignore[assignment]
        node[leaf] = value
    return tree
