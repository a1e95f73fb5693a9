"""Plot training runs: learning curves, the final-evaluation grid and final-score tables.

A *run* is a directory holding ``progress.txt`` (tab-separated, header row, one row per
epoch) and usually ``config.json``; the training loop writes them to
``<root>/<env_name>-<mode>/<env_name>-<mode>-s<seed>/``. Runs are grouped into
*experiments* (all seeds of one configuration) and drawn as the mean over seeds with a
band of one standard deviation.

Choices made here, so that figures and tables can be read without the code:

* Standard deviation across seeds is the sample standard deviation (``ddof=1``); with a
  single seed it is 0 (no band).
* Smoothing is a centred moving average over ``window`` points; at the ends the average
  is over the points that exist, so the curve is not pulled towards zero.
* Seeds are aligned on the x column: every seed is cut to the x range that all of them
  cover, and values are read (linearly interpolated, exact when the seeds share their x
  values) at the x values of the seed with the fewest points in that range.
* The *final score* of a seed is the mean of its last ``last_k`` evaluations (default 1,
  the policy at the end of training: each evaluation already averages several test
  episodes). Rows where the value is missing (NaN) are ignored.
* The aggregate across datasets is the interquartile mean (IQM) of all (seed, dataset)
  final scores of a mode: sort, drop ``floor(n / 4)`` scores at each end, average the rest
  (``scipy.stats.trim_mean(x, 0.25)``, as used by rliable). Its confidence interval is a
  percentile interval from a stratified bootstrap: seeds are resampled with replacement
  within each dataset, never across datasets. It is implemented here in numpy because
  ``rliable`` 1.2.0 installs but fails to import with the pandas it pulls in (its
  dependency ``arch`` 7.2.0 breaks on pandas 3), and the computation is a few lines.

Figures are :class:`matplotlib.figure.Figure` objects created without pyplot (no global
state, no backend needed to save them); pass ``fig=`` a pyplot figure to show one on screen.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from offline_mbrl.envs.scores import normalized_score
from offline_mbrl.errors import UserError
from offline_mbrl.files import write_bytes_atomic
from offline_mbrl.modes import pessimistic_modes

PROGRESS_FILE = "progress.txt"
CONFIG_FILE = "config.json"

#: Rows and columns of the final-evaluation grid.
ENV_FAMILIES: tuple[str, ...] = ("halfcheetah", "hopper", "walker2d")
DATASET_KINDS: tuple[str, ...] = ("random", "medium-replay", "medium", "medium-expert", "expert")
#: Mode drawn as a dashed horizontal line (its mean final score) in every panel.
BASELINE_MODE = "behavioral-cloning"
#: Config keys that tell two configurations of the same env and mode apart.
DISTINGUISHING_KEYS: tuple[str, ...] = ("rollout_length", "pessimism", "ood_threshold")

SCORE_COLUMN = "NormalizedTestScore"
RETURN_COLUMN = "AverageTestEpRet"

_SEED_SUFFIX = re.compile(r"^(?P<base>.+)-s(?P<seed>\d+)$")
_ENV_MODE = re.compile(r"^(?P<env>.+?-v\d+)-(?P<mode>[A-Za-z][A-Za-z0-9_-]*)$")
_D4RL_DATASET = re.compile(
    r"^(?P<family>halfcheetah|hopper|walker2d)-"
    r"(?P<kind>random|medium-replay|medium-expert|medium|expert)-v\d+$"
)


@dataclass
class Run:
    """One training run (one seed of one configuration).

    Attributes:
        path: the run directory (the one holding ``progress.txt``).
        config: the parsed ``config.json`` (empty when the file is missing or unreadable).
        progress: column name -> values, one float per epoch (NaN where a cell is empty).
        name: the experiment this run belongs to before distinguishing config values are
            added (see :func:`group_runs`): the parent directory's name, or, for a run
            directly under the root that was searched, the run's own name without its
            ``-s<seed>`` suffix.
    """

    path: Path
    config: dict[str, Any]
    progress: dict[str, np.ndarray]
    name: str = field(default="")

    def __post_init__(self) -> None:
        if not self.name:
            self.name = self.path.parent.name

    @property
    def env_name(self) -> str | None:
        """``config["env_name"]``, else parsed from :attr:`name` (``<env>-v2-<mode>``)."""
        value = self.config.get("env_name")
        if isinstance(value, str) and value:
            return value
        match = _ENV_MODE.match(self.name)
        return match["env"] if match else None

    @property
    def mode(self) -> str | None:
        """``config["mode"]``, else parsed from :attr:`name`."""
        value = self.config.get("mode")
        if isinstance(value, str) and value:
            return value
        match = _ENV_MODE.match(self.name)
        return match["mode"] if match else None

    @property
    def seed(self) -> int | None:
        """The ``-s<seed>`` suffix of the directory name, else an integer ``config["seed"]``.

        The directory name comes first because a population run writes one directory per
        member while its config may describe the whole population.
        """
        match = _SEED_SUFFIX.match(self.path.name)
        if match:
            return int(match["seed"])
        value = self.config.get("seed")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def num_rows(self) -> int:
        """Number of epochs logged."""
        return max((len(v) for v in self.progress.values()), default=0)


# --------------------------------------------------------------------------- loading


def read_progress(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a tab-separated ``progress.txt`` into column name -> float array.

    Cells that are empty or not numbers become NaN. A row with the wrong number of cells
    (e.g. the last line of a file still being written) is skipped with a warning.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise UserError(f"cannot read {path} ({err.strerror}): check the file permissions") from err
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return {}
    header = [name.strip() for name in lines[0].split("\t")]
    rows: list[list[float]] = []
    for number, line in enumerate(lines[1:], start=2):
        cells = line.split("\t")
        if len(cells) != len(header):
            warnings.warn(
                f"{path}:{number} has {len(cells)} cells, the header {len(header)}; row skipped",
                stacklevel=2,
            )
            continue
        rows.append([_to_float(cell) for cell in cells])
    table = np.asarray(rows, dtype=float).reshape(len(rows), len(header))
    return {name: table[:, i].copy() for i, name in enumerate(header)}


def _to_float(cell: str) -> float:
    try:
        return float(cell)
    except ValueError:
        return math.nan


def _read_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        warnings.warn(f"ignoring unreadable {path}: {err}", stacklevel=3)
        return {}
    return config if isinstance(config, dict) else {}


def load_runs(root: str | os.PathLike[str]) -> list[Run]:
    """Find every run under ``root`` (any directory, ``root`` included, with ``progress.txt``).

    Runs whose ``progress.txt`` has no data rows yet are skipped with a warning. When a run
    logged ``AverageTestEpRet`` but no ``NormalizedTestScore`` and trained on a D4RL task,
    the normalised score is added to its progress.

    Returns:
        The runs, sorted by experiment name, seed and path.

    Raises:
        UserError: ``root`` is not a directory, or holds no run with data.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root} is not a directory: pass the directory that holds your runs")
    runs: list[Run] = []
    for progress_path in sorted(root.rglob(PROGRESS_FILE)):
        run_dir = progress_path.parent
        progress = read_progress(progress_path)
        if not progress or not any(len(v) for v in progress.values()):
            warnings.warn(f"skipping {run_dir}: {PROGRESS_FILE} has no data rows", stacklevel=2)
            continue
        if run_dir.resolve() == root.resolve() or run_dir.parent.resolve() == root.resolve():
            match = _SEED_SUFFIX.match(run_dir.name)
            name = match["base"] if match else run_dir.name
        else:
            name = run_dir.parent.name
        run = Run(path=run_dir, config=_read_config(run_dir), progress=progress, name=name)
        _add_normalized_score(run)
        runs.append(run)
    if not runs:
        raise UserError(
            f"no runs under {root} (no {PROGRESS_FILE} with data): "
            "train an agent first or pass the directory that holds the runs"
        )
    runs.sort(key=lambda r: (r.name, _seed_key(r), str(r.path)))
    return runs


