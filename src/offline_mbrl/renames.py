"""Old names of configuration fields, still accepted everywhere a name is read.

One word for one thing: the model-generated data is *synthetic* (the seed also said
*virtual*), a rollout is always a model rollout (``rollout_length``, ``rollout_every``), and
the agent's networks are sized as the environment model's (``n_hidden_layers``,
``n_hidden_units``). The old names keep working as command-line flags (hidden aliases, see
:func:`offline_mbrl.cli.add_model_flags`), as keys of configuration files and of Python
keyword arguments (:class:`offline_mbrl.fields.Frozen` renames them before validation),
and in the configuration saved in old checkpoints (:func:`current_config_names`, which
``--resume`` applies before comparing). What is written from now on uses the new names.

Light on purpose (imports nothing of the package), so that any module can use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

TRAINER_RENAMED: Mapping[str, str] = {
    "n_parallel_virtual_rollouts": "n_parallel_rollouts",
    "max_virtual_rollout_length": "max_rollout_length",
    "reset_virtual_buffer_after_env_model_training":
        "reset_synthetic_buffer_after_env_model_training",
    "virtual_buffer_size": "synthetic_buffer_size",
}
"""Old -> new field names of :class:`~offline_mbrl.config.TrainerConfiguration` (the old
ones are the seed's)."""

AGENT_RENAMED: Mapping[str, str] = {
    "hidden_layers": "n_hidden_layers",
    "hidden_units": "n_hidden_units",
}
"""Old -> new field names of :class:`~offline_mbrl.config.AgentConfiguration`, named as
the environment model's (``n_hidden_layers``, ``n_hidden_units``)."""


def current_names(values: Mapping[str, Any], renamed: Mapping[str, str]) -> dict[str, Any]:
    """``values`` with each old key of ``renamed`` replaced by its new name.

    Raises:
        ValueError: an old name and its new one are both given, with different values.
    """
    result = dict(values)
    for old, new in renamed.items():
        if old not in result:
            continue
        value = result.pop(old)
        if new in result and result[new] != value:
            raise ValueError(f"{old} is the old name of {new}, and both are given "
                             f"({value!r} and {result[new]!r}): pass only {new}")
        result[new] = value
    return result


def current_config_names(config: Mapping[str, Any]) -> dict[str, Any]:
    """A trainer configuration as a dict (a ``config.json``, a checkpoint's ``config``) with
    old field names replaced by current ones, at the top level and in ``agent``."""
    result = current_names(config, TRAINER_RENAMED)
    if isinstance(result.get("agent"), Mapping):
        result["agent"] = current_names(result["agent"], AGENT_RENAMED)
    return result
