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
    """``x [G, B, in] @ weight [G, in, out] + bias [G, 1, out]``, as one ``baddbmm``
    where that is fastest."""
    if _narrow(weight.shape[2], weight.shape[1]):
        # out^T = W^T x^T: CPU BLAS is slow on [B, in] x [in, out] for a handful of
        # outputs (6 GFLOP/s for 64 -> 2), fast with the long side as columns (5.8x).
        return torch.baddbmm(bias.transpose(1, 2), weight.transpose(1, 2),
                             x.transpose(1, 2)).transpose(1, 2)
    if torch.compiler.is_compiling():
        # Traced, the bias joins the activation in one fused kernel after the product;
        # baddbmm would first copy it into the output and then read it back.
        return torch.bmm(x, weight) + bias
    if _unbalanced_on_threads(x, weight) and not (
            torch.is_grad_enabled()
            and (x.requires_grad or weight.requires_grad or bias.requires_grad)):
        # Inference only. The same split under autograd (a custom Function for forward and
        # backward) showed no reliable gain: training steps measured 0.83-0.93x of the
        # unsplit ones, and 0.88-1.00x with identical code on both sides
        # (benchmarks/ensemble.py --reference unbalanced, ENSEMBLE.md).
        return _balanced_product(x, weight, bias)
    return torch.baddbmm(bias, x, weight)


BALANCE_MIN_ROWS = 256
BALANCE_MIN_FEATURES = 128
"""Smallest float32 CPU products that :func:`affine` balances over threads."""


