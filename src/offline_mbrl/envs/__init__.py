"""Environments: name registry, batched termination functions, normalised scores."""

from offline_mbrl.envs.registry import EnvSpec, get_env_spec, make_env, make_vector_env
from offline_mbrl.envs.scores import normalized_score

__all__ = ["EnvSpec", "get_env_spec", "make_env", "make_vector_env", "normalized_score"]
