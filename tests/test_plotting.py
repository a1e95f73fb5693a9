"""Tests for offline_mbrl.plotting and the plot script, on synthetic run directories."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

SRC = Path(__file__).resolve().parents[1] / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

from offline_mbrl import plotting  # noqa: E402
from offline_mbrl.errors import UserError  # noqa: E402
from offline_mbrl.modes import pessimistic_modes  # noqa: E402
from offline_mbrl.scripts import plot as plot_script  # noqa: E402

COLUMNS = [
    "Epoch",
    "AverageTestEpRet",
    "StdTestEpRet",
    "MaxTestEpRet",
    "MinTestEpRet",
    "TestEpLen",
    "TotalEnvInteracts",
    "TotalUpdates",
    "LossPi",
    "LossQ",
    "Time",
    "NormalizedTestScore",
]


def write_run(
    root: Path,
    env_name: str,
    mode: str,
    seed: int,
    scores: list[float] | np.ndarray,
    updates_per_epoch: int = 1000,
    **config: object,
) -> Path:
    """A run directory like the training loop's, with NormalizedTestScore = ``scores``."""
    run_dir = root / f"{env_name}-{mode}" / f"{env_name}-{mode}-s{seed}"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(
        json.dumps({"env_name": env_name, "mode": mode, "seed": seed, **config})
    )
    lines = ["\t".join(COLUMNS)]
    for epoch, score in enumerate(scores, start=1):
        row = {name: 0.0 for name in COLUMNS}
        row.update(
            Epoch=epoch,
            TotalUpdates=epoch * updates_per_epoch,
            AverageTestEpRet=10.0 * score,
            NormalizedTestScore=score,
        )
        lines.append("\t".join(str(row[name]) for name in COLUMNS))
    (run_dir / "progress.txt").write_text("\n".join(lines) + "\n")
    return run_dir


@pytest.fixture(autouse=True)
def _no_display(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)


@pytest.fixture
def experiments(tmp_path: Path) -> Path:
    """Two hopper datasets, one halfcheetah dataset, four modes partly present, BC, SAC."""
    root = tmp_path / "experiments"
    rng = np.random.default_rng(0)
    for seed in range(3):
        for mode in (
            "aleatoric-penalty",
            "epistemic-penalty",
            "aleatoric-partitioning",
            "epistemic-partitioning",
        ):
            write_run(root, "hopper-medium-replay-v2", mode, seed, 50 + rng.normal(size=6))
        write_run(
            root, "hopper-medium-v2", "epistemic-partitioning", seed, 120 + rng.normal(size=5)
        )
        write_run(root, "hopper-medium-v2", "behavioral-cloning", seed, [10, 20, 30 + seed])
        write_run(root, "halfcheetah-random-v2", "behavioral-cloning", seed, [1.0, 2.0])
    write_run(root, "hopper-medium-replay-v2", "sac", 0, [5.0, 6.0])
    return root


# --------------------------------------------------------------------------- loading


def test_load_and_group_runs(experiments: Path) -> None:
    runs = plotting.load_runs(experiments)
    assert len(runs) == 3 * 7 + 1
    groups = plotting.group_runs(runs)
    assert len(groups) == 8
    members = groups["hopper-medium-v2-behavioral-cloning"]
    assert [r.seed for r in members] == [0, 1, 2]
    assert members[0].env_name == "hopper-medium-v2"
    assert members[0].mode == "behavioral-cloning"
    np.testing.assert_array_equal(members[2].progress["NormalizedTestScore"], [10, 20, 32])


def test_group_runs_splits_configurations(tmp_path: Path) -> None:
    for seed in range(2):
        write_run(tmp_path, "hopper-medium-v2", "epistemic-penalty", seed, [1.0], pessimism=0.5)
    run = write_run(tmp_path, "hopper-medium-v2", "epistemic-penalty", 9, [1.0], pessimism=2.0)
    groups = plotting.group_runs(plotting.load_runs(tmp_path))
    assert {name: len(runs) for name, runs in groups.items()} == {
        "hopper-medium-v2-epistemic-penalty[pessimism=0.5]": 2,
        "hopper-medium-v2-epistemic-penalty[pessimism=2.0]": 1,
    }
    with pytest.raises(UserError, match="differ in pessimism"):
        plotting.final_scores(plotting.load_runs(tmp_path))
    assert run.is_dir()


