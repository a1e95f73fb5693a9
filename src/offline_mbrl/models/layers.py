"""Linear layers and MLPs with a leading group dimension.

A *group* is anything we want to train side by side without a Python loop: the
members of a population (seeds or hyperparameter configurations), the members of an
ensemble, or both flattened (``P·E``). Every layer holds weights ``[G, in, out]`` and
maps ``[G, B, in] -> [G, B, out]`` with one ``baddbmm``.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Sequence

import torch
from torch import nn

NARROW_OUTPUT = 32
"""Products with at most this many outputs (and more on the other side) run transposed."""


def _narrow(short: int, long: int) -> bool:
    """Whether a product with ``short`` columns against ``long`` should run transposed:
    CPU BLAS is slow with a handful of columns, fast with the long side there."""
    return short <= NARROW_OUTPUT < long


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
        return affine(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"groups={self.groups}, in={self.in_features}, out={self.out_features}"


def affine(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``x [G, B, in] @ weight [G, in, out] + bias [G, 1, out]``, as one ``baddbmm``."""
    if _narrow(weight.shape[2], weight.shape[1]):
        # out^T = W^T x^T: CPU BLAS is slow on [B, in] x [in, out] for a handful of
        # outputs and fast with the long side as columns.
        return torch.baddbmm(bias.transpose(1, 2), weight.transpose(1, 2),
                             x.transpose(1, 2)).transpose(1, 2)
    if torch.compiler.is_compiling():
        # Traced, the bias joins the activation in one fused kernel after the product;
        # baddbmm would first copy it into the output and then read it back.
        return torch.bmm(x, weight) + bias
    return torch.baddbmm(bias, x, weight)


BF16_BIT_RELU_FLAG = "OMBRL_BF16_BIT_RELU"
"""Set to 0 to run eager bf16 ReLU without gradients through ``torch.relu_`` (see
:class:`ReLU`)."""
_BF16_BIT_RELU = os.environ.get(BF16_BIT_RELU_FLAG, "1") != "0"


class ReLU(nn.Module):
    """ReLU, in place in eager mode (each activation's input is a fresh product that
    backprop does not need: ReLU's backward reads its output).

    Eager, in bf16 and without gradients (the environment model's networks in bf16
    rollouts, which stay eager inside the compiled rollout step), it clamps the values'
    16-bit patterns as integers: a bf16 value is negative exactly when its int16 pattern
    is, so the result is ReLU's, and the integer clamp runs faster on CPU than torch's bf16
    ``relu_`` (benchmarks/README.md, "bf16 ReLU"). ``OMBRL_BF16_BIT_RELU=0`` turns it off.

    Traced by ``torch.compile``, it is written ``(x + |x|) / 2``, which equals ``max(x, 0)``
    exactly (doubling and halving are exact in binary floating point), and whose gradient
    ``(1 + sign(x)) / 2`` is ReLU's except at ``x == 0`` exactly (½ instead of 0). The
    reason is speed: differentiating ``max(x, 0)``, AOTAutograd saves a boolean mask from
    the forward graph for the backward one, and inductor's CPU kernels store boolean
    tensors many times slower than float ones (benchmarks/README.md, "--compile"); the
    sign is a float.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return (x + x.abs()) * 0.5
        if (_BF16_BIT_RELU and x.dtype == torch.bfloat16
                and not (x.requires_grad and torch.is_grad_enabled())):
            x.view(torch.int16).clamp_min_(0)
            return x
        return torch.relu_(x)


class BatchedMLP(nn.Module):
    """ReLU MLP of :class:`BatchedLinear` layers: ``[G, B, in] -> [G, B, out]``."""

    def __init__(
        self,
        groups: int,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (128, 128, 128, 128),
        activation: type[nn.Module] = ReLU,
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

    def forward(self, x: torch.Tensor, dtype: torch.dtype | None = None,
                frozen: bool = False) -> torch.Tensor:
        """``[G, B, in] -> [G, B, out]``, float32 in and out.

        Args:
            x: ``[G, B, in]`` float32.
            dtype: the hidden layers' products and activations run in this dtype
                (``torch.bfloat16``: mixed precision); the output layer always runs in
                float32 on a float32 copy of its input.
            frozen: use the parameters detached, so that a loss differentiates through
                the input only (an actor's loss through the critic).
        """
        if (dtype is None or dtype == x.dtype) and not frozen:
            return self.net(x)
        return self._forward(x, dtype, lambda p, dt: (p.detach() if frozen else p).to(dt))

    def _forward(self, x: torch.Tensor, dtype: torch.dtype | None,
                 param: Callable[[torch.Tensor, torch.dtype], torch.Tensor]) -> torch.Tensor:
        h = x if dtype is None else x.to(dtype)
        *hidden, output = list(self.net)
        assert isinstance(output, BatchedLinear)
        for module in hidden:
            if isinstance(module, BatchedLinear):
                h = affine(h, param(module.weight, h.dtype), param(module.bias, h.dtype))
            else:
                h = module(h)
        h = h.float()
        return affine(h, param(output.weight, h.dtype), param(output.bias, h.dtype))


def member_generators(seeds: Sequence[int], salt: int) -> list[torch.Generator]:
    """One CPU generator per member, seeded from ``(seed, salt)``.

    ``salt`` separates the streams of different networks of the same member (actor,
    critic, model) so that they do not share initial weights.
    """
    return [torch.Generator().manual_seed(int(seed) * 1_000_003 + salt) for seed in seeds]
