"""Networks with a leading group dimension and the environment-model ensemble."""

from offline_mbrl.models.ensemble import (
    EnsembleOutput,
    EnvironmentModel,
    Normalizer,
    gaussian_nll,
    sample_next,
    soft_clamp_logvar,
)
from offline_mbrl.models.io import (
    check_model_matches,
    default_model_path,
    load_environment_model,
    save_environment_model,
)
from offline_mbrl.models.layers import BatchedLinear, BatchedMLP, member_generators
from offline_mbrl.models.training import (
    EnvironmentModelConfiguration,
    default_patience,
    train_environment_model,
)
from offline_mbrl.models.uncertainty import (
    aleatoric_uncertainty,
    dataset_uncertainty,
    epistemic_uncertainty,
    mopo_uncertainty,
    uncertainty,
)

__all__ = [
    "BatchedLinear",
    "BatchedMLP",
    "EnsembleOutput",
    "EnvironmentModel",
    "EnvironmentModelConfiguration",
    "Normalizer",
    "aleatoric_uncertainty",
    "check_model_matches",
    "dataset_uncertainty",
    "default_model_path",
    "default_patience",
    "epistemic_uncertainty",
    "gaussian_nll",
    "load_environment_model",
    "member_generators",
    "mopo_uncertainty",
    "sample_next",
    "save_environment_model",
    "soft_clamp_logvar",
    "train_environment_model",
    "uncertainty",
]
