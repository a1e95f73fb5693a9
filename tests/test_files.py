"""Writes that fail cleanly: full disks, read-only places, and the mode of written files."""

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from offline_mbrl.checkpoint import save_checkpoint
from offline_mbrl.data.collect import collect_random
from offline_mbrl.data.d4rl import write_d4rl_hdf5
from offline_mbrl.errors import UserError
from offline_mbrl.files import write_json_atomic


@contextlib.contextmanager
def _tmpfs(path: Path, options: str, what: str):
    """A tmpfs mounted at ``path`` for the test's duration; skips where mounting fails."""
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                            capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount {what} here (needs root and mount permission)")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


@pytest.fixture()
def small_disk(tmp_path):
    with _tmpfs(tmp_path / "disk", "size=3m", "a small tmpfs") as disk:
        yield disk


@pytest.fixture()
def read_only_dir(tmp_path):
    with _tmpfs(tmp_path / "ro", "size=1m,ro", "a read-only tmpfs") as place:
        yield place


def test_written_files_get_the_mode_a_plain_open_gives(tmp_path):
    old = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "c.pt", {"x": torch.zeros(2)})
        write_json_atomic(tmp_path / "a.json", {"a": 1})
        plain = tmp_path / "plain"
        plain.write_text("x")
    finally:
        os.umask(old)
    for name in ("c.pt", "a.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o644


def test_full_disk_is_one_error_and_leaves_no_temporary_file(small_disk):
    save_checkpoint(small_disk / "small.pt", {"x": torch.zeros(10)})
    with pytest.raises(UserError, match="free disk space"):
        save_checkpoint(small_disk / "big.pt", {"x": torch.zeros(2_000_000)})
    assert sorted(p.name for p in small_disk.iterdir()) == ["small.pt"]
    dataset = collect_random("hopper-random-v2", 40_000, seed=0)
    with pytest.raises(UserError, match=r"needs about .* MiB"):
        write_d4rl_hdf5(dataset, small_disk / "d.hdf5")
    assert sorted(p.name for p in small_disk.iterdir()) == ["small.pt"]


def test_collect_on_a_full_disk_exits_2_with_one_line(small_disk):
    env = {**os.environ, "OMBRL_DATASETS_DIR": str(small_disk)}
    result = subprocess.run(
        [sys.executable, "-m", "offline_mbrl.cli", "datasets", "collect", "hopper-random-v2",
         "--size", "40000", "--out", str(small_disk / "x.hdf5"), "--quiet"],
        capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "MiB" in result.stderr
    assert list(small_disk.iterdir()) == []


def test_read_only_places_are_one_line(read_only_dir, monkeypatch, capsys):
    from offline_mbrl.cli import train_main

    monkeypatch.setenv("OMBRL_DATA_DIR", str(read_only_dir / "experiments"))
    code = train_main(["--env_name", "Pendulum-v1", "--mode", "sac", "--epochs", "1",
                       "--steps_per_epoch", "10", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "writable location" in err, err
    with pytest.raises(UserError, match="writable location"):
        save_checkpoint(read_only_dir / "c.pt", {"x": np.zeros(1)})
