"""Find the data behind a dataset name, downloading it when allowed.

Resolution order for ``name`` (one of the 15 D4RL names, e.g. ``hopper-medium-replay-v2``):

1. an explicit ``dataset``: a file path, or ``minari:<id>``;
2. ``$OMBRL_DATASETS_DIR/<name>.hdf5`` (default ``./data/datasets``);
3. d4rl's cache: ``$D4RL_DATASET_DIR`` or ``~/.d4rl/datasets``, under d4rl's file name
   (``hopper_medium_replay-v2.hdf5``);
4. a local Minari dataset: ``name`` itself when it is ``minari:<id>``, else the id that
   ``ombrl datasets export`` gives it (``ombrl/hopper/medium-replay-v2``). Farama's remote
   ``mujoco/*`` datasets were regenerated on Gymnasium v5 and are different data, so they are
   only used when named explicitly (``minari:mujoco/hopper/medium-v0``);
5. a download of the published D4RL file (``$OMBRL_D4RL_URL``, default
   :data:`D4RL_BASE_URL`, then ``/gym_mujoco_v2/<file>``) into ``$OMBRL_DATASETS_DIR``,
   unless ``allow_download`` is false or ``OMBRL_OFFLINE=1``;
6. otherwise a :class:`UserError` that lists these ways to get the data.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from offline_mbrl.data.d4rl import check_env_dims, load_d4rl_hdf5
from offline_mbrl.data.dataset import OfflineDataset
from offline_mbrl.data.download import download_file
from offline_mbrl.data.minari_io import default_minari_id, load_minari, minari_dataset_exists
from offline_mbrl.envs.registry import all_dataset_names, get_env_spec
from offline_mbrl.errors import UserError
from offline_mbrl.paths import child_path

D4RL_BASE_URL = "http://rail.eecs.berkeley.edu/datasets/offline_rl"
MINARI_PREFIX = "minari:"


def datasets_dir() -> Path:
    """``$OMBRL_DATASETS_DIR`` (default ``./data/datasets``)."""
    return Path(os.environ.get("OMBRL_DATASETS_DIR") or "data/datasets")


def validate_d4rl_file(path: Path, name: str) -> None:
    """Raise :class:`UserError` unless ``path`` loads as a non-empty dataset of ``name``."""
    dataset = load_d4rl_hdf5(path, env_name=name)
    if len(dataset) == 0:
        raise UserError(f"{path.name} has no transitions")


def dataset_file(name: str) -> Path:
    """``$OMBRL_DATASETS_DIR/<name>.hdf5``, refused if the name leads outside it."""
    return child_path(datasets_dir(), f"{name}.hdf5", "dataset name", "a dataset name")


def d4rl_cache_dir() -> Path:
    """Where d4rl keeps its downloads: ``$D4RL_DATASET_DIR`` or ``~/.d4rl/datasets``."""
    env = os.environ.get("D4RL_DATASET_DIR")
    return Path(env) if env else Path.home() / ".d4rl" / "datasets"


def offline_mode() -> bool:
    """``OMBRL_OFFLINE`` set to a true value (1, true, yes) forbids downloads."""
    return os.environ.get("OMBRL_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def check_dataset_name(name: str) -> str:
    """Return ``name`` if it is one of the 15 D4RL dataset names, else raise :class:`UserError`."""
    if name in all_dataset_names():
        return name
    spec = None
    with contextlib.suppress(UserError):
        spec = get_env_spec(name)
    if spec is not None and spec.dataset_kind is None:
        reason = "names an environment, not a dataset"
    else:
        reason = "is not a D4RL dataset"
    raise UserError(
        f"'{name}' {reason}: use one of {{hopper,halfcheetah,walker2d}}-"
        "{random,medium,medium-replay,medium-expert,expert}-v2, "
        "or pass --dataset PATH or minari:<id>"
    )


def d4rl_file_name(name: str) -> str:
    """d4rl's file name: ``hopper-medium-replay-v2`` -> ``hopper_medium_replay-v2.hdf5``."""
    spec = get_env_spec(check_dataset_name(name))
    assert spec.dataset_kind is not None
    return f"{spec.family}_{spec.dataset_kind.replace('-', '_')}-v2.hdf5"