def test_runs_directly_under_root_and_missing_config(tmp_path: Path) -> None:
    for seed in range(2):
        run_dir = tmp_path / f"walker2d-expert-v2-sac-s{seed}"
        run_dir.mkdir()
        (run_dir / "progress.txt").write_text("Epoch\tAverageTestEpRet\n1\t100\n2\t\n")
    runs = plotting.load_runs(tmp_path)
    assert [r.name for r in runs] == ["walker2d-expert-v2-sac"] * 2
    assert runs[0].env_name == "walker2d-expert-v2" and runs[0].mode == "sac"
    assert np.isnan(runs[0].progress["AverageTestEpRet"][1])
    # Normalised score derived from the return with D4RL's walker2d references.
    expected = 100 * (100 - 1.629008) / (4592.3 - 1.629008)
    assert runs[0].progress["NormalizedTestScore"][0] == pytest.approx(expected)


def test_load_runs_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no runs"):
        plotting.load_runs(tmp_path)
    with pytest.raises(UserError, match="not a directory"):
        plotting.load_runs(tmp_path / "missing")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "progress.txt").write_text("Epoch\tAverageTestEpRet\n")
    with pytest.warns(UserWarning, match="no data rows"), pytest.raises(UserError):
        plotting.load_runs(tmp_path)


# --------------------------------------------------------------------------- curves


def test_smooth_exact() -> None:
    np.testing.assert_array_equal(plotting.smooth([0, 1, 2, 3, 10], 3), [0.5, 1, 2, 5, 6.5])
    np.testing.assert_array_equal(plotting.smooth([0, 1, 2, 3, 10], 1), [0, 1, 2, 3, 10])
    # Even window: one more point ahead than behind.
    np.testing.assert_array_equal(plotting.smooth([0, 2, 4, 6], 2), [1, 3, 5, 6])
    # Window longer than the data: every point is the mean of all.
    np.testing.assert_array_equal(plotting.smooth([1, 2, 6], 10), [3, 3, 3])
    np.testing.assert_array_equal(plotting.smooth([1, np.nan, 3], 3), [1, 2, 3])


def test_seed_curve_truncates_and_aligns(tmp_path: Path) -> None:
    write_run(tmp_path, "hopper-medium-v2", "sac", 0, [0, 10, 20, 30])
    write_run(tmp_path, "hopper-medium-v2", "sac", 1, [2, 12, 22])
    runs = plotting.load_runs(tmp_path)
    curve = plotting.seed_curve(runs, "NormalizedTestScore", "TotalUpdates")
    assert curve is not None and curve.num_seeds == 2
    np.testing.assert_array_equal(curve.x, [1000, 2000, 3000])
    np.testing.assert_array_equal(curve.mean, [1, 11, 21])
    np.testing.assert_allclose(curve.std, [np.sqrt(2)] * 3)
    assert plotting.seed_curve(runs, "Missing", "TotalUpdates") is None


def test_plot_curves_lines_and_legend(experiments: Path) -> None:
    groups = plotting.filter_groups(
        plotting.group_runs(plotting.load_runs(experiments)), select=["hopper"], exclude=["sac"]
    )
    assert len(groups) == 6
    fig = plotting.plot_curves(groups, ["NormalizedTestScore", "AverageTestEpRet"], smooth_window=2)
    assert len(fig.axes) == 2
    assert [len(ax.lines) for ax in fig.axes] == [6, 6]
    assert fig.axes[1].get_xlabel() == "TotalUpdates"
    labels = [f"run {i}" for i in range(6)]
    fig = plotting.plot_curves(groups, legend=labels)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == [
        f"{label} (3 seeds)" for label in labels
    ]
    with pytest.raises(UserError, match="--legend"):
        plotting.plot_curves(groups, legend=["a"])
    with pytest.raises(UserError, match="NoSuchColumn"):
        plotting.plot_curves(groups, "NoSuchColumn")
    with pytest.raises(UserError, match="loosen"):
        plotting.filter_groups(groups, select=["walker2d"])


# --------------------------------------------------------------------------- final evaluation


