"""Run a benchmark's units as Ray tasks, with their CPU and GPU needs declared.

Dependencies are Ray object references: a dataset's model task waits for the dataset, its
model-based training units for the model, its model-free units (behavioral cloning, offline
SAC, CQL, IQL) only for the dataset. Collected datasets of one environment whose kinds share
its SAC policies (medium, medium-replay, medium-expert, expert) are collected one after
another. Training units already finished are not submitted; datasets and models already on
disk return at once; a unit with checkpoints continues from them.

Ray runs embedded, bound to 127.0.0.1, unless ``address`` joins a cluster; every unit then
reads and writes the benchmark's root, so it must be on a filesystem all nodes share, at the
same path. Each task writes its output to ``<root>/logs/<unit id>.log``.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from offline_mbrl.benchmark.progress import (
    ProgressState,
    format_progress,
    read_status,
    write_status,
)
from offline_mbrl.benchmark.spec import BenchmarkSpec, DatasetUnit, Grid, ModelUnit, TrainUnit
from offline_mbrl.benchmark.units import (
    apply_environ,
    directories,
    finished,
    needs_sac_policy,
    resolve_dataset,
    train_model,
    train_unit,
)
from offline_mbrl.envs.registry import get_env_spec
from offline_mbrl.tuning.tune import import_ray, init_ray

COMMAND = "ombrl benchmark"
LOG_DIR = "logs"
_PASSED_VARIABLES = ("D4RL_DATASET_DIR", "MINARI_DATASETS_PATH", "OMBRL_OFFLINE",
                     "OMBRL_D4RL_URL")
"""Variables of the driver a unit needs to resolve data as the driver would."""
T = TypeVar("T")


@dataclass(frozen=True)
class RunOptions:
    """Where and how the units run."""

    root: Path
    address: str | None = None
    num_cpus: int | None = None
    poll_seconds: float = 1.0
    report_seconds: float = 60.0
    """A progress line at least this often, besides one per change."""
    log: Callable[[str], None] = field(default=lambda line: print(line, flush=True))


@dataclass(frozen=True)
class TaskContext:
    """What every task receives besides its unit."""

    spec: BenchmarkSpec
    root: str
    environ: dict[str, str]
    session: str


# ---------------------------------------------------------------------- tasks
def _tracked(context: TaskContext, unit_id: str, work: Callable[[Callable[[str], None]], T]
             ) -> T:
    """Run ``work(log)`` in a task: variables set, status recorded, output in its log."""
    apply_environ(context.environ)
    root = Path(context.root)
    started = write_status(root, unit_id, "running", context.session)
    (root / LOG_DIR).mkdir(parents=True, exist_ok=True)
    with (root / LOG_DIR / f"{unit_id}.log").open("a", encoding="utf-8") as log_file, \
            contextlib.redirect_stdout(log_file), contextlib.redirect_stderr(log_file):
        def log(line: str) -> None:
            print(line, flush=True)

        try:
            result = work(log)
        except BaseException:
            write_status(root, unit_id, "failed", context.session, started)
            raise
    write_status(root, unit_id, "done", context.session, started)
    return result


def dataset_task(unit: DatasetUnit, context: TaskContext, *after: Any) -> str:
    """Resolve the dataset (``after``: collections it must follow); returns its path."""
    return _tracked(context, unit.id, lambda log: resolve_dataset(unit, context.spec, log))


def model_task(unit: ModelUnit, context: TaskContext, dataset_path: str) -> str:
    """Train and save the dataset's environment model if missing; returns its path."""
    return _tracked(context, unit.id, lambda log: train_model(unit, context.spec, dataset_path))


def train_task(unit: TrainUnit, context: TaskContext, dataset_path: str,
               model_path: str | None) -> float:
    """Train the unit's population; returns its seconds (0 when already finished)."""
    return _tracked(context, unit.id, lambda log: train_unit(unit, context.spec, dataset_path,
                                                             model_path, log))


# ---------------------------------------------------------------------- driver
@dataclass
class Outcome:
    """What a run of the units left: failed unit ids with their error lines."""

    failed: dict[str, str] = field(default_factory=dict)
    done: int = 0


def task_environ(root: Path) -> dict[str, str]:
    """The variables every unit gets: directories under ``root``, and the driver's data
    settings (paths made absolute)."""
    environ = directories(root)
    for name in _PASSED_VARIABLES:
        value = os.environ.get(name)
        if value:
            environ[name] = (str(Path(value).expanduser().resolve()) if name.endswith(
                ("_DIR", "_PATH")) else value)
    return environ


def run_units(spec: BenchmarkSpec, grid: Grid, options: RunOptions) -> Outcome:
    """Train every unfinished unit of ``grid`` on Ray; finished units are skipped."""
    root = options.root.expanduser().resolve()
    environ = task_environ(root)
    apply_environ(environ)
    todo = [u for u in grid.trains if not finished(spec, u)]
    done_before = len(grid.trains) - len(todo)
    options.log(f"{done_before} of {len(grid.trains)} training units finished before; "
                f"{len(todo)} to run")
    if not todo:
        return Outcome(done=done_before)
    ray = import_ray(COMMAND)
    started = init_ray(options.address, options.num_cpus, command=COMMAND)
    try:
        if options.address:
            options.log(f"joined the Ray cluster at {options.address}: every node must see "
                        f"{root} at this path (a shared filesystem)")
        context = TaskContext(spec, str(root), environ, uuid.uuid4().hex)
        pending = submit(ray, spec, grid, todo, context)
        outcome = watch(ray, pending, context, done_before, _slots(ray, spec), options)
    finally:
        if started:
            ray.shutdown()
    return outcome


