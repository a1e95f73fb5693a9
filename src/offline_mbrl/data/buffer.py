"""Replay buffers that live on the training device.

Transitions are packed into one float tensor per buffer (``obs | action | reward |
next_obs | terminated``), so drawing a batch is a single indexed gather. Population
buffers hold ``[P, capacity, F]``; every member has its own write position and fill
level, because in partitioning modes members keep different numbers of synthetic
transitions.
"""

from __future__ import annotations

import torch

from offline_mbrl.rng import PopulationRNG

FIELDS = ("obs", "action", "reward", "next_obs", "terminated")


class TransitionLayout:
    """Column slices of the packed transition row for given dimensions."""

    def __init__(self, obs_dim: int, act_dim: int) -> None:
        self.obs_dim, self.act_dim = obs_dim, act_dim
        widths = {"obs": obs_dim, "action": act_dim, "reward": 1, "next_obs": obs_dim,
                  "terminated": 1}
        self.slices: dict[str, slice] = {}
        start = 0
        for name in FIELDS:
            self.slices[name] = slice(start, start + widths[name])
            start += widths[name]
        self.width = start

    def pack(self, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor,
             next_obs: torch.Tensor, terminated: torch.Tensor) -> torch.Tensor:
        """``[..., obs_dim], [..., act_dim], [...], [..., obs_dim], [...] -> [..., F]``."""
        return torch.cat([obs, action, reward.unsqueeze(-1), next_obs,
                          terminated.to(obs.dtype).unsqueeze(-1)], dim=-1)

    def unpack(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """``[..., F]`` -> dict of views; ``reward`` and ``terminated`` lose their last dim."""
        out = {name: rows[..., s] for name, s in self.slices.items()}
        out["reward"] = out["reward"].squeeze(-1)
        out["terminated"] = out["terminated"].squeeze(-1)
        return out


class PopulationBuffer:
    """Circular buffer ``[P, capacity, F]`` with per-member positions and sizes.

    One spare row per member (index ``capacity``) absorbs masked-out writes, so adding a
    masked batch needs no data-dependent shapes and no host synchronisation.
    """

    def __init__(self, n_members: int, capacity: int, layout: TransitionLayout,
                 device: str | torch.device = "cpu") -> None:
        self.n_members, self.capacity, self.layout = n_members, capacity, layout
        self.device = torch.device(device)
        self.data = torch.zeros(n_members, capacity + 1, layout.width, device=self.device)
        self.position = torch.zeros(n_members, dtype=torch.int64, device=self.device)
        self.size = torch.zeros(n_members, dtype=torch.int64, device=self.device)
        self._members = torch.arange(n_members, device=self.device)

    def add(self, rows: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Append rows ``[P, n, F]``; where ``mask [P, n]`` is false the row is dropped."""
        if mask is None and rows.shape[1] > self.capacity:
            rows = rows[:, -self.capacity:]  # only the newest rows would survive anyway
        P, n, _ = rows.shape
        if mask is None:
            offsets = torch.arange(n, device=self.device).expand(P, n)
            counts = torch.full((P,), n, dtype=torch.int64, device=self.device)
            slots = (self.position[:, None] + offsets) % self.capacity
        else:
            mask = mask.to(torch.bool)
            offsets = mask.long().cumsum(dim=1) - 1
            counts = mask.long().sum(dim=1)
            slots = torch.where(mask, (self.position[:, None] + offsets) % self.capacity,
                                self.capacity)
        self.data[self._members[:, None].expand(P, n), slots] = rows
        self.position = (self.position + counts) % self.capacity
        self.size = torch.clamp(self.size + counts, max=self.capacity)

    def sample(self, batch_size: int, rng: PopulationRNG) -> torch.Tensor:
        """Rows ``[P, batch_size, F]`` drawn uniformly from each member's filled part.

        A member with an empty buffer gets its spare row (zeros); callers check
        :attr:`size` before training on a buffer.
        """
        index = rng.randint(torch.clamp(self.size, min=1), batch_size)
        index = torch.where(self.size[:, None] > 0, index, self.capacity)
        return self.data[self._members[:, None], index]

    def clear(self) -> None:
        self.position.zero_()
        self.size.zero_()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Only the filled rows, in insertion order, so checkpoints stay small."""
        sizes = self.size.cpu()
        if len(set(sizes.tolist())) > 1:
            raise ValueError("members with different fill levels are not checkpointed")
        n = int(sizes[0])
        start = (self.position - self.size) % self.capacity
        order = (start[:, None] + torch.arange(n, device=self.device)) % self.capacity
        rows = self.data[self._members[:, None], order] if n else self.data[:, :0]
        return {"rows": rows.cpu()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.clear()
        rows = state["rows"].to(self.device)
        if rows.shape[1]:
            self.add(rows[:, -self.capacity:])

    def member_state(self, member: int) -> dict[str, torch.Tensor]:
        """Member ``member``'s filled rows in slot order, with its write position.

        Slot order (not insertion order) keeps every index where it was, so a restored
        buffer draws the very rows the original would have drawn: resume is exact.
        """
        size = int(self.size[member])
        # A view: checkpoint.compact copies it when saved, so the file holds these rows only.
        return {"rows": self.data[member, :size].cpu(),
                "position": self.position[member].cpu(), "capacity": torch.tensor(self.capacity)}

    def load_member_states(self, states: list[dict[str, torch.Tensor]]) -> None:
        """Inverse of :meth:`member_state`, one state per member."""
        if len(states) != self.n_members:
            raise ValueError(f"{len(states)} member states for {self.n_members} members")
        self.clear()
        for member, state in enumerate(states):
            if int(state["capacity"]) != self.capacity:
                raise ValueError(f"a buffer of capacity {int(state['capacity'])} cannot be "
                                 f"restored into one of capacity {self.capacity}")
            rows = state["rows"].to(self.device)
            self.data[member, :rows.shape[0]] = rows
            self.size[member] = rows.shape[0]
            self.position[member] = int(state["position"])


class DatasetSampler:
    """Uniform batches from a fixed dataset ``[N, F]`` shared by all members."""

    def __init__(self, rows: torch.Tensor) -> None:
        self.rows = rows
        self.size = rows.shape[0]

    def sample(self, batch_size: int, rng: PopulationRNG) -> torch.Tensor:
        """``[P, batch_size, F]``, each member with its own indices."""
        return self.rows[rng.randint(self.size, batch_size)]
