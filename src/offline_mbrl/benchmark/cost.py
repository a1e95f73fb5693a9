"""The plan of a spec (``ombrl benchmark SPEC --plan``) and its estimated cost.

The estimate is agent training only, from the project's measured CPU throughput in
seed-updates per core-second, end to end (updates, model rollouts and evaluations):
``benchmarks/README.md``, "Learning evidence", commit b0e338b, one population of 3 seeds,
50,000 updates, 20 evaluations of 10 episodes, with other jobs beside it (so on the slow
side): behavioral cloning 4 min on 2 threads, offline SAC 22 min on 2 threads, each
pessimistic mode about 26 min on 1 thread. Modes without a measurement use the figure of
their family (model-based: the pessimistic modes'; else offline SAC's) and are marked.
Dataset collection or download and environment-model training are not included. No GPU
has been measured, so there is no GPU figure.
"""

from __future__ import annotations

from dataclasses import dataclass

from offline_mbrl.benchmark.spec import BenchmarkSpec, Grid, TrainUnit, expand, unit_config

SEED_UPDATES = 3 * 50_000
"""Seed-updates of each measured run."""
MEASURED: dict[str, float] = {
    "behavioral-cloning": SEED_UPDATES / (4 * 60 * 2),
    "offline-sac": SEED_UPDATES / (22 * 60 * 2),
    "pessimistic": SEED_UPDATES / (26 * 60 * 1),
}
"""Seed-updates per core-second, measured (see the module docstring)."""
_PESSIMISTIC = ("aleatoric-penalty", "aleatoric-partitioning", "epistemic-penalty",
                "epistemic-partitioning")


def throughput(unit: TrainUnit) -> tuple[float, bool]:
    """Seed-updates per core-second of ``unit``'s mode, and whether it was measured."""
    if unit.mode in MEASURED:
        return MEASURED[unit.mode], True
    if unit.mode in _PESSIMISTIC:
        return MEASURED["pessimistic"], True
    return MEASURED["pessimistic" if unit.uses_model else "offline-sac"], False


@dataclass(frozen=True)
class UnitCost:
    unit: TrainUnit
    updates: int
    """Agent updates of each seed's run."""
    core_hours: float
    measured: bool


def unit_cost(spec: BenchmarkSpec, unit: TrainUnit) -> UnitCost:
    config = unit_config(spec, unit)
    updates = config.epochs * config.steps_per_epoch * config.agent_updates_per_step
    rate, measured = throughput(unit)
    return UnitCost(unit, updates, len(spec.seeds) * updates / rate / 3600, measured)


def format_plan(spec: BenchmarkSpec, grid: Grid | None = None) -> str:
    """The expanded grid, its unit count and the estimated cost in core-hours."""
    grid = grid or expand(spec)
    costs = [unit_cost(spec, u) for u in grid.trains]
    resources = spec.resources
    lines = [f"benchmark {spec.name}: {len(spec.envs)} environments × {len(spec.datasets)} "
             f"dataset kinds × {len(spec.modes)} modes, seeds {', '.join(map(str, spec.seeds))}",
             f"datasets ({len(grid.datasets)}): " + ", ".join(
                 f"{d.name} ({d.source})" for d in grid.datasets),
             f"environment models ({len(grid.models)}): one per dataset, trained before its "
             "model-based runs: " + (", ".join(m.dataset for m in grid.models) or "none"),
             f"training units ({len(grid.trains)}), each one population of "
             f"{len(spec.seeds)} seeds:"]
    width = max(len(c.unit.experiment) for c in costs)
    for cost in costs:
        mark = "" if cost.measured else " (throughput not measured: family's figure)"
        lines.append(f"  {cost.unit.experiment:<{width}}  {cost.updates:>9,} updates  "
                     f"{cost.core_hours:7.1f} core-h{mark}")
    total = sum(c.core_hours for c in costs)
    units = len(grid.datasets) + len(grid.models) + len(grid.trains)
    lines += [f"units: {units} ({len(grid.datasets)} datasets, {len(grid.models)} models, "
              f"{len(grid.trains)} training)",
              f"each unit asks Ray for {resources.threads} CPU and "
              f"{resources.gpus_per_unit:g} GPU (device {resources.device})",
              f"estimated cost: {total:,.1f} core-hours of agent training at the measured CPU "
              "throughput (benchmarks/README.md); dataset collection or download and model "
              "training come on top; no GPU throughput has been measured"]
    return "\n".join(lines)
