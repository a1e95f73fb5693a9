"""Read and write offline datasets in D4RL's HDF5 layout.

A D4RL file holds one row per environment step: ``observations``, ``actions``, ``rewards``,
``terminals``, ``timeouts``, since v2 ``next_observations``, plus per-row ``infos/*`` and
free-form ``metadata/*``. Every row is loaded (``medium-expert`` has 2M rows, which must not be
truncated); the arrays are cast to float32 / bool.

Files without ``next_observations`` (D4RL v0/v1) are turned into transitions the way d4rl's
``qlearning_dataset`` does, with one deliberate difference, see :func:`derive_transitions`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path

import h5py
import numpy as np

from offline_mbrl.data.dataset import OfflineDataset
from offline_mbrl.envs.registry import get_env_spec, make_env
from offline_mbrl.errors import UserError
from offline_mbrl.files import atomic_write

REQUIRED_KEYS: tuple[str, ...] = ("observations", "actions", "rewards", "terminals", "timeouts")


PUBLISHED_ROWS: dict[str, int] = {
    **{f"{env}-{kind}-v2": 1_000_000 for env in ("hopper", "halfcheetah", "walker2d")
       for kind in ("random", "medium", "expert")},
    **{f"{env}-medium-expert-v2": 2_000_000 for env in ("hopper", "halfcheetah", "walker2d")},
    "hopper-medium-replay-v2": 402_000,
    "halfcheetah-medium-replay-v2": 202_000,
    "walker2d-medium-replay-v2": 302_000,
}
"""Rows of the published D4RL v2 files; the expert runs end a few hundred rows short."""
_PUBLISHED_ROWS_SLACK = 1_000


def is_published_d4rl(dataset: OfflineDataset, name: str | None) -> bool:
    """Whether ``dataset`` is the published D4RL v2 file ``name``, judged by its content.

    The seed's tuned values were found on those files, so they apply to them only: the
    rows match the published count, the dimensions match the environment, and the file
    carries no ``protocol`` of this library's own recorders (``ombrl datasets collect``).
    """
    rows = PUBLISHED_ROWS.get(name or "")
    if rows is None or name is None or "protocol" in dataset.metadata:
        return False
    if not rows - _PUBLISHED_ROWS_SLACK <= len(dataset) <= rows:
        return False
    return (dataset.obs_dim, dataset.act_dim) == env_dims(get_env_spec(name).gym_id)


@functools.lru_cache(maxsize=32)
def env_dims(gym_id: str) -> tuple[int, int]:
    """``(obs_dim, act_dim)`` of a Gymnasium environment (cached: making a MuJoCo env is slow)."""
    env = make_env(gym_id)
    try:
        obs_shape = env.observation_space.shape
        act_shape = env.action_space.shape
    finally:
        env.close()
    if obs_shape is None or act_shape is None or len(obs_shape) != 1 or len(act_shape) != 1:
        raise UserError(
            f"environment '{gym_id}' does not have flat Box observations and actions: "
            "offline datasets need vector observations and continuous actions"
        )
    return int(obs_shape[0]), int(act_shape[0])


def check_env_dims(dataset: OfflineDataset, env_name: str, source: str) -> None:
    """Raise a :class:`UserError` when the dataset's dimensions differ from ``env_name``'s."""
    spec = get_env_spec(env_name)
    obs_dim, act_dim = env_dims(spec.gym_id)
    if dataset.obs_dim != obs_dim:
        raise UserError(
            f"{source}: 'observations' have {dataset.obs_dim} dimensions but {spec.gym_id} "
            f"(for {env_name}) has {obs_dim}: use a dataset recorded on {env_name}"
        )
    if dataset.act_dim != act_dim:
        raise UserError(
            f"{source}: 'actions' have {dataset.act_dim} dimensions but {spec.gym_id} "
            f"(for {env_name}) has {act_dim}: use a dataset recorded on {env_name}"
        )


def episode_segments(
    dataset: OfflineDataset, split_on_discontinuity: bool = False
) -> list[tuple[int, int, bool]]:
    """Split the rows into episodes.

    An episode ends at a row with ``terminals | timeouts`` and at the last row. With
    ``split_on_discontinuity`` it also ends where the next row does not continue it
    (``next_observations[i] != observations[i + 1]``: a boundary whose flag was dropped);
    formats that store one observation sequence per episode (Minari) need that, while
    statistics follow the flags as D4RL does.

    Returns:
        ``(start, stop, complete)`` per episode, rows ``start:stop``; ``complete`` is true when
        the episode's last row is terminal or a timeout.
    """
    n = len(dataset)
    if n == 0:
        return []
    flagged = np.asarray(dataset.terminals, dtype=bool) | np.asarray(dataset.timeouts, dtype=bool)
    ends = flagged.copy()
    if split_on_discontinuity:
        ends[:-1] |= np.any(dataset.next_observations[:-1] != dataset.observations[1:], axis=1)
    ends[-1] = True
    stops = np.flatnonzero(ends) + 1
    starts = np.concatenate(([0], stops[:-1]))
    return [(int(a), int(b), bool(flagged[b - 1])) for a, b in zip(starts, stops, strict=True)]


def derive_transitions(
    observations: np.ndarray, terminals: np.ndarray, timeouts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Rows to keep and their next observations, for a file without ``next_observations``.

    Like d4rl's ``qlearning_dataset``: row ``i`` becomes ``(obs[i], ..., next_obs=obs[i+1])``;
    the last row of an episode cut by a timeout is dropped (``obs[i+1]`` starts the next
    episode, and without termination that transition would be bootstrapped through), and so
    is the last row of the file (nothing follows it).

    A row with ``terminals[i]`` is kept even when ``timeouts[i]`` is also set (d4rl drops it):
    the terminal flag and the reward are what Q-learning needs, and termination wins over
    truncation. Its ``next_obs`` is ``obs[i+1]``, i.e. the first observation of the next
    episode, not the true final state, which these files never recorded; value targets never
    use it (``terminal`` masks the bootstrap), but a dynamics model trained on such rows learns
    a reset. The rows are listed in ``metadata['reset_next_observation_rows']`` so that model
    training can leave them out.

    Args:
        observations: ``[N, obs_dim]``.
        terminals: ``[N]`` bool.
        timeouts: ``[N]`` bool.

    Returns:
        ``(keep, next_observations)``: ``keep`` is ``[M]`` int64 row indices (increasing),
        ``next_observations`` is ``[M, obs_dim]``.
    """
    n = observations.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64), observations[:0]
    has_next = np.arange(n) < n - 1
    keep_mask = has_next & (terminals | ~timeouts)
    keep = np.flatnonzero(keep_mask)
    return keep, observations[keep + 1]


