"""Uncertainty estimates from an ensemble's outputs (the seed's definitions).

All estimates are on the scale of the *standardised next observation*
``(next_obs - obs_mean) / obs_std`` with the dataset's statistics, whatever the scale the
networks predict in: the networks predict the standardised delta
``d = (next_obs - obs - delta_mean) / delta_std``, so a prediction ``d`` moves the
standardised next observation by ``d · delta_std / obs_std``
(:meth:`~offline_mbrl.models.ensemble.Normalizer.next_obs_scale`).

* aleatoric: the largest predicted variance, over members and dimensions;
* epistemic: the largest Euclidean distance between two members' predicted means;
* MOPO: the largest norm, over members, of the predicted standard deviation.

``members`` (e.g. ``model.elites``) restricts every estimate to those members.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from offline_mbrl.models.ensemble import EnsembleOutput, EnvironmentModel, Normalizer

UncertaintyKind = Literal["aleatoric", "epistemic", "mopo"]


def _select(values: torch.Tensor, members: torch.Tensor | None) -> torch.Tensor:
    if members is None:
        return values
    return values.index_select(0, torch.as_tensor(members, device=values.device).long())


def next_obs_variance(
    outputs: EnsembleOutput, normalizer: Normalizer, members: torch.Tensor | None = None
) -> torch.Tensor:
    """``[E', B, obs_dim]`` predicted variance of the standardised next observation."""
    logvar = _select(outputs.delta_logvar, members)
    return torch.exp(logvar) * normalizer.next_obs_scale().square()


def aleatoric_uncertainty(
    outputs: EnsembleOutput, normalizer: Normalizer, members: torch.Tensor | None = None
) -> torch.Tensor:
    """``[B]`` largest predicted variance of the standardised next observation over members
    and dimensions (0 for a deterministic model)."""
    return next_obs_variance(outputs, normalizer, members).amax(dim=(0, 2))


def epistemic_uncertainty(
    outputs: EnsembleOutput, normalizer: Normalizer, members: torch.Tensor | None = None
) -> torch.Tensor:
    """``[B]`` largest Euclidean distance between two members' predicted means of the
    standardised next observation (0 with a single member).

    The observation itself is common to all members and cancels out of the differences.
    """
    means = _select(outputs.delta_mean, members) * normalizer.next_obs_scale()  # [E', B, d]
    n = means.shape[0]
    if n < 2:
        return means.new_zeros(means.shape[1])
    # Each unordered pair once, by the direct formula: no matrix-product shortcut, which
    # loses digits by cancellation when members nearly agree, and half of cdist's work.
    first, second = torch.triu_indices(n, n, offset=1, device=means.device)
    return (means[first] - means[second]).square().sum(-1).amax(0).sqrt()


def mopo_uncertainty(
    outputs: EnsembleOutput, normalizer: Normalizer, members: torch.Tensor | None = None
) -> torch.Tensor:
    """``[B]`` MOPO's penalty: max over members of ``‖σ‖₂``, the norm of the predicted standard
    deviation of the standardised next observation."""
    return next_obs_variance(outputs, normalizer, members).sum(dim=-1).sqrt().amax(dim=0)


UNCERTAINTY_FUNCTIONS = {
    "aleatoric": aleatoric_uncertainty,
    "epistemic": epistemic_uncertainty,
    "mopo": mopo_uncertainty,
}


def uncertainty(
    kind: UncertaintyKind,
    outputs: EnsembleOutput,
    normalizer: Normalizer,
    members: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dispatch on ``kind`` (``aleatoric``, ``epistemic`` or ``mopo``) -> ``[B]``."""
    try:
        fn = UNCERTAINTY_FUNCTIONS[kind]
    except KeyError:
        raise ValueError(
            f"unknown uncertainty kind {kind!r}: use one of {sorted(UNCERTAINTY_FUNCTIONS)}"
        ) from None
    return fn(outputs, normalizer, members)


@torch.no_grad()
def dataset_uncertainty(
    model: EnvironmentModel,
    obs: torch.Tensor | np.ndarray,
    action: torch.Tensor | np.ndarray,
    kind: UncertaintyKind,
    batch_size: int = 2048,
    elites_only: bool = True,
) -> torch.Tensor:
    """``[N]`` uncertainty of ``model`` at every ``(obs, action)`` pair, computed in chunks.

    ``elites_only`` restricts the estimate to ``model.elites``.
    """
    device = model.elites.device
    obs_t = torch.as_tensor(obs, dtype=torch.float32, device=device)
    action_t = torch.as_tensor(action, dtype=torch.float32, device=device)
    members = model.elites if elites_only else None
    parts = [
        uncertainty(kind, model(o, a), model.normalizer, members)
        for o, a in zip(obs_t.split(batch_size), action_t.split(batch_size), strict=True)
    ]
    return torch.cat(parts) if parts else torch.zeros(0, device=device)