def test_plot_final_eval_panels(experiments: Path) -> None:
    fig = plotting.plot_final_eval(plotting.load_runs(experiments))
    assert len(fig.axes) == 15
    grid = {
        (family, kind): fig.axes[row * 5 + col]
        for row, family in enumerate(plotting.ENV_FAMILIES)
        for col, kind in enumerate(plotting.DATASET_KINDS)
    }
    assert len(grid["hopper", "medium-replay"].lines) == 4
    medium = grid["hopper", "medium"]
    assert len(medium.lines) == 2  # one curve and the behavioral-cloning line
    bc = medium.lines[-1]
    assert bc.get_linestyle() == "--"
    assert bc.get_ydata()[0] == pytest.approx(31.0)  # mean of 30, 31, 32
    assert medium.get_ylim()[1] > 120  # grows beyond 100 to fit the curve
    cheetah = grid["halfcheetah", "random"]
    assert len(cheetah.lines) == 1
    assert cheetah.get_ylim()[0] <= 0 and cheetah.get_ylim()[1] >= 100
    empty = [key for key, ax in grid.items() if [t.get_text() for t in ax.texts] == ["no runs"]]
    assert len(empty) == 12
    assert ("walker2d", "expert") in empty and ("hopper", "medium") not in empty
    # The legend names the modes with runs: the seed's four pessimistic modes here.
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        *pessimistic_modes()[:4],
        plotting.BASELINE_MODE,
    ]
    fig = plotting.plot_final_eval(
        plotting.load_runs(experiments),
        labels={"sac": "x", "behavioral-cloning": "BC", "epistemic-penalty": "EP"},
    )
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "aleatoric-penalty",
        "EP",
        "aleatoric-partitioning",
        "epistemic-partitioning",
        "BC",
    ]


def test_plot_final_eval_without_d4rl_runs(tmp_path: Path) -> None:
    write_run(tmp_path, "Pendulum-v1", "sac", 0, [1.0, 2.0])
    with (
        pytest.warns(UserWarning, match="not on a D4RL dataset"),
        pytest.raises(UserError, match="no runs of"),
    ):
        plotting.plot_final_eval(plotting.load_runs(tmp_path))


def test_final_scores_and_summary_csv_exact(tmp_path: Path) -> None:
    write_run(tmp_path, "hopper-medium-v2", "epistemic-penalty", 0, [0, 10, 20])
    write_run(tmp_path, "hopper-medium-v2", "epistemic-penalty", 1, [0, 30, 40])
    write_run(tmp_path, "hopper-random-v2", "behavioral-cloning", 0, [0, 5])
    runs = plotting.load_runs(tmp_path)
    scores = plotting.final_scores(runs, last_k=1)
    assert list(scores) == [
        ("hopper-medium-v2", "epistemic-penalty"),
        ("hopper-random-v2", "behavioral-cloning"),
    ]
    np.testing.assert_array_equal(scores["hopper-medium-v2", "epistemic-penalty"], [20, 40])
    np.testing.assert_array_equal(
        plotting.final_scores(runs, last_k=2)["hopper-medium-v2", "epistemic-penalty"], [15, 35]
    )
    tables = plotting.summary_tables(scores, plotting.aggregate_iqm(scores, reps=100))
    rows = list(csv.DictReader(io.StringIO(tables.csv)))
    assert rows == [
        {
            "dataset": "hopper-random-v2",
            "mode": "behavioral-cloning",
            "num_seeds": "1",
            "mean": "5.0",
            "std": "0.0",
        },
        {
            "dataset": "hopper-medium-v2",
            "mode": "epistemic-penalty",
            "num_seeds": "2",
            "mean": "30.0",
            "std": repr(float(np.sqrt(200.0))),
        },
    ]
    assert "| hopper-medium-v2 | 30.0 ± 14.1 (2) | – |" in tables.markdown
    aggregate = list(csv.DictReader(io.StringIO(tables.aggregate_csv)))
    assert [(r["mode"], r["iqm"]) for r in aggregate] == [
        ("epistemic-penalty", "30.0"),
        ("behavioral-cloning", "5.0"),
    ]


