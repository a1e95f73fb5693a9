"""GPU check: the compiled (CUDA-graph) path agrees with eager, and how fast each is.

For whoever has a GPU: runs a population SAC update eagerly and compiled the way
``--compile`` does it (``offline_mbrl.compiling``: ``reduce-overhead`` mode, i.e. CUDA
graphs, on CUDA), checks that losses agree, then times both for P = 1 and P = 32. On a
CPU it runs the same check with inductor's default mode.

Usage::

    .venv/bin/python benchmarks/gpu_check.py --device cuda
"""

from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table

from offline_mbrl.agents import SAC
from offline_mbrl.compiling import compiler
from offline_mbrl.config import AgentConfiguration
from offline_mbrl.rng import PopulationRNG

OBS_DIM, ACT_DIM, BATCH = 11, 3, 256


def make_batch(P: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    batch = {"obs": torch.randn(P, BATCH, OBS_DIM, generator=g),
             "action": torch.rand(P, BATCH, ACT_DIM, generator=g) * 2 - 1,
             "reward": torch.randn(P, BATCH, generator=g),
             "next_obs": torch.randn(P, BATCH, OBS_DIM, generator=g),
             "terminated": torch.zeros(P, BATCH)}
    return {k: v.to(device) for k, v in batch.items()}


def timed_updates(agent: SAC, batch: dict[str, torch.Tensor], rng: PopulationRNG,
                  device: torch.device, n: int) -> float:
    for _ in range(20):  # warm-up and, when compiled, graph capture
        agent.update(batch, rng)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        agent.update(batch, rng)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--updates", type=int, default=200)
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    table = Table(title=f"SAC update on {device} ({name})")
    for column in ("P", "eager ms", "compiled ms", "compiled seed-updates/s", "max |Δloss|"):
        table.add_column(column)
    for P in args.sizes:
        seeds = tuple(range(P))
        eager = SAC(OBS_DIM, ACT_DIM, -torch.ones(ACT_DIM), torch.ones(ACT_DIM), seeds,
                    AgentConfiguration()).to(device)
        compiled = SAC(OBS_DIM, ACT_DIM, -torch.ones(ACT_DIM), torch.ones(ACT_DIM), seeds,
                       AgentConfiguration()).to(device)
        compiled.compile_update(compiler(device))
        batch = make_batch(P, device)
        a = eager.update(batch, PopulationRNG(seeds, device))
        b = compiled.update(batch, PopulationRNG(seeds, device))
        delta = max(float((a[k] - b[k]).abs().max()) for k in ("LossQ", "LossPi"))
        t_eager = timed_updates(eager, batch, PopulationRNG(seeds, device), device,
                                args.updates)
        t_compiled = timed_updates(compiled, batch, PopulationRNG(seeds, device), device,
                                   args.updates)
        table.add_row(str(P), f"{t_eager * 1e3:.2f}", f"{t_compiled * 1e3:.2f}",
                      f"{P / t_compiled:.0f}", f"{delta:.2e}")
    Console().print(table)


if __name__ == "__main__":
    main()
