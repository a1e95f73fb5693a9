"""Saving and loading trained environment models.

A model file is a ``torch.save`` of a plain dictionary::

    {"format": "offline_mbrl.environment_model", "format_version": 1,
     "state_dict": {...}, "metadata": {...}}

``metadata`` holds only JSON-like values (``obs_dim``, ``act_dim``, ``architecture``,
``config``, ``dataset_name``, ``dataset_hash``, ``env_name``, ``validation``,
``library_version``, ``created``), so the file loads with ``torch.load(weights_only=True)``.
Files are written atomically: a temporary file in the target directory, then ``os.replace``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Mapping
from importlib import metadata as _importlib_metadata
from pathlib import Path
from typing import Any

import torch

from offline_mbrl.checkpoint import atomic_torch_save
from offline_mbrl.data.dataset import OfflineDataset
from offline_mbrl.envs.registry import get_env_spec
from offline_mbrl.errors import UserError
from offline_mbrl.models.ensemble import EnvironmentModel
from offline_mbrl.models.training import resolve_device
from offline_mbrl.paths import child_path

FORMAT = "offline_mbrl.environment_model"
FORMAT_VERSION = 1
DEFAULT_MODELS_DIR = "data/models"
_ARCHITECTURE_KEYS = ("obs_dim", "act_dim", "type", "n_networks", "n_hidden_layers",
                      "n_hidden_units", "reward_n_hidden_units")


def models_dir() -> Path:
    """``$OMBRL_MODELS_DIR`` (default ``./data/models``)."""
    return Path(os.environ.get("OMBRL_MODELS_DIR") or DEFAULT_MODELS_DIR)


def default_model_path(env_name: str) -> Path:
    """``$OMBRL_MODELS_DIR/<env_name>-model.pt``."""
    return child_path(models_dir(), f"{env_name}-model.pt", "model name", "--env_name")


def library_version() -> str:
    """The installed ``offline_mbrl`` version, or ``unknown`` when run from a bare checkout."""
    try:
        return _importlib_metadata.version("offline_mbrl")
    except _importlib_metadata.PackageNotFoundError:
        return "unknown"


def _plain(value: Any) -> Any:
    """``value`` as JSON-like Python values (what ``weights_only`` loading accepts)."""

    def default(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            return obj.tolist()
        if hasattr(obj, "tolist"):  # numpy arrays and scalars
            return obj.tolist()
        if hasattr(obj, "model_dump"):  # pydantic configurations
            return obj.model_dump(mode="json")
        if isinstance(obj, Path):
            return str(obj)
        raise TypeError(f"cannot store {type(obj).__name__} in model metadata")

    return json.loads(json.dumps(value, default=default, allow_nan=True))


def save_environment_model(
    model: EnvironmentModel, path: str | os.PathLike[str], metadata: Mapping[str, Any] | None = None
) -> Path:
    """Write ``model`` and ``metadata`` to ``path`` atomically; return the path.

    ``metadata`` is the caller's part (``config``, ``dataset_name``, ``dataset_hash``,
    ``validation``, ...); ``obs_dim``, ``act_dim``, ``architecture``, ``env_name``,
    ``library_version`` and ``created`` are filled in from the model and override it.
    """
    path = Path(path)
    meta = _plain(dict(metadata or {}))
    meta.update(_plain({
        "obs_dim": model.obs_dim,
        "act_dim": model.act_dim,
        "architecture": model.architecture(),
        "env_name": model.env_name,
        "library_version": library_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }))
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "metadata": meta,
    }
    try:
        atomic_torch_save(payload, path)
    except OSError as exc:
        raise UserError(f"cannot write environment model to {path} ({exc.strerror or exc}): "
                        "choose a writable --out path or set OMBRL_MODELS_DIR") from None
    return path


def _bad_file(path: Path, why: str) -> UserError:
    return UserError(f"{path} is not a usable environment model file ({why}): retrain it with "
                     "train_environment_model.py --overwrite")


def load_environment_model(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[EnvironmentModel, dict[str, Any]]:
    """Load a model written by :func:`save_environment_model`.

    Returns:
        The model (on ``device``, in eval mode, elites restored) and its metadata.

    Raises:
        UserError: the file is missing, corrupt, of another format or version, or its
            weights do not fit the architecture it declares.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no environment model at {path}: train one with "
                        "train_environment_model.py --env_name <name> (or check the path)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise _bad_file(path, f"unreadable: {first_line[:160]}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise _bad_file(path, "not an offline_mbrl environment model")
    if payload.get("format_version") != FORMAT_VERSION:
        raise _bad_file(path, f"format version {payload.get('format_version')}, "
                              f"this library reads {FORMAT_VERSION}")
    meta, state = payload.get("metadata"), payload.get("state_dict")
    if not isinstance(meta, dict) or not isinstance(state, dict):
        raise _bad_file(path, "metadata or weights missing")
    arch = meta.get("architecture")
    if not isinstance(arch, dict) or any(k not in arch for k in _ARCHITECTURE_KEYS):
        raise _bad_file(path, "architecture missing from metadata")
    try:
        model = EnvironmentModel(
            int(arch["obs_dim"]), int(arch["act_dim"]), type=arch["type"],
            n_networks=int(arch["n_networks"]), n_hidden_layers=int(arch["n_hidden_layers"]),
            n_hidden_units=int(arch["n_hidden_units"]),
            reward_n_hidden_units=int(arch["reward_n_hidden_units"]),
            env_name=arch.get("env_name"), seed=int(arch.get("seed", 0)),
        )
        if "elites" in state:
            model.set_elites(state["elites"])
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise _bad_file(path, f"weights do not match the architecture: {first_line[:160]}") \
            from None
    model = model.to(resolve_device(str(device)))
    model.eval()
    return model, meta


def check_model_matches(
    metadata: Mapping[str, Any], dataset: OfflineDataset, env_name: str | None = None
) -> None:
    """Raise :class:`UserError` unless a saved model fits ``dataset`` (and ``env_name``).

    Checks the observation and action dimensions, the dataset's content hash when the
    model recorded one, and the environment family when both names are known.
    """
    fix = "retrain the model on this dataset (train_environment_model.py --overwrite) or pass " \
          "the matching model file"
    obs_dim, act_dim = metadata.get("obs_dim"), metadata.get("act_dim")
    if (obs_dim, act_dim) != (dataset.obs_dim, dataset.act_dim):
        raise UserError(f"environment model has obs_dim={obs_dim}, act_dim={act_dim} but the "
                        f"dataset {dataset.name or ''} has obs_dim={dataset.obs_dim}, "
                        f"act_dim={dataset.act_dim}: {fix}")
    saved_hash = metadata.get("dataset_hash")
    if saved_hash and saved_hash != dataset.content_hash():
        raise UserError(f"environment model was trained on dataset "
                        f"{metadata.get('dataset_name') or '?'} (hash {saved_hash}), not on "
                        f"{dataset.name or 'this dataset'} (hash {dataset.content_hash()}): {fix}")
    saved_env = metadata.get("env_name")
    if env_name and saved_env:
        try:
            saved_family, family = get_env_spec(saved_env).family, get_env_spec(env_name).family
        except UserError:
            return
        if saved_family != family:
            raise UserError(f"environment model was trained for {saved_env}, not {env_name}: "
                            f"{fix}")
