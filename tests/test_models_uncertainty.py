"""Exact tests of the uncertainty estimates on hand-made ensemble outputs."""

from __future__ import annotations

import math

import pytest
import torch

from offline_mbrl.models.ensemble import EnsembleOutput, EnvironmentModel, Normalizer
from offline_mbrl.models.uncertainty import (
    aleatoric_uncertainty,
    dataset_uncertainty,
    epistemic_uncertainty,
    mopo_uncertainty,
    uncertainty,
)


def normalizer(scale: tuple[float, float] = (2.0, 0.5)) -> Normalizer:
    """delta_std / obs_std = ``scale``."""
    norm = Normalizer(2, 1)
    norm.obs_std.copy_(torch.tensor([1.0, 4.0]))
    norm.delta_std.copy_(torch.tensor([scale[0] * 1.0, scale[1] * 4.0]))
    norm.obs_mean.copy_(torch.tensor([3.0, -2.0]))  # must not matter
    norm.delta_mean.copy_(torch.tensor([1.0, 1.0]))  # must not matter
    return norm


def outputs() -> EnsembleOutput:
    """E=3 members, B=2 samples, obs_dim=2 (normalised-delta units)."""
    delta_mean = torch.tensor([
        [[0.0, 0.0], [1.0, 1.0]],
        [[1.0, 0.0], [1.0, 1.0]],
        [[0.0, 4.0], [1.0, -3.0]],
    ])
    variance = torch.tensor([
        [[1.0, 4.0], [0.25, 1.0]],
        [[0.5, 2.0], [1.0, 16.0]],
        [[0.1, 0.1], [2.0, 1.0]],
    ])
    return EnsembleOutput(delta_mean, torch.log(variance), torch.zeros(3, 2),
                          torch.zeros(3, 2))


def test_aleatoric_is_max_variance_in_normalised_observation_units() -> None:
    # Variances times scale² = (4, 0.25):
    # sample 0: member 0 (4, 1), member 1 (2, 0.5), member 2 (0.4, 0.025) -> 4
    # sample 1: member 0 (1, 0.25), member 1 (4, 4), member 2 (8, 0.25) -> 8
    result = aleatoric_uncertainty(outputs(), normalizer())
    torch.testing.assert_close(result, torch.tensor([4.0, 8.0]))
    # Only members 0 and 1: sample 1 -> 4.
    result = aleatoric_uncertainty(outputs(), normalizer(), torch.tensor([0, 1]))
    torch.testing.assert_close(result, torch.tensor([4.0, 4.0]))


def test_epistemic_is_largest_pairwise_distance() -> None:
    # Means times scale (2, 0.5):
    # sample 0: (0, 0), (2, 0), (0, 2) -> largest distance |(2,0)-(0,2)| = sqrt(8)
    # sample 1: (2, 0.5), (2, 0.5), (2, -1.5) -> 2
    result = epistemic_uncertainty(outputs(), normalizer())
    torch.testing.assert_close(result, torch.tensor([math.sqrt(8.0), 2.0]))
    result = epistemic_uncertainty(outputs(), normalizer(), torch.tensor([0, 1]))
    torch.testing.assert_close(result, torch.tensor([2.0, 0.0]))
    single = epistemic_uncertainty(outputs(), normalizer(), torch.tensor([2]))
    torch.testing.assert_close(single, torch.zeros(2))


def test_epistemic_is_exact_for_nearly_equal_members() -> None:
    base = torch.full((2, 1, 2), 1000.0)
    base[1, 0, 0] += 1e-3
    out = EnsembleOutput(base, torch.zeros_like(base), torch.zeros(2, 1), torch.zeros(2, 1))
    result = epistemic_uncertainty(out, normalizer((1.0, 1.0)))
    assert float(result) == pytest.approx(float(base[1, 0, 0] - base[0, 0, 0]), rel=1e-6)


def test_mopo_is_max_norm_of_std() -> None:
    # Variances times scale²; norm of std = sqrt(sum of variances):
    # sample 0: sqrt(5), sqrt(2.5), sqrt(0.425) -> sqrt(5)
    # sample 1: sqrt(1.25), sqrt(8), sqrt(8.25) -> sqrt(8.25)
    result = mopo_uncertainty(outputs(), normalizer())
    torch.testing.assert_close(result, torch.tensor([math.sqrt(5.0), math.sqrt(8.25)]))


def test_dispatch_and_deterministic_model() -> None:
    out, norm = outputs(), normalizer()
    torch.testing.assert_close(uncertainty("epistemic", out, norm),
                               epistemic_uncertainty(out, norm))
    with pytest.raises(ValueError, match="unknown uncertainty kind"):
        uncertainty("bogus", out, norm)  # type: ignore[arg-type]
    det = EnsembleOutput(out.delta_mean, torch.full_like(out.delta_logvar, -math.inf),
                         out.reward_mean, out.reward_logvar)
    torch.testing.assert_close(aleatoric_uncertainty(det, norm), torch.zeros(2))
    torch.testing.assert_close(mopo_uncertainty(det, norm), torch.zeros(2))


def test_dataset_uncertainty_chunks_and_elites() -> None:
    model = EnvironmentModel(3, 2, n_networks=4, n_hidden_layers=1, n_hidden_units=8,
                             reward_n_hidden_units=4)
    obs, action = torch.randn(50, 3), torch.randn(50, 2)
    whole = epistemic_uncertainty(model(obs, action), model.normalizer)
    chunked = dataset_uncertainty(model, obs.numpy(), action.numpy(), "epistemic", batch_size=7)
    torch.testing.assert_close(chunked, whole)
    model.set_elites([0, 2])
    elites = dataset_uncertainty(model, obs, action, "aleatoric", batch_size=16)
    expected = aleatoric_uncertainty(model(obs, action), model.normalizer, torch.tensor([0, 2]))
    torch.testing.assert_close(elites, expected)
    everyone = dataset_uncertainty(model, obs, action, "aleatoric", elites_only=False)
    assert (everyone >= elites).all()
