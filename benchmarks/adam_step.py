"""SAC updates with GroupedAdam (one fused kernel call) against the optimizers' own steps.

Two agents with the same seeds train on the same batch in one process, in alternating
blocks of updates, so that both see the same phases of a shared machine. They differ only
in how their three fused Adam optimizers step: ``agents.adam.GroupedAdam``'s direct
kernel call, or each optimizer's ``step()``. Prints the median time per update of each
and the median and range of the per-block ratio, and checks that both agents end with
identical parameters (the two paths compute the same update).

Usage::

    .venv/bin/python benchmarks/adam_step.py                 # P = 1 and 6, 4×128, batch 256
    .venv/bin/python benchmarks/adam_step.py --sizes 1 --blocks 30
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from gpu_check import ACT_DIM, OBS_DIM, make_batch  # the same batch as the GPU check

from offline_mbrl.agents import SAC
from offline_mbrl.agents.adam import GroupedAdam
from offline_mbrl.config import AgentConfiguration
from offline_mbrl.rng import PopulationRNG


def compare(P: int, blocks: int, updates: int) -> None:
    batch = make_batch(P, torch.device("cpu"))
    agents = {}
    for name in ("grouped", "own"):
        agent = SAC(OBS_DIM, ACT_DIM, -torch.ones(ACT_DIM), torch.ones(ACT_DIM),
                    tuple(range(P)), AgentConfiguration())
        rng = PopulationRNG(range(P))
        if name == "own":  # the same optimizers, each through its own step()
            agent._adam = GroupedAdam(agent._adam.optimizers, direct=False)
        agent.update(batch, rng)
        agents[name] = (agent, rng)
    times: dict[str, list[float]] = {name: [] for name in agents}
    for _ in range(blocks):
        for name, (agent, rng) in agents.items():
            start = time.perf_counter()
            for _ in range(updates):
                agent.update(batch, rng)
            times[name].append((time.perf_counter() - start) / updates * 1e3)
    ratios = [o / g for o, g in zip(times["own"], times["grouped"], strict=True)]
    same = all(torch.equal(a, b) for a, b in zip(agents["own"][0].parameters(),
                                                 agents["grouped"][0].parameters(),
                                                 strict=True))
    print(f"P = {P}: own steps {statistics.median(times['own']):.3f} ms/update, grouped "
          f"{statistics.median(times['grouped']):.3f}; own / grouped per block: median "
          f"{statistics.median(ratios):.3f}, range {min(ratios):.3f}-{max(ratios):.3f}; "
          f"identical parameters after {1 + blocks * updates} updates: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 6])
    parser.add_argument("--blocks", type=int, default=15, help="alternating timed blocks")
    parser.add_argument("--updates", type=int, default=50, help="updates per block")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for P in args.sizes:
        compare(P, args.blocks, args.updates)


if __name__ == "__main__":
    main()