def test_iqm_hand_made() -> None:
    assert plotting.iqm([1, 2, 3, 4, 5, 6, 7, 8]) == 4.5
    assert plotting.iqm([0, 10, 20, 30, 40, 100]) == 25.0
    assert plotting.iqm([1, 2, 3]) == 2.0
    # One seed per task: resampling within tasks cannot change anything, so the interval
    # collapses onto the estimate (an unstratified bootstrap would not).
    est = plotting.stratified_bootstrap_iqm([[1], [2], [3], [4], [100]], reps=500)
    assert (est.iqm, est.ci_low, est.ci_high) == (3.0, 3.0, 3.0)
    assert (est.num_datasets, est.num_scores) == (5, 5)
    rng = np.random.default_rng(1)
    tasks = [rng.normal(size=6) for _ in range(4)]
    est = plotting.stratified_bootstrap_iqm(tasks, reps=1000, rng=3)
    assert est.ci_low <= est.iqm <= est.ci_high and est.ci_low < est.ci_high
    assert est == plotting.stratified_bootstrap_iqm(tasks, reps=1000, rng=3)
    scores = {("a-v2", "m"): np.array([0.0, 100.0]), ("b-v2", "m"): np.array([10.0, 20, 30, 40])}
    assert plotting.aggregate_iqm(scores, reps=10)["m"].iqm == 25.0


# --------------------------------------------------------------------------- command line


def test_cli_curves(experiments: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "figures"
    assert (
        plot_script.main(
            [
                str(experiments),
                "--out",
                str(out),
                "--smooth",
                "2",
                "--select",
                "hopper",
                "--exclude",
                "sac",
            ]
        )
        == 0
    )
    for name in ("curves.png", "curves.pdf"):
        assert (out / name).stat().st_size > 0
    assert str(out / "curves.png") in capsys.readouterr().out
    # Default output directory: the log directory.
    assert (
        plot_script.main(
            [str(experiments), "--value", "AverageTestEpRet", "LossPi", "--xaxis", "Epoch"]
        )
        == 0
    )
    assert (experiments / "curves.pdf").stat().st_size > 0


def test_cli_final_eval(experiments: Path, tmp_path: Path) -> None:
    out = tmp_path / "final"
    assert (
        plot_script.main(
            [str(experiments), "--final_eval", "true", "--out", str(out), "--bootstrap_reps", "200"]
        )
        == 0
    )
    for name in (
        "final_eval.png",
        "final_eval.pdf",
        "final_scores.md",
        "final_scores.csv",
        "final_scores_aggregate.csv",
    ):
        assert (out / name).stat().st_size > 0
    rows = list(csv.DictReader((out / "final_scores.csv").open()))
    bc = [
        r for r in rows if r["dataset"] == "hopper-medium-v2" and r["mode"] == "behavioral-cloning"
    ]
    assert float(bc[0]["mean"]) == 31.0 and float(bc[0]["std"]) == 1.0


def test_cli_final_eval_flag_spellings(experiments: Path) -> None:
    parser = plot_script.build_parser()
    for text, expected in [
        ("true", True),
        ("True", True),
        ("1", True),
        ("yes", True),
        ("false", False),
        ("0", False),
        ("no", False),
    ]:
        assert parser.parse_args([".", "--final_eval", text]).final_eval is expected
    assert parser.parse_args([".", "--final_eval"]).final_eval is True
    assert parser.parse_args(["."]).final_eval is False
    with pytest.raises(SystemExit) as exc:
        plot_script.main([str(experiments), "--final_eval", "maybe"])
    assert exc.value.code == 2


def test_display_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    assert plot_script._use_display(no_show=False) is False  # no DISPLAY
    monkeypatch.setenv("DISPLAY", ":0")
    assert matplotlib.get_backend().lower() == "agg"
    assert plot_script._use_display(no_show=False) is False  # non-interactive backend


def test_plot_curves_many_experiments_legend_outside(experiments: Path) -> None:
    groups = plotting.group_runs(plotting.load_runs(experiments))
    fig = plotting.plot_curves(groups)
    assert len(fig.axes[0].lines) == 8 and len(fig.legends) == 1
    assert fig.axes[0].get_legend() is None


def test_cli_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert plot_script.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("plot.py: error: no runs under") and err.count("\n") == 1
    assert "Traceback" not in err
    write_run(tmp_path, "hopper-medium-v2", "sac", 0, [1.0])
    assert plot_script.main([str(tmp_path), "--value", "Nope", "--out", str(tmp_path / "o")]) == 2
    assert "Nope" in capsys.readouterr().err


def test_script_runs_as_file_path(experiments: Path, tmp_path: Path) -> None:
    script = SRC / "offline_mbrl" / "scripts" / "plot.py"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DISPLAY")}
    env["MPLBACKEND"] = "Agg"
    result = subprocess.run(
        [sys.executable, str(script), str(experiments), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "curves.png" in result.stdout