def _decode(value: object) -> object:
    """HDF5 value -> plain Python/numpy (bytes -> str, 0-d arrays -> scalars)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        if value.dtype.kind in ("S", "O"):
            decoded = [_decode(v) for v in value.reshape(-1).tolist()]
            if value.ndim == 0:
                return decoded[0]
            return np.array(decoded, dtype=object).reshape(value.shape).tolist()
        if value.ndim == 0:
            return value.item()
        return value
    if isinstance(value, np.generic):
        return value.item()
    return value


def _read_group(
    group: h5py.Group, prefix: str = "", with_attrs: bool = True
) -> dict[str, object]:
    """Every dataset under ``group`` as ``{'sub/key': value}`` (and the attributes if asked)."""
    out: dict[str, object] = {}
    if with_attrs:
        for key, attr in group.attrs.items():
            out[prefix + key] = _decode(attr)
    for key, item in group.items():
        if isinstance(item, h5py.Group):
            out.update(_read_group(item, prefix + key + "/", with_attrs))
        elif isinstance(item, h5py.Dataset):
            out[prefix + key] = _decode(item[()])
    return out


def _check_finite(array: np.ndarray, key: str, source: str) -> None:
    if not np.isfinite(array).all():
        bad = int(np.flatnonzero(~np.isfinite(array.reshape(array.shape[0], -1)).all(axis=1))[0])
        raise UserError(
            f"{source}: '{key}' has non-finite values (first at row {bad}): "
            "the file is corrupt or was written from a diverged run; re-download or re-collect it"
        )


def load_d4rl_hdf5(path: str | os.PathLike[str], env_name: str | None = None) -> OfflineDataset:
    """Load a D4RL-layout HDF5 file.

    Args:
        path: the file.
        env_name: a D4RL name or Gymnasium id; when given, the observation and action
            dimensions are checked against that environment.

    Returns:
        An :class:`OfflineDataset` with every row of the file (float32 arrays, bool flags);
        ``infos`` holds ``infos/*`` (nested keys joined by ``/``), ``metadata`` holds
        ``metadata/*`` and the file's attributes, strings decoded.

    Raises:
        UserError: missing file or key, unequal lengths, non-finite values, or dimensions
            that do not match ``env_name``; the message names the file and the key.
    """
    path = Path(path)
    source = str(path)
    raw, infos_raw, metadata = _read_file(path, source)
    n = _check_row_shapes(raw, source)
    infos = _check_infos(infos_raw, n, source)
    rows = _typed_rows(raw, source)
    if "next_observations" not in raw:
        rows, infos = _derive_next_observations(rows, infos, metadata)
    dataset = OfflineDataset(
        observations=rows["observations"],
        actions=rows["actions"],
        rewards=rows["rewards"],
        next_observations=rows["next_observations"],
        terminals=rows["terminals"],
        timeouts=rows["timeouts"],
        infos=infos,
        metadata=metadata,
        name=env_name or path.stem,
    )
    if env_name is not None:
        check_env_dims(dataset, env_name, source)
    return dataset


def _read_file(
    path: Path, source: str
) -> tuple[dict[str, np.ndarray], dict[str, object], dict[str, object]]:
    """The raw contents of a D4RL file: ``(rows, infos, metadata)``.

    ``rows`` maps :data:`REQUIRED_KEYS` (and ``next_observations`` when present) to the
    stored arrays, ``[N, ...]`` as written; ``infos`` holds ``infos/*`` and ``metadata``
    holds ``metadata/*`` and the file's attributes, decoded.
    """
    if not path.is_file():
        raise UserError(f"dataset file {source} does not exist: check the path or --dataset")
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise UserError(
            f"{source} is not a readable HDF5 file ({exc}): re-download or re-collect it"
        ) from exc
    with handle as f:
        for key in REQUIRED_KEYS:
            if key not in f or not isinstance(f[key], h5py.Dataset):
                raise UserError(
                    f"{source}: missing key '{key}': not a D4RL dataset file "
                    f"(needs {', '.join(REQUIRED_KEYS)})"
                )
        raw = {key: f[key][()] for key in REQUIRED_KEYS}
        if "next_observations" in f and isinstance(f["next_observations"], h5py.Dataset):
            raw["next_observations"] = f["next_observations"][()]
        infos_group, metadata_group = f.get("infos"), f.get("metadata")
        infos_raw = (_read_group(infos_group, with_attrs=False)
                     if isinstance(infos_group, h5py.Group) else {})
        metadata = _read_group(metadata_group) if isinstance(metadata_group, h5py.Group) else {}
        for key, attr in f.attrs.items():
            metadata.setdefault(key, _decode(attr))
    return raw, infos_raw, metadata


def _check_row_shapes(raw: dict[str, np.ndarray], source: str) -> int:
    """Check the arrays' shapes and lengths, flattening ``[N, 1]`` flags in place; ``N``."""
    # Some writers store rewards/terminals as [N, 1].
    for key in ("rewards", "terminals", "timeouts"):
        if raw[key].ndim == 2 and raw[key].shape[1] == 1:
            raw[key] = raw[key][:, 0]
        if raw[key].ndim != 1:
            raise UserError(f"{source}: '{key}' has shape {raw[key].shape}, expected [N]: "
                            "not a D4RL dataset file")
    for key in ("observations", "actions", "next_observations"):
        if key in raw and raw[key].ndim != 2:
            raise UserError(f"{source}: '{key}' has shape {raw[key].shape}, expected [N, dim]: "
                            "not a D4RL dataset file")
    n = raw["observations"].shape[0]
    for key, value in raw.items():
        if value.shape[0] != n:
            raise UserError(
                f"{source}: '{key}' has {value.shape[0]} rows but 'observations' has {n}: "
                "the file is truncated or corrupt; re-download or re-collect it"
            )
    if "next_observations" in raw \
            and raw["next_observations"].shape[1] != raw["observations"].shape[1]:
        raise UserError(
            f"{source}: 'next_observations' have {raw['next_observations'].shape[1]} dimensions "
            f"but 'observations' have {raw['observations'].shape[1]}: the file is corrupt"
        )
    return int(n)


def _check_infos(infos_raw: dict[str, object], n: int, source: str) -> dict[str, np.ndarray]:
    """The ``infos/*`` values as arrays, each checked to have ``n`` rows."""
    infos: dict[str, np.ndarray] = {}
    for key, value in infos_raw.items():
        array = np.asarray(value)
        if array.ndim == 0 or array.shape[0] != n:
            raise UserError(
                f"{source}: 'infos/{key}' has {array.shape[0] if array.ndim else 0} rows but "
                f"'observations' has {n}: the file is truncated or corrupt"
            )
        infos[key] = array
    return infos


def _typed_rows(raw: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    """The per-row arrays cast to float32 (flags to bool), refusing non-finite values."""
    rows = {
        "observations": raw["observations"].astype(np.float32, copy=False),
        "actions": raw["actions"].astype(np.float32, copy=False),
        "rewards": raw["rewards"].astype(np.float32, copy=False),
        "terminals": raw["terminals"].astype(bool, copy=False),
        "timeouts": raw["timeouts"].astype(bool, copy=False),
    }
    for key in ("observations", "actions", "rewards"):
        _check_finite(rows[key], key, source)
    if "next_observations" in raw:
        rows["next_observations"] = raw["next_observations"].astype(np.float32, copy=False)
        _check_finite(rows["next_observations"], "next_observations", source)
    return rows


def _derive_next_observations(
    rows: dict[str, np.ndarray], infos: dict[str, np.ndarray], metadata: dict[str, object]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Rows and infos of a file without ``next_observations``, as :func:`derive_transitions`.

    Returns the kept rows (``next_observations`` added) and infos; ``metadata`` records the
    derivation and the reset rows in place.
    """
    keep, next_observations = derive_transitions(
        rows["observations"], rows["terminals"], rows["timeouts"])
    metadata["next_observations_derived"] = True
    metadata["reset_next_observation_rows"] = np.flatnonzero(rows["terminals"][keep])
    kept = {key: value[keep] for key, value in rows.items()}
    kept["next_observations"] = next_observations
    return kept, {key: value[keep] for key, value in infos.items()}


def _write_value(group: h5py.Group, key: str, value: object) -> None:
    """Store one metadata value as a dataset (nested mappings become groups)."""
    if value is None:
        return
    if isinstance(value, Mapping):
        sub = group.require_group(key)
        for sub_key, sub_value in value.items():
            _write_value(sub, str(sub_key), sub_value)
        return
    if isinstance(value, str):
        group.create_dataset(key, data=value, dtype=h5py.string_dtype("utf-8"))
        return
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        group.create_dataset(key, data=list(value), dtype=h5py.string_dtype("utf-8"))
        return
    array = np.asarray(value)
    if array.dtype.kind in ("U", "O"):
        group.create_dataset(key, data=str(value), dtype=h5py.string_dtype("utf-8"))
        return
    group.create_dataset(key, data=array)


def write_d4rl_hdf5(
    dataset: OfflineDataset, path: str | os.PathLike[str], compress: bool = True
) -> Path:
    """Write ``dataset`` in D4RL's layout, atomically.

    The keys are ``observations``, ``actions``, ``rewards``, ``next_observations``,
    ``terminals``, ``timeouts``, ``infos/<key>`` and ``metadata/<key>`` (datasets, as D4RL
    stores them; nested keys with ``/`` become groups). The file is written next to ``path``
    under a temporary name and moved into place with ``os.replace``.

    Args:
        dataset: what to write.
        path: destination; its directory is created if needed.
        compress: gzip the per-row arrays (D4RL's files are compressed too).

    Returns:
        The path written.
    """
    path = Path(path)
    options = {"compression": "gzip", "compression_opts": 1} if compress else {}

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            rows = {
                "observations": np.asarray(dataset.observations, dtype=np.float32),
                "actions": np.asarray(dataset.actions, dtype=np.float32),
                "rewards": np.asarray(dataset.rewards, dtype=np.float32),
                "next_observations": np.asarray(dataset.next_observations, dtype=np.float32),
                "terminals": np.asarray(dataset.terminals, dtype=bool),
                "timeouts": np.asarray(dataset.timeouts, dtype=bool),
            }
            for key, array in rows.items():
                f.create_dataset(key, data=array, **(options if array.size else {}))
            infos = f.create_group("infos")
            for key, array in dataset.infos.items():
                array = np.asarray(array)
                parent = infos.require_group(key.rsplit("/", 1)[0]) if "/" in key else infos
                parent.create_dataset(key.rsplit("/", 1)[-1], data=array,
                                      **(options if array.size else {}))
            metadata = f.create_group("metadata")
            for key, value in dataset.metadata.items():
                parent = metadata.require_group(key.rsplit("/", 1)[0]) if "/" in key else metadata
                _write_value(parent, key.rsplit("/", 1)[-1], value)

    # Checked before writing: HDF5 crashes the process on a full disk instead of raising.
    nbytes = sum(np.asarray(a).nbytes for a in (
        dataset.observations, dataset.actions, dataset.rewards, dataset.next_observations,
        dataset.terminals, dataset.timeouts, *dataset.infos.values()))
    atomic_write(path, write, expected_bytes=nbytes)
    return path