def _seed_key(run: Run) -> int:
    seed = run.seed
    return seed if seed is not None else -1


def _add_normalized_score(run: Run) -> None:
    if SCORE_COLUMN in run.progress or RETURN_COLUMN not in run.progress:
        return
    parsed = _d4rl_dataset(run.env_name)
    if parsed is None:
        return
    run.progress[SCORE_COLUMN] = np.asarray(
        normalized_score(parsed[0], run.progress[RETURN_COLUMN]), dtype=float
    )


def _d4rl_dataset(env_name: str | None) -> tuple[str, str] | None:
    """``hopper-medium-replay-v2`` -> ``("hopper", "medium-replay")``; None otherwise."""
    match = _D4RL_DATASET.match(env_name or "")
    return (match["family"], match["kind"]) if match else None


# --------------------------------------------------------------------------- grouping


def _freeze(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def group_runs(
    runs: Iterable[Run], keys: Sequence[str] = DISTINGUISHING_KEYS
) -> dict[str, list[Run]]:
    """Group runs into experiments: all seeds of one configuration.

    Runs are grouped by :attr:`Run.name`. When runs of one name disagree on any of ``keys``
    in their config, they are split, and the differing values are appended to the name,
    e.g. ``hopper-medium-v2-epistemic-penalty[pessimism=0.5]``.

    Returns:
        Experiment name -> its runs sorted by seed; names in sorted order.
    """
    by_name: dict[str, list[Run]] = {}
    for run in runs:
        by_name.setdefault(run.name, []).append(run)
    groups: dict[str, list[Run]] = {}
    for name, members in by_name.items():
        differing = [k for k in keys if len({_freeze(r.config.get(k)) for r in members}) > 1]
        for run in members:
            label = name
            if differing:
                label += "[" + ", ".join(f"{k}={run.config.get(k)}" for k in differing) + "]"
            groups.setdefault(label, []).append(run)
    return {
        name: sorted(groups[name], key=lambda r: (_seed_key(r), str(r.path)))
        for name in sorted(groups)
    }


def filter_groups(
    groups: Mapping[str, Sequence[Run]],
    select: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> dict[str, list[Run]]:
    """Keep experiments whose name contains every ``select`` and none of the ``exclude`` substrings.

    Raises:
        UserError: nothing is left.
    """
    select = list(select or [])
    exclude = list(exclude or [])
    kept = {
        name: list(runs)
        for name, runs in groups.items()
        if all(s in name for s in select) and not any(e in name for e in exclude)
    }
    if not kept:
        raise UserError(
            f"no experiment matches --select {select} --exclude {exclude} "
            f"(experiments: {', '.join(groups)}): loosen the filters"
        )
    return kept


# --------------------------------------------------------------------------- curves


def smooth(values: Sequence[float] | np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over ``window`` points.

    Point ``i`` becomes the mean of ``values[i - (window - 1) // 2 : i + window // 2 + 1]``,
    clipped to the array, so the ends average over fewer points instead of padding with
    zeros. NaNs are left out of the averages. ``window <= 1`` returns a copy.

    Example: ``smooth([0, 1, 2, 3, 10], 3) == [0.5, 1, 2, 5, 6.5]``.
    """
    y = np.asarray(values, dtype=float)
    if window < 1:
        raise UserError(f"smoothing window {window} is below 1: pass --smooth 1 or more")
    if window == 1 or y.size == 0:
        return y.copy()
    valid = np.isfinite(y)
    sums = np.concatenate([[0.0], np.cumsum(np.where(valid, y, 0.0))])
    counts = np.concatenate([[0], np.cumsum(valid)])
    index = np.arange(y.size)
    lo = np.clip(index - (window - 1) // 2, 0, y.size)
    hi = np.clip(index + window // 2 + 1, 0, y.size)
    total, count = sums[hi] - sums[lo], counts[hi] - counts[lo]
    out = np.full(y.shape, np.nan)
    np.divide(total, count, out=out, where=count > 0)
    return out


@dataclass(frozen=True)
class Curve:
    """Mean and standard deviation over seeds of one column, aligned on the x column.

    Attributes:
        x: ``[T]`` x values.
        mean: ``[T]`` mean over seeds.
        std: ``[T]`` sample standard deviation over seeds (0 with one seed).
        num_seeds: seeds that contributed.
    """

    x: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    num_seeds: int


def seed_curve(runs: Sequence[Run], value: str, xaxis: str, smooth_window: int = 1) -> Curve | None:
    """Average ``value`` over the seeds in ``runs``, each smoothed first (see module docs).

    Runs that lack either column or have no finite (x, value) pair are left out.

    Returns:
        The curve, or None when no run contributes or the seeds share no x range.
    """
    series: list[tuple[np.ndarray, np.ndarray]] = []
    for run in runs:
        x, y = run.progress.get(xaxis), run.progress.get(value)
        if x is None or y is None:
            continue
        ok = np.isfinite(x) & np.isfinite(y)
        x, y = x[ok], y[ok]
        if x.size == 0:
            continue
        order = np.argsort(x, kind="stable")
        series.append((x[order], smooth(y[order], smooth_window)))
    if not series:
        return None
    lo = max(x[0] for x, _ in series)
    hi = min(x[-1] for x, _ in series)
    if lo > hi:
        warnings.warn(
            f"seeds of {runs[0].name} share no {xaxis} range; {value} not drawn", stacklevel=2
        )
        return None
    in_range = [x[(x >= lo) & (x <= hi)] for x, _ in series]
    grid = min(in_range, key=len)
    stacked = np.stack([np.interp(grid, x, y) for x, y in series])
    std = stacked.std(axis=0, ddof=1) if len(series) > 1 else np.zeros(grid.size)
    return Curve(x=grid, mean=stacked.mean(axis=0), std=std, num_seeds=len(series))


def _has_finite(runs: Iterable[Run], column: str) -> bool:
    return any(column in r.progress and np.isfinite(r.progress[column]).any() for r in runs)


def _columns(runs: Iterable[Run]) -> list[str]:
    names: dict[str, None] = {}
    for run in runs:
        names.update(dict.fromkeys(run.progress))
    return list(names)


def default_value(runs: Iterable[Run]) -> str:
    """``NormalizedTestScore`` if any run logged a finite one, else ``AverageTestEpRet``."""
    return SCORE_COLUMN if _has_finite(runs, SCORE_COLUMN) else RETURN_COLUMN


def default_xaxis(runs: Iterable[Run]) -> str:
    """``TotalUpdates`` if any run logged it, else ``Epoch``."""
    return "TotalUpdates" if _has_finite(runs, "TotalUpdates") else "Epoch"


def _check_column(runs: Sequence[Run], column: str, flag: str) -> None:
    if not _has_finite(runs, column):
        raise UserError(f"no run logged {column!r}: pass {flag} one of {', '.join(_columns(runs))}")


def _plot_band(ax: Any, curve: Any, color: Any, label: str) -> Any:
    """Draw a seed curve's mean ``[T]`` with a ±1 std band; returns the mean's line."""
    (line,) = ax.plot(curve.x, curve.mean, color=color, label=label)
    ax.fill_between(curve.x, curve.mean - curve.std, curve.mean + curve.std, color=color,
                    alpha=0.2, linewidth=0)
    return line


def _color(index: int) -> str:
    return f"C{index % 10}"


def plot_curves(
    groups: Mapping[str, Sequence[Run]],
    values: str | Sequence[str] | None = None,
    xaxis: str | None = None,
    smooth_window: int = 1,
    legend: Sequence[str] | None = None,
    fig: Figure | None = None,
) -> Figure:
    """Learning curves: one panel per value column, one line (mean) and band (± std) per experiment.

    Args:
        groups: experiment name -> runs, e.g. from :func:`group_runs`.
        values: column(s) to draw; default :func:`default_value`.
        xaxis: x column; default :func:`default_xaxis`.
        smooth_window: moving-average window in points (1: no smoothing).
        legend: labels replacing the experiment names, one per experiment in order.
        fig: figure to draw into (e.g. from ``pyplot.figure()``); a new one by default.

    Returns:
        The figure; ``fig.axes[i].lines`` holds one line per experiment that has data. The
        legend is on the first axes, or beside the axes (``fig.legends``) for more than six
        experiments.

    Raises:
        UserError: a column no run logged, or a legend of the wrong length.
    """
    all_runs = [r for runs in groups.values() for r in runs]
    if not all_runs:
        raise UserError("no runs to plot: check the directory and the --select/--exclude filters")
    if values is None:
        values = [default_value(all_runs)]
    elif isinstance(values, str):
        values = [values]
    xaxis = xaxis or default_xaxis(all_runs)
    _check_column(all_runs, xaxis, "--xaxis")
    for value in values:
        _check_column(all_runs, value, "--value")
    names = list(groups)
    if legend is not None and len(legend) != len(names):
        raise UserError(
            f"--legend has {len(legend)} labels for {len(names)} experiments "
            f"({', '.join(names)}): pass one label per experiment"
        )
    labels = list(legend) if legend is not None else names

    fig = fig if fig is not None else Figure()
    fig.set_layout_engine("constrained")
    fig.set_size_inches(9, 1 + 3.5 * len(values))
    axes = fig.subplots(len(values), 1, sharex=True, squeeze=False)[:, 0]
    for ax, value in zip(axes, values, strict=True):
        for index, (name, label) in enumerate(zip(names, labels, strict=True)):
            curve = seed_curve(groups[name], value, xaxis, smooth_window)
            if curve is None:
                continue
            _plot_band(ax, curve, _color(index), f"{label} ({curve.num_seeds} seeds)")
        ax.set_ylabel(value)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel(xaxis)
    if len(names) > 6:
        # Many experiments would cover the curves inside the axes.
        fig.set_size_inches(14, fig.get_size_inches()[1])
        handles, texts = axes[0].get_legend_handles_labels()
        fig.legend(handles, texts, fontsize="small", loc="outside right upper")
    else:
        axes[0].legend(fontsize="small", loc="best")
    if smooth_window > 1:
        fig.suptitle(f"mean ± 1 std over seeds, smoothed over {smooth_window} points")
    else:
        fig.suptitle("mean ± 1 std over seeds")
    return fig


# --------------------------------------------------------------------------- final evaluation


def _by_dataset_and_mode(
    runs: Iterable[Run], keys: Sequence[str] = DISTINGUISHING_KEYS
) -> dict[tuple[str, str], list[Run]]:
    """(env_name, mode) -> runs; refuses to pool different configurations of one pair."""
    pairs: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        env_name, mode = run.env_name, run.mode
        if env_name is None or mode is None:
            warnings.warn(f"skipping {run.path}: env_name or mode unknown", stacklevel=3)
            continue
        pairs.setdefault((env_name, mode), []).append(run)
    for (env_name, mode), members in pairs.items():
        differing = [k for k in keys if len({_freeze(r.config.get(k)) for r in members}) > 1]
        if differing:
            raise UserError(
                f"runs of {mode} on {env_name} differ in {', '.join(differing)}: "
                "keep one configuration with --select/--exclude"
            )
        members.sort(key=lambda r: (_seed_key(r), str(r.path)))
    return pairs


def run_final_score(run: Run, value: str = SCORE_COLUMN, last_k: int = 1) -> float:
    """Mean of the last ``last_k`` finite values of ``value`` in ``run``; NaN if there is none."""
    if last_k < 1:
        raise UserError(f"--last_k {last_k} is below 1: pass 1 or more")
    column = run.progress.get(value)
    if column is None:
        return math.nan
    finite = column[np.isfinite(column)]
    return float(finite[-last_k:].mean()) if finite.size else math.nan


def final_scores(
    runs: Iterable[Run], value: str = SCORE_COLUMN, last_k: int = 1
) -> dict[tuple[str, str], np.ndarray]:
    """Final score of every seed, per (dataset, mode).

    Args:
        runs: runs of any envs and modes.
        value: the column scored.
        last_k: evaluations averaged at the end of each run (see module docs).

    Returns:
        ``(env_name, mode) -> [S]`` final scores sorted by seed (seeds without any finite
        value are left out; pairs with no seed left are dropped), keys sorted.

    Raises:
        UserError: one (dataset, mode) holds runs of different configurations.
    """
    result: dict[tuple[str, str], np.ndarray] = {}
    for pair, members in sorted(_by_dataset_and_mode(runs).items()):
        scores = np.array([run_final_score(r, value, last_k) for r in members])
        scores = scores[np.isfinite(scores)]
        if scores.size:
            result[pair] = scores
    return result


def iqm(scores: Sequence[float] | np.ndarray) -> float:
    """Interquartile mean: drop ``floor(n / 4)`` lowest and highest scores, average the rest."""
    x = np.sort(np.asarray(scores, dtype=float).ravel())
    if x.size == 0:
        return math.nan
    cut = x.size // 4
    return float(x[cut : x.size - cut].mean())


@dataclass(frozen=True)
class IQMEstimate:
    """IQM over datasets with a stratified-bootstrap percentile confidence interval.

    Attributes:
        iqm: interquartile mean of all (seed, dataset) scores.
        ci_low, ci_high: bounds of the ``confidence`` interval.
        num_datasets: datasets (strata) pooled.
        num_scores: scores pooled (seeds summed over datasets).
    """

    iqm: float
    ci_low: float
    ci_high: float
    num_datasets: int
    num_scores: int


def stratified_bootstrap_iqm(
    task_scores: Sequence[Sequence[float] | np.ndarray],
    reps: int = 2000,
    confidence: float = 0.95,
    rng: np.random.Generator | int = 0,
) -> IQMEstimate:
    """IQM of pooled scores with a stratified-bootstrap percentile interval.

    Each bootstrap replicate resamples, with replacement, the seeds of every task
    separately (each task keeps its number of seeds), pools them and takes the IQM.

    Args:
        task_scores: one ``[S_t]`` array of per-seed scores per task; ``S_t`` may differ.
        reps: bootstrap replicates.
        confidence: coverage of the interval, in (0, 1).
        rng: generator, or a seed for ``np.random.default_rng``.
    """
    tasks = [np.asarray(t, dtype=float).ravel() for t in task_scores]
    tasks = [t[np.isfinite(t)] for t in tasks]
    tasks = [t for t in tasks if t.size]
    if not tasks:
        return IQMEstimate(math.nan, math.nan, math.nan, 0, 0)
    if reps < 1 or not 0.0 < confidence < 1.0:
        raise UserError(
            f"bootstrap needs reps >= 1 and 0 < confidence < 1, got {reps} and {confidence}: "
            "fix the arguments"
        )
    generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    # [reps, N]: replicate r pools a resample of every task's seeds.
    pooled = np.concatenate(
        [t[generator.integers(0, t.size, size=(reps, t.size))] for t in tasks], axis=1
    )
    pooled.sort(axis=1)
    cut = pooled.shape[1] // 4
    boot = pooled[:, cut : pooled.shape[1] - cut].mean(axis=1)
    alpha = 1.0 - confidence
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return IQMEstimate(
        iqm=iqm(np.concatenate(tasks)),
        ci_low=float(low),
        ci_high=float(high),
        num_datasets=len(tasks),
        num_scores=int(sum(t.size for t in tasks)),
    )


def aggregate_iqm(
    scores: Mapping[tuple[str, str], np.ndarray],
    reps: int = 2000,
    confidence: float = 0.95,
    rng: np.random.Generator | int = 0,
) -> dict[str, IQMEstimate]:
    """Per mode, the IQM of final scores across its datasets (see :func:`stratified_bootstrap_iqm`).

    Args:
        scores: ``(env_name, mode) -> [S]`` per-seed scores, e.g. from :func:`final_scores`.
            Use normalised scores: raw returns of different tasks are not comparable.
        reps, confidence: bootstrap replicates and interval coverage.
        rng: generator or seed, shared by all modes in order (reproducible tables).

    Returns:
        Mode -> estimate, modes sorted. Modes may cover different datasets; compare
        ``num_datasets`` before comparing modes.
    """
    generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    per_mode: dict[str, list[np.ndarray]] = {}
    for (_, mode), values in sorted(scores.items()):
        per_mode.setdefault(mode, []).append(values)
    return {
        mode: stratified_bootstrap_iqm(tasks, reps, confidence, generator)
        for mode, tasks in sorted(per_mode.items())
    }


class SummaryTables(NamedTuple):
    """Text of the final-score tables.

    Attributes:
        markdown: per-dataset table (rows datasets, columns modes, cells ``mean ± std``)
            followed by the aggregate table.
        csv: ``dataset,mode,num_seeds,mean,std`` rows (full float precision).
        aggregate_csv: ``mode,num_datasets,num_scores,iqm,ci_low,ci_high`` rows.
    """

    markdown: str
    csv: str
    aggregate_csv: str


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return float(values.mean()), std


def _mode_order(modes: Iterable[str]) -> list[str]:
    preferred = [*pessimistic_modes(), BASELINE_MODE]
    modes = set(modes)
    return [m for m in preferred if m in modes] + sorted(modes - set(preferred))


def _dataset_order(datasets: Iterable[str]) -> list[str]:
    def key(name: str) -> tuple[int, int, str]:
        parsed = _d4rl_dataset(name)
        if parsed is None:
            return (len(ENV_FAMILIES), 0, name)
        return (ENV_FAMILIES.index(parsed[0]), DATASET_KINDS.index(parsed[1]), name)

    return sorted(set(datasets), key=key)


def summary_tables(
    scores: Mapping[tuple[str, str], np.ndarray],
    aggregates: Mapping[str, IQMEstimate] | None = None,
    value: str = SCORE_COLUMN,
    last_k: int = 1,
    confidence: float = 0.95,
) -> SummaryTables:
    """Format final scores (and optionally their aggregates) as Markdown and CSV.

    Args:
        scores: ``(env_name, mode) -> [S]`` from :func:`final_scores`.
        aggregates: mode -> estimate from :func:`aggregate_iqm`; None skips that table.
        value, last_k, confidence: only used to describe the tables in the Markdown.
    """
    datasets = _dataset_order(d for d, _ in scores)
    modes = _mode_order(m for _, m in scores)

    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["dataset", "mode", "num_seeds", "mean", "std"])
    for dataset in datasets:
        for mode in modes:
            if (dataset, mode) in scores:
                values = scores[dataset, mode]
                mean, std = _mean_std(values)
                writer.writerow([dataset, mode, values.size, repr(mean), repr(std)])

    what = f"mean of the last {last_k} evaluations" if last_k > 1 else "last evaluation"
    lines = [
        f"## Final {value} ({what}; mean ± std over seeds, seed count in brackets)",
        "",
        "| dataset | " + " | ".join(modes) + " |",
        "|---|" + "---|" * len(modes),
    ]
    for dataset in datasets:
        cells = []
        for mode in modes:
            if (dataset, mode) in scores:
                mean, std = _mean_std(scores[dataset, mode])
                cells.append(f"{mean:.1f} ± {std:.1f} ({scores[dataset, mode].size})")
            else:
                cells.append("–")
        lines.append(f"| {dataset} | " + " | ".join(cells) + " |")

    aggregate_table = io.StringIO()
    agg_writer = csv.writer(aggregate_table, lineterminator="\n")
    agg_writer.writerow(["mode", "num_datasets", "num_scores", "iqm", "ci_low", "ci_high"])
    if aggregates:
        percent = f"{100 * confidence:g}%"
        lines += [
            "",
            f"## Aggregate over datasets: interquartile mean, {percent} stratified-bootstrap CI",
            "",
            f"| mode | IQM | {percent} CI | datasets | scores |",
            "|---|---|---|---|---|",
        ]
        for mode in _mode_order(aggregates):
            est = aggregates[mode]
            agg_writer.writerow(
                [
                    mode,
                    est.num_datasets,
                    est.num_scores,
                    repr(est.iqm),
                    repr(est.ci_low),
                    repr(est.ci_high),
                ]
            )
            lines.append(
                f"| {mode} | {est.iqm:.1f} | [{est.ci_low:.1f}, {est.ci_high:.1f}] "
                f"| {est.num_datasets} | {est.num_scores} |"
            )
    return SummaryTables("\n".join(lines) + "\n", table.getvalue(), aggregate_table.getvalue())


@dataclass(frozen=True)
class _FinalEvalStyle:
    """What every panel of :func:`plot_final_eval` draws.

    Attributes:
        value, xaxis: the y and x columns.
        smooth_window: moving-average window of the curves, in points.
        last_k: evaluations averaged for the baseline's final score.
        modes: modes drawn as curves, in colour order.
        baseline: mode drawn as a horizontal line, or None.
        labels: mode -> legend label (modes without one keep their name).
        has_curves: whether any curve mode has runs; panels then format x ticks in
            scientific notation.
    """

    value: str
    xaxis: str
    smooth_window: int
    last_k: int
    modes: Sequence[str]
    baseline: str | None
    labels: Mapping[str, str]
    has_curves: bool

    def label(self, mode: str) -> str:
        return self.labels.get(mode, mode)


def plot_final_eval(
    runs: Iterable[Run],
    value: str = SCORE_COLUMN,
    xaxis: str | None = None,
    smooth_window: int = 1,
    last_k: int = 1,
    modes: Sequence[str] | None = None,
    baseline: str | None = BASELINE_MODE,
    labels: Mapping[str, str] | None = None,
    fig: Figure | None = None,
) -> Figure:
    """The seed README's figure: a 3 × 5 grid of scores over training on the D4RL datasets.

    Rows are :data:`ENV_FAMILIES`, columns :data:`DATASET_KINDS`. In each panel every mode in
    ``modes`` is a mean curve with a ± 1 std band over seeds, and ``baseline`` a dashed
    horizontal line at the mean over seeds of its final score (:func:`run_final_score`).
    For the normalised score the y axis spans 0 to 100 and grows to fit values beyond.
    Panels without runs show "no runs". Runs on other environments are ignored.

    Args:
        runs: runs of any envs and modes (filter them first if needed).
        value: column drawn; the normalised score by default.
        xaxis: x column; default :func:`default_xaxis`.
        smooth_window: moving-average window in points.
        last_k: evaluations averaged for the baseline's final score.
        modes: modes drawn as curves (colours C0, C1, ... in this order); default the
            registry's pessimistic modes.
        baseline: mode drawn as a horizontal line, or None.
        labels: legend labels replacing mode names.
        fig: figure to draw into; a new one by default.

    Returns:
        The figure: 15 axes in row-major order; each panel's lines are its curves, then
        the baseline line.

    Raises:
        UserError: no run on a D4RL dataset, the value or x column missing, or one
            (dataset, mode) with runs of different configurations.
    """
    modes = pessimistic_modes() if modes is None else modes
    labels = dict(labels or {})
    panels = _d4rl_panels(_by_dataset_and_mode(runs))
    drawn_modes = [*modes, *([baseline] if baseline else [])]
    xaxis, has_curves = _final_eval_columns(panels, modes, drawn_modes, value, xaxis)
    style = _FinalEvalStyle(
        value, xaxis, smooth_window, last_k, modes, baseline, labels, has_curves
    )
    fig, axes = _final_eval_grid(fig)
    handles: dict[str, Line2D] = {}
    for row, family in enumerate(ENV_FAMILIES):
        for col, kind in enumerate(DATASET_KINDS):
            ax = axes[row, col]
            _draw_final_eval_panel(ax, panels.get((family, kind), {}), style, handles)
            _label_final_eval_panel(ax, row, col, style)
    _final_eval_legend(fig, handles, drawn_modes, style)
    return fig


def _d4rl_panels(
    pairs: Mapping[tuple[str, str], list[Run]],
) -> dict[tuple[str, str], dict[str, list[Run]]]:
    """``(family, kind) -> mode -> runs`` of the D4RL datasets; warns about the other runs."""
    panels: dict[tuple[str, str], dict[str, list[Run]]] = {}
    ignored = 0
    for (env_name, mode), members in pairs.items():
        parsed = _d4rl_dataset(env_name)
        if parsed is None:
            ignored += len(members)
            continue
        panels.setdefault(parsed, {})[mode] = members
    if ignored:
        # stacklevel 3: the warning names the caller of plot_final_eval.
        warnings.warn(f"{ignored} runs not on a D4RL dataset are not in the figure", stacklevel=3)
    return panels


def _final_eval_columns(
    panels: Mapping[tuple[str, str], Mapping[str, list[Run]]],
    modes: Sequence[str],
    drawn_modes: Sequence[str],
    value: str,
    xaxis: str | None,
) -> tuple[str, bool]:
    """Check that the drawn runs logged ``value`` (and the curves ``xaxis``).

    Returns:
        The x column (``xaxis``, else :func:`default_xaxis` of the drawn runs) and whether
        any curve mode has runs.

    Raises:
        UserError: no drawn run, or a column no run logged.
    """
    panel_runs = [r for panel in panels.values() for m in drawn_modes for r in panel.get(m, [])]
    if not panel_runs:
        raise UserError(
            f"no runs of {', '.join(drawn_modes)} on the D4RL datasets "
            f"({', '.join(ENV_FAMILIES)} × {', '.join(DATASET_KINDS)}): "
            "train them first or plot curves without --final_eval"
        )
    xaxis = xaxis or default_xaxis(panel_runs)
    _check_column(panel_runs, value, "--value")
    curve_runs = [r for panel in panels.values() for m in modes for r in panel.get(m, [])]
    if curve_runs:
        _check_column(curve_runs, xaxis, "--xaxis")
    return xaxis, bool(curve_runs)


def _final_eval_grid(fig: Figure | None) -> tuple[Figure, np.ndarray]:
    """``fig`` (a new one if None) sized for the grid, and its axes ``[families, kinds]``."""
    fig = fig if fig is not None else Figure()
    fig.set_layout_engine("constrained")
    fig.set_size_inches(4 * len(DATASET_KINDS), 3.2 * len(ENV_FAMILIES) + 0.8)
    axes = fig.subplots(len(ENV_FAMILIES), len(DATASET_KINDS), squeeze=False)
    return fig, axes


def _draw_final_eval_panel(
    ax: Axes, panel: Mapping[str, list[Run]], style: _FinalEvalStyle, handles: dict[str, Line2D]
) -> None:
    """Draw one dataset's curves and baseline, or "no runs", and fit the y range.

    Args:
        ax: the panel's axes.
        panel: mode -> runs on this dataset.
        style: what to draw.
        handles: mode -> first line drawn for it; filled in for the legend.
    """
    # The normalised score always shows 0 to 100; other columns fit their data.
    low, high = (0.0, 100.0) if style.value == SCORE_COLUMN else (math.inf, -math.inf)
    low, high, drawn = _draw_mode_curves(ax, panel, style, handles, low, high)
    level = _draw_baseline(ax, panel, style, handles)
    if level is not None:
        low, high, drawn = min(low, level), max(high, level), True
    if not drawn:
        ax.text(0.5, 0.5, "no runs", transform=ax.transAxes, ha="center", va="center", color="0.4")
        ax.set_xticks([])
    elif style.has_curves:
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
    if low <= high:
        margin = 0.04 * (high - low) or 1.0
        ax.set_ylim(low - margin, high + margin)


def _draw_mode_curves(
    ax: Axes,
    panel: Mapping[str, list[Run]],
    style: _FinalEvalStyle,
    handles: dict[str, Line2D],
    low: float,
    high: float,
) -> tuple[float, float, bool]:
    """Mean ± std curve of every mode with runs in ``panel``.

    Args:
        low, high: the y range so far.

    Returns:
        ``low`` and ``high`` widened to the bands drawn, and whether any curve was drawn.
    """
    drawn = False
    for index, mode in enumerate(style.modes):
        curve = seed_curve(panel.get(mode, []), style.value, style.xaxis, style.smooth_window)
        if curve is None:
            continue
        line = _plot_band(ax, curve, _color(index), style.label(mode))
        handles.setdefault(mode, line)
        low = min(low, float(np.min(curve.mean - curve.std)))
        high = max(high, float(np.max(curve.mean + curve.std)))
        drawn = True
    return low, high, drawn


def _draw_baseline(
    ax: Axes, panel: Mapping[str, list[Run]], style: _FinalEvalStyle, handles: dict[str, Line2D]
) -> float | None:
    """Dashed line at the baseline's mean final score; returns its level, None if not drawn."""
    baseline = style.baseline
    if not baseline or not panel.get(baseline):
        return None
    finals = np.array([run_final_score(r, style.value, style.last_k) for r in panel[baseline]])
    finals = finals[np.isfinite(finals)]
    if not finals.size:
        return None
    level = float(finals.mean())
    line = ax.axhline(
        level, color="black", linestyle="--", linewidth=1.2, label=style.label(baseline)
    )
    handles.setdefault(baseline, line)
    return level


def _label_final_eval_panel(ax: Axes, row: int, col: int, style: _FinalEvalStyle) -> None:
    """Grid lines; dataset kind above the top row, family and y label left, x label below."""
    ax.grid(alpha=0.3)
    if row == 0:
        ax.set_title(DATASET_KINDS[col])
    if col == 0:
        y_label = "normalised score" if style.value == SCORE_COLUMN else style.value
        ax.set_ylabel(f"{ENV_FAMILIES[row]}\n{y_label}")
    if row == len(ENV_FAMILIES) - 1:
        ax.set_xlabel(style.xaxis)


def _final_eval_legend(
    fig: Figure, handles: Mapping[str, Line2D], drawn_modes: Sequence[str], style: _FinalEvalStyle
) -> None:
    """One legend below the grid for the modes drawn anywhere, in ``drawn_modes`` order."""
    order = [m for m in drawn_modes if m in handles]
    if order:
        fig.legend(
            [handles[m] for m in order],
            [style.label(m) for m in order],
            loc="outside lower center",
            ncols=len(order),
        )


# --------------------------------------------------------------------------- output


def write_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return write_bytes_atomic(path, data)


def save_figure(
    fig: Figure, out_dir: str | os.PathLike[str], stem: str, formats: Sequence[str] = ("png", "pdf")
) -> list[Path]:
    """Save ``fig`` as ``<out_dir>/<stem>.<format>`` for every format; returns the paths."""
    written = []
    for fmt in formats:
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, dpi=150)
        written.append(write_atomic(Path(out_dir) / f"{stem}.{fmt}", buffer.getvalue()))
    return written
