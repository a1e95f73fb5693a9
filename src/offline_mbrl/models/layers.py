"""Linear layers and MLPs with a leading group dimension.

A *group* is anything we want to train side by side without a Python loop: the
members of a population (seeds or hyperparameter configurations), the members of an
ensemble, or both flattened (``P·E``). Every layer holds weights ``[G, in, out]`` and
maps ``[G, B, in] -> [G, B, out]`` with one ``baddbmm``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import nn


class BatchedLinear(nn.Module):
    """``G`` independent affine maps applied in one batched matmul.

    Attributes:
        weight: ``[G, in_features, out_features]``.
        bias: ``[G, 1, out_features]``.
    """

    def __init__(self, groups: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.groups, self.in_features, self.out_features = groups, in_features, out_features
        self.weight = nn.Parameter(torch.empty(groups, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(groups, 1, out_features))
        self.reset_parameters()

    def reset_parameters(self, generators: Sequence[torch.Generator] | None = None) -> None:
        """Initialise like ``nn.Linear``: ``U(-1/sqrt(in), 1/sqrt(in))`` for weights and bias.

        Args:
            generators: one generator per group, so that group ``g`` gets the same
                weights whatever the other groups are; ``None`` uses the global RNG.
        """
        bound = 1.0 / math.sqrt(self.in_features)
        with torch.no_grad():
            if generators is None:
                self.weight.uniform_(-bound, bound)
                self.bias.uniform_(-bound, bound)
                return
            if len(generators) != self.groups:
                raise ValueError(f"expected {self.groups} generators, got {len(generators)}")
            for g, gen in enumerate(generators):
                self.weight[g].uniform_(-bound, bound, generator=gen)
                self.bias[g].uniform_(-bound, bound, generator=gen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[G, B, in] -> [G, B, out]``."""
        return torch.baddbmm(self.bias, x, self.weight)

    def extra_repr(self) -> str:
        return f"groups={self.groups}, in={self.in_features}, out={self.out_features}"


class BatchedMLP(nn.Module):
    """ReLU MLP of :class:`BatchedLinear` layers: ``[G, B, in] -> [G, B, out]``."""

    def __init__(
        self,
        groups: int,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (128, 128, 128, 128),
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        sizes = [in_features, *hidden, out_features]
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
            layers.append(BatchedLinear(groups, n_in, n_out))
            if i < len(sizes) - 2:
                layers.append(activation())
        self.net = nn.Sequential(*layers)
        self.groups = groups

    def linears(self) -> list[BatchedLinear]:
        return [m for m in self.net if isinstance(m, BatchedLinear)]

    def reset_parameters(self, generators: Sequence[torch.Generator] | None = None) -> None:
        """Re-initialise every layer; see :meth:`BatchedLinear.reset_parameters`."""
        for layer in self.linears():
            layer.reset_parameters(generators)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def member_generators(seeds: Sequence[int], salt: int) -> list[torch.Generator]:
    """One CPU generator per member, seeded from ``(seed, salt)``.

    ``salt`` separates the streams of different networks of the same member (actor,
    critic, model) so that they do not share initial weights.
    """
    return [torch.Generator().manual_seed(int(seed) * 1_000_003 + salt) for seed in seeds]
