"""SAC update throughput: batched population SAC against seed-by-seed eager SAC.

Both implementations do the same work per seed and step: one critic step on the twin
critics, one actor step, a polyak update of the target critics (fixed alpha 0.2, Adam
lr 3e-4, batch 256, 4x128 ReLU networks, hopper sizes obs 11 / act 3). The batched one
is :class:`offline_mbrl.agents.sac.SAC` (all ``P`` members in one step); the reference
is a plain single-seed SAC built from ``nn.Linear`` MLPs, stepped once per seed.

The two are timed in alternating short blocks, several rounds each, and the median
block is reported, so that load from other processes on a shared machine hits both
alike. Sampling minibatches is not timed: each seed reuses one fixed random batch.
The batched update differentiates the summed losses with autograd and takes them all at
the current parameters (the simultaneous step of the original SAC code); the reference
steps the critic first, as most re-implementations do. The arithmetic per seed is the same.

Usage::

    .venv/bin/python benchmarks/sac_update.py                 # P = 1, 6 (and 32 on CUDA)
    .venv/bin/python benchmarks/sac_update.py --sizes 1 6 16 --seconds 10
    .venv/bin/python benchmarks/sac_update.py --device cuda   # adds a CUDA-graph row
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import time
from collections.abc import Callable

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from offline_mbrl.agents.sac import SAC
from offline_mbrl.compiling import compiler
from offline_mbrl.config import AgentConfiguration
from offline_mbrl.rng import PopulationRNG

OBS_DIM, ACT_DIM, BATCH = 11, 3, 256
HIDDEN = (128, 128, 128, 128)
LR, GAMMA, POLYAK, ALPHA = 3e-4, 0.99, 0.995, 0.2


# --------------------------------------------------------------------------- reference
def mlp(n_in: int, n_out: int, hidden: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip((n_in, *hidden[:-1]), hidden, strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(hidden[-1], n_out))
    return nn.Sequential(*layers)


class Actor(nn.Module):
    """Tanh-squashed Gaussian policy; the MLP outputs mean and log-std."""

    def __init__(self) -> None:
        super().__init__()
        self.net = mlp(OBS_DIM, 2 * ACT_DIM, HIDDEN)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.net(obs).chunk(2, dim=-1)
        std = log_std.clamp(-20.0, 2.0).exp()
        dist = torch.distributions.Normal(mean, std)
        u = dist.rsample()
        log_prob = dist.log_prob(u).sum(-1)
        log_prob -= (2 * (math.log(2.0) - u - nn.functional.softplus(-2 * u))).sum(-1)
        return torch.tanh(u), log_prob


class Critic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = mlp(OBS_DIM + ACT_DIM, 1, HIDDEN)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, action], dim=-1)).squeeze(-1)


class EagerSAC:
    """One seed of textbook SAC: two critics, target critics, fixed temperature."""

    def __init__(self, seed: int, device: torch.device) -> None:
        torch.manual_seed(seed)
        self.actor = Actor().to(device)
        self.q1, self.q2 = Critic().to(device), Critic().to(device)
        self.q1_target, self.q2_target = copy.deepcopy(self.q1), copy.deepcopy(self.q2)
        for p in self.target_params():
            p.requires_grad_(False)
        self.q_params = [*self.q1.parameters(), *self.q2.parameters()]
        self.pi_optimizer = torch.optim.Adam(self.actor.parameters(), lr=LR)
        self.q_optimizer = torch.optim.Adam(self.q_params, lr=LR)

    def target_params(self) -> list[nn.Parameter]:
        return [*self.q1_target.parameters(), *self.q2_target.parameters()]

    def update(self, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor,
               next_obs: torch.Tensor, terminated: torch.Tensor) -> None:
        with torch.no_grad():
            next_action, next_log_prob = self.actor(next_obs)
            next_q = torch.min(self.q1_target(next_obs, next_action),
                               self.q2_target(next_obs, next_action))
            target = reward + GAMMA * (1 - terminated) * (next_q - ALPHA * next_log_prob)
        loss_q = ((self.q1(obs, action) - target) ** 2).mean() \
            + ((self.q2(obs, action) - target) ** 2).mean()
        self.q_optimizer.zero_grad()
        loss_q.backward()
        self.q_optimizer.step()

        for p in self.q_params:  # the actor step must not touch the critics
            p.requires_grad_(False)
        new_action, log_prob = self.actor(obs)
        q_pi = torch.min(self.q1(obs, new_action), self.q2(obs, new_action))
        loss_pi = (ALPHA * log_prob - q_pi).mean()
        self.pi_optimizer.zero_grad()
        loss_pi.backward()
        self.pi_optimizer.step()
        for p in self.q_params:
            p.requires_grad_(True)

        with torch.no_grad():
            for p, p_target in zip(self.q_params, self.target_params(), strict=True):
                p_target.mul_(POLYAK).add_(p, alpha=1 - POLYAK)


# --------------------------------------------------------------------------- runners
def make_batch(P: int, device: torch.device) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    batch = {
        "obs": torch.randn(P, BATCH, OBS_DIM, generator=gen),
        "action": torch.rand(P, BATCH, ACT_DIM, generator=gen) * 2 - 1,
        "reward": torch.randn(P, BATCH, generator=gen),
        "next_obs": torch.randn(P, BATCH, OBS_DIM, generator=gen),
        "terminated": (torch.rand(P, BATCH, generator=gen) < 0.01).float(),
    }
    return {k: v.to(device) for k, v in batch.items()}


def batched_step(P: int, device: torch.device, compiled: bool = False,
                 precision: str = "float32") -> Callable[[], None]:
    """The population update; ``compiled``: as ``--compile`` runs it; ``precision``: as
    ``--precision`` sets it."""
    seeds = tuple(range(P))
    agent = SAC(OBS_DIM, ACT_DIM, -torch.ones(ACT_DIM), torch.ones(ACT_DIM), seeds,
                AgentConfiguration(alpha=ALPHA, precision=precision)).to(device)
    if compiled:
        agent.compile_update(compiler(device))
    batch, rng = make_batch(P, device), PopulationRNG(seeds, device)
    if compiled:
        for _ in range(3):  # compilation stays out of the timed blocks
            agent.update(batch, rng)
    return lambda: agent.update(batch, rng)


def seedwise_step(P: int, device: torch.device) -> Callable[[], None]:
    agents = [EagerSAC(seed, device) for seed in range(P)]
    batch = make_batch(P, device)
    per_seed = [tuple(batch[k][p] for k in ("obs", "action", "reward", "next_obs",
                                             "terminated")) for p in range(P)]

    def step() -> None:
        for agent, data in zip(agents, per_seed, strict=True):
            agent.update(*data)
    return step


def graphed_step(P: int, device: torch.device) -> Callable[[], None]:
    """The batched update replayed from one captured CUDA graph.

    Capture needs Adam's step counters on the device (``capturable``); the batch and
    the population RNG counter are already device tensors that the graph reads in place.
    """
    seeds = tuple(range(P))
    agent = SAC(OBS_DIM, ACT_DIM, -torch.ones(ACT_DIM), torch.ones(ACT_DIM), seeds,
                AgentConfiguration(alpha=ALPHA)).to(device)
    for group in agent.optimizer.param_groups:
        group["capturable"] = True
    batch, rng = make_batch(P, device), PopulationRNG(seeds, device)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm-up allocates optimizer state outside the graph
            agent.update(batch, rng)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        agent.update(batch, rng)
    return graph.replay


def time_block(step: Callable[[], None], seconds: float, device: torch.device) -> float:
    """Seconds per call, from as many calls as fit in about ``seconds``."""
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    # On CUDA, sync only every few calls so that launches can run ahead as in training.
    every = 4 if cuda else 1
    n, start = 0, time.perf_counter()
    sync()
    while True:
        step()
        n += 1
        if n % every == 0:
            sync()
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return elapsed / n


def measure(steps: dict[str, Callable[[], None]], seconds: float, rounds: int,
            device: torch.device) -> dict[str, float]:
    """Median seconds per call of each step, timed in alternating blocks."""
    for step in steps.values():  # warm-up: allocator, optimizer state, lazy init
        time_block(step, min(0.3, seconds / rounds), device)
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(rounds):
        # Alternate the order too, so neither always runs right after the other.
        order = list(steps) if r % 2 == 0 else list(reversed(steps))
        for name in order:
            samples[name].append(time_block(steps[name], seconds / rounds, device))
    return {name: statistics.median(s) for name, s in samples.items()}


def profile_batched(P: int, device: torch.device, console: Console, steps: int = 20) -> None:
    """Print where the batched update spends its time, operator by operator."""
    from torch.profiler import ProfilerActivity, profile

    step = batched_step(P, device)
    for _ in range(5):
        step()
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    console.print(f"\nbatched update, P={P}, {steps} steps:")
    # Plain print: the profiler's table is wider than rich would let it be.
    print(prof.key_averages().table(sort_by=sort_by, row_limit=15), flush=True)


# --------------------------------------------------------------------------- main
def load_average() -> str:
    # Other processes on a shared machine distort every number; say how busy it was.
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help="population sizes (default: 1 6, plus 32 on CUDA)")
    parser.add_argument("--seconds", type=float, default=8.0,
                        help="timed seconds per implementation and size (default 8)")
    parser.add_argument("--rounds", type=int, default=8,
                        help="alternating blocks per implementation and size (default 8)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads before timing (default: leave torch's default)")
    parser.add_argument("--no-graph", action="store_true",
                        help="on CUDA, skip the CUDA-graph row")
    parser.add_argument("--no-compile", action="store_true",
                        help="skip the row of the update compiled as --compile does")
    parser.add_argument("--no-bf16", action="store_true",
                        help="skip the row of the mixed-precision update (--precision bfloat16)")
    parser.add_argument("--profile", action="store_true",
                        help="also print torch.profiler's top operators of the batched update")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    sizes = args.sizes or ([1, 6, 32] if device.type == "cuda" else [1, 6])

    console = Console()
    console.print(f"torch {torch.__version__}, device {device}, "
                  f"torch.get_num_threads() = {torch.get_num_threads()}, "
                  f"OMP_WAIT_POLICY = {os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
                  f"obs {OBS_DIM} / act {ACT_DIM}, batch {BATCH}, hidden {HIDDEN}, "
                  f"{args.rounds} alternating rounds x {args.seconds / args.rounds:.2f} s")
    console.print(f"load average before: {load_average()}")
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if device.type == "cpu" and torch.get_num_threads() > 1 and busy >= (os.cpu_count() or 1):
        # OpenMP threads spin while they wait for each other; with every core already busy
        # that turns into 10-100x slowdowns that measure the neighbours, not SAC.
        console.print("[yellow]machine is busy: multi-threaded timings will be erratic; "
                      "compare with --threads 1 or OMP_WAIT_POLICY=PASSIVE[/]")

    table = Table(title="SAC updates per second (median of alternating blocks)")
    for col in ("P", "implementation", "updates/s", "seed-updates/s", "ms/update",
                "vs seed-by-seed"):
        table.add_column(col, justify="left" if col == "implementation" else "right")
    for P in sizes:
        steps = {"batched": batched_step(P, device), "seed-by-seed": seedwise_step(P, device)}
        if not args.no_compile:
            steps["batched, --compile"] = batched_step(P, device, compiled=True)
        if not args.no_bf16:
            steps["batched, --precision bfloat16"] = batched_step(P, device,
                                                                  precision="bfloat16")
            if not args.no_compile:
                steps["batched, --precision bfloat16 --compile"] = batched_step(
                    P, device, compiled=True, precision="bfloat16")
        if device.type == "cuda" and not args.no_graph:
            try:
                steps["batched, CUDA graph"] = graphed_step(P, device)
            except Exception as error:  # capture is best effort: report, keep going
                console.print(f"[yellow]P={P}: CUDA graph capture failed: {error}[/]")
        per_call = measure(steps, args.seconds, args.rounds, device)
        for name, sec in per_call.items():
            ratio = per_call["seed-by-seed"] / sec
            table.add_row(str(P), name, f"{1 / sec:,.1f}", f"{P / sec:,.1f}",
                          f"{sec * 1e3:.2f}", f"{ratio:.2f}x")
        table.add_section()
    console.print(table)
    console.print(f"load average after: {load_average()} (on {os.cpu_count()} CPUs)")
    console.print("Target: batched P=6 at least 2x the seed-by-seed throughput.")
    if args.profile:
        for P in sizes:
            profile_batched(P, device, console)


if __name__ == "__main__":
    main()
