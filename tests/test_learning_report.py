"""benchmarks/learning.py's report: rows whose runs are gone stay in the table."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def load_learning():
    spec = importlib.util.spec_from_file_location("learning", REPO / "benchmarks" / "learning.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["learning"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def write_run(run_dir: Path, scores: list[float]) -> None:
    run_dir.mkdir(parents=True)
    lines = ["Epoch\tTotalUpdates\tNormalizedTestScore"]
    lines += [f"{i + 1}\t{(i + 1) * 10}\t{s}" for i, s in enumerate(scores)]
    (run_dir / "progress.txt").write_text("\n".join(lines) + "\n")


def test_report_keeps_rows_without_runs_and_their_figure(tmp_path, monkeypatch):
    learning = load_learning()
    root, out = tmp_path / "root", tmp_path / "out"
    out.mkdir()
    # The previous report: two rows whose runs are no longer on disk, and its figure.
    kept = ("hopper-medium-replay-v2,offline-sac,derived,2,10.000 20.000,15.000,7.071,15.000,"
            "10.000,20.000")
    (out / "results.csv").write_text(
        "dataset,mode,rule,seeds,scores,mean,std,iqm,ci_low,ci_high\n"
        "hopper-medium-replay-v2,behavioral-cloning,derived,2,1.000 2.000,1.500,0.707,1.500,"
        f"1.000,2.000\n{kept}\n")
    (out / "results.json").write_text(json.dumps({"datasets": {
        "hopper-medium-replay-v2": {"transitions": 5, "sha256": "abc"}}}))
    (out / "learning.png").write_bytes(b"previous figure")
    # A new run on disk: behavioral cloning again, 2 epochs.
    for seed, scores in ((0, [3.0, 5.0]), (1, [4.0, 6.0])):
        experiment = "hopper-medium-replay-v2-behavioral-cloning"
        write_run(root / "experiments" / experiment / f"{experiment}-s{seed}", scores)
    args = learning.parse_args(["--root", str(root), "--out", str(out), "--seeds", "0", "1",
                                "--epochs", "2", "--last_k", "1"])
    monkeypatch.setattr(learning, "current_commit", lambda: "test")
    learning.report(learning.units_on_disk(args), args)

    csv = (out / "results.csv").read_text().splitlines()
    assert csv[1].startswith("hopper-medium-replay-v2,behavioral-cloning,derived,2,5.000 6.000")
    assert csv[2] == kept  # verbatim: no curve to recompute it from
    md = (out / "results.md").read_text()
    assert "| behavioral-cloning | 2 | 5.0, 6.0 |" in md
    assert "| offline-sac | 2 | 10.0, 20.0 |" in md
    # offline-sac has no stored curve: the figure that has it stays, the new one goes beside.
    assert (out / "learning.png").read_bytes() == b"previous figure"
    assert (out / "learning-latest.png").is_file()
    curves = json.loads((out / "curves.json").read_text())
    assert [(c["mode"], np.asarray(c["curves"]).shape) for c in curves] == [
        ("behavioral-cloning", (2, 2, 2))]
    meta = json.loads((out / "results.json").read_text())
    assert meta["datasets"]["hopper-medium-replay-v2"]["sha256"] == "abc"
    assert meta["rows_kept_from_previous_reports"] == ["hopper-medium-replay-v2: offline-sac"]

    # The next report reads the curves it stored: the BC row survives its runs' removal.
    import shutil

    shutil.rmtree(root / "experiments")
    learning.report(learning.units_on_disk(args), args)
    assert (out / "results.csv").read_text().splitlines()[1:] == csv[1:]
