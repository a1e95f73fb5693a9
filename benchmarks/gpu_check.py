"""GPU check: the compiled (CUDA-graph) path agrees with eager, and how fast each is.

For whoever has a GPU: runs a population SAC update eagerly and compiled the way
``--compile`` does it (``offline_mbrl.compiling``: ``reduce-overhead`` mode, i.e. CUDA
graphs, on CUDA), checks that losses agree, then times both for P = 1 and P = 32, and does the
same for a 50k × 5 model rollout with the eager and the compiled rollout step, float32 and
bfloat16. On a CPU it runs the same checks with inductor's default mode.

Usage::

    .venv/bin/python benchmarks/gpu_check.py --device cuda
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from rich.console import Console
from rich.table import Table

from offline_mbrl.agents import SAC
from offline_mbrl.compiling import compiler
from offline_mbrl.config import AgentConfiguration
from offline_mbrl.data.buffer import TransitionLayout
from offline_mbrl.models.ensemble import EnvironmentModel
from offline_mbrl.rng import PopulationRNG
from offline_mbrl.rollouts import Pessimism, rollout, rollout_step

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
    parser.add_argument("--starts", type=int, default=50_000, help="rollout starts")
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
    console = Console()
    console.print(table)
    console.print(rollout_table(device, args.starts))


def rollout_table(device: torch.device, starts: int) -> Table:
    """A 5-step rollout of ``starts`` starts for one seed: eager vs compiled step, fp32/bf16."""
    model = EnvironmentModel(OBS_DIM, ACT_DIM, env_name="hopper-medium-v2").to(device).eval()
    agent = SAC(OBS_DIM, ACT_DIM, -torch.ones(ACT_DIM), torch.ones(ACT_DIM), (0,),
                AgentConfiguration()).to(device)
    pessimism = Pessimism("penalty", "epistemic", torch.tensor([5], device=device),
                          torch.tensor([1.0], device=device),
                          torch.tensor([math.inf], device=device), 1.0)
    start = torch.randn(1, starts, OBS_DIM, device=device) * 0.1
    start[..., 0] += 1.25  # healthy hopper height: rollouts run their full length
    layout = TransitionLayout(OBS_DIM, ACT_DIM)
    step = compiler(device)(rollout_step)
    table = Table(title=f"{starts // 1000}k × 5 rollout on {device}")
    for column in ("dtype", "eager s", "compiled s", "max |Δ|"):
        table.add_column(column)
    for dtype in (torch.float32, torch.bfloat16):
        results, times = [], []
        for fn in (None, step):
            for _ in range(2):  # the first call warms up (and compiles)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                batch = rollout(model, agent, start, pessimism, layout, PopulationRNG((0,), device),
                                dtype=dtype, step_fn=fn)
                if device.type == "cuda":
                    torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            results.append(batch.rows)
        delta = float((results[0] - results[1]).abs().max())
        table.add_row(str(dtype).removeprefix("torch."), f"{times[0]:.3f}", f"{times[1]:.3f}",
                      f"{delta:.2e}")
    return table


if __name__ == "__main__":
    main()