def submit(ray: Any, spec: BenchmarkSpec, grid: Grid, todo: list[TrainUnit],
           context: TaskContext) -> dict[Any, Any]:
    """Submit the tasks ``todo`` needs; returns object reference -> unit."""
    resources = {"num_cpus": spec.resources.threads, "num_gpus": spec.resources.gpus_per_unit}
    remote_dataset, remote_model, remote_train = (
        ray.remote(**resources)(f) for f in (dataset_task, model_task, train_task))
    pending: dict[Any, Any] = {}
    dataset_refs: dict[str, Any] = {}
    last_collection: dict[str, Any] = {}  # env -> the collection that trains its policies
    for unit in (d for d in grid.datasets if any(t.dataset == d.name for t in todo)):
        family = get_env_spec(unit.name).family
        after = [last_collection[family]] if needs_sac_policy(unit) and \
            family in last_collection else []
        ref = remote_dataset.remote(unit, context, *after)
        if needs_sac_policy(unit):
            last_collection[family] = ref
        dataset_refs[unit.name] = pending_ref(pending, ref, unit)
    model_refs: dict[str, Any] = {}
    for model in (m for m in grid.models
                  if any(t.dataset == m.dataset and t.uses_model for t in todo)):
        ref = remote_model.remote(model, context, dataset_refs[model.dataset])
        model_refs[model.dataset] = pending_ref(pending, ref, model)
    for train in todo:
        model_ref = model_refs[train.dataset] if train.uses_model else None
        pending_ref(pending, remote_train.remote(train, context, dataset_refs[train.dataset],
                                                 model_ref), train)
    return pending


def pending_ref(pending: dict[Any, Any], ref: Any, unit: Any) -> Any:
    pending[ref] = unit
    return ref


def _slots(ray: Any, spec: BenchmarkSpec) -> int:
    """Training units that fit on the cluster at once."""
    available = ray.cluster_resources()
    slots = int(available.get("CPU", 1) // spec.resources.threads)
    gpus = spec.resources.gpus_per_unit
    if gpus > 0:
        slots = min(slots, int(available.get("GPU", 0) // gpus))
    return max(1, slots)


def watch(ray: Any, pending: dict[Any, Any], context: TaskContext, done_before: int,
          slots: int, options: RunOptions) -> Outcome:
    """Wait for every task, printing a progress line per change and every
    ``options.report_seconds``; a failed task's dependents fail with it."""
    outcome = Outcome(done=done_before)
    durations: list[float] = []
    prepared = 0
    start, last_line, last_time = time.time(), "", 0.0
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=options.poll_seconds)
        for ref in ready:
            unit = pending.pop(ref)
            try:
                value = ray.get(ref)
            except Exception as error:  # a unit's failure must not stop the others
                options.log(_failure(unit, error, outcome, context))
                continue
            if isinstance(unit, TrainUnit):
                outcome.done += 1
                if value:
                    durations.append(float(value))
            else:
                prepared += 1
        state = _state(pending, context, outcome, prepared, durations, slots, start)
        line = format_progress(state)
        body = line.split("] ", 1)[-1]
        if body != last_line or time.time() - last_time >= options.report_seconds:
            options.log(line)
            last_line, last_time = body, time.time()
    return outcome


def dependencies(unit: DatasetUnit | ModelUnit | TrainUnit) -> list[str]:
    """Ids of the units whose results ``unit``'s task takes."""
    if isinstance(unit, DatasetUnit):
        return []
    deps = [DatasetUnit(unit.dataset, "d4rl").id]
    if isinstance(unit, TrainUnit) and unit.uses_model:
        deps.append(ModelUnit(unit.dataset).id)
    return deps


def _failure(unit: Any, error: BaseException, outcome: Outcome, context: TaskContext) -> str:
    """Record ``unit``'s failure in ``outcome``; returns the line to print."""
    failed_first = [d for d in dependencies(unit) if d in outcome.failed]
    if failed_first:
        outcome.failed[unit.id] = f"not run: {failed_first[0]} failed"
        return f"{unit.id} {outcome.failed[unit.id]}"
    outcome.failed[unit.id] = error_line(error)
    return (f"{unit.id} failed: {outcome.failed[unit.id]} (log: "
            f"{Path(context.root) / LOG_DIR / (unit.id + '.log')})")


def _state(pending: dict[Any, Any], context: TaskContext, outcome: Outcome, prepared: int,
           durations: list[float], slots: int, start: float) -> ProgressState:
    trains = [u for u in pending.values() if isinstance(u, TrainUnit)]
    running = sum(1 for u in trains if _running(context, u.id))
    return ProgressState(
        done=outcome.done, running=running, left=len(trains) - running,
        failed=sum(1 for k in outcome.failed if k.startswith("train-")), prepared=prepared,
        preparing=len(pending) - len(trains), durations=tuple(durations), slots=slots,
        elapsed=time.time() - start)


def _running(context: TaskContext, unit_id: str) -> bool:
    status = read_status(Path(context.root), unit_id)
    return status.get("session") == context.session and status.get("state") == "running"


def error_line(error: BaseException) -> str:
    """The last line of a (Ray-wrapped) error, without its exception class."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    last = lines[-1] if lines else type(error).__name__
    return re.sub(r"^[\w.]+(Error|Exception): ", "", last)[:1000]