def d4rl_url(name: str) -> str:
    """Where the published D4RL file for ``name`` is (``$OMBRL_D4RL_URL`` overrides the base)."""
    base = (os.environ.get("OMBRL_D4RL_URL") or D4RL_BASE_URL).rstrip("/")
    return f"{base}/gym_mujoco_v2/{d4rl_file_name(name)}"


def local_dataset_path(name: str) -> Path | None:
    """The first of ``$OMBRL_DATASETS_DIR/<name>.hdf5`` and d4rl's cached file that exists."""
    for candidate in (dataset_file(name), d4rl_cache_dir() / d4rl_file_name(name)):
        if candidate.is_file():
            return candidate
    return None


def _how_to_get(name: str, download_failed: bool = False) -> str:
    download = ("set OMBRL_D4RL_URL to a reachable mirror" if download_failed else
                f"download it with `ombrl datasets download {name}` (mirror: OMBRL_D4RL_URL)")
    return (
        f"put the D4RL file at {datasets_dir() / f'{name}.hdf5'} or "
        f"{d4rl_cache_dir() / d4rl_file_name(name)}, pass --dataset PATH or minari:<id>, "
        f"{download}, or create it with `ombrl datasets collect {name}`"
    )


def resolve_dataset_path(
    name: str, dataset: str | None = None, allow_download: bool = True
) -> Path | str:
    """Where the data for ``name`` is, following the module's resolution order.

    Args:
        name: a D4RL dataset name, or ``minari:<id>``.
        dataset: an explicit file path or ``minari:<id>``, used as is.
        allow_download: permit step 5 (``OMBRL_OFFLINE=1`` forbids it regardless).

    Returns:
        A :class:`~pathlib.Path` to an HDF5 file, or a ``minari:<id>`` string.

    Raises:
        UserError: unknown name, explicit file missing, or no data found and no download allowed.
    """
    if dataset is not None:
        if dataset.startswith(MINARI_PREFIX):
            return dataset
        path = Path(dataset).expanduser()
        if not path.is_file():
            raise UserError(f"dataset file {path} does not exist: check --dataset")
        return path
    if name.startswith(MINARI_PREFIX):
        return name
    check_dataset_name(name)
    local = local_dataset_path(name)
    if local is not None:
        return local
    minari_id = default_minari_id(name)
    if minari_dataset_exists(minari_id):
        return MINARI_PREFIX + minari_id
    if not allow_download or offline_mode():
        why = "OMBRL_OFFLINE is set" if offline_mode() else "downloads are disabled"
        raise UserError(f"no local data for {name} and {why}: {_how_to_get(name)}")
    url = d4rl_url(name)
    return download_file(url, dataset_file(name),
                         hint=_how_to_get(name, download_failed=True),
                         validate=lambda path: validate_d4rl_file(path, name))


def load_dataset(
    name: str, dataset: str | None = None, allow_download: bool = True
) -> OfflineDataset:
    """Load the dataset for ``name`` (see :func:`resolve_dataset_path`).

    Args:
        name: a D4RL dataset name, or ``minari:<id>``; with an explicit ``dataset`` any
            environment name (``Hopper-v5``, ``hopper-v2``) is accepted and only used to check
            dimensions.
        dataset: explicit file path or ``minari:<id>``.
        allow_download: permit downloading the published D4RL file.

    Returns:
        The dataset, its dimensions checked against ``name``'s environment (when ``name`` is
        not a ``minari:`` id), named ``name``.
    """
    env_name = None if name.startswith(MINARI_PREFIX) else name
    if env_name is not None and dataset is not None:
        get_env_spec(env_name)  # a clear error for a typo before any file is read
    where = resolve_dataset_path(name, dataset, allow_download)
    if isinstance(where, str):
        data = load_minari(where.removeprefix(MINARI_PREFIX))
        if env_name is not None:
            check_env_dims(data, env_name, where)
            data.name = env_name
        return data
    return load_d4rl_hdf5(where, env_name=env_name)
