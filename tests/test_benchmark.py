"""``ombrl benchmark``: spec validation, the plan, the progress line, and the smoke spec end
to end on an embedded loopback Ray, killed midway and rerun."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from offline_mbrl.benchmark.commands import main
from offline_mbrl.benchmark.cost import format_plan
from offline_mbrl.benchmark.progress import ProgressState, eta_seconds, format_progress
from offline_mbrl.benchmark.spec import expand, load_spec
from offline_mbrl.errors import UserError

REPO = Path(__file__).resolve().parent.parent
SPECS = REPO / "benchmarks" / "specs"
GOOD = """envs = ["hopper"]
datasets = ["random"]
modes = ["behavioral-cloning"]
seeds = [0]
"""


# ---------------------------------------------------------------------- spec
def test_specs_expand_to_their_grids():
    smoke = expand(load_spec(SPECS / "smoke.toml"))
    assert [d.name for d in smoke.datasets] == ["hopper-random-v2"]
    assert [m.dataset for m in smoke.models] == ["hopper-random-v2"]
    assert [(t.mode, t.uses_model) for t in smoke.trains] == [
        ("behavioral-cloning", False), ("epistemic-penalty", True)]
    seed = load_spec(SPECS / "seed-figure.toml")
    grid = expand(seed)
    assert (len(grid.datasets), len(grid.models), len(grid.trains)) == (15, 15, 90)
    assert seed.seeds == list(range(6)) and {d.source for d in grid.datasets} == {"d4rl"}
    plan = format_plan(seed, grid)
    assert "units: 120 (15 datasets, 15 models, 90 training)" in plan
    assert "250,000 updates" in plan and "500,000 updates" in plan
    assert "no GPU throughput has been measured" in plan


@pytest.mark.parametrize(("text", "expected"), [
    (GOOD.replace("behavioral-cloning", "bc"), "unknown offline mode 'bc'"),
    (GOOD.replace('"hopper"', '"hoper"'), "unknown environment 'hoper'"),
    (GOOD.replace("seeds = [0]\n", ""), "seeds: Field required"),
    (GOOD + "colour = 3\n", "colour: Extra inputs are not permitted"),
    (GOOD + "[budget]\nepoch = 3\n", "budget.epoch: Extra inputs are not permitted"),
    (GOOD + "[config]\nmode = 'sac'\n", "set by the spec itself"),
    (GOOD + "[config]\nagent = { n_hidden_units = -1 }\n", "agent.n_hidden_units"),
    (GOOD + "envs = [", "is not valid TOML"),
    (GOOD.replace('["random"]', '["mediocre"]'), "unknown dataset kind 'mediocre'"),
])
def test_bad_spec_is_one_line_before_anything_starts(tmp_path, capsys, text, expected):
    path = tmp_path / "spec.toml"
    path.write_text(text)
    assert main([str(path), "--root", str(tmp_path / "root")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith(f"error: {path}") and expected in err, err
    assert not (tmp_path / "root").exists()


def test_missing_spec_and_yaml(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_spec(tmp_path / "none.toml")
    pytest.importorskip("yaml")
    path = tmp_path / "tiny.yaml"
    path.write_text("envs: [hopper]\ndatasets: [random]\nmodes: [iql]\nseeds: [1, 2]\n")
    spec = load_spec(path)
    assert spec.name == "tiny" and expand(spec).trains[0].experiment == "hopper-random-v2-iql"


# ---------------------------------------------------------------------- progress
def test_progress_line_and_estimate():
    state = ProgressState(done=2, running=2, left=4, durations=(100.0, 200.0), slots=2,
                          elapsed=400)
    # 150 s a unit, 4 left and 2 half done, 2 at once: 150 × 5 / 2.
    assert eta_seconds(state) == pytest.approx(375.0)
    assert format_progress(state) == ("[7 min] units 2/8 done, 2 running, 4 left; "
                                      "about 6 min left")
    first = ProgressState(done=0, running=1, left=1, failed=1, prepared=1, preparing=1)
    assert format_progress(first) == (
        "[0 s] units 0/3 done, 1 running, 1 left, 1 failed, datasets and models 1/2 ready; "
        "time left: known after the first unit")
    assert format_progress(ProgressState(3, 0, 0, durations=(5.0,))).endswith("nothing left")


# ---------------------------------------------------------------------- end to end
def _environ() -> dict[str, str]:
    environ = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="200")
    environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO / "src"), environ.get("PYTHONPATH")) if p)
    return environ


def _command(root: Path) -> list[str]:
    return [sys.executable, "-m", "offline_mbrl.cli", "benchmark", str(SPECS / "smoke.toml"),
            "--root", str(root), "--num_cpus", "1"]


def _done_units(root: Path) -> list[str]:
    import json

    done = []
    for path in sorted((root / "status").glob("train-*.json")):
        with contextlib.suppress(OSError, ValueError):
            if json.loads(path.read_text())["state"] == "done":
                done.append(path.stem.removeprefix("train-"))
    return done


def _session_members(sid: int) -> list[int]:
    """Processes of session ``sid`` (Ray's workers have process groups of their own)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # Fields after "pid (comm)": state, ppid, pgrp, session; zombies are gone.
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid and fields[0] != "Z":
                members.append(int(stat.parent.name))
    return members


def _kill_session(sid: int) -> None:
    """SIGKILL every process of session ``sid`` and wait until none is left running."""
    deadline = time.time() + 60
    while (members := _session_members(sid)) and time.time() < deadline:
        for pid in members:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def _interrupt_after_first_unit(root: Path, listening_sockets) -> tuple[list[str], list[str]]:
    """Start the smoke benchmark and kill it (SIGKILL to its whole session: the driver, Ray's
    processes and the running unit, as a lost machine would) once a training unit is done;
    returns the units done and every address its processes listened on meanwhile."""
    process = subprocess.Popen(_command(root), env=_environ(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    addresses: set[str] = set()
    stop = threading.Event()

    def scan() -> None:
        while not stop.is_set():
            addresses.update(listening_sockets(process.pid))
            stop.wait(0.2)

    # Scanning /proc takes a while; a thread of its own keeps the wait for the first unit's
    # end short, so the kill comes well inside the second unit.
    scanner = threading.Thread(target=scan, daemon=True)
    scanner.start()
    try:
        deadline = time.time() + 480
        while not _done_units(root) and process.poll() is None and time.time() < deadline:
            time.sleep(0.02)
    finally:
        _kill_session(process.pid)
        stop.set()
        scanner.join()
    output, _ = process.communicate(timeout=120)
    done = _done_units(root)
    # One CPU runs one unit at a time; the kill comes within a few hundredths of a second of
    # the first unit's end, and the second (model rollouts at the smoke budget) lasts seconds.
    assert len(done) == 1, output
    return done, sorted(addresses)


@pytest.mark.long
@pytest.mark.xdist_group("ray")  # one embedded Ray at a time, with test_tuning's
def test_smoke_spec_resumes_after_a_kill_on_loopback_ray(tmp_path, listening_sockets):
    pytest.importorskip("ray", reason="ray is not installed (extra 'tune')")
    root = tmp_path / "root"
    done, addresses = _interrupt_after_first_unit(root, listening_sockets)
    assert addresses, "no listening Ray sockets found"
    assert all(a.rsplit(":", 1)[0] in ("127.0.0.1", "::ffff:127.0.0.1") for a in addresses), \
        addresses
    experiments = root / "experiments"
    progress = {p: (p.stat().st_mtime_ns, p.read_bytes())
                for unit in done for p in (experiments / unit).glob("*/progress.txt")}
    assert len(progress) == 2 * len(done)

    rerun = subprocess.run(_command(root), env=_environ(), capture_output=True, text=True,
                           timeout=480)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "1 of 2 training units finished before; 1 to run" in rerun.stdout
    for path, (mtime, content) in progress.items():
        assert (path.stat().st_mtime_ns, path.read_bytes()) == (mtime, content), path
    results = (root / "results" / "results.md").read_text()
    assert "2 of 2 units finished" in results
    for mode in ("behavioral-cloning", "epistemic-penalty"):
        assert f"| hopper-random-v2 | {mode} | 2 |" in results
    assert (root / "results" / "figure.png").stat().st_size > 0
    assert [p.name for p in (root / "models").glob("*.pt")] == ["hopper-random-v2-model.pt"]


def test_a_failed_dataset_fails_its_units_alone(tmp_path):
    pytest.importorskip("ray", reason="ray is not installed (extra 'tune')")
    spec = tmp_path / "offline.toml"
    spec.write_text(GOOD.replace('["behavioral-cloning"]',
                                 '["behavioral-cloning", "epistemic-penalty"]'))
    environ = dict(_environ(), OMBRL_OFFLINE="1", D4RL_DATASET_DIR=str(tmp_path / "d4rl"),
                   MINARI_DATASETS_PATH=str(tmp_path / "minari"))
    run = subprocess.run([*_command(tmp_path / "root")[:4], str(spec), "--root",
                          str(tmp_path / "root"), "--num_cpus", "1"], env=environ,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert any(line.startswith("dataset-hopper-random-v2 failed: no local data for "
                               "hopper-random-v2 and OMBRL_OFFLINE is set") for line in lines)
    for unit in ("model-hopper-random-v2", "train-hopper-random-v2-behavioral-cloning"):
        assert f"{unit} not run: dataset-hopper-random-v2 failed" in lines, run.stdout
    assert "0 of 2 units finished" in (tmp_path / "root" / "results" / "results.md").read_text()
    assert "Traceback" not in run.stdout + run.stderr
