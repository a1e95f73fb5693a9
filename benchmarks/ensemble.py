"""Throughput of the batched environment-model ensemble against a per-member Python loop.

    .venv/bin/python benchmarks/ensemble.py                # CPU (and CUDA when available)
    .venv/bin/python benchmarks/ensemble.py --epoch        # also one real training epoch

Both sides have the seed's architecture (per member: dynamics 4×200, reward 4×64, ReLU,
Gaussian heads with soft-clamped log-variance) and the same loss; the loop keeps one
``nn.Linear`` MLP pair per member and runs the members one after the other, as an
implementation without a leading ensemble dimension would. Training samples/s counts
transitions of the shared batch (each one trains all ``E`` members); prediction samples/s
counts transitions for which all ``E`` members predict. Ratios are batched / loop, measured
in the same run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

try:
    import offline_mbrl.models  # noqa: F401
except ModuleNotFoundError:  # a checkout without an installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import itertools

import numpy as np
import torch
from torch import nn

from offline_mbrl.models.ensemble import (
    INITIAL_MAX_LOGVAR,
    INITIAL_MIN_LOGVAR,
    LOGVAR_BOUND_REGULARIZER,
    EnvironmentModel,
    gaussian_nll,
    soft_clamp_logvar,
)

OBS_DIM, ACT_DIM = 11, 3  # hopper


def mlp(n_in: int, n_out: int, hidden: int, layers: int) -> nn.Sequential:
    sizes = [n_in, *([hidden] * layers), n_out]
    modules: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        modules.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            modules.append(nn.ReLU())
    return nn.Sequential(*modules)


class LoopEnsemble(nn.Module):
    """The same ensemble as separate ``nn.Linear`` networks, evaluated member by member."""

    def __init__(self, n_networks: int) -> None:
        super().__init__()
        n_in = OBS_DIM + ACT_DIM
        self.dynamics = nn.ModuleList(mlp(n_in, 2 * OBS_DIM, 200, 4) for _ in range(n_networks))
        self.rewards = nn.ModuleList(mlp(n_in, 2, 64, 4) for _ in range(n_networks))
        self.max_logvar = nn.ParameterList(
            nn.Parameter(torch.full((OBS_DIM + 1,), INITIAL_MAX_LOGVAR))
            for _ in range(n_networks))
        self.min_logvar = nn.ParameterList(
            nn.Parameter(torch.full((OBS_DIM + 1,), INITIAL_MIN_LOGVAR))
            for _ in range(n_networks))

    def member(self, e: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dyn, rew = self.dynamics[e](x), self.rewards[e](x)
        mean = torch.cat([dyn[:, :OBS_DIM], rew[:, :1]], 1)
        raw = torch.cat([dyn[:, OBS_DIM:], rew[:, 1:]], 1)
        return mean, soft_clamp_logvar(raw, self.max_logvar[e], self.min_logvar[e])

    def loss(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = torch.zeros((), device=x.device)
        for e in range(len(self.dynamics)):
            mean, logvar = self.member(e, x)
            total = total + gaussian_nll(mean, logvar, target).mean() + (
                LOGVAR_BOUND_REGULARIZER * (self.max_logvar[e].sum() - self.min_logvar[e].sum()))
        return total

    def predict(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [self.member(e, x) for e in range(len(self.dynamics))]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_pair(first: Callable[[], object], second: Callable[[], object],
               device: torch.device, repeats: int, warmup: int) -> tuple[float, float]:
    """Median seconds per call of ``first`` and ``second``, timed in alternating rounds so
    that a change in machine load affects both alike."""
    for _ in range(warmup):
        first()
        second()
    _sync(device)
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, out in ((first, times[0]), (second, times[1])):
            start = time.perf_counter()
            fn()
            _sync(device)
            out.append(time.perf_counter() - start)
    return float(np.median(times[0])), float(np.median(times[1]))


def bench_device(device: torch.device, n_networks: int, batch: int,
                 predict_batches: list[int], steps: int) -> list[tuple[str, float, float]]:
    """``[(what, batched samples/s, loop samples/s)]`` for training and prediction, against
    :class:`LoopEnsemble`."""
    torch.manual_seed(0)
    n_in = OBS_DIM + ACT_DIM
    data_x = torch.randn(steps * batch, n_in, device=device)
    data_y = torch.randn(steps * batch, OBS_DIM + 1, device=device)

    batched = EnvironmentModel(OBS_DIM, ACT_DIM, n_networks=n_networks).to(device)
    fused = device.type in ("cpu", "cuda")
    opt_b = torch.optim.Adam(batched.parameters(), lr=1e-3, fused=fused)
    loop = LoopEnsemble(n_networks).to(device)
    opt_l = torch.optim.Adam(loop.parameters(), lr=1e-3, fused=fused)

    def train_batched() -> None:
        for i in range(steps):
            x, y = data_x[i * batch:(i + 1) * batch], data_y[i * batch:(i + 1) * batch]
            loss, _ = batched.loss(batched.forward_normalized(x), y[:, :OBS_DIM], y[:, OBS_DIM])
            opt_b.zero_grad(set_to_none=True)
            loss.backward()
            opt_b.step()

    def train_loop() -> None:
        for i in range(steps):
            x, y = data_x[i * batch:(i + 1) * batch], data_y[i * batch:(i + 1) * batch]
            opt_l.zero_grad(set_to_none=True)
            loss = loop.loss(x, y)
            loss.backward()
            opt_l.step()

    rows = []
    t_b, t_l = timed_pair(train_batched, train_loop, device, repeats=5, warmup=1)
    rows.append((f"training (batch {batch})", steps * batch / t_b, steps * batch / t_l))
    for predict_batch in predict_batches:
        px = torch.randn(predict_batch, n_in, device=device)
        # Repeat small batches so that each timing round lasts long enough to measure.
        rounds = max(1, 8192 // predict_batch)

        @torch.no_grad()
        def predict_batched(px: torch.Tensor = px, rounds: int = rounds) -> None:
            for _ in range(rounds):
                batched.forward_normalized(px)

        @torch.no_grad()
        def predict_loop(px: torch.Tensor = px, rounds: int = rounds) -> None:
            for _ in range(rounds):
                loop.predict(px)

        t_b, t_l = timed_pair(predict_batched, predict_loop, device, repeats=7, warmup=2)
        n = predict_batch * rounds
        rows.append((f"prediction (batch {predict_batch})", n / t_b, n / t_l))
    return rows


def epoch_time(device: str, n: int) -> dict[str, float]:
    """One real ``train_environment_model`` epoch on ``n`` synthetic hopper-sized transitions."""
    from offline_mbrl.data.dataset import OfflineDataset
    from offline_mbrl.models.training import EnvironmentModelConfiguration, train_environment_model

    rng = np.random.default_rng(0)
    obs = rng.normal(size=(n, OBS_DIM)).astype(np.float32)
    action = rng.uniform(-1, 1, (n, ACT_DIM)).astype(np.float32)
    mix = rng.normal(size=(OBS_DIM + ACT_DIM, OBS_DIM)).astype(np.float32)
    next_obs = obs + 0.1 * np.tanh(np.concatenate([obs, action], 1) @ mix)
    data = OfflineDataset(obs, action, rng.normal(size=n).astype(np.float32),
                          next_obs.astype(np.float32), np.zeros(n, bool), np.zeros(n, bool),
                          name="synthetic")
    config = EnvironmentModelConfiguration(max_number_of_training_epochs=1, device=device)
    _, metrics = train_environment_model(data, config, None, progress=False)
    return {"epoch_s": metrics["epoch_time_s"], "total_s": metrics["time_s"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n_networks", type=int, default=7)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--predict_batch", type=int, nargs="+", default=[50, 2048],
                        help="prediction batch sizes (rollouts use small ones)")
    parser.add_argument("--steps", type=int, default=30, help="training steps per timing round")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", action="append", default=None,
                        help="cpu and/or cuda (default: cpu, plus cuda when available)")
    parser.add_argument("--epoch", action="store_true",
                        help="also time one training epoch on 200k transitions")
    parser.add_argument("--epoch_size", type=int, default=200_000)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    print(f"# {dt.date.today().isoformat()} · torch {torch.__version__} · "
          f"{platform.processor() or platform.machine()} · {torch.get_num_threads()} CPU threads"
          f" · load average {os.getloadavg()[0]:.2f} · E={args.n_networks}, hopper dims "
          f"({OBS_DIM}+{ACT_DIM}), dynamics 4×200, reward 4×64")
    ref = "loop"
    print(f"| device | what | batched samples/s | {ref} samples/s | batched / {ref} |")
    print("|---|---|---:|---:|---:|")
    for name in devices:
        device = torch.device(name)
        label = name if device.type == "cpu" else torch.cuda.get_device_name(device)
        for what, b, loop in bench_device(device, args.n_networks, args.batch,
                                          args.predict_batch, args.steps):
            print(f"| {label} | {what} | {b:,.0f} | {loop:,.0f} | {b / loop:.2f}× |", flush=True)
        if args.epoch:
            result = epoch_time(name, args.epoch_size)
            train = math.ceil(args.epoch_size * 0.8 / args.batch)
            print(f"| {label} | train_environment_model, 1 epoch on {args.epoch_size:,} "
                  f"transitions ({train} batches + validation) | {result['epoch_s']:.2f} s "
                  f"| | |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
