"""Counter-based random streams, one per population member.

Training P seeds as one batched population must not change what each seed sees: member
``p`` of a population run has to draw exactly the numbers a single run with seed ``p``
draws. One ``torch.Generator`` per member would need a Python loop over members at
every draw; one shared generator would tie members together. Instead every draw is a
pure hash of ``(member seed, draw counter, element index)``, computed for all members
in one vectorised op. The counter is a device tensor, so draws are also safe inside a
captured CUDA graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

_MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser (xor-shift-multiply) on int64 tensors holding uint32 values."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def _box_muller(u1: torch.Tensor, u2: torch.Tensor) -> torch.Tensor:
    """Standard normals from two uniform ``[0, 1)`` tensors of one shape."""
    # 1 - u1 lies in (0, 1]: keeps the log finite.
    return torch.sqrt(-2.0 * torch.log(1.0 - u1)) * torch.cos(2.0 * torch.pi * u2)


class PopulationRNG:
    """Independent random streams for ``P`` members, drawn together.

    Args:
        seeds: one integer seed per member.
        device: where draws are produced.
        stream: separates unrelated uses (agent noise, data sampling) of the same seeds.

    Every method returns a tensor with a leading member dimension ``[P, *shape]``.
    """

    def __init__(self, seeds: Sequence[int], device: str | torch.device = "cpu",
                 stream: int = 0) -> None:
        self.device = torch.device(device)
        seeds_t = torch.as_tensor([int(s) & _MASK32 for s in seeds], dtype=torch.int64)
        keys = _mix32(_mix32(seeds_t) ^ ((stream * 0x9E3779B9) & _MASK32))
        self.keys = keys.to(self.device)
        self.counter = torch.zeros((), dtype=torch.int64, device=self.device)

    @property
    def n_members(self) -> int:
        return int(self.keys.shape[0])

    def bits(self, *shape: int) -> torch.Tensor:
        """Uniform 32-bit integers ``[P, *shape]`` (int64 holding values in ``[0, 2^32)``)."""
        n = 1
        for s in shape:
            n *= s
        x = self._hash(self.counter, 0, n)
        self.counter.add_(1)
        return x.view(self.n_members, *shape)

    def _hash(self, counter: torch.Tensor | int, first: torch.Tensor | int, n: int
              ) -> torch.Tensor:
        """``[P, n]`` bits of elements ``first .. first + n`` of the draw numbered ``counter``."""
        index = torch.arange(n, device=self.device, dtype=torch.int64) + first
        # Per-member, per-draw key on a [P] tensor (cheap), then two mixing rounds per element.
        draw_key = _mix32(self.keys ^ ((counter * 0x85EBCA77) & _MASK32))
        x = _mix32((draw_key.view(-1, 1) + index * 0x27D4EB2F) & _MASK32)
        return _mix32(x ^ self.keys[:, None])

    # ------------------------------------------------------- random access
    def reserve(self, n_draws: int) -> int:
        """Set aside ``n_draws`` draw numbers and return the first (one host read).

        Draws made with :meth:`block_uniform` and friends at a reserved number are pure
        functions of ``(member seed, draw number, element index)``, so a caller can
        compute any block of them, in any order and any chunking, and get the same values.
        Draw numbers and first rows may be 0-d tensors, which keeps them out of compiled
        graphs' constants.
        """
        first = int(self.counter)
        self.counter.add_(n_draws)
        return first

    def next_draw(self) -> torch.Tensor:
        """The next draw number as a 0-d device tensor, and the counter moved past it.

        No host read, and the caller's use of the number mutates nothing: a compiled
        function that takes it (CUDA graphs refuse functions that mutate their inputs)
        draws with :meth:`block_normal` and friends.
        """
        return self.next_draws(1)

    def next_draws(self, n: int) -> torch.Tensor:
        """The first of the next ``n`` draw numbers (``first .. first + n - 1``), as
        :meth:`next_draw` gives one."""
        draw = self.counter.clone()
        self.counter.add_(n)
        return draw

    def block_bits(self, draw: torch.Tensor | int, first: torch.Tensor | int, n: int,
                   width: int) -> torch.Tensor:
        """``[P, n, width]`` bits: rows ``first .. first + n`` of a ``[*, width]`` draw."""
        return self._hash(draw, first * width, n * width).view(self.n_members, n, width)

    def block_uniform(self, draw: torch.Tensor | int, first: torch.Tensor | int, n: int,
                      width: int) -> torch.Tensor:
        """``[P, n, width]`` uniform floats in ``[0, 1)`` of draw ``draw``."""
        return (self.block_bits(draw, first, n, width) >> 8).to(torch.float32) * (
            1.0 / (1 << 24))

    def block_normal(self, draw: torch.Tensor | int, first: torch.Tensor | int, n: int,
                     width: int) -> torch.Tensor:
        """``[P, n, width]`` standard normal floats of draw ``draw`` (Box-Muller)."""
        u = self.block_uniform(draw, first, n, 2 * width)
        return _box_muller(u[..., :width], u[..., width:])

    def block_randint(self, draw: torch.Tensor | int, first: torch.Tensor | int, n: int,
                      high: int) -> torch.Tensor:
        """``[P, n]`` integers in ``[0, high)`` of draw ``draw``."""
        return (self.block_bits(draw, first, n, 1)[..., 0] * high) >> 32

    def uniform(self, *shape: int) -> torch.Tensor:
        """Uniform floats in ``[0, 1)``, ``[P, *shape]``, float32 (24 random bits)."""
        return (self.bits(*shape) >> 8).to(torch.float32) * (1.0 / (1 << 24))

    def normal(self, *shape: int) -> torch.Tensor:
        """Standard normal floats ``[P, *shape]`` (Box-Muller on two uniform draws)."""
        u1, u2 = self.uniform(2, *shape).unbind(1)
        return _box_muller(u1, u2)

    def randint(self, high: int | torch.Tensor, *shape: int) -> torch.Tensor:
        """Integers in ``[0, high)``, ``[P, *shape]``; ``high`` may be a ``[P]`` tensor.

        Multiply-shift instead of modulo, so there is no modulo bias toward small values.
        """
        bits = self.bits(*shape)
        if isinstance(high, torch.Tensor):
            high = high.to(torch.int64).view(-1, *([1] * len(shape)))
        return (bits * high) >> 32

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"keys": self.keys.cpu().clone(), "counter": self.counter.cpu().clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.keys = state["keys"].to(self.device)
        self.counter = state["counter"].to(self.device).clone()