def _unbalanced_on_threads(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a float32 CPU batched product would leave a thread idle on this layer.

    MKL's batched product hands whole groups to threads, so 7 groups on 2 threads run as
    4 + 3. Split into 6 groups in one call and one multi-threaded product, the
    7-member forward of 2,048 rows (a rollout chunk) went from 0.85-0.89x the speed of
    a per-member ``nn.Linear`` loop to 0.96-1.00x (``benchmarks/ensemble.py``, see
    ENSEMBLE.md). Even group counts, and bf16 (which goes through oneDNN), do not lose.
    """
    groups, rows, n_in = x.shape
    threads = torch.get_num_threads()
    return (groups > threads and groups % threads != 0 and x.dtype == torch.float32
            and x.device.type == "cpu" and rows >= BALANCE_MIN_ROWS
            and min(n_in, weight.shape[2]) >= BALANCE_MIN_FEATURES)


def _balanced_product(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``a [G, n, k] @ b [G, k, m] + bias [G, 1, m]`` as one batched product over a
    multiple of the thread count of groups, then one multi-threaded product per remaining
    group (fewer than the thread count). ``out=`` records no autograd graph."""
    groups = a.shape[0]
    even = groups - groups % torch.get_num_threads()
    out = a.new_empty(groups, a.shape[1], b.shape[2])
    torch.baddbmm(bias[:even], a[:even], b[:even], out=out[:even])
    for g in range(even, groups):
        torch.addmm(bias[g], a[g], b[g], out=out[g])
    return out


def relu_(x: torch.Tensor) -> torch.Tensor:
    """In-place ReLU of a tensor nothing else holds; exact and fast in bf16 too."""
    if x.dtype == torch.bfloat16 and not torch.compiler.is_compiling():
        # A bf16 value is negative exactly when its int16 bit pattern is: the integer
        # clamp gives the same result and is 5.6x faster than eager bf16 clamp on CPU.
        # Not when compiling: inductor cannot vectorise the bit cast back to bf16, and
        # every kernel fused with it ran as a scalar loop (a compiled six-seed bf16 SAC
        # update ran 17% slower than eager; benchmarks/README.md), while inductor's own
        # bf16 clamp is vectorised.
        x.view(torch.int16).clamp_min_(0)
        return x
    return x.clamp_min_(0.0)


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

    def forward(self, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``[G, B, in] -> [G, B, out]``; ``dtype`` as in :meth:`forward_saving_inputs`."""
        if dtype is None or dtype == x.dtype:
            return self.net(x)
        return self.forward_saving_inputs(x, dtype)[0]

    # ------------------------------------------------ explicit forward and backward
    # The SAC update differentiates by hand: one pass computes exactly the products it
    # needs (weight gradients from some rows, input gradients from others), with about
    # a third of the operator calls that autograd makes for the same step.

    def forward_saving_inputs(self, x: torch.Tensor, dtype: torch.dtype | None = None
                              ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``[G, R, in] -> [G, R, out]`` without autograd, and every layer's input.

        The saved inputs of hidden layers are ReLU outputs, which is all
        :meth:`backward` needs (``relu(z) > 0`` exactly where ``z > 0``).

        Args:
            x: ``[G, R, in]`` float32.
            dtype: the hidden layers' products and activations run in this dtype
                (``torch.bfloat16``: mixed precision); the output layer always runs in
                float32 on a float32 copy of its input, and the output is float32.
        """
        if any(not isinstance(m, BatchedLinear | nn.ReLU) for m in self.net):
            raise TypeError("explicit backward is implemented for ReLU MLPs only")
        inputs = []
        *hidden, output = self.linears()
        h = x if dtype is None else x.to(dtype)
        for layer in hidden:
            inputs.append(h)
            # A fresh tensor: the in-place ReLU is safe.
            h = relu_(affine(h, layer.weight.to(h.dtype), layer.bias.to(h.dtype)))
        h = h.float()
        inputs.append(h)
        return output(h), inputs

    def backward(self, inputs: list[torch.Tensor], grad_out: torch.Tensor,
                 weight_rows: slice | None = None, input_rows: slice | None = None
                 ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Gradients of ``sum(grad_out * forward(x))`` by hand.

        Each layer's products run in the dtype of its saved input (see
        :meth:`forward_saving_inputs`); the returned gradients are float32.

        Args:
            inputs: from :meth:`forward_saving_inputs`.
            grad_out: ``[G, R, out]`` float32.
            weight_rows: the rows whose gradient reaches the parameters (default all);
                the others only carry gradient to the input.
            input_rows: the rows whose input gradient is wanted (default none).

        Returns:
            ``[weight, bias, weight, bias, ...]`` gradients in :meth:`parameters` order,
            and the ``[G, len(input_rows), in]`` input gradient (or ``None``).
        """
        layers = self.linears()
        grads: list[torch.Tensor] = []
        g = grad_out
        grad_in = None
        for i in range(len(layers) - 1, -1, -1):
            x, layer = inputs[i], layers[i]
            g = g.to(x.dtype)
            weight = layer.weight.to(x.dtype)
            xw, gw = (x, g) if weight_rows is None else (x[:, weight_rows], g[:, weight_rows])
            grads.append(gw.sum(dim=1, keepdim=True).float())
            grads.append(_weight_grad(xw, gw).float())
            if i > 0:
                g = torch.ops.aten.threshold_backward(_input_grad(g, weight), x, 0.0)
            elif input_rows is not None:
                grad_in = _input_grad(g[:, input_rows], weight).float()
        grads.reverse()
        return grads, grad_in


def _input_grad(g: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``g [G, R, out] @ weight^T [G, out, in]``; a broadcast product for one output."""
    if weight.shape[2] == 1:
        return g * weight.transpose(1, 2)  # BLAS is slow on a rank-1 product
    if _narrow(weight.shape[1], weight.shape[2]):
        # A handful of inputs (the first layer): as in ``affine``, the transposed product
        # puts the long side in the columns (2x faster on CPU for 256 x 128 -> 14).
        return torch.bmm(weight, g.transpose(1, 2)).transpose(1, 2)
    return torch.bmm(g, weight.transpose(1, 2))


def _weight_grad(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``x^T [G, in, R] @ g [G, R, out]``, the ``[G, in, out]`` weight gradient."""
    if _narrow(g.shape[2], x.shape[2]):
        # A handful of outputs (the last layer): (g^T x)^T has the long side in the
        # columns, 4-5x faster on CPU for 128 -> 1 or 6 over 256 rows.
        return torch.bmm(g.transpose(1, 2), x).transpose(1, 2).contiguous()
    return torch.bmm(x.transpose(1, 2), g)


def member_generators(seeds: Sequence[int], salt: int) -> list[torch.Generator]:
    """One CPU generator per member, seeded from ``(seed, salt)``.

    ``salt`` separates the streams of different networks of the same member (actor,
    critic, model) so that they do not share initial weights.
    """
    return [torch.Generator().manual_seed(int(seed) * 1_000_003 + salt) for seed in seeds]
