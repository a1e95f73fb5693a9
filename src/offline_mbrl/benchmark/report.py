"""The benchmark's results: a table per (dataset, mode) and the seed's 3 × 5 figure.

A seed's score is the mean of its last ``last_k`` D4RL-normalised evaluations. Per (dataset,
mode) the table gives every seed's score, their mean ± sample std and their interquartile
mean with a 95% stratified-bootstrap interval (:func:`offline_mbrl.plotting.
stratified_bootstrap_iqm`); per mode, the IQM over all its (dataset, seed) scores with the
interval of a bootstrap stratified by dataset. The figure is :func:`offline_mbrl.plotting.
plot_final_eval`: rows hopper, halfcheetah, walker2d; columns the five dataset kinds; a
curve per mode and behavioral cloning as a dashed line. Only finished units are reported.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np

from offline_mbrl.benchmark.spec import BenchmarkSpec, Grid, TrainUnit
from offline_mbrl.benchmark.units import run_dirs, runs_finished, seed_scores, unit_epochs
from offline_mbrl.errors import UserError
from offline_mbrl.files import write_bytes_atomic, write_json_atomic
from offline_mbrl.plotting import (
    BASELINE_MODE,
    IQMEstimate,
    Run,
    aggregate_iqm,
    load_runs,
    plot_final_eval,
    save_figure,
    stratified_bootstrap_iqm,
)

TABLE_HEADER = ["| dataset | mode | seeds | score per seed | mean ± std | IQM [95% CI] |",
                "|---|---|--:|---|--:|--:|"]
CSV_HEADER = "dataset,mode,seeds,scores,mean,std,iqm,ci_low,ci_high"


def summarise(finals: np.ndarray) -> tuple[float, float, IQMEstimate]:
    """Mean, sample std (0 for one seed) and IQM with its bootstrap interval."""
    std = float(finals.std(ddof=1)) if finals.size > 1 else 0.0
    return float(finals.mean()), std, stratified_bootstrap_iqm([finals], rng=0)


def markdown_row(dataset: str, label: str, finals: np.ndarray) -> str:
    """``| dataset | label | seeds | per seed | mean ± std | IQM [low, high] |``."""
    mean, std, estimate = summarise(finals)
    per_seed = ", ".join(f"{s:.1f}" for s in finals)
    return (f"| {dataset} | {label} | {finals.size} | {per_seed} | {mean:.1f} ± {std:.1f} | "
            f"{estimate.iqm:.1f} [{estimate.ci_low:.1f}, {estimate.ci_high:.1f}] |")


def csv_values(finals: np.ndarray) -> str:
    """``seeds,scores,mean,std,iqm,ci_low,ci_high`` of one (dataset, mode)."""
    mean, std, estimate = summarise(finals)
    return (f"{finals.size},{' '.join(f'{s:.3f}' for s in finals)},{mean:.3f},{std:.3f},"
            f"{estimate.iqm:.3f},{estimate.ci_low:.3f},{estimate.ci_high:.3f}")


def finished_units(spec: BenchmarkSpec, grid: Grid) -> list[TrainUnit]:
    return [u for u in grid.trains if runs_finished(run_dirs(spec, u), unit_epochs(spec, u))]


def tables(spec: BenchmarkSpec, units: list[TrainUnit]) -> tuple[str, str]:
    """The Markdown tables (per unit, then per mode over datasets) and the per-unit CSV."""
    lines, csv = list(TABLE_HEADER), [CSV_HEADER]
    scores: dict[tuple[str, str], np.ndarray] = {}
    for unit in units:
        finals, _ = seed_scores(run_dirs(spec, unit), unit_epochs(spec, unit),
                                spec.budget.last_k)
        if not finals.size:
            continue
        scores[unit.dataset, unit.mode] = finals
        lines.append(markdown_row(unit.dataset, unit.mode, finals))
        csv.append(f"{unit.dataset},{unit.mode},{csv_values(finals)}")
    aggregates = aggregate_iqm(scores, rng=0)
    lines += ["", "| mode | IQM over datasets [95% CI] | datasets | scores |",
              "|---|--:|--:|--:|"]
    for mode in (m for m in spec.modes if m in aggregates):
        est = aggregates[mode]
        lines.append(f"| {mode} | {est.iqm:.1f} [{est.ci_low:.1f}, {est.ci_high:.1f}] | "
                     f"{est.num_datasets} | {est.num_scores} |")
    return "\n".join(lines) + "\n", "\n".join(csv) + "\n"


def figure_runs(spec: BenchmarkSpec, units: list[TrainUnit]) -> list[Run]:
    runs: list[Run] = []
    for unit in units:
        runs += load_runs(run_dirs(spec, unit)[0].parent)
    return runs


def write_report(spec: BenchmarkSpec, grid: Grid, out: Path) -> list[Path]:
    """Write ``results.md``, ``results.csv``, ``results.json`` and ``figure.png`` to ``out``
    from the finished units; returns the files written."""
    units = finished_units(spec, grid)
    markdown, csv = tables(spec, units)
    out.mkdir(parents=True, exist_ok=True)
    title = (f"# Benchmark {spec.name}\n\nSeeds {', '.join(map(str, spec.seeds))}; a seed's "
             f"score is the mean of its last {spec.budget.last_k} D4RL-normalised "
             f"evaluations. {len(units)} of {len(grid.trains)} units finished.\n\n")
    written = [write_bytes_atomic(out / "results.md", (title + markdown).encode()),
               write_bytes_atomic(out / "results.csv", csv.encode())]
    meta = {"spec": spec.model_dump(mode="json"), "commit": current_commit(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "finished": [u.experiment for u in units],
            "unfinished": [u.experiment for u in grid.trains if u not in units]}
    written.append(write_json_atomic(out / "results.json", meta))
    if units:
        curves = [m for m in spec.modes if m != BASELINE_MODE]
        baseline = BASELINE_MODE if BASELINE_MODE in spec.modes else None
        try:
            fig = plot_final_eval(figure_runs(spec, units), modes=curves, baseline=baseline,
                                  last_k=spec.budget.last_k)
        except UserError as error:  # e.g. no finished run is drawn
            print(f"no figure: {error}", flush=True)
        else:
            written += save_figure(fig, out, "figure", formats=("png",))
    return written


def current_commit() -> str:
    """The short hash of the checkout this package runs from ("unknown" outside git)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                              cwd=Path(__file__).resolve().parent, check=True,
                              capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"

